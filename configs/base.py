"""What every experiment config shares: the argument after the colon, and the common blocks.

The config argument
-------------------

Every config file of this package takes one argument, the text after the
colon of ``--config=configs/<file>.py:<argument>``: up to three words
separated by commas, read by position (:func:`parse_argument`):

  ==========  ===========================================  ==================
  position    words                                        default
  ==========  ===========================================  ==================
  1 scale     ``tiny``, ``small``, ``paper``               ``small``
  2 dataset   ``mnist``, ``fashion_mnist``, ``cifar10``,   ``mnist``
              ``medical_mnist``, ``pathmnist``,
              ``organamnist``, ``bloodmnist``,
              ``dermamnist``, ``celeba`` (the registered
              sets with a target family; each needs
              ``python -m mi_jax.data.prepare <word>``)
  3 grid      the file's grids (sparse_guard_mnist:        its first grid
              ``sparse_guard``, ``all_defenses``,
              ``reproduction``);
              files without grids take two words
  ==========  ===========================================  ==================

``tiny`` is a smoke test (seconds: what the tests run), ``small`` a CPU run
(minutes), ``paper`` the papers' settings (an accelerator). Examples:
``small`` (= ``small,mnist``), ``tiny,fashion_mnist``,
``small,mnist,all_defenses``. A word a position does not know, or a word
past the last position, is a one-line ``ValueError`` that names the
position and lists its words.

The blocks
----------

:func:`new_config` starts a config with the fields every experiment has
(``scale``, ``dataset``, ``seed``); :func:`data_block` and
:func:`train_block` build the ``data`` and ``train`` blocks at the papers'
settings. The experiment configs (``configs.sparse_guard_mnist`` and the
files that derive from it) add their own fields and scale them down.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from ml_collections import config_dict

SCALES = ('tiny', 'small', 'paper')
DEFAULT_SCALE = 'small'

# Per-dataset pixel mean and std of the official training split: the
# Normalize values in common use (the SG code's for MNIST).
NORMALIZATION = {
    'mnist': (0.1307, 0.3081),
    'fashion_mnist': (0.2860, 0.3530),
    # One (mean, std) for all three channels: the SG code's CIFAR-10 Normalize((0.5,)*3, (0.5,)*3).
    'cifar10': (0.5, 0.5),
    # SG's Medical MNIST and the MedMNIST 2-D sets: the (0.5, 0.5) of the
    # MedMNIST authors' training scripts (and of the SG code for its sets).
    'medical_mnist': (0.5, 0.5),
    'pathmnist': (0.5, 0.5),
    'organamnist': (0.5, 0.5),
    'bloodmnist': (0.5, 0.5),
    'dermamnist': (0.5, 0.5),
    # Faces: [0, 1] pixels, as the GMI line's CelebA loaders feed them.
    'celeba': (0.0, 1.0),
}
DEFAULT_DATASET = 'mnist'


class Argument(NamedTuple):
  """The parsed config argument; ``grid`` is None for a file without grids."""
  scale: str
  dataset: str
  grid: str | None


def parse_argument(arg: str | None, *, grids: Sequence[str] = (),
                   datasets: Sequence[str] = tuple(NORMALIZATION)) -> Argument:
  """``'scale[,dataset[,grid]]'`` → :class:`Argument` (module docstring).

  ``grids``: the grid words the calling file knows, its default first; empty
  for a file that takes no grid word. ``datasets``: the dataset words the
  file can run (default: every word of the table). Empty words are skipped (``'tiny,'``
  is ``'tiny'``), and an empty or None argument is every default.
  """
  positions = [('scale', SCALES, DEFAULT_SCALE), ('dataset', tuple(datasets), DEFAULT_DATASET)]
  if grids:
    positions.append(('grid', tuple(grids), grids[0]))
  words = [word for word in (arg or '').split(',') if word]
  if len(words) > len(positions):
    names = ','.join(name for name, _, _ in positions)
    raise ValueError(f"config argument {arg!r}: word {len(positions) + 1} ({words[len(positions)]!r}) is past "
                     f"the last position; this config takes at most {len(positions)} words: {names}")
  chosen = []
  for index, (name, allowed, default) in enumerate(positions):
    word = words[index] if index < len(words) else default
    if word not in allowed:
      # The wording tests/hardening/cli_errors_test.py pins for the command line.
      raise ValueError(f"config argument {name} must be one of {allowed}, got {word!r}")
    chosen.append(word)
  scale, dataset = chosen[:2]
  return Argument(scale, dataset, chosen[2] if grids else None)


def new_config(argument: Argument) -> config_dict.ConfigDict:
  """A config with the fields every experiment has: its scale, dataset and seed."""
  c = config_dict.ConfigDict()
  c.scale = argument.scale
  c.dataset = argument.dataset
  c.seed = 0
  return c


def data_block(dataset: str) -> config_dict.ConfigDict:
  """``config.data``: where the images are, the SG private/held-out split, the normalisation."""
  d = config_dict.ConfigDict()
  d.dir = config_dict.placeholder(str)  # default: $MI_JAX_DATA_DIR or ~/.cache/mi_jax/data
  # SG protocol: pool train+test, 70% private (target trains, attack
  # reconstructs), 30% held out (attacker's queries, target's test set).
  d.private_fraction = 0.7
  # Subsample each role for small runs (stratified); None = all of it.
  d.private_limit = config_dict.placeholder(int)
  d.heldout_limit = config_dict.placeholder(int)
  d.normalization = NORMALIZATION[dataset]
  return d


def train_block() -> config_dict.ConfigDict:
  """``config.train``: the target's optimiser and schedule at paper scale."""
  t = config_dict.ConfigDict()
  # The SG code: SGD(lr=1e-3, momentum=0.9, weight_decay=1e-3), batch 32,
  # 25 epochs. Same optimiser for every defense (fidelity.md #9).
  t.optimizer = 'sgd'
  t.learning_rate = 1e-3
  t.momentum = 0.9
  t.weight_decay = 1e-3
  t.batch_size = 32
  t.epochs = 25
  t.checkpoint_every_steps = 500
  t.log_every_steps = 50
  return t
