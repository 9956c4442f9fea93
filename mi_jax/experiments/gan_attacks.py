"""GAN-prior attacks against defended targets: the white-box GMI, KEDMI and PPA
(LOMMA as a switch on GMI and KEDMI) and the label-only BREP-MI.

``run(config, workdir)`` follows the TL-style protocol at MNIST scale:

1. Data: private = the training images of ``config.private_classes``
   (targets train on them), test = the test images of those classes
   (natural accuracy), public = the training images of
   ``config.public_classes`` (the attacker's GAN data; no class overlap).
2. The attacker's class-agnostic GANs are trained once per run on public
   data (``gans/gmi``: WGAN-GP; ``gans/ppa``: conditional GAN over the
   public classes); KEDMI's GAN depends on the target (its discriminator
   learns the target's soft labels), so it is trained per defense.
3. For each defense in ``config.defenses``: train the target with
   :func:`mi_jax.experiments.surrogate.train_target` (every defense, recipes
   included), measure its accuracy, run each attack in ``config.attacks``
   on every private class, and score the reconstructions with the shared
   evaluation: attack accuracy top-1/top-5 by a separately trained judge,
   KNN distance in the judge's penultimate features to the private images
   of the attacked class, FID and KID (:mod:`mi_jax.metrics.kid`) between
   private images and reconstructions on one set of Inception features.
   Baseline: the judge's top-1/top-5 on the *unoptimised* images of the
   same generator, one per reconstruction with the same attacked label
   (``attack_top1_unoptimized``, ``attack_top5_unoptimized``): G at the
   latents each attack starts from, before any target-guided step (GMI:
   z₀ ~ N(0, I); KEDMI: samples of its initial N(0, e^{init_log_var} I) with
   the reconstructions' ε; PPA: the first ``final`` initial candidates of
   each class, before selection; BREP-MI: its starting draws, which the
   target already labels as the class). This, not 1/classes, is the chance level
   an attack must beat: the GAN draws public digits, which the 10-way judge
   seldom assigns to a private class.
4. Write ``results.json`` (one row per defense × attack), ``results.md`` and
   one SG Fig. 3-style grid per attack (one reconstruction per class, one
   row per defense). Every (defense, attack) keeps ``row.json`` and
   ``figure.npz`` under ``points/<defense>/<attack>/``, GAN and target
   training resume from their checkpoints, so a killed run resumes; an
   existing ``results.json`` is never overwritten.

Targets keep the main experiment's 10-way head (``train_target`` builds
every defense that way); only the private classes are ever trained on or
attacked, and KEDMI's soft labels are the target's softmax over the
private classes.
"""

from __future__ import annotations

import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from mi_jax import data as mi_data
from mi_jax import defenses
from mi_jax.experiments import common, evaluation, sweep, tables
from mi_jax.experiments import surrogate as experiment
from mi_jax.judge import SCALES as JUDGE_SCALES
from mi_jax.attacks import brep_mi, gmi, kedmi, latent, lomma, plg_mi, ppa
from mi_jax.models.sparse_coding import SCL_GRADS
from mi_jax.train import gan
from mi_jax.train.inference import apply_in_batches
from mi_jax.utils import config_rules as rules
from mi_jax.utils import results as results_io
from mi_jax.utils import storage
from mi_jax.utils import workdir as workdir_lib
from mi_jax.experiments.figures import reconstruction_grid
from mi_jax.utils.metric_writer import MetricWriter

# 'gmi+lomma', 'kedmi+lomma': the same attacks with LOMMA's identity loss
# (mi_jax.attacks.lomma; config.lomma), on the same GANs and targets.
# 'brep': the label-only BREP-MI on GMI's generator (it sees the target's top-1 label only).
# 'plg' / 'plg+lomma': PLG-MI on its per-target conditional GAN (mi_jax.attacks.plg_mi).
ATTACKS = ('gmi', 'kedmi', 'ppa', 'gmi+lomma', 'kedmi+lomma', 'brep', 'plg', 'plg+lomma')
ATTACK_TITLES = {'gmi': 'GMI', 'kedmi': 'KEDMI', 'ppa': 'PPA', 'gmi+lomma': 'GMI+LOMMA',
                 'kedmi+lomma': 'KEDMI+LOMMA', 'brep': 'BREP-MI', 'plg': 'PLG-MI', 'plg+lomma': 'PLG-MI+LOMMA'}
# The attacks that search the latent space of GMI's public-data WGAN.
USES_GMI_GAN = ('gmi', 'brep')
BREP_POINTS = ('last_expansion', 'final')
GAN_LOSSES = {'gmi': ('wgan-gp', 'dcgan'), 'ppa': ('wgan-gp', 'dcgan')}


# The main experiment's error type, so one except clause serves both.
ConfigError = common.ConfigError


_check = common.check


def _classes(min_length: int, what: str) -> rules.Rule:
  # The upper bound is the dataset's class count, checked in validate_config.
  return rules.tuple_of(rules.integer(low=0), min_length=min_length, text=f'{what} (integers >= 0)')


def base_attack(attack: str) -> str:
  """'gmi+lomma' → 'gmi': the attack whose config block, GAN and optimiser a variant uses."""
  return attack.split('+')[0]


def _per_class(attack: str) -> str:
  """The field of ``attack``'s block that sets its reconstructions per class."""
  return {'gmi': 'attacks_per_class', 'kedmi': 'samples_per_class', 'ppa': 'final',
          'brep': 'attacks_per_class', 'plg': 'attacks_per_class'}[base_attack(attack)]


