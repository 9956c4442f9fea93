"""Bring your own data: an .npz or a folder of images registers as a dataset in one call.

    from mi_jax import data
    data.register_local('my_scans', '/data/scans.npz')      # or a folder: '/data/scans/'
    images, labels = data.load('my_scans', 'train')

Two layouts:

* **npz** with ``images`` (N, H, W) or (N, H, W, C), C ∈ {1, 3}, uint8 (or
  floats in [0, 1], which are scaled to uint8), and ``labels`` (N,)
  integers in [0, K); optionally ``test_images`` / ``test_labels`` with the
  same shapes, and ``class_names`` (K strings).
* **folder** of one subfolder per class (the ImageFolder layout:
  ``root/<class name>/*.png|jpg|jpeg|bmp``), classes in sorted name order;
  optionally ``root/train/<class>/…`` and ``root/test/<class>/…``. Every
  image must have the first image's size and mode (grey or RGB); nothing is
  resized silently.

The registered :class:`~mi_jax.data.DatasetSpec` pins the sha256 of the
arrays read at registration, so every later :func:`~mi_jax.data.load` (in
this process or another one that registers the same file) gets exactly
those arrays or a checksum error if the file changed; the data go through
the same cache, validation and messages as the built-in sets. Without a
test split, ``test`` is empty (the Sparse-Guard protocol pools train and
test and splits them 70/30 itself).

The experiments read ``config.dataset``; a config file is Python run in
every process, so a config that calls :func:`register_local` first and
sets ``config.dataset`` to the name runs any experiment on the user's data
(docs/experiments.md shows one).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Optional, Sequence

import numpy as np

from mi_jax.data import cache, registry

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp')


@dataclasses.dataclass(frozen=True)
class LocalRoute:
  """The user's own file or folder (read again whenever the cache misses)."""
  path: str

  @property
  def name(self) -> str:
    return f'local {self.path}'

  def fetch(self, spec, ctx) -> dict:
    del ctx
    splits, _ = read_local(self.path)
    return {split: splits.get(split, _empty(spec.image_shape)) for split in spec.splits}


def _empty(image_shape) -> tuple[np.ndarray, np.ndarray]:
  return np.zeros((0, *image_shape), np.uint8), np.zeros((0,), np.int64)


def _as_uint8_images(images: np.ndarray, origin: str) -> np.ndarray:
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"{origin}: images must be (N, H, W) or (N, H, W, C) with C in (1, 3), got shape "
                     f"{images.shape}")
  if images.dtype == np.uint8:
    return images
  if np.issubdtype(images.dtype, np.floating):
    if not (np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1):
      raise ValueError(f"{origin}: float images must be finite and in [0, 1] (they are scaled to uint8)")
    return np.round(images * 255).astype(np.uint8)
  raise ValueError(f"{origin}: images must be uint8 or floats in [0, 1], got dtype {images.dtype}")


def _as_labels(labels: np.ndarray, n: int, origin: str) -> np.ndarray:
  if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"{origin}: labels must be {n} integers (one per image), got {labels.dtype}{labels.shape}")
  if n and labels.min() < 0:
    raise ValueError(f"{origin}: labels must be >= 0, got {labels.min()}")
  return labels.astype(np.int64)


def _read_npz(path: pathlib.Path) -> tuple[dict, Optional[tuple[str, ...]]]:
  with np.load(path, allow_pickle=False) as f:
    keys = set(f.files)
    if not {'images', 'labels'} <= keys:
      raise ValueError(f"{path}: an npz dataset needs the arrays 'images' and 'labels', found {sorted(keys)}")
    splits = {'train': ('images', 'labels')}
    if 'test_images' in keys or 'test_labels' in keys:
      splits['test'] = ('test_images', 'test_labels')
    out = {}
    for split, (image_key, label_key) in splits.items():
      if image_key not in keys or label_key not in keys:
        raise ValueError(f"{path}: '{image_key}' and '{label_key}' come together")
      images = _as_uint8_images(f[image_key], f'{path} {image_key}')
      out[split] = (images, _as_labels(f[label_key], len(images), f'{path} {label_key}'))
    names = tuple(str(n) for n in f['class_names']) if 'class_names' in keys else None
  return out, names


