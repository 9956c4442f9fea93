#!/usr/bin/env bash
# Install mi_jax with TPU JAX on every worker of a Cloud TPU VM slice.
# Usage: tpu_scripts/setup.sh TPU_NAME ZONE [REPO_URL]
# Needs gcloud on this machine and internet on the TPU VMs.
set -euo pipefail
tpu="$1"; zone="$2"; repo="${3:-$(git config --get remote.origin.url)}"
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command "
  set -e
  [ -d mi_jax ] || git clone '$repo' mi_jax
  cd mi_jax && git pull --ff-only
  python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -e '.[tpu]'
  .venv/bin/python scripts/check_device.py
  .venv/bin/python -m mi_jax.data.prepare mnist fashion_mnist --no-install
"
