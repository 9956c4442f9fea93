"""mi_jax.data: real datasets, the Sparse-Guard split, and sharded batching.

Public API:

* :func:`load` ``(name, split, *, data_dir=None) -> (images, labels)``:
  uint8 NHWC images and int64 labels of a registered dataset
  (``'mnist'``, ``'fashion_mnist'``, ``'cifar10'``, ``'medical_mnist'``,
  ``'pathmnist'``, ``'organamnist'``, ``'bloodmnist'``, ``'dermamnist'``,
  ``'celeba'``; :func:`register_celeba` for other CelebA resolutions), from the prepared cache or, on first
  use, prepared through the dataset's offline routes and then TensorFlow
  Datasets (reported on stderr). Prepare ahead with
  ``python -m mi_jax.data.prepare mnist fashion_mnist``.
* :data:`DATASETS`, :class:`DatasetSpec`, :func:`register`: the registry.
* :func:`register_local`: the user's own .npz or image folder as a dataset
  (:mod:`mi_jax.data.local`).
* :func:`sparse_guard_split`, :func:`load_sparse_guard`,
  :class:`ProtocolSplit`, :func:`stratified_subsample`: the 70/30 protocol.
* :func:`batches`, :func:`local_batch`, :class:`Position`,
  :func:`make_data_mesh`, :func:`to_global_array`: deterministic,
  resumable, per-process batches and their global ``jax.Array``.
"""

from mi_jax.data import mnist as _mnist  # noqa: F401  (registers mnist and fashion_mnist)
from mi_jax.data import cifar as _cifar  # noqa: F401  (registers cifar10)
from mi_jax.data import medical_mnist as _medical_mnist  # noqa: F401  (registers medical_mnist)
from mi_jax.data import medmnist as _medmnist  # noqa: F401  (pathmnist, organamnist, bloodmnist, dermamnist)
from mi_jax.data import celeba as _celeba  # noqa: F401  (registers celeba, 64×64)
from mi_jax.data.celeba import register_celeba
from mi_jax.data.batching import (
    Batch,
    Position,
    batches,
    check_batch_size,
    epoch_permutation,
    global_batch_indices,
    local_batch,
    make_data_mesh,
    steps_per_epoch,
    to_global_array,
)
from mi_jax.data.cache import DataDirError, resolve_data_dir
from mi_jax.data.idx import ChecksumError, parse_idx, read_idx
from mi_jax.data.local import register_local
from mi_jax.data.registry import (
    DATASETS,
    DataUnavailableError,
    DatasetSpec,
    RawFile,
    SplitSpec,
    get_spec,
    load,
    prepare_dataset,
    register,
)
from mi_jax.data.splits import (
    ProtocolSplit,
    load_sparse_guard,
    pooled,
    sparse_guard_split,
    stratified_subsample,
)

__all__ = [
    'Batch',
    'ChecksumError',
    'DATASETS',
    'DataDirError',
    'DataUnavailableError',
    'DatasetSpec',
    'register_celeba',
    'register_local',
    'Position',
    'ProtocolSplit',
    'RawFile',
    'SplitSpec',
    'batches',
    'check_batch_size',
    'epoch_permutation',
    'get_spec',
    'global_batch_indices',
    'load',
    'load_sparse_guard',
    'local_batch',
    'make_data_mesh',
    'parse_idx',
    'pooled',
    'prepare_dataset',
    'read_idx',
    'register',
    'resolve_data_dir',
    'sparse_guard_split',
    'steps_per_epoch',
    'stratified_subsample',
    'to_global_array',
]
