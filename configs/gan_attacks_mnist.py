"""GAN-prior attacks (GMI, KEDMI, PPA; LOMMA; label-only BREP-MI) against defended targets, MNIST scale.

The TL-style protocol (Ho et al., TL-DMI, App. D) at digit scale: private =
digits 0–4 (the targets train on them; their test digits 0–4 measure natural
accuracy), public = digits 5–9 (the attacker's GAN data: no class overlap).
Each defense in ``defenses`` trains one target (any of mi_jax.defenses, with
the blocks of configs/sparse_guard_mnist.py); each attack in ``attacks``
inverts every private class; one results row per defense × attack.

Arguments: ``scale[,dataset]`` (``configs.base`` documents them).

Commands (from the repository root):

  # Default: small, no-defense vs MID, all three attacks (≈10 min on 2 CPU cores).
  python -m experiments.gan_attacks --config=configs/gan_attacks_mnist.py:small \
      --workdir=results/gan_attacks_small

  # Smoke test (what tests run; about a minute):
  ... --config=configs/gan_attacks_mnist.py:tiny

  # Paper settings (TL App. D.3: 3000 iterations, 5 attacks per class, lr 0.02
  # on a 60-identity batch mean; PPA 50 iterations, lr 0.005, 50 candidates):
  # an accelerator, about an hour.
  ... --config=configs/gan_attacks_mnist.py:paper

Expected outcome: against no-defense every attack's top-1 attack accuracy is
well above its own baseline column (the judge on the same generator's
unoptimised images, which draw public digits 5–9: far below 1/5), GMI <
KEDMI ≈ PPA; defenses lower it at some cost in natural accuracy. FID is
reported with its N (25 reconstructions at small scale: dominated by bias,
compare only equal N) next to the unbiased KID.

Every field is checked before anything is written (``mi_jax.experiments.gan_attacks.FIELDS``
for the fields added here, the main experiment's rules for the rest); a new
field needs a rule, or tests/hardening/config_validation_test.py fails.
"""

from ml_collections import config_dict

from configs import base, sparse_guard_mnist
from mi_jax import data as mi_data


# The class-split protocol needs a dataset with a handful of classes; the
# face protocol (private identities) is not built, so 'celeba' is not a word here.
DATASETS = tuple(name for name in base.NORMALIZATION if name != 'celeba')


