# turbo in a container: its wheel built with Rust and maturin for the image's
# Python, then pip-installed on a slim Python 3.13 image, run as a non-root
# user.
#
#   docker build -t turbo .
#   docker run --rm -p 8000:8000 --cpus 2 turbo
#
# Your app: install its requirements in the final stage and change the CMD
# (`myproject.wsgi:application --bind 0.0.0.0:8000`), or mount a
# gunicorn.conf.py into /app.
#
# Run flags:
# - io_uring: Docker's default seccomp profile refuses it (since Docker 25), and
#   turbo then serves through epoll with one warning. To keep io_uring, pass a
#   profile that allows io_uring_setup, io_uring_enter and io_uring_register:
#   --security-opt seccomp=/path/to/seccomp-io-uring.json (tuning/README.md).
# - CPUs: turbo starts one shard per CPU the container may use. With a quota
#   (--cpus 2) it takes the quota, rounded up, and leaves the shards unpinned
#   (containers under a quota share the host's CPUs); with --cpuset-cpus, those
#   CPUs, one shard pinned to each. --workers N (or -e WEB_CONCURRENCY=N)
#   overrides both.
# - Orchestrators: add --metrics-bind 0.0.0.0:9000 for /metrics, /livez and
#   /readyz, and --shutdown-delay for a drain that waits for the load balancer
#   (tuning/kubernetes/).
# - Memory: each shard is a sub-interpreter in one process; budget for the
#   app's own footprint once per shard.

FROM python:3.13-slim-bookworm AS build
COPY --from=rust:1-slim-bookworm /usr/local/cargo /usr/local/cargo
COPY --from=rust:1-slim-bookworm /usr/local/rustup /usr/local/rustup
ENV CARGO_HOME=/usr/local/cargo RUSTUP_HOME=/usr/local/rustup PATH=/usr/local/cargo/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir "maturin>=1.9,<2"
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs pyproject.toml README.md ./
COPY src src
COPY python python
COPY docker/build.sh docker/build.sh
RUN sh docker/build.sh /out

FROM python:3.13-slim-bookworm
COPY --from=build /out /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
WORKDIR /app
COPY examples/hello.py .
# The image's nobody: no home, no shell, no write access to /app.
USER 65534:65534
EXPOSE 8000
ENTRYPOINT ["turbo"]
CMD ["hello:app", "--bind", "0.0.0.0:8000"]
