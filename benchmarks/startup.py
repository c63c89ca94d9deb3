#!/usr/bin/env python3
"""Start-up time of `pflask run` against its peers, and pflask's footprint.

Run as root after scripts/setup:  /opt/pflask/bin/python benchmarks/startup.py [--rounds N]

What it measures (issue: start-up speed and footprint):
- one start of /bin/true in a busybox root with the default namespaces, for
  pflask (cached plan, and --no-cache; the same with the original flags; as
  the test user made by scripts/setup, through setpriv; and a bare container
  with only a PID namespace, pflask's own floor), and benchmarks/floor.py
  (pflask's compiled plan carried out as bare system calls with none of
  pflask's work: what any Python implementation pays),
  `unshare -mpfiu --root`, `bwrap
  --unshare-all`, `runc run`, `systemd-nspawn`, and the interpreter's own
  `python -c pass`: all commands take turns in every round (interleaved), so a
  busy moment of the machine costs all of them alike; medians are reported,
  with each command's CPU time and minor page faults (its whole process tree)
  and what one page fault costs on this machine;
- the same with hyperfine (one command after the other), as a cross-check;
- how start-up grows with 10, 100 and 1,000 bind mounts;
- 50 containers started at once: the wall time until all have exited, and
  that none failed;
- the supervisor's peak resident memory (VmHWM of pflask itself, not of the
  container) while a container runs.

Results go to benchmarks/results/: startup.md (the tables the README shows),
startup.json, and startup.png when matplotlib is installed.
"""

from __future__ import annotations

import argparse
import json
import marshal
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import floor
from nspawn_env import private_nspawn_namespace

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pflask.compile.plan import Plan

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
VENV = Path(sys.executable).parent
PFLASK = str(VENV / "pflask")
PYTHON = str(VENV / "python")


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def prepare(work: Path) -> dict[str, list[str]]:
    root = work / "root"
    sh(str(REPO / "scripts" / "busybox-root"), str(root))
    manifest = work / "bench.yaml"
    manifest.write_text(f"version: 1\nroot: {{path: {root}}}\ncommand: [/bin/true]\n")
    bundle = work / "bundle"
    bundle.mkdir()
    sh("runc", "spec", "--bundle", str(bundle))
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update(terminal=False, args=["/bin/true"])
    config["root"] = {"path": str(root), "readonly": True}
    (bundle / "config.json").write_text(json.dumps(config))
    # The floor of any pflask run: no root, no mounts, only a PID namespace
    # (imports, the cache, fork, state record, exec and wait).
    bare = work / "bare.yaml"
    bare.write_text(
        "version: 1\ncommand: [/bin/true]\n"
        "namespaces: {mount: false, ipc: false, uts: false, cgroup: false}\n"
    )
    classic = [PFLASK, f"--chroot={root}", "--", "/bin/true"]
    ops = work / "floor.ops"  # the manifest's plan as bare system calls
    ops.write_bytes(marshal.dumps(floor.lower(compiled(manifest))))
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    for argv in ([PFLASK, "run", str(manifest)], [PFLASK, "run", str(bare)], classic):
        sh(*argv)  # fills the cache
    # An ordinary user (a user namespace; setpriv's own exec is in the time):
    # the user's environment, so its own cache under its home.
    unprivileged: list[str] = []
    if shutil.which("setpriv") and _user_exists(TEST_USER):
        work.chmod(0o755)  # the manifest and the root must be readable by the user
        unprivileged = ["setpriv", *_as_user(TEST_USER), PFLASK, "run", str(manifest)]
        sh(*unprivileged)
    commands = {
        "python -c pass": [PYTHON, "-c", "pass"],
        "pflask run": [PFLASK, "run", str(manifest)],
        "pflask run (bare: PID namespace only)": [PFLASK, "run", str(bare)],
        # The same container with none of pflask's own work (benchmarks/floor.py).
        "Python floor (floor.py)": [PYTHON, str(REPO / "benchmarks" / "floor.py"), str(ops)],
        "pflask --chroot (original flags)": classic,
        "pflask run as an ordinary user": unprivileged,
        "pflask run --no-cache": [PFLASK, "run", "--no-cache", str(manifest)],
        "unshare -mpfiu --root": ["unshare", "-mpfiu", f"--root={root}", "/bin/true"],
        "bwrap --unshare-all": [
            "bwrap",
            "--unshare-all",
            "--bind",
            str(root),
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "/bin/true",
        ],
        "runc run": ["runc", "run", "--bundle", str(bundle), "pflask-bench"],
        "systemd-nspawn": [
            "systemd-nspawn",
            "--quiet",
            "--register=no",
            "--keep-unit",
            "-D",
            str(root),
            "/bin/true",
        ],
    }
    return {name: argv for name, argv in commands.items() if argv and shutil.which(argv[0])}


