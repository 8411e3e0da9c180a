#!/usr/bin/env bash
# One command for the benchmark: installs wrk, libev and the peers (Granian,
# bjoern, Gunicorn, Uvicorn) in a Python 3.13 virtualenv, builds turbo, then runs
# bench/run.py, which pins each server to CPU 0 and wrk to CPU 1 and alternates
# rounds between servers. Arguments go to run.py (e.g. --duration 5 --rounds 3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYENV_ROOT="${PYENV_ROOT:-$HOME/.pyenv}"
python="${PYTHON:-$PYENV_ROOT/versions/3.13.0/bin/python3}"
if ! command -v wrk >/dev/null || [ ! -e /usr/include/ev.h ]; then
  apt-get update -qq && apt-get install -y -qq wrk libev-dev
fi
[ -x .venv-bench/bin/python ] || "$python" -m venv .venv-bench
.venv-bench/bin/pip install -q --disable-pip-version-check -r bench/requirements.txt
PYO3_PYTHON="$python" cargo build --release --target-dir target/py3.13
exec .venv-bench/bin/python bench/run.py --turbo target/py3.13/release/turbo "$@"
