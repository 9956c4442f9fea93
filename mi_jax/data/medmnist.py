"""MedMNIST v2, 2-D sets at 28×28: PathMNIST, OrganAMNIST, BloodMNIST, DermaMNIST.

Not the "Medical MNIST" of Sparse-Guard (:mod:`mi_jax.data.medical_mnist`).

Source: the official ``<flag>.npz`` files of Zenodo record 10519652 (MedMNIST
v2/v3, CC BY 4.0), each with ``train_images`` / ``train_labels`` /
``val_*`` / ``test_*``. Raw pin: the MD5 the ``medmnist`` package (3.0.2,
``medmnist.INFO[flag]['MD5']``) publishes for that URL, verified before the
npz is opened; sizes per split are from the same table. The final arrays
are **not** pinned (no copy reachable where this spec was written): they
are checked by shape and dtype, and rest on the MD5.

Arrays: images uint8 (N, 28, 28, C) (C = 1 for OrganAMNIST, 3 otherwise),
in the npz's order; labels int64 from the npz's (N, 1) labels. Splits
``train``, ``val``, ``test`` as published (the Sparse-Guard protocol pools
``train`` and ``test``).

No TFDS route: TensorFlow Datasets has no MedMNIST builder.
"""

from __future__ import annotations

import zipfile

import numpy as np

from mi_jax.data.archives import DownloadRoute, PinnedFile, RawFilesRoute
from mi_jax.data.registry import DatasetSpec, SplitSpec, register

ZENODO = 'https://zenodo.org/records/10519652/files/{flag}.npz?download=1'

# flag: (MD5 published by medmnist 3.0.2, channels, {split: size}, class names)
SETS = {
    'pathmnist': ('a8b06965200029087d5bd730944a56c1', 3,
                  {'train': 89996, 'val': 10004, 'test': 7180},
                  ('adipose', 'background', 'debris', 'lymphocytes', 'mucus', 'smooth muscle',
                   'normal colon mucosa', 'cancer-associated stroma',
                   'colorectal adenocarcinoma epithelium')),
    'organamnist': ('68e3f8846a6bd62f0c9bf841c0d9eacc', 1,
                    {'train': 34561, 'val': 6491, 'test': 17778},
                    ('bladder', 'femur-left', 'femur-right', 'heart', 'kidney-left', 'kidney-right',
                     'liver', 'lung-left', 'lung-right', 'pancreas', 'spleen')),
    'bloodmnist': ('7053d0359d879ad8a5505303e11de1dc', 3,
                   {'train': 11959, 'val': 1712, 'test': 3421},
                   ('basophil', 'eosinophil', 'erythroblast',
                    'immature granulocytes(myelocytes, metamyelocytes and promyelocytes)',
                    'lymphocyte', 'monocyte', 'neutrophil', 'platelet')),
    'dermamnist': ('0744692d530f8e62ec473284d019b0c7', 3,
                   {'train': 7007, 'val': 1003, 'test': 2005},
                   ('actinic keratoses and intraepithelial carcinoma', 'basal cell carcinoma',
                    'benign keratosis-like lesions', 'dermatofibroma', 'melanoma',
                    'melanocytic nevi', 'vascular lesions')),
}


def read_npz(path, splits, channels: int, num_classes: int, origin: str = None) -> dict:
  """``{split: (uint8 (N, 28, 28, C), int64 (N,))}`` of a MedMNIST-format npz."""
  origin = origin or str(path)
  out = {}
  try:
    with np.load(path, allow_pickle=False) as npz:
      keys = set(npz.files)
      for split in splits:
        need = {f'{split}_images', f'{split}_labels'}
        if not need <= keys:
          raise ValueError(f'{origin}: no {sorted(need - keys)[0]} (found {sorted(keys)})')
        images, labels = npz[f'{split}_images'], npz[f'{split}_labels']
        if images.ndim == 3:
          images = images[..., None]
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != channels:
          raise ValueError(f'{origin}: {split}_images are {images.dtype}{images.shape}, '
                           f'expected uint8 (N, H, W, {channels})')
        if labels.ndim == 2 and labels.shape[1] == 1:
          labels = labels[:, 0]
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
          raise ValueError(f'{origin}: {split}_labels are {labels.dtype}{labels.shape}, expected '
                           f'{len(images)} integer labels (N,) or (N, 1)')
        if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
          raise ValueError(f'{origin}: {split}_labels outside [0, {num_classes})')
        out[split] = (np.ascontiguousarray(images), labels.astype(np.int64))
  except (OSError, zipfile.BadZipFile, EOFError, KeyError) as error:
    raise ValueError(f'{origin}: unreadable npz ({type(error).__name__}: {error})') from None
  return out


def _pin(flag: str, md5: str) -> PinnedFile:
  return PinnedFile(
      name=f'{flag}.npz', digest=md5, algorithm='md5', url=ZENODO.format(flag=flag),
      published=True, note='medmnist 3.0.2 INFO[flag]["MD5"]',
  )


def _make(flag: str) -> DatasetSpec:
  md5, channels, sizes, names = SETS[flag]
  pin = _pin(flag, md5)

  def reader(spec, paths, ctx):
    del ctx
    return read_npz(paths[pin.name], spec.splits, channels, len(names))

  return register(DatasetSpec(
      name=flag,
      image_shape=(28, 28, channels),
      class_names=names,
      # Raw-pinned only (module docstring): sizes official, arrays unpinned.
      splits={split: SplitSpec(num_examples=n) for split, n in sizes.items()},
      raw_files=(),
      raw_pins=(pin,),
      routes=(
          RawFilesRoute((pin,), reader, raw_name=flag, what='the MedMNIST npz'),
          DownloadRoute((pin,), reader, raw_name=flag, host='zenodo.org'),
      ),
  ))


PATHMNIST, ORGANAMNIST, BLOODMNIST, DERMAMNIST = (_make(flag) for flag in SETS)
