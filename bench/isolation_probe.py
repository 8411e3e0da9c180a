"""What --isolation auto's probe costs at start: cold (no cached verdicts) and
warm, in a virtualenv of about 60 packages a real project pulls in
(bench/probe-packages.txt).

    .venv-bench/bin/python bench/isolation_probe.py WHEEL [--python PY] [--venv DIR]

It makes the virtualenv (kept in DIR, by default ~/.cache/turbo/bench-probe-PY),
installs the packages and the turbo wheel, then runs `turbo hello:app
--check-config` with an empty cache three times and with a warm one five
times, and prints what the probe reported: modules found and refusing,
probed and cached, and its own time, with the whole command's wall time."""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("wheel")
    parser.add_argument("--python", default=os.path.expanduser("~/.pyenv/versions/3.13.0/bin/python3"))
    parser.add_argument("--venv")
    parser.add_argument("--cold", type=int, default=3)
    parser.add_argument("--warm", type=int, default=5)
    args = parser.parse_args()
    version = subprocess.check_output([args.python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                      text=True).strip()
    venv = Path(args.venv or os.path.expanduser(f"~/.cache/turbo/bench-probe-{version}"))
    if not (venv / "bin" / "python").exists():
        subprocess.run([args.python, "-m", "venv", str(venv)], check=True)
        subprocess.run([venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check",
                        "-r", HERE / "probe-packages.txt"], check=True)
    subprocess.run([venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                    "--force-reinstall", args.wheel], check=True)
    dists = subprocess.check_output([venv / "bin" / "pip", "list", "--format=freeze"], text=True).split()
    apps = HERE / "apps"

    def run(cache):
        started = time.monotonic()
        out = subprocess.run([venv / "bin" / "turbo", "hello:app", "--check-config"], cwd=apps, check=True,
                             capture_output=True, text=True, env={**os.environ, "XDG_CACHE_HOME": cache}).stdout
        wall = (time.monotonic() - started) * 1000
        line = out.splitlines()[0]
        probe = re.search(r"(\d+) probed, (\d+) cached, (\d+) ms", line)
        counts = re.search(r"(\d+) of (\d+) compiled modules|all (\d+) compiled modules", line)
        return line, wall, [int(x) for x in probe.groups()], counts

    print(f"Python {version}, {len(dists)} distributions installed ({venv})")
    rows = []
    for kind, n in (("cold", args.cold), ("warm", args.warm)):
        with tempfile.TemporaryDirectory() as cache:
            if kind == "warm":
                run(cache)
            for _ in range(n):
                line, wall, (probed, cached, ms), counts = run(cache)
                rows.append((kind, wall, probed, cached, ms))
    print(line)
    print()
    print("| start | probed | cached | probe (median) | whole --check-config (median) |")
    print("|---|---|---|---|---|")
    for kind in ("cold", "warm"):
        mine = [r for r in rows if r[0] == kind]
        print(f"| {kind} | {mine[0][2]} | {mine[0][3]} | {statistics.median(r[4] for r in mine):.0f} ms "
              f"| {statistics.median(r[1] for r in mine):.0f} ms |")


if __name__ == "__main__":
    sys.exit(main())
