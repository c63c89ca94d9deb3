#!/usr/bin/env python3
"""Throughput of the Python API (pflask.api) against bwrap and runc, from one program.

Run as root after scripts/setup:  /opt/pflask/bin/python benchmarks/api.py [--count N]

What it measures (issue: many containers from one program):
- N sequential starts of /bin/true in a busybox root (default 1,000), from one
  Python program, as a test runner or grader would start them:
  `Container.run` (the plan compiled once, each run forked by the zygote),
  and, through `subprocess.run`, `bwrap --unshare-all`, `runc run` and
  `pflask run` (the command line, cached plan).  The tools take turns in
  blocks of N/10 starts, so a busy moment of the machine costs all alike;
  the figure is the median block's time per start, and the whole N's total.
- 100 starts at once (asyncio, `run_async`; bwrap through asyncio's
  subprocesses for comparison) on this machine's CPUs: wall time until all
  have ended, and how many failed; five rounds.

Results go to benchmarks/results/: api.md, api.json and api.svg (a bar chart
written with the standard library: benchmarks/svgplot.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import svgplot

import pflask

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
PFLASK = str(Path(sys.executable).with_name("pflask"))


def prepare(work: Path) -> tuple[Path, Path, Path]:
    """A busybox root, a manifest running /bin/true in it, and a runc bundle."""
    root = work / "root"
    subprocess.run([str(REPO / "scripts" / "busybox-root"), str(root)], check=True)
    manifest = work / "bench.yaml"
    manifest.write_text(f"version: 1\nroot: {{path: {root}}}\ncommand: [/bin/true]\n")
    bundle = work / "bundle"
    bundle.mkdir()
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update(terminal=False, args=["/bin/true"])
    config["root"] = {"path": str(root), "readonly": True}
    (bundle / "config.json").write_text(json.dumps(config))
    return root, manifest, bundle


def starters(root: Path, manifest: Path, bundle: Path) -> dict[str, Callable[[], int]]:
    """One start of each tool, returning its exit status."""
    box = pflask.Container.load(manifest)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    bwrap = ["bwrap", "--unshare-all", "--bind", str(root), "/", "--proc", "/proc"]
    bwrap += ["--dev", "/dev", "/bin/true"]
    runc = ["runc", "run", "--bundle", str(bundle), "pflask-api-bench"]
    cli = [PFLASK, "run", str(manifest)]
    return {
        "pflask API: Container.run": lambda: (
            box.run(stdout=pflask.DEVNULL, stderr=pflask.DEVNULL).status
        ),
        "bwrap --unshare-all": lambda: subprocess.run(bwrap, **quiet).returncode,  # type: ignore[call-overload]
        "runc run": lambda: subprocess.run(runc, **quiet).returncode,  # type: ignore[call-overload]
        "pflask run (command line)": lambda: subprocess.run(cli, **quiet).returncode,  # type: ignore[call-overload]
    }


def sequential(tools: dict[str, Callable[[], int]], count: int) -> dict[str, list[float]]:
    """ms per start of each block of count/10 starts, the tools taking turns."""
    block = max(1, count // 10)
    per_start: dict[str, list[float]] = {name: [] for name in tools}
    for start in tools.values():  # warm up: caches, the zygote, the page cache
        for _ in range(5):
            if start() != 0:
                raise RuntimeError("a warm-up start failed")
    for _ in range(count // block):
        for name, start in tools.items():
            began = time.perf_counter()
            for _ in range(block):
                status = start()
                if status != 0:
                    raise RuntimeError(f"{name}: exit status {status}")
            per_start[name].append((time.perf_counter() - began) * 1000 / block)
    return per_start


async def _api_at_once(box: pflask.Container, count: int) -> tuple[float, int]:
    began = time.perf_counter()
    results = await asyncio.gather(
        *(box.run_async(stdout=pflask.DEVNULL, stderr=pflask.DEVNULL) for _ in range(count)),
        return_exceptions=True,
    )
    wall = (time.perf_counter() - began) * 1000
    return wall, sum(1 for r in results if not (isinstance(r, pflask.Result) and r.status == 0))


async def _bwrap_at_once(root: Path, count: int) -> tuple[float, int]:
    argv = ["bwrap", "--unshare-all", "--bind", str(root), "/", "--proc", "/proc", "--dev"]
    argv += ["/dev", "/bin/true"]

    async def one() -> int:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        return await proc.wait()

    began = time.perf_counter()
    statuses = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    wall = (time.perf_counter() - began) * 1000
    return wall, sum(1 for s in statuses if s != 0)


def at_once(root: Path, manifest: Path, count: int, rounds: int) -> dict[str, list[float]]:
    box = pflask.Container.load(manifest)
    found: dict[str, list[float]] = {
        "pflask API: run_async": [],
        "bwrap (asyncio subprocesses)": [],
    }
    failures: dict[str, int] = dict.fromkeys(found, 0)
    for _ in range(rounds):
        wall, failed = asyncio.run(_api_at_once(box, count))
        found["pflask API: run_async"].append(wall)
        failures["pflask API: run_async"] += failed
        wall, failed = asyncio.run(_bwrap_at_once(root, count))
        found["bwrap (asyncio subprocesses)"].append(wall)
        failures["bwrap (asyncio subprocesses)"] += failed
    found["failures"] = [float(failures[name]) for name in failures]
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="sequential starts per tool")
    parser.add_argument("--concurrent", type=int, default=100, help="starts at once")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of starts at once")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks/api.py: run as root (runc needs it)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pfbench-api-") as tmp:
        work = Path(tmp)
        os.environ["XDG_CACHE_HOME"] = str(work / "cache")
        root, manifest, bundle = prepare(work)
        per_start = sequential(starters(root, manifest, bundle), args.count)
        crowd = at_once(root, manifest, args.concurrent, args.rounds)
        pflask.api.close()
    medians = {name: statistics.median(values) for name, values in per_start.items()}
    api = medians["pflask API: Container.run"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.node()}: {os.cpu_count()} CPUs, "
        f"Linux {platform.release()}, Python {platform.python_version()}.\n\n",
        f"{args.count} sequential starts of /bin/true in a busybox root, from one Python "
        f"program (blocks of {max(1, args.count // 10)}, the tools taking turns):\n\n",
        "| tool | ms per start (median block) | min block | max block | "
        f"total for {args.count} (s) | x the API |\n",
        "|---|---:|---:|---:|---:|---:|\n",
    ]
    for name, values in per_start.items():
        total = sum(values) * max(1, args.count // 10) / 1000
        lines.append(
            f"| {name} | {medians[name]:.2f} | {min(values):.2f} | {max(values):.2f} | "
            f"{total:.1f} | {medians[name] / api:.2f} |\n"
        )
    crowd_names = ("pflask API: run_async", "bwrap (asyncio subprocesses)")
    failures = dict(zip(crowd_names, crowd["failures"], strict=True))
    lines += [
        f"\n{args.concurrent} starts at once on {os.cpu_count()} CPUs, {args.rounds} rounds "
        "(wall ms until all have ended):\n\n",
        "| tool | median ms | min | max | failed starts (all rounds) |\n",
        "|---|---:|---:|---:|---:|\n",
    ]
    for name in crowd_names:
        values = crowd[name]
        lines.append(
            f"| {name} | {statistics.median(values):.0f} | {min(values):.0f} | "
            f"{max(values):.0f} | {failures[name]:.0f} |\n"
        )
    text = "".join(lines)
    (RESULTS / "api.md").write_text(text)
    (RESULTS / "api.json").write_text(
        json.dumps({"per_start_ms": per_start, "at_once_ms": crowd}, indent=1)
    )
    svgplot.bars(
        RESULTS / "api.svg",
        f"ms per start of /bin/true, {args.count} in a row from one program",
        medians,
        "ms",
        note=f"{platform.node()}, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}: "
        "lower is better",
    )
    print(text)


if __name__ == "__main__":
    main()
