"""mi_jax.experiments: the experiment layer, the only code that reads a config.

Each experiment module turns an ``ml_collections`` config into calls of the
library (defenses, attacks, metrics) with explicit arguments, and writes its
results atomically; the mains under ``experiments/`` only parse flags.
"""
