#!/usr/bin/env bash
# The reproduction report: every run of mi_jax.experiments.reproduction.plan
# (MNIST and Fashion-MNIST, both settings, both protocols, the SG tables'
# defenses and ours, two ablations, the TL-DMI curve), then docs/reproduction.md.
# Resumable: rerun the same command after an interruption; finished runs are
# skipped, an interrupted one resumes from its checkpoints.
# Usage: scripts/reproduce.sh [ROOT] [SCALE]   (SCALE: small (default), tiny: a
#        smoke run of the pipeline, paper: the papers' sizes, for accelerators)
set -euo pipefail
root_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root_dir/scripts/setup_env.sh" | tail -n 1)"
cd "$root_dir"
workdir="${1:-results/reproduction_${2:-small}}"
scale="${2:-small}"
"$venv/bin/python" -m mi_jax.data.prepare mnist
"$venv/bin/python" -m mi_jax.data.prepare fashion_mnist
out="docs/reproduction.md"
[ "$scale" = small ] || out="$workdir/reproduction.md"
exec "$venv/bin/python" -m mi_jax.experiments.reproduction run --root="$workdir" --scale="$scale" --out="$out"
