"""mi_jax: model-inversion attacks and defenses in JAX, around a differentiable LCA core."""

__version__ = '0.1.0'
