"""SG Fig. 4: UMAP of the features after two layers of three small models (experiments.umap_features).

The sparse column is configs/sparse_guard_mnist.py's Sparse-Guard front
(``config.defense``: λ, τ, steps, features, atoms) at the same argument;
``config.umap`` holds the figure's own settings, and ``config.seed`` seeds
the subsets, the probes and UMAP. Arguments: ``scale[,dataset]``
(``configs.base`` documents them; the figure's datasets are ``umap.datasets``).

Command (from the repository root; 4.7 min on 2 CPU cores at ``small``):

  python -m experiments.umap_features --config=configs/umap_features.py:small \
      --workdir=results/umap_fig4 [--config.umap.n_points=2000] \
      [--config.umap.datasets="('mnist','fashion_mnist')"]
"""

from ml_collections import config_dict

from configs import base, sparse_guard_mnist


def get_config(arg: str = 'small'):
  """The locked config of ``arg`` (``scale[,dataset]``)."""
  c = sparse_guard_mnist.build(base.parse_argument(arg))
  # One figure, no grid of points. Its sparse column is always the
  # Sparse-Guard front, whatever defense.name says.
  c.sweep.enabled = False
  c.umap = config_dict.ConfigDict()
  c.umap.datasets = ('mnist', 'fashion_mnist')  # one figure row per dataset
  c.umap.n_points = 2000  # test images embedded per panel
  c.umap.train_limit = 10000  # train images for the linear/conv probes
  c.umap.epochs = 1  # training epochs of the linear/conv probes
  return c.lock()
