#!/usr/bin/env bash
# Every defense of both papers against the surrogate attack on real MNIST,
# small CPU scale, corrected protocol, both settings, one results table
# (issue 4). Prepares MNIST and Fashion-MNIST (the transfer-learning
# defense pre-trains on Fashion-MNIST when the private data is MNIST).
# Usage: scripts/run_defense_grid.sh [WORKDIR] [extra flags for the experiment]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/scripts/setup_env.sh" | tail -n 1)"
cd "$root"
workdir="${1:-results/defense_grid_small_$(date +%Y%m%d_%H%M%S)}"
shift || true
"$venv/bin/python" -m mi_jax.data.prepare mnist fashion_mnist
exec "$venv/bin/python" -m experiments.sparse_guard \
  --config=configs/sparse_guard_mnist.py:small,mnist,all_defenses --workdir="$workdir" "$@"
