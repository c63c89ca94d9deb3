"""cgroups through `pflask run`: limits a user notices, cleanup, and the host's layouts.

Real containers on this hybrid host (v1 cpu, cpuacct, cpuset, memory, pids ...
beside an empty cgroup2 tree): the memory limit OOM-kills and pflask says
so, a fork loop stops at the pids limit, the CPU limit throttles (read from
the host while the container runs), the groups are gone afterwards, also
after pflask itself was SIGKILLed.  The pure v1 and pure v2 cases run real
containers too, each in a private mount namespace in which this host's
cgroup mounts are rearranged to look like such a host: only the v1
hierarchies, or only a cgroup2 tree at /sys/fs/cgroup.  The kernel is the
same, so on the "v2 host" memory, pids and cpu stay bound to v1 and only
hugetlb can be enabled; writing v2 limits is covered by test_cgroups.py.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import describe, pflask_cmd, run_as, run_pflask, wait_for
from helpers import shell as sh

from pflask.run import cgroups

pytestmark = pytest.mark.usefixtures("host_clean")

V2 = "/sys/fs/cgroup/unified"
TAG = str(os.getpid())  # in every name: sessions running at the same time do not collide


def manifest(directory: Path, name: str, **fields: Any) -> Path:
    """A manifest for the container `name`-TAG."""
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "name": f"{name}-{TAG}", **fields}))
    return path


@pytest.fixture
def root(busybox_root: Path) -> dict[str, str]:
    return {"path": str(busybox_root)}


def groups(name: str, parents: list[str] | None = None) -> list[str]:
    """The directories of container `name`'s groups where a pflask started by the test
    makes them (or below `parents`), in every hierarchy."""
    if parents is None:
        layout = cgroups.detect()
        parents = [h.cgroup for h in layout.hierarchies()]
        if layout.v2 is not None:
            parents.append(cgroups.v2_parent(layout.v2, controllers=True))
    found = {p for parent in parents for p in glob.glob(f"{parent}/pflask-{name}-{TAG}-*")}
    return sorted(found)


@pytest.fixture
def private_cgroup() -> Iterator[list[str]]:
    """A cgroup of the test's own, below the test's, in the memory and pids hierarchies and
    the cgroup2 tree.  A pflask started in it (`in_cgroup`) makes its groups there and
    looks for stale ones only there: other pflasks running on this machine at the same
    time clean up where they run, not here."""
    layout = cgroups.detect()
    hierarchies = [layout.v1_hierarchy("memory"), layout.v1_hierarchy("pids"), layout.v2]
    dirs = [os.path.join(h.cgroup, f"pft-lim-private-{TAG}") for h in hierarchies if h is not None]
    for path in dirs:
        os.mkdir(path)
    try:
        yield dirs
    finally:
        for path in dirs:
            remove_tree(path)


def remove_tree(path: str) -> None:
    """Remove a cgroup the test made, with whatever a failed test left inside it."""
    version = 2 if path.startswith(V2) else 1
    cgroups._remove_tree(path, version, time.monotonic() + 5)


def in_cgroup(dirs: list[str], argv: list[str]) -> list[str]:
    """`argv` started in the cgroups `dirs`."""
    enter = " ".join(f"echo $$ > {d}/cgroup.procs;" for d in dirs)
    return ["sh", "-c", f'{enter} exec "$@"', "sh", *argv]


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def counter(path: str, key: str) -> int:
    for line in read(path).splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value)
    raise AssertionError(f"no {key} in {path}")


def start(argv: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 10) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return proc.returncode, out, err


# --- limits ----------------------------------------------------------------------------


def test_memory_hog_is_oom_killed_and_reported(shared_tmp: Path, root: dict[str, str]) -> None:
    box = manifest(
        shared_tmp,
        "lim-oom",
        root=root,
        cgroup={"memory": "32M"},
        command=["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=100M", "count=1"],
    )
    result = run_pflask("run", box)
    assert result.returncode == 137, describe(result)  # 128 + SIGKILL
    assert (
        "pflask: the container hit its memory limit and the kernel's OOM killer killed a "
        "process in it (exit status 137)\n"
    ) in result.stderr
    assert groups("lim-oom") == []


def test_within_the_memory_limit_nothing_is_reported(
    shared_tmp: Path, root: dict[str, str]
) -> None:
    box = manifest(
        shared_tmp,
        "lim-fits",
        root=root,
        cgroup={"memory": "64M"},
        command=["/bin/dd", "if=/dev/zero", "of=/dev/null", "bs=8M", "count=4"],
    )
    result = run_pflask("run", box)
    assert result.returncode == 0, describe(result)
    assert "OOM" not in result.stderr


def test_fork_loop_stops_at_the_pids_limit(shared_tmp: Path, root: dict[str, str]) -> None:
    box = manifest(shared_tmp, "lim-pids", root=root, cgroup={"pids": 10})
    result = run_pflask("run", box, "--", *sh("while :; do sleep 10 & echo $!; done"))
    # PID 1 (the reaper) and the shell count too: 8 sleeps fit, the 9th fork fails.
    assert result.stdout.split() == [str(pid) for pid in range(3, 11)], describe(result)
    assert "can't fork: Resource temporarily unavailable" in result.stderr
    assert result.returncode == 2  # the shell's own status; the sleeps die with PID 1
    assert groups("lim-pids") == []


def test_cpu_limit_throttles_as_the_host_sees_it(shared_tmp: Path, root: dict[str, str]) -> None:
    box = manifest(
        shared_tmp,
        "lim-cpu",
        root=root,
        cgroup={"cpu": 0.2, "controllers": ["cpuacct"]},
    )
    proc = start([*pflask_cmd(), "run", str(box), "--", *sh("while :; do :; done")])
    try:
        layout = cgroups.detect()
        cpu, acct = layout.v1_hierarchy("cpu"), layout.v1_hierarchy("cpuacct")
        assert cpu is not None and acct is not None
        found = wait_for(lambda: glob.glob(f"{cpu.cgroup}/pflask-lim-cpu-{TAG}-*"), message="group")
        cpu_dir = found[0]
        acct_dir = os.path.join(acct.cgroup, os.path.basename(cpu_dir))
        assert read(f"{cpu_dir}/cpu.cfs_quota_us").strip() == "20000"
        wait_for(lambda: read(f"{acct_dir}/cgroup.procs").split(), message="container inside")
        used, t0 = int(read(f"{acct_dir}/cpuacct.usage")), time.monotonic()
        throttled = counter(f"{cpu_dir}/cpu.stat", "nr_throttled")
        time.sleep(1.0)
        used = int(read(f"{acct_dir}/cpuacct.usage")) - used
        elapsed = time.monotonic() - t0
        assert counter(f"{cpu_dir}/cpu.stat", "nr_throttled") >= throttled + 5
        assert used / 1e9 < 0.35 * elapsed  # 0.2 CPUs, where the loop alone would take 1
    finally:
        proc.send_signal(signal.SIGTERM)
        status, _, err = finish(proc)
    assert status == 143, err
    assert groups("lim-cpu") == []


def test_classic_cgroup_flag(busybox_root: Path) -> None:
    """`-g memory -g pids` as the original: a group in those hierarchies, not the others."""
    result = run_pflask(
        "-r", busybox_root, "-g", "memory", "-g", "pids", "--no-cgroupns", "--name", f"lim-g-{TAG}",
        "--", "cat", "/proc/self/cgroup",
    )  # fmt: skip
    assert result.returncode == 0, describe(result)
    inside = {line.split(":")[1]: line.split(":")[2] for line in result.stdout.splitlines()}
    own = {line.split(":")[1]: line.split(":")[2] for line in read("/proc/self/cgroup").split()}
    for controller in ("memory", "pids"):
        assert inside[controller].startswith(own[controller].rstrip("/") + f"/pflask-lim-g-{TAG}-")
    for controller in ("cpu", "cpuacct", "devices"):
        assert inside[controller] == own[controller]
    assert groups("lim-g") == []


def test_cgroup_namespace_shows_the_group_as_root(shared_tmp: Path, root: dict[str, str]) -> None:
    box = manifest(shared_tmp, "lim-ns", root=root, cgroup={"memory": "64M", "pids": 50})
    result = run_pflask("run", box, "--", "cat", "/proc/self/cgroup")
    assert result.returncode == 0, describe(result)
    lines = result.stdout.splitlines()
    assert len(lines) == len(read("/proc/self/cgroup").splitlines())
    assert all(line.endswith(":/") for line in lines), lines
    assert groups("lim-ns") == []


def test_unknown_controller_is_a_manifest_error(shared_tmp: Path, root: dict[str, str]) -> None:
    box = shared_tmp / "typo.yaml"
    box.write_text(
        f"version: 1\nroot: {{path: {root['path']}}}\ncgroup:\n  controllers: [memroy]\n"
    )
    result = run_pflask("run", box, "--", "true")
    assert result.returncode == 2
    assert result.stderr == (
        f"pflask: {box}:4:17: cgroup.controllers[0]: unknown cgroup controller 'memroy' "
        "(did you mean 'memory'?)\n"
    )


def test_a_controller_this_host_lacks_is_an_error(shared_tmp: Path, root: dict[str, str]) -> None:
    # net_cls is neither mounted as v1 here nor offered by cgroup2 (which has no such thing).
    box = manifest(shared_tmp, "lim-netcls", root=root, cgroup={"controllers": ["net_cls"]})
    result = run_pflask("run", box, "--", "true")
    assert result.returncode == 125
    assert "cgroup controller 'net_cls' is not mounted" in result.stderr


# --- cleanup -----------------------------------------------------------------------------


def test_stale_group_of_a_killed_pflask_is_removed_by_the_next_run(
    shared_tmp: Path, root: dict[str, str], private_cgroup: list[str]
) -> None:
    box = manifest(shared_tmp, "lim-killed", root=root, cgroup={"memory": "64M", "pids": 20})
    argv = [*pflask_cmd(), "run", str(box), "--", *sh("echo ready; exec sleep 60")]
    proc = start(in_cgroup(private_cgroup, argv))
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    left = groups("lim-killed", private_cgroup)
    assert len(left) == 3  # memory and pids (v1), and the cgroup2 tree
    proc.kill()
    finish(proc)
    # The container died with it (PDEATHSIG); its empty groups stay behind.
    wait_for(lambda: not any(read(f"{path}/cgroup.procs").split() for path in left))
    assert groups("lim-killed", private_cgroup) == left
    # The same container again (its name's stale state record goes too), with less.
    again = manifest(shared_tmp, "lim-killed", root=root, cgroup={"pids": 20})
    result = run_as(in_cgroup(private_cgroup, [*pflask_cmd(), "run", str(again), "--", "true"]))
    assert result.returncode == 0, describe(result)
    assert not any(os.path.exists(path) for path in left)
    assert groups("lim-killed", private_cgroup) == []


# --- layouts: pure v1 and pure v2 hosts ------------------------------------------------------

AS_V1_HOST = "umount /sys/fs/cgroup/unified"
AS_V2_HOST = "umount -R /sys/fs/cgroup && mount -t cgroup2 cgroup2 /sys/fs/cgroup"


def as_host(rearrange: str, argv: list[str], prelude: str = "") -> list[str]:
    """`argv` in a private mount namespace whose cgroup mounts `rearrange` changed."""
    script = f'{rearrange} && {prelude or "true"} && exec "$@"'
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", *argv]


def test_pure_v1_host(shared_tmp: Path, root: dict[str, str]) -> None:
    """Only v1 hierarchies: the limits work there and no cgroup2 group is made."""
    box = manifest(
        shared_tmp,
        "lim-v1",
        root=root,
        cgroup={"memory": "32M", "pids": 20},
        namespaces={"cgroup": False},
    )
    script = "cat /proc/self/cgroup; dd if=/dev/zero of=/dev/null bs=100M count=1"
    result = run_as(as_host(AS_V1_HOST, [*pflask_cmd(), "run", str(box), "--", *sh(script)]))
    assert result.returncode == 137, describe(result)
    assert "OOM killer killed a process" in result.stderr
    inside = dict(line.split(":", 2)[1:] for line in result.stdout.splitlines())
    assert f"/pflask-lim-v1-{TAG}-" in inside["memory"]
    assert f"/pflask-lim-v1-{TAG}-" in inside["pids"]
    assert inside[""] == read("/proc/self/cgroup").splitlines()[-1].split(":", 2)[2]
    assert groups("lim-v1") == []


@pytest.fixture
def v2_tree() -> Iterator[str]:
    """A v2 cgroup with a leaf below it, as a systemd slice with a session scope in it.

    pflask is started from the leaf: its own cgroup has processes (its own),
    so a group that needs a controller must go beside it.  hugetlb, the one
    controller this kernel leaves to cgroup2, is switched off again afterwards.
    """
    top = f"{V2}/pft-lim-v2-{TAG}"
    os.makedirs(f"{top}/leaf")
    before = read(f"{V2}/cgroup.subtree_control").split()
    try:
        yield top
    finally:
        remove_tree(top)
        if "hugetlb" not in before:
            try:
                with open(f"{V2}/cgroup.subtree_control", "w") as f:
                    f.write("-hugetlb")
            except OSError:
                pass  # another test's group uses it right now: it stays on, harmlessly


def test_pure_v2_host(shared_tmp: Path, root: dict[str, str], v2_tree: str) -> None:
    """Only a cgroup2 tree, pflask in a leaf with processes: the group goes beside it."""
    box = manifest(
        shared_tmp,
        "lim-v2",
        root=root,
        cgroup={"controllers": ["hugetlb"]},
    )
    enter = f"echo $$ > /sys/fs/cgroup/pft-lim-v2-{TAG}/leaf/cgroup.procs"
    script = "cat /proc/self/cgroup; ls /sys/fs/cgroup | grep -c hugetlb; echo ready; exec sleep 60"
    proc = start(as_host(AS_V2_HOST, [*pflask_cmd(), "run", str(box), "--", *sh(script)], enter))
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(len(read("/proc/self/cgroup").split()) + 2)]
        # Beside the leaf pflask runs in, not below it (that has processes).
        (group,) = glob.glob(f"{v2_tree}/pflask-lim-v2-{TAG}-*")
        assert glob.glob(f"{v2_tree}/leaf/pflask-*") == []
        assert "hugetlb" in read(f"{v2_tree}/cgroup.subtree_control").split()
        assert "hugetlb" in read(f"{group}/cgroup.controllers").split()
        assert len(read(f"{group}/cgroup.procs").split()) == 2  # PID 1 and the command
    finally:
        proc.send_signal(signal.SIGTERM)
        status, _, err = finish(proc)
    assert status == 143, err
    assert lines[-1] == "ready\n", (lines, err)
    assert all(line.endswith(":/\n") for line in lines[:-2]), lines  # the cgroup namespace
    assert int(lines[-2]) > 0  # hugetlb.* files in the container's own cgroup2 tree
    assert not os.path.exists(group)


def test_pure_v2_host_without_the_memory_controller(
    shared_tmp: Path, root: dict[str, str], v2_tree: str
) -> None:
    """A limit the host cannot apply is an error that says why, and leaves nothing."""
    box = manifest(shared_tmp, "lim-v2mem", root=root, cgroup={"memory": "64M"})
    enter = f"echo $$ > /sys/fs/cgroup/pft-lim-v2-{TAG}/leaf/cgroup.procs"
    result = run_as(as_host(AS_V2_HOST, [*pflask_cmd(), "run", str(box), "--", "true"], enter))
    assert result.returncode == 125, describe(result)
    # Enabling it for the group's parent needs it in the root first, where it is not.
    assert "write /sys/fs/cgroup/cgroup.subtree_control (+memory)" in result.stderr
    assert "'memory' is not in /sys/fs/cgroup/cgroup.controllers" in result.stderr
    assert "it is bound to cgroup v1 hierarchy" in result.stderr
    assert glob.glob(f"{v2_tree}/pflask-*") == []


# --- an unprivileged user ----------------------------------------------------------------------


def test_unprivileged_user_without_delegation_gets_a_clear_error(
    shared_tmp: Path, root: dict[str, str], test_user: Any
) -> None:
    """No cgroup is delegated to pflask-test on this host: say so, before making anything.

    A stale group of a root pflask lies where pflask-test's would go; it is
    not pflask-test's to remove and does not get in the way (the error is
    about delegation, not about it).  The next root run removes it.
    """
    layout = cgroups.detect()
    pids = layout.v1_hierarchy("pids")
    assert pids is not None
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    stale = f"{pids.cgroup}/pflask-lim-dead-{TAG}-{child}-1"
    os.mkdir(stale)
    box = manifest(shared_tmp, "lim-user", root=root, cgroup={"pids": 20})
    result = run_pflask("run", box, "--", "true", user="pflask-test")
    assert result.returncode == 125, describe(result)
    assert f"mkdir {pids.cgroup}: not writable by uid {test_user.uid} (owned by uid 0" in (
        result.stderr
    )
    assert "no cgroup is delegated to this user" in result.stderr
    assert result.stderr.rstrip().endswith("EACCES (Permission denied)")
    assert run_pflask("run", box, "--", "true").returncode == 0
    assert not os.path.exists(stale)
