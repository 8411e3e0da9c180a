#!/bin/sh
# The Dockerfile's build stage: turbo's wheel for the Python it will run on
# (the image's, or $PYTHON), built with maturin ($MATURIN, else the one on
# PATH) into OUT. tests/dockerfile-stages runs this same script, since Docker
# itself cannot run on the CI machine.
set -eu
out="${1:?usage: docker/build.sh OUT}"
python="${PYTHON:-$(command -v python3)}"
"${MATURIN:-maturin}" build --quiet --release --locked -i "$python" --out "$out"