def get_config(arg: str = 'small'):
  """The locked config of ``arg`` (``scale[,dataset]``, see ``configs.base``; no grid word)."""
  argument = base.parse_argument(arg, datasets=DATASETS)
  scale = argument.scale
  # The main experiment's config (model, train, defense blocks), unlocked.
  c = sparse_guard_mnist.build(argument)
  c.experiment = 'gan_attacks'
  c.sweep.enabled = False  # this experiment iterates over `defenses` itself
  c.defense.name = 'no-defense'  # overwritten per entry of `defenses`
  c.setting = 'end_to_end'
  # Sparse-Guard at its SG Table 5 default λ.
  c.defenses = ('no-defense', 'sparse-guard')
  c.attacks = ('gmi', 'kedmi', 'ppa')
  # How the white-box attacker differentiates sparse-coding targets: exact
  # gradients through the LCA loop ('checkpoint': √T memory for 500 steps)
  # even when the target trained forward-only (small configs'
  # defense.grad='stop'); 'stop' would attack a gradient-masked graph (zero
  # input gradient) and overstate the defense.
  c.attack_grad = 'checkpoint'
  # TL protocol: attacker's public data shares no class with the private
  # data. The first half of the classes is private (digits 0-4 of 10), the
  # rest public (Medical MNIST: 0-2 / 3-5).
  num_classes = mi_data.get_spec(argument.dataset).num_classes
  c.private_classes = tuple(range(num_classes // 2))
  c.public_classes = tuple(range(num_classes // 2, num_classes))
  c.data.public_limit = config_dict.placeholder(int)  # None: every public training image
  c.data.test_limit = config_dict.placeholder(int)  # None: every test image of the private classes

  # The attacker's GANs (DCGAN-sized, mi_jax.models.gan). Adam(2e-4, β₁=0.5)
  # and batch 64 are GMI's and KEDMI's settings.
  c.gan = config_dict.ConfigDict()
  c.gan.latent_dim = 100  # GMI / KEDMI z_dim
  c.gan.width = 64
  c.gan.batch_size = 64
  c.gan.learning_rate = 2e-4
  c.gan.checkpoint_every_steps = 500
  c.gan.log_every_steps = 50

  # GMI (Zhang et al. 2020): WGAN-GP prior, n_critic 5 (their script), λ_gp 10.
  c.gmi = config_dict.ConfigDict()
  c.gmi.gan_loss = 'wgan-gp'
  c.gmi.gan_epochs = 30
  c.gmi.n_critic = 5
  c.gmi.iterations = 3000  # TL App. D.3
  # Per-latent step: the reference's lr 0.02 acts on the mean over its 60
  # identities (TL-DMI / KEDMI code; GMI's own script: 100), our loop sums
  # the per-latent losses (mi_jax.attacks.latent), so the same step is 0.02/60.
  c.gmi.learning_rate = 0.02 / 60
  c.gmi.momentum = 0.9  # GMI's Nesterov SGD
  c.gmi.lam = 100.0  # GMI's identity-loss weight λ_i
  # GMI's clip_range; None: no clipping. Placeholders (here and in ppa) so
  # that --config.gmi.clip=None reaches None.
  c.gmi.clip = config_dict.placeholder(float)
  c.gmi.clip = 1.0
  c.gmi.attacks_per_class = 5  # TL App. D.3

  # KEDMI (Chen et al. 2021): semi-supervised GAN with the target's soft labels.
  c.kedmi = config_dict.ConfigDict()
  c.kedmi.gan_epochs = 30
  c.kedmi.n_critic = 1  # a GAN without a critic schedule; k+1_gan.py's n_critic applies to faces
  c.kedmi.iterations = 3000  # TL App. D.3
  c.kedmi.learning_rate = 0.02  # Adam: per-coordinate, the same step for a sum or a mean
  c.kedmi.lam = 100.0
  c.kedmi.init_log_var = 1.0  # KEDMI's dist_inversion: log σ² = 1 at the start
  # One distribution per class (KEDMI Sec. 3.2), never clamped; like its
  # dist_inversion, num_seeds = 5 samples of each are evaluated.
  c.kedmi.samples_per_class = 5

  # PPA (Struppek et al. 2022) with a small conditional GAN, as the SG code does for MNIST.
  c.ppa = config_dict.ConfigDict()
  c.ppa.gan_loss = 'dcgan'
  c.ppa.gan_epochs = 30
  c.ppa.iterations = 50  # TL App. D.3
  c.ppa.learning_rate = 0.005  # TL App. D.3
  c.ppa.clip = config_dict.placeholder(float)
  c.ppa.clip = 3.0  # z ~ N(0, I) lies in [−3, 3] w.p. 99.7% per coordinate
  c.ppa.initial_candidates = 200  # PPA samples 4× the candidates before optimising
  c.ppa.candidates = 50  # TL App. D.3: 50 per class
  c.ppa.final = 5  # reconstructions kept per class, like 5 attacks per class for GMI/KEDMI
  c.ppa.selection_transforms = 50  # PPA's final selection uses 50 augmentations
  # Digit-sized augmentations (PPA's face values: area 0.5–0.9, ratio 0.8–1.25, flip 0.5).
  c.ppa.transform_scale = (0.8, 1.0)
  c.ppa.transform_ratio = (0.9, 1.1)
  c.ppa.transform_rotation = 10.0
  c.ppa.transform_flip = 0.0  # a flipped digit can be another digit

  # BREP-MI (Kahla et al. 2022; mi_jax.attacks.brep_mi), the label-only
  # attack 'brep', on GMI's generator. The authors' config2.yaml values.
  c.brep = config_dict.ConfigDict()
  c.brep.attacks_per_class = 5  # the authors attack each class once; 5 matches GMI's rows here
  c.brep.sphere_points = 32  # N
  c.brep.initial_radius = 2.0  # R₀
  c.brep.expansion = 1.3  # γ
  c.brep.expand_fraction = 0.75  # R grows when more than this share of the sphere is in class
  c.brep.max_iters_at_radius = 1000  # accepted steps at one radius before the walk stops
  # R > 16.3 (eight expansions) stops the walk: the re-run of BREP-MI in the
  # PPDG-MI code; the authors' release has no cap. None: no cap.
  c.brep.max_radius = config_dict.placeholder(float)
  c.brep.max_radius = 16.3
  c.brep.max_passes = 10_000  # ours: the authors' loop has no bound
  c.brep.max_step = 3.0  # α = min(R/3, 3)
  c.brep.clip = config_dict.placeholder(float)
  c.brep.clip = 1.5  # latents clamped to ±1.5, the authors' z range
  c.brep.init_batch_size = 256  # draws per batch when searching the in-class starting points
  c.brep.max_init_batches = 1000  # ours: the authors search without bound
  # The image scored: the point where the in-class radius last grew (the
  # authors' scoring), or 'final' (where the walk stopped).
  c.brep.point = 'last_expansion'

  # PLG-MI (Yuan et al. 2023; mi_jax.attacks.plg_mi), attacks 'plg' and
  # 'plg+lomma': a conditional GAN (hinge loss, spectral-norm projection
  # discriminator) on public images pseudo-labelled by the target, trained
  # per target; then Adam on z with the max-margin loss on augmented views.
  # The authors' train_cgan.py / reconstruct.py values unless noted.
  c.plg = config_dict.ConfigDict()
  # Public images per class in the GAN's set; None: |public| // |private classes|,
  # every public image once (the authors' 30 per class × 1000 identities ≈ their 30k public images).
  c.plg.top_n = config_dict.placeholder(int)
  c.plg.alpha = 0.2  # weight of the target's max-margin loss in G's loss
  # Epochs over the pseudo-labelled set, counting discriminator steps (the
  # authors' 30000 generator steps at batch 64 and 5 D steps each are
  # 30000·5·64/30000 = 320 epochs of their set).
  c.plg.gan_epochs = 320
  c.plg.n_critic = 5
  c.plg.gan_learning_rate = 2e-4
  c.plg.beta1 = 0.0  # Adam β = (0, 0.9), SNGAN's
  c.plg.beta2 = 0.9
  c.plg.iterations = 600
  c.plg.learning_rate = 0.1  # Adam on z
  c.plg.attacks_per_class = 5  # matches GMI's 5 (the authors: 5 per identity too)
  c.plg.views = 2  # augmented views of each image per step (the max-margin loss is summed over them)
  c.plg.flip_prob = 0.0  # the authors flip faces half the time; a mirrored digit can be another digit

  # LOMMA (Nguyen et al. 2023; mi_jax.attacks.lomma), for the attacks
  # 'gmi+lomma' and 'kedmi+lomma' (add them to c.attacks).
  c.lomma = config_dict.ConfigDict()
  c.lomma.variant = 'both'  # 'logit' (L_logit), 'aug' (L_aug) or 'both' (the authors' "ours")
  c.lomma.reg_weight = 1.0  # λ_reg of the feature regulariser (the authors' attack configs' lam)
  c.lomma.p_reg_images = 5000  # public images whose mean feature is p_reg (their get_act_reg's Nsample)
  c.lomma.students = 3  # the authors distil 3 (EfficientNet-B0..B2)
  c.lomma.student_epochs = 20  # their train_augmodel: 20 epochs
  # Adam for the students (SGD 0.01 with a 20-epoch step schedule in their
  # code, sized for faces; Adam converges in the few epochs a CPU run has).
  c.lomma.student_learning_rate = 1e-3
  c.lomma.temperature = 1.0  # their KD temperature

  c.evaluation = config_dict.ConfigDict()
  c.evaluation.judge_scale = scale  # mi_jax.judge's scale
  # Where judges are trained/cached; None: <workdir>/judge. Point several runs at one folder to share it.
  c.evaluation.judge_dir = config_dict.placeholder(str)
  c.evaluation.fid = True
  c.evaluation.fid_batch_size = 64
  # Private images in FID's/KID's reference set (None: all). FID depends on the
  # set sizes; compare only rows with equal `fid_n`.
  c.evaluation.fid_private_limit = config_dict.placeholder(int)
  # KID (computed with FID, same features): Bińkowski et al.'s 100 subsets of
  # up to 1000 rows per set (capped at the smaller set, here the reconstructions).
  c.evaluation.kid_subsets = 100
  c.evaluation.kid_subset_size = 1000
  c.evaluation.figure_attacks = 1  # reconstructions per class shown in the grids

  if scale == 'paper':
    c.train.epochs = 25
  else:
    _small(c, tiny=scale == 'tiny')
  return c.lock()


def _small(c, *, tiny: bool):
  """CPU-sized: fewer images, narrower GANs, fewer iterations (same algorithms)."""
  # Differentiating through the LCA loop costs ~30 s per attack iteration
  # for 25 images on a 2-core CPU (measured at the small LCA schedule), so
  # the CPU-sized default compares no-defense with MID; Sparse-Guard rows need
  # an accelerator (``--config.defenses="('no-defense','sparse-guard')"``).
  # tiny keeps Sparse-Guard so the path stays exercised.
  c.defenses = ('no-defense', 'sparse-guard') if tiny else ('no-defense', 'mid')
  c.attack_grad = 'unroll'  # a 10–40-step LCA loop fits in memory unrolled
  c.data.private_limit = 64 if tiny else 1000
  c.data.test_limit = 64 if tiny else 500
  c.data.public_limit = 128 if tiny else 2000
  c.gan.width = 8 if tiny else 32
  c.gan.latent_dim = 16 if tiny else 64
  # A short GAN run needs a larger step than 2e-4 to leave the grey-blur stage.
  c.gan.learning_rate = 2e-3 if tiny else 1e-3
  c.gan.batch_size = 32 if tiny else 64
  c.gan.checkpoint_every_steps = 50 if tiny else 200
  c.gan.log_every_steps = 10 if tiny else 50
  c.gmi.gan_epochs = 1 if tiny else 8
  c.gmi.n_critic = 2 if tiny else 2  # fewer critic steps per G step: few total steps
  c.kedmi.gan_epochs = 1 if tiny else 6
  c.ppa.gan_epochs = 1 if tiny else 6
  c.gmi.iterations = 10 if tiny else 300
  c.kedmi.iterations = 10 if tiny else 300
  c.ppa.iterations = 5 if tiny else 50
  c.gmi.attacks_per_class = 2 if tiny else 5
  c.kedmi.samples_per_class = 2 if tiny else 5
  c.ppa.initial_candidates = 8 if tiny else 40
  c.ppa.candidates = 4 if tiny else 10
  c.ppa.final = 2 if tiny else 5
  c.ppa.selection_transforms = 4 if tiny else 20
  # A walk costs N + 1 label queries per pass; shorter walks on CPU (R still grows by γ).
  c.brep.attacks_per_class = 2 if tiny else 5
  c.brep.max_iters_at_radius = 5 if tiny else 100
  c.brep.max_passes = 20 if tiny else 1500
  c.brep.max_init_batches = 2 if tiny else 1000
  # Like the other small GANs, a larger step and fewer critic steps per G step:
  # at Adam 2e-4 and n_critic 5 (the authors'), 30 epochs left grey blobs and a
  # saturated discriminator (top-1 22%, baseline 20%; seed 0); at 1e-3 and 2, 98%.
  c.plg.gan_learning_rate = 2e-3 if tiny else 1e-3
  c.plg.n_critic = 2
  c.plg.gan_epochs = 1 if tiny else 30  # 930 D / 465 G steps on 2000 public images at small scale
  c.plg.iterations = 10 if tiny else 300
  c.plg.attacks_per_class = 2 if tiny else 5
  c.evaluation.fid_batch_size = 16 if tiny else 64
  c.lomma.students = 1 if tiny else 3
  c.lomma.student_epochs = 1 if tiny else 5
  c.evaluation.fid_private_limit = 32 if tiny else 250
