#!/usr/bin/env python3
"""Booting a Debian root: pflask against systemd-nspawn, side by side.

Run as root after scripts/setup:

    /opt/pflask/bin/python benchmarks/boot.py [--root DIR] [--rounds N]

The root is built (or reused) with scripts/debian-root (default
/var/cache/pflask-test/debian).  After a warm-up round (not counted: page
cache, pflask's plan cache), in every round each tool boots the same root with
systemd as PID 1 on a pty of its own, as a user at a terminal would see it,
and the tools take turns (interleaved), so a busy moment of the machine costs
them alike.  Two times are taken per boot:

- boot to prompt: from starting the tool until `login: ` appears on the
  console (console-getty.service, after multi-user.target's other units);
- stop to exit: from the stop request until the tool has exited.  pflask is
  stopped both ways a user would: `pflask stop NAME` (a second process: its
  own start-up is part of the time) and SIGTERM to pflask ("pflask-sigterm",
  another boot); systemd-nspawn by SIGTERM (it has no stop command of its own
  without machined).  Each tool turns the request into SIGRTMIN+3 for
  systemd: a clean halt, units stopped, file systems synced.

Medians (and min/max) go to benchmarks/results/boot.md and boot.json.
systemd-nspawn runs with `--register=no --keep-unit` where the host's init
is not systemd (it cannot register or make a scope there), in a private
mount namespace with a tmpfs on /run/systemd/nspawn as it requires.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pty
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nspawn_env import private_nspawn_namespace

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
PFLASK = str(Path(sys.executable).with_name("pflask"))
DEFAULT_ROOT = "/var/cache/pflask-test/debian"
NAME = "bootbench"
PROMPT = b"login: "
TIMEOUT = 60.0


def systemd_is_init() -> bool:
    return os.path.isdir("/run/systemd/system")


class Boot:
    """One tool booting the root on a pty, until the prompt, then stopped."""

    def __init__(self, argv: list[str], stop: list[str] | None) -> None:
        self.argv = argv
        self.stop_argv = stop
        self.output = bytearray()

    def run(self) -> tuple[float, float, int]:
        """(seconds to the prompt, seconds from the stop request to exit, exit status)."""
        start = time.monotonic()
        pid, master = pty.fork()
        if pid == 0:
            os.environ["TERM"] = "xterm"
            try:
                os.execvp(self.argv[0], self.argv)
            finally:
                os._exit(127)
        try:
            prompt = self._read_until(master, PROMPT, start)
            requested = time.monotonic()
            if self.stop_argv is None:
                os.kill(pid, signal.SIGTERM)
            else:
                subprocess.run(self.stop_argv, capture_output=True, check=True, timeout=TIMEOUT)
            status = self._wait(pid, master, requested)
            return prompt - start, time.monotonic() - requested, status
        except BaseException:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
            raise
        finally:
            os.close(master)

    def _read_until(self, fd: int, wanted: bytes, start: float) -> float:
        while True:
            left = TIMEOUT - (time.monotonic() - start)
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise TimeoutError(
                    f"{self.argv[0]}: no {wanted!r} after {TIMEOUT:g} s:\n{self.tail()}"
                )
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                raise RuntimeError(f"{self.argv[0]} ended before {wanted!r}:\n{self.tail()}")
            self.output += chunk
            if wanted in self.output:
                return time.monotonic()

    def _wait(self, pid: int, fd: int, requested: float) -> int:
        """Drain the pty (a full one would block the container) until the tool exits."""
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return os.waitstatus_to_exitcode(status)
            if time.monotonic() - requested > TIMEOUT:
                raise TimeoutError(f"{self.argv[0]} still running {TIMEOUT:g} s after the stop")
            if select.select([fd], [], [], 0.002)[0]:
                try:
                    self.output += os.read(fd, 65536)
                except OSError:
                    pass

    def tail(self) -> str:
        return self.output[-2000:].decode(errors="replace")


def pflask_boot(root: str, manifest: Path, stop: bool) -> Boot:
    manifest.write_text(
        f"version: 1\nname: {NAME}\nroot:\n  path: {root}\ncommand: [/sbin/init]\nterminal: true\n",
        encoding="utf-8",
    )
    return Boot([PFLASK, "run", str(manifest)], [PFLASK, "stop", NAME] if stop else None)


def nspawn_boot(root: str) -> Boot:
    argv = ["systemd-nspawn", "--quiet", "-D", root, "-M", NAME, "-b"]
    if not systemd_is_init():
        argv[1:1] = ["--register=no", "--keep-unit"]
    return Boot(argv, None)


def summary(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--root", default=DEFAULT_ROOT, help=f"Debian root (default {DEFAULT_ROOT})"
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--no-build", action="store_true", help="do not run scripts/debian-root")
    parser.add_argument(
        "--tools",
        default="pflask,pflask-sigterm,systemd-nspawn",
        help="comma-separated (default: pflask,pflask-sigterm,systemd-nspawn)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("boot.py: run as root", file=sys.stderr)
        return 1
    private_nspawn_namespace()
    if not args.no_build:
        subprocess.run([str(REPO / "scripts" / "debian-root"), args.root], check=True)
    tools = [t for t in args.tools.split(",") if t.startswith("pflask") or shutil.which(t)]
    times: dict[str, dict[str, list[float]]] = {t: {"prompt": [], "stop": []} for t in tools}
    statuses: dict[str, list[int]] = {t: [] for t in tools}
    with tempfile.TemporaryDirectory(prefix="boot-bench-") as tmp:
        manifest = Path(tmp) / "boot.yaml"
        for round_number in range(0, args.rounds + 1):
            for tool in tools:
                boot = (
                    pflask_boot(args.root, manifest, stop=tool == "pflask")
                    if tool.startswith("pflask")
                    else nspawn_boot(args.root)
                )
                prompt, stopped, status = boot.run()
                if round_number == 0:
                    continue  # warm-up: page cache, pflask's plan cache
                times[tool]["prompt"].append(prompt)
                times[tool]["stop"].append(stopped)
                statuses[tool].append(status)
                print(
                    f"round {round_number} {tool:15} prompt {prompt * 1000:7.0f} ms"
                    f"   stop->exit {stopped * 1000:6.0f} ms   exit {status}",
                    flush=True,
                )
    report = {
        "machine": f"{platform.node()} {platform.release()} {os.cpu_count()} CPUs",
        "root": args.root,
        "rounds": args.rounds,
        "stop_requests": {
            "pflask": "pflask stop NAME",
            "pflask-sigterm": "SIGTERM to pflask",
            "systemd-nspawn": "SIGTERM to systemd-nspawn",
        },
        "results": {
            tool: {
                "boot_to_prompt_s": summary(t["prompt"]),
                "stop_to_exit_s": summary(t["stop"]),
                "exit_statuses": statuses[tool],
            }
            for tool, t in times.items()
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "boot.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    lines = [
        "# Booting Debian bookworm (systemd 252) to the login prompt, and halting it",
        "",
        f"{report['machine']}; root {args.root}; {args.rounds} interleaved rounds; "
        "stop request: `pflask stop NAME` (pflask), SIGTERM to the tool (the others).",
        "",
        "| tool | boot to prompt, median (min-max) | stop to exit, median (min-max) | exit |",
        "|---|---|---|---|",
    ]
    for tool, result in report["results"].items():
        p, s = result["boot_to_prompt_s"], result["stop_to_exit_s"]
        lines.append(
            f"| {tool} | {p['median'] * 1000:.0f} ms ({p['min'] * 1000:.0f}-{p['max'] * 1000:.0f}) "
            f"| {s['median'] * 1000:.0f} ms ({s['min'] * 1000:.0f}-{s['max'] * 1000:.0f}) "
            f"| {sorted(set(result['exit_statuses']))} |"
        )
    (RESULTS / "boot.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines[4:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