# Every field of configs/gan_attacks_mnist.py that the main experiment's
# config does not have (those: mi_jax.experiments.surrogate.FIELDS and the defense blocks).
FIELDS = {
    'experiment': rules.one_of(('gan_attacks',)),
    'attacks': rules.tuple_of(rules.one_of(ATTACKS), min_length=1, text=f'a non-empty tuple of {ATTACKS}'),
    'attack_grad': rules.one_of(SCL_GRADS),
    'private_classes': _classes(2, 'at least 2 distinct classes'),
    'public_classes': _classes(1, 'at least 1 distinct class'),
    'data.public_limit': rules.optional(rules.integer(low=1)),
    'data.test_limit': rules.optional(rules.integer(low=1)),
    'gan.latent_dim': rules.integer(low=1),
    'gan.width': rules.integer(low=1),
    'gan.batch_size': rules.integer(low=1),
    'gan.learning_rate': rules.number(above=0),
    'gan.checkpoint_every_steps': rules.integer(low=1),
    'gan.log_every_steps': rules.integer(low=1),
    'gmi.gan_loss': rules.one_of(GAN_LOSSES['gmi']),
    'gmi.gan_epochs': rules.integer(low=1),
    'gmi.n_critic': rules.integer(low=1),
    'gmi.iterations': rules.integer(low=1),
    'gmi.learning_rate': rules.number(above=0),
    'gmi.momentum': rules.number(low=0, below=1),
    'gmi.lam': rules.number(low=0),
    'gmi.clip': rules.optional(rules.number(above=0)),
    'gmi.attacks_per_class': rules.integer(low=1),
    'kedmi.gan_epochs': rules.integer(low=1),
    'kedmi.n_critic': rules.integer(low=1),
    'kedmi.iterations': rules.integer(low=1),
    'kedmi.learning_rate': rules.number(above=0),
    'kedmi.lam': rules.number(low=0),
    'kedmi.init_log_var': rules.number(),
    'kedmi.samples_per_class': rules.integer(low=1),
    'ppa.gan_loss': rules.one_of(GAN_LOSSES['ppa']),
    'ppa.gan_epochs': rules.integer(low=1),
    'ppa.iterations': rules.integer(low=1),
    'ppa.learning_rate': rules.number(above=0),
    'ppa.clip': rules.optional(rules.number(above=0)),
    'ppa.initial_candidates': rules.integer(low=1),
    'ppa.candidates': rules.integer(low=1),
    'ppa.final': rules.integer(low=1),
    'ppa.selection_transforms': rules.integer(low=1),
    'ppa.transform_scale': rules.tuple_of(rules.number(above=0, high=1), length=2,
                                          text='(low, high) with 0 < low <= high <= 1'),
    'ppa.transform_ratio': rules.tuple_of(rules.number(above=0), length=2, text='(low, high) with 0 < low <= high'),
    'ppa.transform_rotation': rules.number(low=0, high=180),
    'ppa.transform_flip': rules.number(low=0, high=1),
    'brep.attacks_per_class': rules.integer(low=1),
    'brep.sphere_points': rules.integer(low=1),
    'brep.initial_radius': rules.number(above=0),
    'brep.expansion': rules.number(above=1),
    'brep.expand_fraction': rules.number(low=0, below=1),
    'brep.max_iters_at_radius': rules.integer(low=1),
    'brep.max_radius': rules.optional(rules.number(above=0)),
    'brep.max_passes': rules.integer(low=1),
    'brep.max_step': rules.number(above=0),
    'brep.clip': rules.optional(rules.number(above=0)),
    'brep.init_batch_size': rules.integer(low=1),
    'brep.max_init_batches': rules.integer(low=1),
    'brep.point': rules.one_of(BREP_POINTS),
    'plg.top_n': rules.optional(rules.integer(low=1)),
    'plg.alpha': rules.number(low=0),
    'plg.gan_epochs': rules.integer(low=1),
    'plg.n_critic': rules.integer(low=1),
    'plg.gan_learning_rate': rules.number(above=0),
    'plg.beta1': rules.number(low=0, below=1),
    'plg.beta2': rules.number(low=0, below=1),
    'plg.iterations': rules.integer(low=1),
    'plg.learning_rate': rules.number(above=0),
    'plg.attacks_per_class': rules.integer(low=1),
    'plg.views': rules.integer(low=1),
    'plg.flip_prob': rules.number(low=0, high=1),
    'lomma.variant': rules.one_of(lomma.VARIANTS),
    'lomma.reg_weight': rules.number(low=0),
    'lomma.p_reg_images': rules.integer(low=1),
    'lomma.students': rules.integer(low=0),
    'lomma.student_epochs': rules.integer(low=1),
    'lomma.student_learning_rate': rules.number(above=0),
    'lomma.temperature': rules.number(above=0),
    'evaluation.judge_scale': rules.one_of(tuple(JUDGE_SCALES)),
    'evaluation.judge_dir': rules.optional(rules.TEXT),
    'evaluation.fid': rules.BOOLEAN,
    'evaluation.fid_batch_size': rules.integer(low=1),
    'evaluation.fid_private_limit': rules.optional(rules.integer(low=1)),
    'evaluation.kid_subsets': rules.integer(low=1),
    'evaluation.kid_subset_size': rules.integer(low=2),
    'evaluation.figure_attacks': rules.integer(low=1),
}