def _read_image(path: pathlib.Path) -> np.ndarray:
  from PIL import Image  # matplotlib's dependency; imported only for folder datasets
  with Image.open(path) as image:
    if image.mode not in ('L', 'RGB'):
      image = image.convert('RGB')
    return np.asarray(image, dtype=np.uint8)


def _read_class_folders(root: pathlib.Path, classes: Sequence[str], origin: str) -> tuple[np.ndarray, np.ndarray]:
  images, labels = [], []
  for label, name in enumerate(classes):
    folder = root / name
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    for file in files:
      array = _read_image(file)
      if images and array.shape != images[0].shape:
        raise ValueError(f"{origin}: {file} is {array.shape}, the first image is {images[0].shape}: every image "
                         f"must have one size and mode (resize them first)")
      images.append(array)
      labels.append(label)
  if not images:
    raise ValueError(f"{origin}: no {'/'.join(IMAGE_SUFFIXES)} images under {root}/<class>/")
  return _as_uint8_images(np.stack(images), origin), np.asarray(labels, np.int64)


def _read_folder(root: pathlib.Path) -> tuple[dict, tuple[str, ...]]:
  split_roots = {s: root / s for s in ('train', 'test') if (root / s).is_dir()}
  if not split_roots:
    split_roots = {'train': root}
  classes = tuple(sorted(p.name for p in split_roots['train'].iterdir() if p.is_dir()))
  if len(classes) < 2:
    raise ValueError(f"{root}: a folder dataset needs one subfolder per class (at least 2), found {list(classes)}")
  return {split: _read_class_folders(path, classes, str(root)) for split, path in split_roots.items()}, classes


def read_local(path: str | os.PathLike) -> tuple[dict, Optional[tuple[str, ...]]]:
  """``({split: (images uint8 NHWC, labels int64)}, class names or None)`` of an npz or a folder."""
  path = pathlib.Path(path)
  if path.is_dir():
    return _read_folder(path)
  if path.suffix == '.npz' and path.is_file():
    return _read_npz(path)
  raise ValueError(f"path must be an existing .npz file or a folder of class subfolders, got {str(path)!r}")


def register_local(name: str, path: str | os.PathLike,
                   class_names: Optional[Sequence[str]] = None) -> registry.DatasetSpec:
  """Reads, checks and registers the dataset at ``path`` under ``name`` (module docstring).

  Registering the same name and file again (another process, a re-imported
  config) returns the existing spec; another file under a taken name is an error.
  """
  if not isinstance(name, str) or not name.replace('_', '').isalnum() or not name[:1].isalpha():
    raise ValueError(f"name must start with a letter and hold only letters, digits and '_', got {name!r}")
  splits, found_names = read_local(path)
  train_images = splits['train'][0]
  image_shape = tuple(int(d) for d in train_images.shape[1:])
  for split, (images, _) in splits.items():
    if tuple(images.shape[1:]) != image_shape:
      raise ValueError(f"{path}: {split} images are {images.shape[1:]}, train images {image_shape}")
  num_classes = int(max(labels.max() for _, labels in splits.values() if len(labels))) + 1
  names = tuple(class_names or found_names or (str(k) for k in range(num_classes)))
  if len(names) < num_classes or len(names) < 2:
    raise ValueError(f"class_names must name the {max(num_classes, 2)} classes (labels 0..{num_classes - 1}), "
                     f"got {len(names)}")
  splits.setdefault('test', _empty(image_shape))
  spec = registry.DatasetSpec(
      name=name, image_shape=image_shape, class_names=names,
      splits={split: registry.SplitSpec(
          num_examples=len(labels), class_counts=tuple(int(c) for c in np.bincount(labels, minlength=len(names))),
          images_sha256=cache.array_sha256(images), labels_sha256=cache.array_sha256(labels))
          for split, (images, labels) in splits.items()},
      raw_files=(), routes=(LocalRoute(str(pathlib.Path(path).resolve())),))
  existing = registry.DATASETS.get(name)
  if existing is not None:
    if existing == spec:
      return existing
    raise ValueError(f"dataset {name!r} is already registered with other data; choose another name")
  return registry.register(spec)
