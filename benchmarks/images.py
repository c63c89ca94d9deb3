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
  and ephemeral), and `podman run --rootfs` of that directory where podman
  works.  Interleaved rounds (startup.interleaved), medians.

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
        if (
            shutil.which("podman")
            and subprocess.run(
                ["podman", "run", "--rm", "--rootfs", str(directory), "/bin/true"],
                capture_output=True,
                check=False,
            ).returncode
            == 0
        ):
            commands["podman run --rootfs (same directory)"] = [
                "podman",
                "run",
                "--rm",
                "--rootfs",
                str(directory),
                "/bin/true",
            ]
        samples = interleaved(commands, args.rounds)
    medians = {name: statistics.median(values) for name, values in samples.wall.items()}
    data = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Linux {platform.release()}",
        "python": platform.python_version(),
        "rounds": args.rounds,
        "unpack_MB": rates.pop("MB"),
        "unpack_MB_per_s": rates,
        "first_start_ms": statistics.median(first) * 1000,
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
        *(f"| {name} | {ms:.1f} |" for name, ms in medians.items()),
        "",
    ]
    (RESULTS / "images.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
