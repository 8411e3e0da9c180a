#!/usr/bin/env bash
# One command for the benchmark. Installs wrk and libev (apt), the peers (Granian,
# bjoern, Gunicorn with its sync, gthread and ASGI workers, Uvicorn with uvloop and
# httptools) and the apps' frameworks (Flask, FastAPI, websockets, matplotlib,
# psutil) in a CPython 3.13 virtualenv, .venv-bench; builds turbo's wheel for
# 3.13 and installs it there, as a user would, and builds the bare Rust hello
# server (bench/bare); then runs bench/run.py on .venv-bench/bin/turbo, which pins each
# server to CPU 0 and the load to CPU 1 and alternates rounds between servers.
# Arguments go to run.py: e.g. --duration 5 --rounds 3 --apps hello,websocket,
# or --memory, or --scaling. Results: bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if command -v pyenv >/dev/null; then
    PYTHON="$(pyenv prefix 3.13.0)/bin/python3"
  else
    PYTHON="${PYENV_ROOT:-$HOME/.pyenv}/versions/3.13.0/bin/python3"
  fi
fi
# PostgreSQL for bench/techempower.py, which starts its own server.
if ! command -v wrk >/dev/null || [ ! -e /usr/include/ev.h ] || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk libev-dev postgresql
fi
[ -x .venv-bench/bin/python ] || "$PYTHON" -m venv .venv-bench
.venv-bench/bin/pip install -q --disable-pip-version-check -r bench/requirements.txt
.venv-bench/bin/pip install -q --disable-pip-version-check -r tests/build-requirements.txt
rm -rf target/wheels/bench
.venv-bench/bin/maturin build --quiet --release --locked -i "$PYTHON" --out target/wheels/bench
.venv-bench/bin/pip install -q --disable-pip-version-check --force-reinstall --no-deps target/wheels/bench/*.whl
cargo build --release --manifest-path bench/bare/Cargo.toml
exec .venv-bench/bin/python bench/run.py --turbo .venv-bench/bin/turbo "$@"
