#!/usr/bin/env bash
# Sets up the virtualenv (if needed) and runs the default test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -m slow
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$("$root/scripts/setup_env.sh" test | tail -n 1)"
cd "$root"
exec "$venv/bin/python" -m pytest -n 2 "$@"
