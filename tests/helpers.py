"""Shared test fixtures. Synthetic data here is for unit tests only."""

import importlib
import pathlib

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def config_module(path: str):
  """The ``configs`` module of a config file path ('configs/gan_attacks_mnist.py') or module name."""
  name = path[:-len('.py')].replace('/', '.') if path.endswith('.py') else path
  if not name.startswith('configs.'):
    raise ValueError(f"path must name a module of the configs package, got {path!r}")
  return importlib.import_module(name)


def load_config(arg='tiny', path='configs/sparse_guard_mnist.py'):
  """The config of ``--config=<path>:<arg>``, imported as a module of the configs package."""
  return config_module(path).get_config(arg)


def synthetic_digits(n, seed=0, hw=28):
  """SYNTHETIC (unit tests only): blobs whose position encodes the label."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, n)
  yy, xx = np.mgrid[:hw, :hw]
  images = np.zeros((n, hw, hw, 1), np.uint8)
  for i, label in enumerate(labels):
    cy, cx = 6 + (label // 5) * 14, 3 + (label % 5) * 5.5
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8.0)
    images[i, :, :, 0] = np.clip(255 * blob + rng.normal(0, 10, (hw, hw)), 0, 255)
  return images, labels.astype(np.int64)


def mesh_of(n):
  devices = np.array(jax.devices()[:n])
  return jax.sharding.Mesh(devices, ('data',), axis_types=(jax.sharding.AxisType.Auto,))