TEST_USER = "pflask-test"  # made by scripts/setup, with /etc/subuid ranges


def compiled(manifest: Path) -> Plan:
    """The plan `pflask run MANIFEST` carries out (for floor.lower)."""
    from pflask import pipeline
    from pflask.compile import context

    return pipeline.compile_file(str(manifest), (), context.read(None))[0]


def _user_exists(name: str) -> bool:
    import pwd

    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _as_user(name: str) -> list[str]:
    import pwd

    entry = pwd.getpwnam(name)
    return [f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups", "--reset-env"]


def measure(argv: list[str]) -> tuple[float, float, int]:
    """One run: wall ms, CPU ms and minor page faults of the whole process tree
    (wait4's usage counts every descendant that was waited for)."""
    started = time.perf_counter()
    pid = os.posix_spawn(
        argv[0] if "/" in argv[0] else shutil.which(argv[0]) or argv[0],
        argv,
        os.environ,
        file_actions=[
            (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
            (os.POSIX_SPAWN_OPEN, 2, "/dev/null", os.O_WRONLY, 0),
        ],
    )
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv} failed: {os.waitstatus_to_exitcode(status)}")
    return elapsed * 1000, (usage.ru_utime + usage.ru_stime) * 1000, usage.ru_minflt


def once(argv: list[str]) -> float:
    return measure(argv)[0]


class Samples:
    """Per command: wall ms, CPU ms and page faults of every round."""

    def __init__(self, names: list[str]) -> None:
        self.wall: dict[str, list[float]] = {name: [] for name in names}
        self.cpu: dict[str, list[float]] = {name: [] for name in names}
        self.faults: dict[str, list[int]] = {name: [] for name in names}


def interleaved(commands: dict[str, list[str]], rounds: int) -> Samples:
    samples = Samples(list(commands))
    for argv in commands.values():  # warm up the page cache
        for _ in range(3):
            once(argv)
    for _ in range(rounds):
        for name, argv in commands.items():
            wall, cpu, faults = measure(argv)
            samples.wall[name].append(wall)
            samples.cpu[name].append(cpu)
            samples.faults[name].append(faults)
    return samples


def hyperfine(commands: dict[str, list[str]], work: Path, runs: int) -> str:
    if not shutil.which("hyperfine"):
        return "(hyperfine not installed)\n"
    out = work / "hyperfine.md"
    subprocess.run(
        [
            "hyperfine",
            "-N",
            "--warmup",
            "5",
            "--runs",
            str(runs),
            "--export-markdown",
            str(out),
            *(f"--command-name={n}" for n in commands),
            *(subprocess.list2cmdline(argv) for argv in commands.values()),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return out.read_text()


def bind_scaling(work: Path, counts: tuple[int, ...], rounds: int) -> dict[int, float]:
    root = work / "root"
    source = work / "bindsource"
    source.mkdir(exist_ok=True)
    results = {}
    for count in (0, *counts):
        manifest = work / f"binds{count}.yaml"
        mounts = "".join(
            f"  - {{type: bind, source: {source}, target: /mnt/b{i}}}\n" for i in range(count)
        )
        manifest.write_text(
            f"version: 1\nroot: {{path: {root}}}\ncommand: [/bin/true]\n"
            + (f"mounts:\n{mounts}" if count else "")
        )
        argv = [PFLASK, "run", str(manifest)]
        once(argv)
        results[count] = statistics.median(once(argv) for _ in range(rounds))
    return results


def concurrent(work: Path, count: int) -> tuple[float, int]:
    manifest = work / "bench.yaml"
    # Each its own name: a running container's name is taken (pflask ps, stop).
    # One run each first, so all plans are cached as in steady use.
    for i in range(count):
        once([PFLASK, "run", "--name", f"bench-{i}", str(manifest)])
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [PFLASK, "run", "--name", f"bench-{i}", str(manifest)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(count)
    ]
    failures = sum(1 for p in procs if p.wait() != 0)
    return (time.perf_counter() - started) * 1000, failures


def page_fault_us(pages: int = 4096) -> float:
    """Microseconds per minor page fault here: the first touch of each page of
    a fresh anonymous mapping (median of five).  Python's start-up and a fork's
    copy-on-write are made of these."""
    import mmap

    size = pages * mmap.PAGESIZE
    costs = []
    for _ in range(5):
        area = mmap.mmap(-1, size)
        started = time.perf_counter()
        for offset in range(0, size, mmap.PAGESIZE):
            area[offset] = 1
        costs.append((time.perf_counter() - started) / pages * 1e6)
        area.close()
    return statistics.median(costs)


def supervisor_rss(work: Path) -> int:
    """Peak RSS (KiB) of the pflask process that waits while the container runs."""
    proc = subprocess.Popen([PFLASK, "run", str(work / "bench.yaml"), "--", "/bin/sleep", "1"])
    time.sleep(0.7)
    status = Path(f"/proc/{proc.pid}/status").read_text()
    proc.wait()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))


def table(samples: Samples) -> str:
    times = samples.wall
    python = statistics.median(times["python -c pass"])
    runc = statistics.median(times["runc run"]) if "runc run" in times else None
    lines = [
        "| command | median ms | mean ms | stdev | x python | x runc | CPU ms | page faults |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, values in times.items():
        median = statistics.median(values)
        vs_runc = f"{median / runc:.2f}" if runc else "-"
        lines.append(
            f"| `{name}` | {median:.1f} | {statistics.mean(values):.1f} | "
            f"{statistics.stdev(values):.1f} | {median / python:.2f} | {vs_runc} | "
            f"{statistics.median(samples.cpu[name]):.1f} | "
            f"{statistics.median(samples.faults[name]):.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(times: dict[str, list[float]], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = list(times)
    fig, ax = plt.subplots(figsize=(8, 4))
    horizontal = (
        {"orientation": "horizontal"}
        if tuple(int(x) for x in matplotlib.__version__.split(".")[:2]) >= (3, 10)
        else {"vert": False}
    )
    ax.boxplot([times[n] for n in names], showfliers=False, **horizontal)
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.set_xlabel("ms per start of /bin/true (lower is better)")
    ax.set_title("pflask start-up against its peers (interleaved rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks/startup.py: run as root (runc, nspawn and loop setups need it)")
    private_nspawn_namespace()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pfbench-") as tmp:
        work = Path(tmp)
        commands = prepare(work)
        samples = interleaved(commands, args.rounds)
        times = samples.wall
        fault_us = page_fault_us()
        report = [
            f"Measured {time.strftime('%Y-%m-%d')} on {platform.node()}: "
            f"{os.cpu_count()} CPUs, Linux {platform.release()}, "
            f"Python {platform.python_version()}; {args.rounds} interleaved rounds.\n",
            table(samples),
            "\nCPU ms and page faults: medians over the whole process tree (wait4). "
            f"A page fault costs {fault_us:.1f} us here (first touch of an anonymous "
            "page), so the faults alone are a large part of each run's time.\n",
            "\nhyperfine, one command after the other:\n\n",
            hyperfine(commands, work, args.rounds),
        ]
        data: dict[str, object] = {
            "times_ms": times,
            "cpu_ms": samples.cpu,
            "page_faults": samples.faults,
            "page_fault_us": fault_us,
        }
        if not args.skip_scale:
            scaling = bind_scaling(work, (10, 100, 1000), max(5, args.rounds // 4))
            wall, failures = concurrent(work, 50)
            rss = supervisor_rss(work)
            report += [
                "\nStart-up with N bind mounts (median ms):\n\n| binds | ms |\n|---:|---:|\n",
                "".join(f"| {n} | {ms:.1f} |\n" for n, ms in scaling.items()),
                f"\n50 containers started at once: all exited after {wall:.0f} ms, "
                f"{failures} failed.\n",
                f"\nSupervisor peak RSS while a container runs: {rss / 1024:.1f} MiB.\n",
            ]
            data.update(
                binds=scaling,
                concurrent_ms=wall,
                concurrent_failures=failures,
                supervisor_rss_kib=rss,
            )
        text = "".join(report)
        (RESULTS / "startup.md").write_text(text)
        (RESULTS / "startup.json").write_text(json.dumps(data, indent=1))
        if plot(times, RESULTS / "startup.png"):
            text += "\nPlot: benchmarks/results/startup.png\n"
        print(text)


if __name__ == "__main__":
    main()
