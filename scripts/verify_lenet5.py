"""Checks mi_jax's Flax LeNet-5 against a torch forward of advertorch's weights.

    python scripts/verify_lenet5.py --torch_python=/tmp/bench-venv/bin/python

* ours: ``mi_jax.models.lenet5.load_lenet5()`` (torch-free restricted
  reader, sha256-pinned asset ``lenet5_mnist``);
* reference: a separate interpreter with torch (never a dependency of
  mi_jax) loads the same ``mnist_lenet5_clntrained.pt`` with
  ``torch.load(weights_only=True)`` into advertorch's LeNet5 layout
  (``advertorch/test_utils.py``, rewritten here with ``torch.nn``) and runs
  it on NCHW float images in [0, 1] (advertorch's ``ToTensor()`` input).

Images: the official MNIST test split (``mi_jax.data.load('mnist', 'test')``,
10,000 images; ``--limit`` for fewer). Prints the max |logit difference|,
top-1 agreement and both test accuracies (advertorch reports 98.9%); exits 1
when the logits differ by more than ``--tolerance``. ~1 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Run by the torch interpreter: argv = weights, images.npy (NHWC uint8), out.npy.
TORCH_REFERENCE = r'''
import sys
import numpy as np
import torch
from torch import nn

weights, images_path, out_path = sys.argv[1:4]

class LeNet5(nn.Module):
  def __init__(self):
    super().__init__()
    self.conv1 = nn.Conv2d(1, 32, kernel_size=3, padding=1)
    self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
    self.linear1 = nn.Linear(7 * 7 * 64, 200)
    self.linear2 = nn.Linear(200, 10)

  def forward(self, x):
    x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
    x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
    return self.linear2(torch.relu(self.linear1(x.flatten(1))))

model = LeNet5()
model.load_state_dict(torch.load(weights, map_location='cpu', weights_only=True))
model.eval()
with torch.no_grad():
  x = torch.from_numpy(np.load(images_path)).permute(0, 3, 1, 2).float() / 255.0
  logits = torch.cat([model(x[i:i + 1000]) for i in range(0, len(x), 1000)])
np.save(out_path, logits.numpy())
'''


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--torch_python', default='/tmp/bench-venv/bin/python',
                      help='an interpreter with torch installed (reference side only)')
  parser.add_argument('--weights', default=None, help='local mnist_lenet5_clntrained.pt (default: pinned asset)')
  parser.add_argument('--limit', type=int, default=None, help='first N test images only')
  parser.add_argument('--tolerance', type=float, default=1e-3, help='max allowed |logit difference|')
  args = parser.parse_args()

  import jax

  from mi_jax import data as mi_data
  from mi_jax.models.lenet5 import ASSET, load_lenet5
  from mi_jax.weights import asset_path

  weights = asset_path(ASSET, path=args.weights)
  images, labels = mi_data.load('mnist', 'test')
  if args.limit is not None:
    images, labels = images[:args.limit], labels[:args.limit]
  model = load_lenet5(weights)
  forward = jax.jit(lambda batch: model(batch))
  ours = np.concatenate([np.asarray(forward(images[i:i + 1000])) for i in range(0, len(images), 1000)])

  with tempfile.TemporaryDirectory(prefix='verify-lenet5-') as work:
    images_path, out_path = os.path.join(work, 'images.npy'), os.path.join(work, 'logits.npy')
    np.save(images_path, images)
    subprocess.run([args.torch_python, '-c', TORCH_REFERENCE, str(weights), images_path, out_path], check=True)
    theirs = np.load(out_path)

  report = {
      'images': int(len(images)),
      'max_abs_logit_diff': float(np.max(np.abs(ours - theirs))),
      'top1_agreement': float(np.mean(ours.argmax(1) == theirs.argmax(1))),
      'ours_test_accuracy': float(np.mean(ours.argmax(1) == labels)),
      'torch_test_accuracy': float(np.mean(theirs.argmax(1) == labels)),
  }
  print(json.dumps(report, indent=2))
  return 0 if report['max_abs_logit_diff'] <= args.tolerance else 1


if __name__ == '__main__':
  sys.exit(main())
