"""The benchmark's output: Markdown tables that go to stdout and, as they grow, to
a file under bench/results/ (so an interrupted run keeps what it measured), and
the chart of turbo's req/s ratio to each peer."""

import importlib.metadata
import math
import os
import platform
import subprocess
import sys
import time

from harness import HERE

RESULTS = HERE / "results"
PACKAGES = ["granian", "gunicorn", "bjoern", "uvicorn", "uvloop", "httptools", "flask", "fastapi", "websockets"]


class Report:
    """Lines printed as they come and rewritten to `name` under bench/results/."""

    def __init__(self, name):
        RESULTS.mkdir(exist_ok=True)
        self.path = RESULTS / name
        self.lines = []

    def add(self, *lines):
        for line in lines:
            print(line)
            self.lines.append(line)
        sys.stdout.flush()
        self.path.write_text("\n".join(self.lines) + "\n")


def environment(turbo):
    """One paragraph saying when, on what and with which versions the run was made."""
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    versions = []
    for pkg in PACKAGES:
        try:
            versions.append(f"{pkg} {importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{pkg} (not installed)")
    turbo_version = subprocess.run([turbo, "--version"], capture_output=True, text=True).stdout.strip()
    return (f"Run {time.strftime('%Y-%m-%d %H:%M %Z')} on {cpu}, {len(os.sched_getaffinity(0))} CPUs, "
            f"Linux {platform.release()}, CPython {platform.python_version()}; {turbo_version}; "
            f"{', '.join(versions)}.")


def fmt(value, digits):
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def app_table(app, names, medians, failures, notes, duration, rounds, connections):
    """The lines of one app's table: medians per server and turbo's ratio to each."""
    load = {"get": "wrk GET /", "post": f"wrk POST {app.post_bytes} B", "ws": "bench/wsload.py"}[app.load]
    unit = app.unit
    rate = "msgs/s" if unit == "msg" else "req/s"
    lines = [f"### {app.name}: {app.about}", "",
             f"`{app.target}`, {load}, {connections} connections, {duration} s x {rounds} rounds, medians.", "",
             f"| server | {rate} | p50 ms | p99 ms | CPU µs/{unit} | PSS MiB | non-2xx | socket errors "
             f"| turbo {rate} ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    turbo = medians.get("turbo", {}).get("rate")
    for name in names:
        if name in failures:
            lines.append(f"| {name} | failed: {failures[name]} | | | | | | | |")
            continue
        m = medians[name]
        ratio = f"{turbo / m['rate']:.2f}x" if turbo and m["rate"] else "-"
        lines.append(f"| {name} | {m['rate']:.0f} | {fmt(m['p50'], 2)} | {fmt(m['p99'], 2)} | "
                     f"{fmt(m['cpu_us'], 1)} | {fmt(m['pss_mb'], 1)} | {m['non2xx']:.0f} | {m['sock_err']:.0f} | "
                     f"{ratio} |")
    for server, why in app.skip.items():
        lines.append(f"\n{server} sits out: {why}.")
    for note in notes:
        lines.append(f"\n{note}")
    return lines + [""]


def ratios(medians):
    """turbo's rate over each peer's, for the chart."""
    turbo = medians.get("turbo", {}).get("rate")
    if not turbo:
        return {}
    return {n: turbo / m["rate"] for n, m in medians.items() if n != "turbo" and m["rate"]}


def chart(per_app, path):
    """Grouped bars of turbo's req/s ratio to each peer, one group per app, on a log
    scale with bars growing from the 1.0 line (above it: turbo is faster), each
    labelled with its value; a peer keeps its colour across the groups."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    apps = [a for a, r in per_app.items() if r]
    if not apps:
        return None
    peers = []
    for a in apps:
        peers += [p for p in per_app[a] if p not in peers]
    colour = {p: plt.get_cmap("tab10")(i % 10) for i, p in enumerate(peers)}
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(apps) + 3), 5.5))
    width = 0.8 / max(len(r) for r in per_app.values())
    labelled = set()
    for j, a in enumerate(apps):
        group = list(per_app[a].items())
        for i, (peer, ratio) in enumerate(group):
            x = j + (i - (len(group) - 1) / 2) * width
            ax.bar(x, ratio - 1, width, bottom=1, color=colour[peer],
                   label=None if peer in labelled else peer)
            labelled.add(peer)
            ax.annotate(f"{ratio:.2f}" if ratio < 10 else f"{ratio:.0f}", (x, ratio), ha="center", va="bottom" if ratio >= 1 else "top",
                        fontsize=7, xytext=(0, 2 if ratio >= 1 else -2), textcoords="offset points")
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xticks(range(len(apps)))
    ax.set_xticklabels(apps, rotation=30, ha="right")
    ax.set_ylabel("turbo req/s ÷ peer req/s (log scale)")
    ax.set_title("turbo's throughput relative to each peer (above 1: turbo is faster)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
