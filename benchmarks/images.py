#!/usr/bin/env python3
"""Roots from images (issue 16): unpacking, and the first and second start.

Run as root after scripts/setup:  /opt/pflask/bin/python benchmarks/images.py [--rounds N]

What it measures, with a 5-layer image written here (no download): the
busybox root, then /usr/lib/python3.11, /usr/share/perl, /usr/share/zoneinfo
and part of /usr/include, each a gzip layer (about 100 MB unpacked):
- unpacking: `pflask image import` into an empty store (gzip, sha256 of the
  blob and of the tar, the checks of every name, whiteout conversion, the
  atomic rename) in MB/s of uncompressed tar, against `tar -xzf` of the same
  blobs and `tar -xf` of the uncompressed tars into empty directories;
- the first start (`pflask run --no-cache` with an empty store: resolve,
  verify, unpack, compile, run) and the second (the cached plan: no layer is
  read or hashed), against a directory root holding the same files (plain
  and ephemeral); and podman where it works (Debian's podman, with storage
  of its own, runc as its runtime: crun refuses a hybrid cgroup hierarchy):
  the same image pulled from the layout into an empty store and run (its
  first start), `podman run --rm IMAGE` again (its second), and `podman run
  --rm --rootfs` of a copy of the directory.  Interleaved rounds
  (startup.interleaved), medians.

Results: benchmarks/results/images.md and images.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from startup import interleaved, sh

from pflask.image import layout

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
PFLASK = str(Path(sys.executable).parent / "pflask")
SOURCES = ("/usr/lib/python3.11", "/usr/share/perl", "/usr/share/zoneinfo", "/usr/include/linux")


def layers(work: Path) -> list[bytes]:
    root = work / "busybox"
    sh(str(REPO / "scripts" / "busybox-root"), str(root))
    tars = [layout.tar_of_directory(str(root))]
    for source in SOURCES:
        staged = work / "stage" / source.strip("/").replace("/", "_")
        target = staged / source.strip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, target, symlinks=True)
        tars.append(layout.tar_of_directory(str(staged)))
    return tars


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(
        argv,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    return time.perf_counter() - start


def unpack_rates(work: Path, tars: list[bytes], digest: str, repeat: int) -> dict[str, float]:
    total = sum(len(t) for t in tars) / 1e6
    blobs = []
    manifest = json.loads((work / "img/blobs/sha256" / digest.partition(":")[2]).read_bytes())
    for d in manifest["layers"]:
        blobs.append(work / "img/blobs/sha256" / d["digest"].partition(":")[2])
    for i, tar in enumerate(tars):
        (work / f"layer{i}.tar").write_bytes(tar)
    times: dict[str, list[float]] = {"pflask image import": [], "tar -xzf": [], "tar -xf": []}
    for round_ in range(repeat):
        store = work / f"store{round_}"
        times["pflask image import"].append(
            timed([PFLASK, "image", "import", f"oci:{work}/img"], {"PFLASK_STORE": str(store)})
        )
        shutil.rmtree(store)
        for name, files, flag in (
            ("tar -xzf", blobs, "-xzf"),
            ("tar -xf", [work / f"layer{i}.tar" for i in range(len(tars))], "-xf"),
        ):
            out = work / f"tar{round_}"
            start = time.perf_counter()
            for i, blob in enumerate(files):
                (out / str(i)).mkdir(parents=True)
                subprocess.run(["tar", flag, str(blob), "-C", str(out / str(i))], check=True)
            times[name].append(time.perf_counter() - start)
            shutil.rmtree(out)
    return {name: total / statistics.median(values) for name, values in times.items()} | {
        "MB": total
    }


class Podman:
    """podman with storage, run root and temp dir of its own under a short path
    (podman refuses a run root longer than 50 characters), so the host's store
    is neither used nor changed.  runc runs the containers: crun refuses a
    hybrid cgroup hierarchy (this VM's).  The open-file and process limits
    are lowered as tests/test_engines.py does (crun's setrlimit of
    RLIMIT_NOFILE failed with EPERM above the limits podman asks for)."""

    def __init__(self, tool: str) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="pfbp-"))
        self.groups = set(Path("/sys/fs/cgroup").glob("*/libpod_parent"))
        self.global_ = [
            tool,
            *("--root", str(self.directory / "storage")),
            *("--runroot", str(self.directory / "run")),
            *("--tmpdir", str(self.directory / "tmp")),
            *("--cgroup-manager", "cgroupfs", "--events-backend", "none"),
            *("--runtime", "runc"),
        ]

    def run(self, *args: str) -> list[str]:
        """The argv of `podman run --rm` of args, without a network."""
        return [
            *self.global_,
            *("run", "--rm", "--network=none"),
            *("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"),
            *args,
        ]

    def reset(self) -> None:
        """Forget every image and container: an empty store again."""
        sh(*self.global_, "system", "reset", "--force")

    def close(self) -> None:
        """Leave nothing: podman's mounts, its store, the cgroups its cgroupfs
        manager makes for conmon (empty once conmon has left)."""
        subprocess.run([*self.global_, "system", "reset", "--force"], capture_output=True)
        with open("/proc/self/mountinfo") as mounts:
            points = [line.split()[4] for line in mounts]
        for point in reversed(points):
            if point.startswith(f"{self.directory}/"):
                subprocess.run(["umount", "-l", point], check=False)
        subprocess.run(["rm", "-rf", "--one-file-system", str(self.directory)], check=False)
        for top in set(Path("/sys/fs/cgroup").glob("*/libpod_parent")) - self.groups:
            deadline = time.monotonic() + 5
            for group in sorted(top.glob("**/"), key=lambda g: -len(g.parts)):
                while True:
                    try:
                        group.rmdir()
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        time.sleep(0.05)


def podman_works(podman: Podman, directory: Path) -> bool:
    try:
        result = subprocess.run(
            podman.run("--rootfs", str(directory), "/bin/true"), capture_output=True, check=False
        )
    except OSError:
        return False
    if result.returncode != 0:
        print(f"podman does not work here: {result.stderr.decode().strip()}", file=sys.stderr)
    return result.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--unpacks", type=int, default=3)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("benchmarks/images.py: run as root")
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pfb-images-") as tmp:
        work = Path(tmp)
        tars = layers(work)
        digest = layout.write_layout(str(work / "img"), tars, tag="bench")
        rates = unpack_rates(work, tars, digest, args.unpacks)

        # A directory root with the same files: the layers unpacked in order.
        directory = work / "dir"
        directory.mkdir()
        for i in range(len(tars)):
            (work / f"layer{i}.tar").write_bytes(tars[i])
            sh("tar", "-xf", str(work / f"layer{i}.tar"), "-C", str(directory))
        manifests = {}
        for name, root in (
            ("image", {"image": f"oci:{work}/img:bench"}),
            ("dir", {"path": str(directory)}),
            ("dir-ephemeral", {"path": str(directory), "ephemeral": True}),
        ):
            path = work / f"{name}.json"
            path.write_text(
                json.dumps(
                    {"version": 1, "name": f"pfb-{name}", "root": root, "command": ["/bin/true"]}
                )
            )
            manifests[name] = path
        store = str(work / "store-start")
        os.environ["PFLASK_STORE"] = store
        first = []
        for _ in range(max(3, args.unpacks)):
            shutil.rmtree(store, ignore_errors=True)
            first.append(timed([PFLASK, "run", "--no-cache", str(manifests["image"])]))
        commands = {
            "image, second start (cached plan)": [PFLASK, "run", str(manifests["image"])],
            "directory root": [PFLASK, "run", str(manifests["dir"])],
            "directory root, ephemeral": [PFLASK, "run", str(manifests["dir-ephemeral"])],
        }
        podman_first: dict[str, float] = {}
        tool = shutil.which("podman")
        podman = Podman(tool) if tool else None
        try:
            # podman writes /etc/hosts and friends into a --rootfs: a copy of its own.
            podman_root = work / "podman-root"
            sh("cp", "-a", str(directory), str(podman_root))
            if podman is not None and podman_works(podman, podman_root):
                pull = [*podman.global_, "pull", "-q", f"oci:{work}/img:bench"]
                pulls, runs, rootfs = [], [], []
                image = ""
                for _ in range(max(3, args.unpacks)):
                    podman.reset()
                    start = time.perf_counter()
                    pulled = subprocess.run(pull, capture_output=True, text=True, check=True)
                    pulls.append(time.perf_counter() - start)
                    image = pulled.stdout.split()[-1]  # the image id
                    runs.append(timed(podman.run(image, "/bin/true")))
                    podman.reset()
                    rootfs.append(timed(podman.run("--rootfs", str(podman_root), "/bin/true")))
                podman.reset()
                subprocess.run(pull, capture_output=True, check=True)
                podman_first = {
                    "podman pull oci: into an empty store": statistics.median(pulls),
                    "podman run IMAGE, first start (after the pull)": statistics.median(runs),
                    "podman run --rootfs, first start (empty store)": statistics.median(rootfs),
                }
                commands["podman run IMAGE, second start"] = podman.run(image, "/bin/true")
                commands["podman run --rootfs (same files)"] = podman.run(
                    "--rootfs", str(podman_root), "/bin/true"
                )
            samples = interleaved(commands, args.rounds)
        finally:
            if podman is not None:
                podman.close()
    medians = {name: statistics.median(values) for name, values in samples.wall.items()}
    data = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}",
        "python": platform.python_version(),
        "rounds": args.rounds,
        "unpack_MB": rates.pop("MB"),
        "unpack_MB_per_s": rates,
        "first_start_ms": statistics.median(first) * 1000,
        "podman_first_ms": {name: seconds * 1000 for name, seconds in podman_first.items()},
        "start_ms": medians,
    }
    (RESULTS / "images.json").write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# Roots from images",
        "",
        f"{data['date']}, {data['machine']}, Python {data['python']}; "
        f"5 gzip layers, {data['unpack_MB']:.0f} MB of tar unpacked.",
        "",
        "| unpacking | MB/s |",
        "|---|---:|",
        *(f"| {name} | {rate:.0f} |" for name, rate in rates.items()),
        "",
        f"| start of /bin/true ({args.rounds} interleaved rounds) | median ms |",
        "|---|---:|",
        f"| image, first start (empty store: unpack, verify, compile) | "
        f"{data['first_start_ms']:.0f} |",
        *(f"| {name} | {ms:.0f} |" for name, ms in data["podman_first_ms"].items()),
        *(f"| {name} | {ms:.1f} |" for name, ms in medians.items()),
        "",
    ]
    (RESULTS / "images.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
