"""The Sparse-Guard data protocol (methods.md §7) and stratified subsampling.

Sparse-Guard pools a dataset's standard train and test splits and splits
the pool once, by a seeded permutation, into

* a **private** set (70%): the target model trains on it, and the attack
  tries to reconstruct all of it;
* a **held-out** set (30%): the attacker's auxiliary queries, and the
  target's test set.

Everything is numpy on the host and a pure function of (data, seed), so
every process of a multi-host run computes the same split independently.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import NamedTuple, Optional

import numpy as np

from mi_jax.data.registry import load

# Separate seed streams: the split and each role's subsample must not share
# random draws (changing a limit must not change the split).
_SPLIT_STREAM = 0
_SUBSAMPLE_STREAM = 1
_ROLES = ('private', 'heldout')


class ProtocolSplit(NamedTuple):
  """The two roles of the Sparse-Guard protocol (images uint8 NHWC, labels int64)."""

  private_images: np.ndarray
  private_labels: np.ndarray
  heldout_images: np.ndarray
  heldout_labels: np.ndarray


def _check_seed(seed) -> None:
  if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
    raise ValueError(f'seed must be an integer >= 0, got {seed!r}')


def _check_fraction(private_fraction) -> None:
  ok = isinstance(private_fraction, numbers.Real) and not isinstance(private_fraction, bool)
  if not ok or not math.isfinite(private_fraction) or not 0 < private_fraction < 1:
    raise ValueError(f'private_fraction must be a number in (0, 1), got {private_fraction!r}')


def split_permutation(num_examples: int, *, seed: int, private_fraction: float = 0.7):
  """Indices of the private and held-out sets: ``(private_idx, heldout_idx)``.

  The first ``round(private_fraction * N)`` entries of the seeded permutation
  are private, the rest held out; both keep the permutation's order.
  """
  _check_seed(seed)
  _check_fraction(private_fraction)
  num_private = int(round(private_fraction * num_examples))
  if not 0 < num_private < num_examples:
    raise ValueError(
        f'private_fraction {private_fraction} leaves an empty role for {num_examples} examples'
    )
  permutation = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(num_examples)
  return permutation[:num_private], permutation[num_private:]


def class_quotas(counts: np.ndarray, limit: int) -> np.ndarray:
  """Per-class sample sizes summing to ``limit``, proportional to ``counts``.

  Largest-remainder apportionment (ties to the lower class index), then
  every class present is raised to at least one example, paid for by the
  classes most above their ideal share: a subset keeps its parent's class
  balance as closely as integers allow, and no class vanishes.
  """
  counts = np.asarray(counts, dtype=np.int64)
  ideal = limit * counts / counts.sum()
  quotas = np.floor(ideal).astype(np.int64)
  leftover = limit - int(quotas.sum())
  quotas[np.argsort(-(ideal - quotas), kind='stable')[:leftover]] += 1
  quotas = np.maximum(quotas, counts > 0)
  while quotas.sum() > limit:  # at most one pass per class raised to 1
    excess = np.where(quotas > 1, quotas - ideal, -np.inf)
    quotas[np.argmax(excess)] -= 1
  return quotas


def stratified_subsample(
    labels: np.ndarray, limit: int, *, seed: int, salt: int = 0, field: str = 'limit'
) -> np.ndarray:
  """Sorted indices of a deterministic, class-stratified subset of size ``limit``.

  Sorted, so a subset of an already shuffled set keeps that set's order.
  ``salt`` separates independent draws under one seed (the two roles);
  ``field`` names the caller's argument in error messages.
  """
  _check_seed(seed)
  labels = np.asarray(labels)
  n = len(labels)
  classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
  is_int = isinstance(limit, numbers.Integral) and not isinstance(limit, bool)
  if not is_int or not len(classes) <= limit <= n:
    raise ValueError(
        f'{field} must be an integer in [{len(classes)}, {n}] '
        f'(one per class up to the whole set), got {limit!r}'
    )
  quotas = class_quotas(counts, int(limit))
  rng = np.random.default_rng([seed, _SUBSAMPLE_STREAM, salt])
  chosen = []
  for k in range(len(classes)):
    members = np.flatnonzero(inverse == k)
    chosen.append(rng.permutation(members)[: quotas[k]])
  return np.sort(np.concatenate(chosen))


def sparse_guard_split(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    seed: int = 0,
    private_fraction: float = 0.7,
    private_limit: Optional[int] = None,
    heldout_limit: Optional[int] = None,
) -> ProtocolSplit:
  """Splits pooled data into the private and held-out roles.

  Args:
    images: the pooled images (train then test), any leading size N.
    labels: the pooled labels, (N,).
    seed: the protocol seed; the same seed gives the same split everywhere.
    private_fraction: the private share, in (0, 1); Sparse-Guard uses 0.7.
    private_limit: optionally keep only this many private examples, a
      class-stratified deterministic subset (small-scale runs).
    heldout_limit: the same for the held-out set.
  """
  if len(images) != len(labels):
    raise ValueError(
        f'images and labels must have the same length, got {len(images)} and {len(labels)}'
    )
  private, heldout = split_permutation(len(labels), seed=seed, private_fraction=private_fraction)
  roles = []
  plan = (('private', private, private_limit), ('heldout', heldout, heldout_limit))
  for role, indices, limit in plan:
    if limit is not None:
      keep = stratified_subsample(
          labels[indices], limit, seed=seed, salt=_ROLES.index(role), field=f'{role}_limit'
      )
      indices = indices[keep]
    roles += [images[indices], labels[indices]]
  return ProtocolSplit(*roles)


def pooled(name: str, *, data_dir: Optional[str | os.PathLike] = None):
  """A dataset's train and test splits concatenated, train first: ``(images, labels)``."""
  train_images, train_labels = load(name, 'train', data_dir=data_dir)
  test_images, test_labels = load(name, 'test', data_dir=data_dir)
  return np.concatenate([train_images, test_images]), np.concatenate([train_labels, test_labels])


def load_sparse_guard(
    name: str,
    *,
    seed: int = 0,
    private_fraction: float = 0.7,
    private_limit: Optional[int] = None,
    heldout_limit: Optional[int] = None,
    data_dir: Optional[str | os.PathLike] = None,
) -> ProtocolSplit:
  """:func:`sparse_guard_split` of a registered dataset's pooled train + test."""
  images, labels = pooled(name, data_dir=data_dir)
  return sparse_guard_split(
      images, labels, seed=seed, private_fraction=private_fraction,
      private_limit=private_limit, heldout_limit=heldout_limit,
  )
