"""Fisher-information layer importance of one target (experiments.fisher_importance).

The target is configs/sparse_guard_mnist.py's (model, defense, train blocks
and data split), one point of it (no sweep), undefended by default: TL-DMI
ranks the layers of a target trained on the private data. ``config.fisher``
holds the analysis' own settings. Arguments: ``scale[,dataset]``
(``configs.base`` documents them).

Commands (from the repository root):

  # Let it train a no-defense target itself (tiny: ~1 min on 2 CPU cores):
  python -m experiments.fisher_importance --config=configs/fisher_importance.py:tiny \
      --workdir=/tmp/fisher_tiny

  # Analyse a target trained by the grid (its 'target' phase checkpoints;
  # the defense and setting must be the point's):
  python -m experiments.fisher_importance --config=configs/fisher_importance.py:small \
      --config.fisher.checkpoint=results/sg_mnist_small/<point>/checkpoints/target \
      --workdir=results/fisher_small
"""

from ml_collections import config_dict

from configs import base, sparse_guard_mnist


def get_config(arg: str = 'small'):
  """The locked config of ``arg`` (``scale[,dataset]``)."""
  c = sparse_guard_mnist.build(base.parse_argument(arg))
  c.sweep.enabled = False  # one target
  c.defense.name = 'no-defense'
  c.fisher = config_dict.ConfigDict()
  # At most this many examples per Fisher estimate (the first of each role).
  c.fisher.samples = 512
  # Per-example-gradient batch: a multiple of the device count.
  c.fisher.batch_size = 64
  # A 'target' phase checkpoint directory to analyse; None: train one into the workdir.
  c.fisher.checkpoint = config_dict.placeholder(str)
  # A .npy of images aligned with the private split for the inversion loss
  # (e.g. an attack's reconstructions); None: the private images.
  c.fisher.reconstructions = config_dict.placeholder(str)
  return c.lock()