def _sizes(config) -> dict:
  """The data sizes the configured limits promise (None: not limited, not known before loading)."""
  return {'private': config.data.private_limit, 'public': config.data.public_limit}


def validate_config(config, *, num_devices: int, sizes=None) -> None:
  """One-line :class:`ConfigError` for the first bad field, before any work.

  Every field has a rule: this experiment's own (:data:`FIELDS`), and the
  main experiment's fields and defense blocks, checked on the config and on
  each entry of ``defenses`` (:func:`mi_jax.experiments.surrogate.validate_config`).
  ``sizes``: {'private': n, 'public': n} of the loaded data; default, the
  configured limits.
  """
  common.check_fields(config, {
      **FIELDS, 'defenses': rules.tuple_of(
          rules.one_of(defenses.names()), min_length=1,
          text=f'a non-empty tuple of distinct defense names from {defenses.names()}')})
  common.check_fields(config, {'dataset': experiment.REGISTERED_DATASET})
  sizes = _sizes(config) if sizes is None else sizes
  target_sizes = {'private': sizes.get('private')}  # no surrogate attack here: no held-out batch
  private, public = tuple(config.private_classes), tuple(config.public_classes)
  # The GMI line's face protocol (1000 private identities, the public
  # identities for the GAN, a face evaluation classifier) is not built: the
  # class-split protocol here is the digits'.
  _check(not config.dataset.startswith('celeba'),
         f"dataset {config.dataset!r}: the GAN attacks' CelebA identity protocol is not implemented; "
         f"use a dataset with a class split (mnist, fashion_mnist, cifar10, the medical sets)")
  num_classes = mi_data.get_spec(config.dataset).num_classes
  _check(max(private + public) < num_classes,
         f"private_classes and public_classes must lie in [0, {num_classes}) (the classes of {config.dataset}), "
         f"got {private!r} and {public!r}")
  experiment.validate_config(config, num_devices=num_devices, sizes=target_sizes)
  _check(len(set(config.defenses)) == len(config.defenses),
         f"defenses must be a non-empty tuple of distinct defense names, got {tuple(config.defenses)!r}")
  _check(len(set(private)) == len(private), f"private_classes must be distinct classes, got {private!r}")
  _check(len(set(public)) == len(public), f"public_classes must be distinct classes, got {public!r}")
  _check(not set(private) & set(public),
         f"public_classes must not overlap private_classes (TL protocol), got {public!r} and {private!r}")
  # A stratified subset keeps at least one image per class.
  for field, limit, classes in (('data.private_limit', config.data.private_limit, private),
                                ('data.test_limit', config.data.test_limit, private),
                                ('data.public_limit', config.data.public_limit, public),
                                ('evaluation.fid_private_limit', config.evaluation.fid_private_limit, private)):
    _check(limit is None or limit >= len(classes),
           f"{field} must be None or at least the {len(classes)} classes it is stratified over, got {limit!r}")
  for field, size in (('gan.batch_size', config.gan.batch_size),
                      ('evaluation.fid_batch_size', config.evaluation.fid_batch_size)):
    _check(size % num_devices == 0, f"{field} must be a positive multiple of the {num_devices} devices, got {size!r}")
  if sizes.get('public') is not None:
    # The attacker's GANs (all three attacks) train on the public images.
    _check(config.gan.batch_size <= sizes['public'],
           f"gan.batch_size must be at most the {sizes['public']} images of the public set, got {config.gan.batch_size!r}")
  for name in config.defenses:
    experiment.validate_config(_point_config(config, name), num_devices=num_devices, sizes=target_sizes)
  p = config.ppa
  _check(p.final <= p.candidates <= p.initial_candidates,
         f"ppa needs 1 <= final <= candidates <= initial_candidates, got {p.final}, {p.candidates}, {p.initial_candidates}")
  for field in ('transform_scale', 'transform_ratio'):
    low, high = config.ppa[field]
    _check(low <= high, f"ppa.{field} must be (low, high) with low <= high, got {(low, high)!r}")
  for attack in config.attacks:
    per_class = config[base_attack(attack)][_per_class(attack)]
    _check(config.evaluation.figure_attacks <= per_class,
           f"evaluation.figure_attacks must be at most {base_attack(attack)}.{_per_class(attack)} = {per_class} "
           f"(the reconstructions per class), got {config.evaluation.figure_attacks!r}")


def _point_config(config, defense: str, *, grad=None):
  point = config.copy_and_resolve_references()
  point.unlock()
  point.defense.name = defense
  if grad is not None:
    point.defense.grad = grad
  return point.lock()


def attack_target_fn(config, defense: str, graphdef, state, image_shape, *, activations: bool = False):
  """The target as the white-box attacker differentiates it.

  Small configs train the sparse layers forward-only (``defense.grad='stop'``
  stops gradients at their input, a CPU economy); attacking that graph would
  measure gradient masking, not the defense. The attacker instead uses the
  same parameters in a graph built with ``config.attack_grad`` (default
  'unroll': exact gradients through the LCA iterations).
  """
  make = latent.target_activations_fn if activations else latent.target_logits_fn
  if config.attack_grad == config.defense.grad or not defenses.get(defense).sparse_coding:
    return make(graphdef, state)
  from flax import nnx
  point = _point_config(config, defense, grad=config.attack_grad)
  model = defenses.build_target(point, image_shape, defenses.num_classes_of(point), rngs=nnx.Rngs(0))
  attack_graphdef, _, _ = nnx.split(model, nnx.Param, ...)
  return make(attack_graphdef, state)


