#!/usr/bin/env bash
# Sets turbo up as a user does, then serves examples/hello.py on
# http://127.0.0.1:8000: a virtualenv (.venv) of pyenv's 3.13.0 when it
# exists, else of $PYTHON or python3 (3.11 or newer, with or without a shared
# libpython), and `pip install .` into it, which builds turbo's wheel with
# maturin (this needs Rust). Extra arguments go to turbo, e.g. --cores 2.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if command -v pyenv >/dev/null && pyenv prefix 3.13.0 >/dev/null 2>&1; then
    PYTHON="$(pyenv prefix 3.13.0)/bin/python3"
  else
    PYTHON=python3
  fi
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check .
cd examples
exec ../.venv/bin/turbo hello:app "$@"
