#!/usr/bin/env bash
# Run one experiment on all workers of a TPU slice (one JAX process per host).
# Usage: tpu_scripts/launch.sh TPU_NAME ZONE WORKDIR [experiment flags...]
#   e.g. tpu_scripts/launch.sh my-v4-32 us-central2-b /mnt/shared/sg_paper \
#          --config=configs/sparse_guard_mnist.py:paper
# MI_JAX_DISTRIBUTED=1 makes the main call jax.distributed.initialize() first
# (JAX finds the TPU slice's coordinator itself; on one machine,
# python -m mi_jax.launch --processes=N runs the same code paths).
# WORKDIR must be a filesystem every host sees (e.g. a Filestore/NFS mount)
# or a gs://bucket/path (needs `pip install -e .[gcs]`): checkpoints are
# written by all hosts, results by process 0 only. A gs:// WORKDIR has no
# lock: start one run per WORKDIR (see mi_jax/utils/storage.py).
set -euo pipefail
tpu="$1"; zone="$2"; workdir="$3"; shift 3
flags="$*"
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command "
  cd mi_jax && MI_JAX_DISTRIBUTED=1 .venv/bin/python -m experiments.sparse_guard \
    --workdir='$workdir' $flags
"