# --------------------------------------------------------------------------- data


def _subset(images, labels, classes, limit, *, seed, salt, field):
  keep = np.isin(labels, classes)
  images, labels = images[keep], labels[keep]
  if limit is not None and limit < len(labels):
    rows = mi_data.stratified_subsample(labels, limit, seed=seed, salt=salt, field=field)
    images, labels = images[rows], labels[rows]
  return images, labels


def load_protocol(config):
  """(private split as a ProtocolSplit with the test digits as held-out, public images, public labels 0..)."""
  train_images, train_labels = mi_data.load(config.dataset, 'train', data_dir=config.data.dir)
  test_images, test_labels = mi_data.load(config.dataset, 'test', data_dir=config.data.dir)
  private = _subset(train_images, train_labels, config.private_classes, config.data.private_limit,
                    seed=config.seed, salt=11, field='data.private_limit')
  test = _subset(test_images, test_labels, config.private_classes, config.data.test_limit,
                 seed=config.seed, salt=12, field='data.test_limit')
  public_images, public_labels = _subset(train_images, train_labels, config.public_classes, config.data.public_limit,
                                         seed=config.seed, salt=13, field='data.public_limit')
  # Conditional GANs take class indices 0..len(public_classes)-1.
  remap = {c: i for i, c in enumerate(config.public_classes)}
  public_labels = np.array([remap[int(y)] for y in public_labels], np.int64)
  split = mi_data.ProtocolSplit(private[0], private[1], test[0], test[1])
  return split, public_images, public_labels


# --------------------------------------------------------------------------- GANs


def _train_gan(config, workdir, *, images, mesh, epochs, loss, n_critic=None, labels=None, conditional=False,
               soft_labels=None, phase):
  return gan.train_gan(
      images=images, labels=labels, conditional=conditional, loss=loss, latent_dim=config.gan.latent_dim,
      epochs=epochs, batch_size=config.gan.batch_size, learning_rate=config.gan.learning_rate, seed=config.seed,
      mesh=mesh, workdir=workdir, writer=MetricWriter(workdir), soft_labels=soft_labels, width=config.gan.width,
      n_critic=n_critic, phase=phase, checkpoint_every=config.gan.checkpoint_every_steps,
      log_every=config.gan.log_every_steps)


def _private_softmax(target, images, private_classes, *, mesh, batch_size):
  """The target's softmax over the private classes on each image (KEDMI's soft labels)."""
  classes = jnp.asarray(private_classes)
  fn = jax.jit(lambda x: jax.nn.softmax(target(gan.to_unit(x))[:, classes], -1))
  return apply_in_batches(fn, (images,), batch_size=batch_size, mesh=mesh)


# --------------------------------------------------------------------------- attacks


