"""Experiment configs (``ml_collections``), one module per command.

* ``base``: the config argument (``scale[,dataset[,grid]]``, documented
  there, once) and the blocks every experiment shares;
* ``sparse_guard_mnist``: Sparse-Guard vs the surrogate attack
  (``experiments.sparse_guard``); the others derive from it by import:
* ``gan_attacks_mnist``: white-box GAN-prior attacks (``experiments.gan_attacks``);
* ``fisher_importance``: layer importance of a target (``experiments.fisher_importance``);
* ``umap_features``: SG Fig. 4 (``experiments.umap_features``).

The commands load a file by its path (``--config=configs/<file>.py:<argument>``),
and the file imports its base as ``configs.<module>``: run them from the
repository root, as ``python -m experiments.<name>`` needs anyway (or put the
root on ``PYTHONPATH``). Code loads a config with
``importlib.import_module('configs.<module>').get_config(argument)``.
"""
