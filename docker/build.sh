#!/bin/sh
# The Dockerfile's build stage: turbo built against the Python it will embed
# (the image's, or $PYO3_PYTHON), installed as OUT/turbo. tests/dockerfile-stages
# runs this same script, since Docker itself cannot run on the CI machine.
set -eu
out="${1:?usage: docker/build.sh OUT}"
PYO3_PYTHON="${PYO3_PYTHON:-$(command -v python3)}" cargo build --release --locked
mkdir -p "$out"
install -m 0755 "${CARGO_TARGET_DIR:-target}/release/turbo" "$out/turbo"
