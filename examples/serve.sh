#!/usr/bin/env bash
# Builds turbo against a Python with a shared libpython (3.13 from pyenv when
# present, else $PYTHON or python3) and serves examples/hello.py on
# http://127.0.0.1:8000. Extra arguments go to turbo, e.g. --cores 2.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if command -v pyenv >/dev/null && pyenv prefix 3.13.0 >/dev/null 2>&1; then
    PYTHON="$(pyenv prefix 3.13.0)/bin/python3"
  else
    PYTHON=python3
  fi
fi
PYO3_PYTHON="$PYTHON" cargo build --release
cd examples
exec ../target/release/turbo hello:app "$@"