def run_attack(name, config, *, target, gans, mesh, key, writer, identity=None):
  """One attack on every private class → (:class:`mi_jax.attacks.latent.AttackResult`, extra row fields).

  ``identity``: the '+lomma' variants' identity loss (:func:`lomma_identity`)."""
  classes = tuple(config.private_classes)
  latent_dim = config.gan.latent_dim
  if name not in ATTACKS:
    raise ValueError(f"attack must be one of {ATTACKS}, got {name!r}")
  if name.endswith('+lomma') and identity is None:
    raise ValueError(f"attack {name!r} needs LOMMA's identity loss")
  name = base_attack(name)
  if name == 'brep':
    return _brep(config, target=target, gans=gans, mesh=mesh, key=key, writer=writer)
  if name == 'gmi':
    g = gans['gmi']
    block = config.gmi
    return gmi.gmi_attack(
        target=target, generator=gan.generator_fn(g.generator_graphdef, g.generator_state),
        discriminator=gan.discriminator_fn(g.discriminator_graphdef, g.discriminator_state), classes=classes,
        latent_dim=latent_dim, mesh=mesh, key=key, attacks_per_class=block.attacks_per_class,
        iterations=block.iterations, learning_rate=block.learning_rate, momentum=block.momentum, lam=block.lam,
        clip=block.clip, writer=writer, identity=identity), {}
  if name == 'kedmi':
    g = gans['kedmi']
    block = config.kedmi
    return kedmi.kedmi_attack(
        target=target, generator=gan.generator_fn(g.generator_graphdef, g.generator_state),
        discriminator=gan.discriminator_fn(g.discriminator_graphdef, g.discriminator_state), classes=classes,
        latent_dim=latent_dim, mesh=mesh, key=key, samples_per_class=block.samples_per_class,
        iterations=block.iterations, learning_rate=block.learning_rate, lam=block.lam,
        init_log_var=block.init_log_var, writer=writer, identity=identity), {}
  if name == 'plg':
    block = config.plg
    return plg_mi.plg_attack(
        target=target, generator=plg_mi.plg_generator(gans['plg']), classes=classes, latent_dim=latent_dim,
        mesh=mesh, key=key, attacks_per_class=block.attacks_per_class, iterations=block.iterations,
        learning_rate=block.learning_rate, views=block.views, flip_prob=block.flip_prob, writer=writer,
        identity=identity), {'plg_top_n': len(gans['plg'].indices) // len(classes)}
  if name == 'ppa':
    g = gans['ppa']
    block = config.ppa
    spec = ppa.TransformSpec(scale=tuple(block.transform_scale), ratio=tuple(block.transform_ratio),
                             rotation_degrees=block.transform_rotation, flip_prob=block.transform_flip)
    return ppa.ppa_attack(
        target=target, generator=gan.generator_fn(g.generator_graphdef, g.generator_state), classes=classes,
        latent_dim=latent_dim, generator_classes=len(config.public_classes), mesh=mesh, key=key,
        candidates=block.candidates, initial_candidates=block.initial_candidates, final=block.final,
        iterations=block.iterations, learning_rate=block.learning_rate, clip=block.clip,
        selection_transforms=block.selection_transforms, transform=spec, writer=writer), {}
  raise ValueError(f"attack must be one of {ATTACKS}, got {name!r}")


def _brep(config, *, target, gans, mesh, key, writer):
  """BREP-MI through :func:`mi_jax.attacks.brep_mi.label_only`: the walk sees argmax labels only.

  The reconstruction is ``brep.point``: 'last_expansion' (the authors'
  choice: the point accepted when the in-class radius last grew, the initial
  point where it never grew) or 'final' (where the walk stopped). A class
  whose label no generator draw received within ``brep.max_init_batches``
  is not attacked (the walk cannot start); its rows count as misses in
  the top-1/top-5 (:func:`_missing_as_misses`) and it is listed in
  ``brep_missing_classes``."""
  g = gans['gmi']
  block = config.brep
  generator = gan.generator_fn(g.generator_graphdef, g.generator_state)
  result, stats = brep_mi.brep_attack(
      labels_fn=brep_mi.label_only(target), generator=generator, classes=tuple(config.private_classes),
      latent_dim=config.gan.latent_dim, key=key, mesh=mesh, attacks_per_class=block.attacks_per_class,
      sphere_points=block.sphere_points, initial_radius=block.initial_radius, expansion=block.expansion,
      expand_fraction=block.expand_fraction, max_iters_at_radius=block.max_iters_at_radius,
      max_radius=block.max_radius, max_passes=block.max_passes, max_step=block.max_step, clip=block.clip,
      init_batch_size=block.init_batch_size, max_init_batches=block.max_init_batches, missing='drop',
      writer=writer)
  if block.point == 'last_expansion':
    images = latent.apply_rows(generator, stats.expansion_latents, mesh=mesh).astype(np.float32)
    result = result._replace(images=images, latents=stats.expansion_latents)
  fields = {
      'brep_point': block.point, 'brep_radius_mean': float(np.mean(stats.radius)),
      'brep_expanded_fraction': float(np.mean(stats.expanded)),
      'brep_converged_fraction': float(np.mean(stats.converged)),
      'brep_queries_mean': float(np.mean(stats.queries)), 'brep_initial_queries': int(stats.initial_queries),
      'iterations': int(np.max(stats.passes)), 'brep_missing_classes': [int(c) for c in stats.missing],
      'brep_attacked_rows': len(config.private_classes) * block.attacks_per_class,
  }
  return result, fields


def plg_top_n(config, public_size: int) -> int:
  """``plg.top_n``, or by default every public image once: |public| // |classes|
  (the authors' 30 per class over 1000 identities is their ~30k public images)."""
  return config.plg.top_n or max(1, public_size // len(config.private_classes))


def train_plg(config, target, public_images, *, mesh, workdir):
  """PLG-MI's conditional GAN for this target (pseudo-labels from it, its max-margin term in G's loss)."""
  block = config.plg
  return plg_mi.train_plg_gan(
      public_images=public_images, target=target, classes=config.private_classes, mesh=mesh,
      workdir=workdir, writer=MetricWriter(workdir), epochs=block.gan_epochs, seed=config.seed,
      top_n=plg_top_n(config, len(public_images)), alpha=block.alpha, latent_dim=config.gan.latent_dim,
      batch_size=config.gan.batch_size, learning_rate=block.gan_learning_rate, beta1=block.beta1, beta2=block.beta2,
      n_critic=block.n_critic, width=config.gan.width, flip_prob=block.flip_prob,
      checkpoint_every=config.gan.checkpoint_every_steps, log_every=config.gan.log_every_steps)


def _missing_as_misses(metrics: dict, found: int, attacked: int) -> dict:
  """Top-1/top-5 (and their unoptimised baselines) over all ``attacked`` rows, the
  ``attacked − found`` rows that never started counted as misses."""
  scaled = dict(metrics)
  for key in ('attack_top1', 'attack_top5', 'attack_top1_unoptimized', 'attack_top5_unoptimized'):
    if scaled.get(key) is not None:
      scaled[key] = scaled[key] * found / attacked
  return scaled


def train_students(config, teacher, public_images, *, mesh, workdir) -> list:
  """LOMMA's model augmentation: ``config.lomma.students`` MLPs of the
  target's family at widths ½×, 1×, 2×, 4×, … of ``model.hidden_width``,
  distilled from ``teacher`` (images → logits) on the public images.
  Returns ``[(logits fn, agreement with the teacher on the public images)]``."""
  from flax import nnx
  from mi_jax.train.classifier import train_classifier
  from mi_jax.train.state import make_optimizer
  teacher_logits = np.asarray(apply_in_batches(jax.jit(lambda x: teacher(gan.to_unit(x))), (public_images,),
                                               batch_size=config.gan.batch_size, mesh=mesh), np.float32)
  students = []
  for k in range(config.lomma.students):
    point = config.copy_and_resolve_references()  # the target's config, as no-defense at another width
    point.defense.name = 'no-defense'
    point.model.hidden_width = max(1, int(config.model.hidden_width * 2.0 ** (k - 1)))
    point.train.optimizer, point.train.learning_rate = 'adam', config.lomma.student_learning_rate
    model = defenses.build_target(point, tuple(public_images.shape[1:]), defenses.num_classes_of(point), rngs=nnx.Rngs(config.seed + 101 + k))
    student_dir = os.path.join(workdir, f'student_{k}')
    graphdef, state = train_classifier(
        model=model, tx=make_optimizer(point.train), images=public_images, labels=teacher_logits,
        batch_size=config.gan.batch_size, epochs=config.lomma.student_epochs, seed=config.seed + 101 + k,
        mesh=mesh, workdir=student_dir, writer=MetricWriter(student_dir), phase=f'student_{k}',
        checkpoint_every=config.gan.checkpoint_every_steps, log_every=config.gan.log_every_steps,
        make_step=lambda g, tx: lomma.make_distillation_step(g, tx, temperature=config.lomma.temperature))
    logits_fn = latent.target_logits_fn(graphdef, state)
    student_logits = apply_in_batches(jax.jit(lambda x, f=logits_fn: f(gan.to_unit(x))), (public_images,),
                                      batch_size=config.gan.batch_size, mesh=mesh)
    agreement = float(np.mean(np.argmax(np.asarray(student_logits), -1) == np.argmax(teacher_logits, -1)))
    students.append((logits_fn, agreement))
  return students


def lomma_identity(config, defense, graphdef, state, public_images, *, mesh, workdir, cache: dict):
  """(LOMMA's identity loss for this target, its row fields); built once per target (``cache``)."""
  if 'identity' not in cache:
    block = config.lomma
    image_shape = tuple(public_images.shape[1:])
    activations = attack_target_fn(config, defense, graphdef, state, image_shape, activations=True)
    logit_loss = block.variant in ('logit', 'both')
    p_reg = lomma.feature_mean(activations, public_images, limit=block.p_reg_images,
                               batch_size=config.gan.batch_size, mesh=mesh) if logit_loss else None
    students = []
    if block.variant in ('aug', 'both') and block.students:
      teacher = latent.target_logits_fn(graphdef, state)
      students = train_students(config, teacher, public_images, mesh=mesh, workdir=workdir)
    cache['identity'] = lomma.identity_fn(target_activations=activations, students=[f for f, _ in students],
                                          logit_loss=logit_loss, reg_weight=block.reg_weight, p_reg=p_reg)
    cache['fields'] = {'lomma_variant': block.variant, 'lomma_students': len(students),
                       'lomma_student_agreement': [round(a, 4) for _, a in students],
                       'lomma_reg_weight': float(block.reg_weight) if logit_loss else None}
  return cache['identity'], cache['fields']


# --------------------------------------------------------------------------- evaluation


def load_judge(config, workdir, mesh):
  """(judge, None): the evaluation classifier, trained on first use."""
  return evaluation.load_judge(config.dataset, workdir=workdir, root=config.evaluation.get('judge_dir'),
                               scale=config.evaluation.judge_scale, seed=config.seed, data_dir=config.data.dir,
                               mesh=mesh), None


def evaluate(reconstructions, labels, private_images, private_labels, *, judge, judge_note, config, mesh,
             cache: dict, unoptimized=None) -> dict:
  """:func:`mi_jax.experiments.evaluation.gan_attack_scores` with ``config.evaluation``'s settings."""
  e = config.evaluation
  return evaluation.gan_attack_scores(
      reconstructions, labels, private_images, private_labels, judge=judge, judge_note=judge_note, fid=e.fid,
      fid_private_limit=e.fid_private_limit, fid_batch_size=e.fid_batch_size, kid_subsets=e.kid_subsets,
      kid_subset_size=e.kid_subset_size, seed=config.seed, mesh=mesh, cache=cache, unoptimized=unoptimized)


# --------------------------------------------------------------------------- run


def _figure(result, figure_attacks: int, classes) -> dict:
  """The first ``figure_attacks`` reconstructions of each class, class-major; a
  class without reconstructions (BREP-MI never started on it) shows black."""
  blank = np.zeros((figure_attacks,) + result.images.shape[1:], result.images.dtype)
  images = []
  for c in classes:
    mine = result.images[np.flatnonzero(result.labels == c)[:figure_attacks]]
    images.append(np.concatenate([mine, blank[len(mine):]]))
  return {'reconstructions': np.concatenate(images)}


def _attack_key(config, defense_index: int, attack: str):
  # A '+lomma' variant starts from its base attack's latents: a paired comparison.
  return jax.random.fold_in(jax.random.key(config.seed + 101), 10 * defense_index + ATTACKS.index(base_attack(attack)))


def _check_workdir(config, workdir) -> dict:
  """Refuses a workdir that holds a finished run or another config, before anything is
  written; returns {(defense, attack): (row, figure)} of the rows finished earlier."""
  points = [common.Point((defense, attack), os.path.join(workdir, 'points', defense, attack),
                         common.config_json(_point_config(config, defense)), expect={'defense': defense, 'attack': attack})
            for defense in config.defenses for attack in config.attacks]
  return common.check_workdir(config, workdir, points, figure_keys=('reconstructions',), point_configs=False)


def run(config, workdir: str, *, mesh=None) -> list[dict]:
  """Trains the GANs and targets, runs every defense × attack, writes the results.

  Nothing is written before the config (fields, batches against the loaded
  data) and the workdir (lock, finished run, config, reusable rows) pass.
  """
  mesh = mesh if mesh is not None else mi_data.make_data_mesh()
  validate_config(config, num_devices=mesh.devices.size)
  split, public_images, public_labels = load_protocol(config)
  validate_config(config, num_devices=mesh.devices.size,
                  sizes={'private': len(split.private_labels), 'public': len(public_labels)})
  writes = jax.process_index() == 0
  with workdir_lib.locked(workdir, enabled=writes):
    finished = _check_workdir(config, workdir)
    common.start_run(config, workdir, writes=writes)
    return _run_points(config, workdir, mesh=mesh, split=split, public_images=public_images,
                       public_labels=public_labels, finished=finished, writes=writes)


def _run_points(config, workdir, *, mesh, split, public_images, public_labels, finished, writes) -> list[dict]:
  judge, judge_note = load_judge(config, workdir, mesh)
  gans = {}
  bases = {base_attack(a) for a in config.attacks}
  if bases & set(USES_GMI_GAN):
    gans['gmi'] = _train_gan(config, os.path.join(workdir, 'gans', 'gmi'), images=public_images, mesh=mesh,
                             epochs=config.gmi.gan_epochs, loss=config.gmi.gan_loss, n_critic=config.gmi.n_critic,
                             phase='gan_gmi')
  if 'ppa' in bases:
    gans['ppa'] = _train_gan(config, os.path.join(workdir, 'gans', 'ppa'), images=public_images,
                             labels=public_labels, conditional=True, mesh=mesh, epochs=config.ppa.gan_epochs,
                             loss=config.ppa.gan_loss, phase='gan_ppa')
  classes = tuple(config.private_classes)
  originals = np.stack([split.private_images[np.flatnonzero(split.private_labels == c)[0]] for c in classes])
  originals = np.repeat(originals, config.evaluation.figure_attacks, axis=0).astype(np.float32) / 255.0
  rows, figures, cache = [], [], {}
  for d_index, defense in enumerate(config.defenses):
    point = _point_config(config, defense)
    point_dir = os.path.join(workdir, 'points', defense)
    storage.makedirs(point_dir)
    writer = MetricWriter(point_dir)
    print(f"=== defense {d_index + 1}/{len(config.defenses)}: {defense}", flush=True)
    started = time.perf_counter()
    graphdef, state, extras = experiment.train_target(point, split, mesh=mesh, workdir=point_dir, writer=writer)
    natural = experiment.accuracy(graphdef, state, split.heldout_images, split.heldout_labels,
                                  batch_size=config.attack.batch_size, mesh=mesh)
    target = attack_target_fn(point, defense, graphdef, state, tuple(split.private_images.shape[1:]))
    target_seconds = time.perf_counter() - started
    lomma_cache = {}
    kedmi_trained = False  # this target's KEDMI GAN serves 'kedmi' and 'kedmi+lomma'
    plg_trained = False  # likewise PLG-MI's conditional GAN
    for attack in config.attacks:
      attack_dir = os.path.join(point_dir, attack)
      row_path = os.path.join(attack_dir, 'row.json')
      if (defense, attack) in finished:
        row, figure = finished[defense, attack]
        print(f"    {attack}: already done ({row_path})", flush=True)
      else:
        storage.makedirs(attack_dir)
        attack_started = time.perf_counter()
        if base_attack(attack) == 'kedmi' and not kedmi_trained:
          kedmi_trained = True
          soft = _private_softmax(target, public_images, classes, mesh=mesh, batch_size=config.gan.batch_size)
          gans['kedmi'] = _train_gan(config, os.path.join(point_dir, 'gans', 'kedmi'), images=public_images,
                                     soft_labels=soft, mesh=mesh, epochs=config.kedmi.gan_epochs, loss='kedmi',
                                     n_critic=config.kedmi.n_critic, phase='gan_kedmi')
        if base_attack(attack) == 'plg' and not plg_trained:
          plg_trained = True
          gans['plg'] = train_plg(config, target, public_images, mesh=mesh,
                                  workdir=os.path.join(point_dir, 'gans', 'plg'))
        identity, lomma_fields = None, {}
        if attack.endswith('+lomma'):
          identity, lomma_fields = lomma_identity(point, defense, graphdef, state, public_images, mesh=mesh,
                                                  workdir=os.path.join(point_dir, 'lomma'), cache=lomma_cache)
        # The attacks address private classes by their target logit index.
        result, attack_fields = run_attack(attack, config, target=target, gans=gans, mesh=mesh,
                                           key=_attack_key(config, d_index, attack),
                                           writer=MetricWriter(attack_dir), identity=identity)
        metrics = evaluate(result.images, result.labels, split.private_images, split.private_labels,
                           judge=judge, judge_note=judge_note, config=config, mesh=mesh, cache=cache,
                           unoptimized=result.initial_images)
        if attack_fields.get('brep_missing_classes'):
          metrics = _missing_as_misses(metrics, len(result.labels), attack_fields['brep_attacked_rows'])
        row = {
            'dataset': config.dataset, 'defense': defense, **sweep.knob_fields(point, defense), 'attack': attack, 'seed': config.seed, 'accuracy': natural,
            **metrics, 'target_accuracy_on_reconstructions': float(np.mean(
                np.argmax(np.asarray(jax.jit(target)(jnp.asarray(result.images))), -1) == result.labels)),
            'n_reconstructions': int(len(result.labels)),
            'iterations': int(config[base_attack(attack)].get('iterations', 0)), **lomma_fields, **attack_fields,
            'attack_grad': config.attack_grad if defenses.get(defense).sparse_coding else None,
            'n_private': int(len(split.private_labels)), 'n_public': int(len(public_labels)),
            'config_hash': results_io.config_hash(common.config_json(point)), 'code_version': results_io.code_version(),
            **extras, 'seconds': round(time.perf_counter() - attack_started + target_seconds, 1),
        }
        figure = _figure(result, config.evaluation.figure_attacks, classes)
        common.save_point(attack_dir, row, figure, writes=writes)
        writer.write(f'result_{attack}', 0, {k: v for k, v in row.items() if isinstance(v, (int, float))})
      rows.append(row)
      figures.append((row, figure))
      print(f"    {attack}: accuracy {row['accuracy']:.4f}  attack top-1 {_fmt(row['attack_top1'], 3)}"
            f" (unoptimised {_fmt(row.get('attack_top1_unoptimized'), 3)})  top-5 {_fmt(row['attack_top5'], 3)}"
            f" (unoptimised {_fmt(row.get('attack_top5_unoptimized'), 3)})  KNN {_fmt(row['knn_distance'], 2)}"
            f"  FID {_fid_cell(row)}  KID×10³ {_kid_cell(row)}"
            f"  (target on reconstructions {row['target_accuracy_on_reconstructions']:.3f})", flush=True)
  if writes:
    _write_outputs(rows, figures, originals, workdir)
  return rows


def _fmt(value, decimals: int) -> str:
  if value is None:
    return '—'
  return 'NaN' if isinstance(value, float) and math.isnan(value) else f"{value:.{decimals}f}"


def _fid_cell(row) -> str:
  """FID with its set sizes: 'value (N = reference / reconstructions)'; FIDs of different N do not compare."""
  if row.get('fid') is None:
    return '—'
  n_reference, n_recon = row['fid_n']
  return f"{_fmt(row['fid'], 1)} (N = {n_reference} / {n_recon})"


def _kid_cell(row) -> str:
  """KID mean ± std over subsets, ×10³ (the usual scale for Inception features)."""
  if row.get('kid') is None:
    return '—'
  return f"{1e3 * row['kid']:.1f} ± {1e3 * row['kid_std']:.1f}"


def results_markdown(rows) -> str:
  """One table: a row per defense × attack (arrows: which way a better defense moves the number)."""
  lines = [
      f"### GAN-prior attacks — {rows[0]['dataset']} (private digits attacked with public-digit GANs)",
      '',
      '| Defense | Attack | Acc ↑ (%) | AttAcc top-1 ↓ (%) | top-1 unoptimised (%) | AttAcc top-5 ↓ (%) '
      '| top-5 unoptimised (%) | KNN dist ↑ | FID ↑ (N = private / recon.) | KID ×10³ ↑ (mean ± std) '
      '| Judge (test acc) |',
      '| :--- | :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :--- |',
  ]
  pct = lambda v: _fmt(None if v is None else 100.0 * v, 2)
  notes = []
  for r in rows:
    judge = '—' if r.get('judge') is None else f"{r['judge']} ({100.0 * r['judge_test_accuracy']:.2f}%)"
    lines.append('| ' + ' | '.join([
        tables.defense_label(r['defense'], r['lam'], r.get('knob', 'λ')).replace('|', r'\|'),
        ATTACK_TITLES[r['attack']], pct(r['accuracy']), pct(r['attack_top1']),
        pct(r.get('attack_top1_unoptimized')), pct(r['attack_top5']), pct(r.get('attack_top5_unoptimized')),
        _fmt(r['knn_distance'], 2), _fid_cell(r), _kid_cell(r), judge]) + ' |')
    for key in ('evaluation_note', 'fid_note'):
      if r.get(key) and r[key] not in notes:
        notes.append(r[key])
  lines += ['', 'Unoptimised: the judge on the same generator\'s images before any target-guided step '
            '(GMI: z₀ ~ N(0, I); KEDMI: its initial distribution; PPA: initial candidates before selection), '
            'one per reconstruction with the same attacked label: the chance level each attack must beat.']
  sizes = {tuple(r['fid_n']) for r in rows if r.get('fid') is not None}
  if sizes:
    lines += ['', f"FID is biased upward at small N; compare FIDs only between rows of equal N "
              f"({'all rows share one N' if len(sizes) == 1 else 'N differs between rows here'}). "
              f"KID (unbiased polynomial-kernel MMD², Bińkowski et al. 2018; mean ± std over subsets of "
              f"{' / '.join(str(n) for n in sorted({r['kid_subset_size'] for r in rows if r.get('kid') is not None}))} "
              f"rows per set) does not depend on N in expectation."]
  for n in notes:
    lines += ['', f"Note: {n}"]
  return '\n'.join(lines) + '\n'


def _write_outputs(rows, figures, originals, workdir) -> None:
  """One grid per attack, results.md, then results.json last (its presence marks the run finished)."""
  written = []
  for attack in dict.fromkeys(r['attack'] for r in rows):
    by_defense = {tables.defense_label(row['defense'], row['lam'], row.get('knob', 'λ')): figure['reconstructions']
                  for row, figure in figures if row['attack'] == attack}
    written.append(reconstruction_grid(originals, by_defense, os.path.join(workdir, f"reconstructions_{attack}.png"),
                                       overwrite=True))
  common.finish_run(workdir, rows, markdown=results_markdown(rows), figures=written)
