"""Default bounds a user can see from inside a real container, and how to lift them.

Each tmpfs pflask mounts has a size and an inode cap (the kernel's defaults
are half the host's RAM each); a cgroup pflask makes has a task limit; a
resource limit above what pflask may set is refused with the reason.  The
tmpfs sizes are percentages of the host's RAM that the kernel resolves, so
the expected figures are computed here from /proc/meminfo the same way.
"""

from __future__ import annotations

import glob
import os
import resource
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import describe, run_pflask
from helpers import shell as sh

from pflask.compile import compiler
from pflask.compile import plan as p
from pflask.compile.context import Context
from pflask.load import manifest as records
from pflask.run import cgroups

pytestmark = pytest.mark.usefixtures("host_clean")

TAG = str(os.getpid())
USERS = [None, "pflask-test"]


def manifest(directory: Path, name: str, **fields: Any) -> Path:
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "name": f"{name}-{TAG}", **fields}))
    return path


def percent_of_ram_kib(percent: int) -> int:
    """What the kernel makes of tmpfs `size=N%`: N% of the RAM's pages, rounded up."""
    with open("/proc/meminfo") as f:
        total_kib = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    page_kib = os.sysconf("SC_PAGE_SIZE") // 1024
    pages = total_kib // page_kib
    return -(-pages * percent // 100) * page_kib


def tmpfs_at(mountinfo: str, target: str) -> list[dict[str, str]]:
    """The super options of each tmpfs mounted at `target`, in mount order."""
    found = []
    for line in mountinfo.splitlines():
        fields = line.split()
        separator = fields.index("-")
        if fields[4] == target and fields[separator + 1] == "tmpfs":
            options = fields[separator + 3].split(",")
            found.append(dict(o.partition("=")[::2] for o in options))
    return found


# --- tmpfs sizes -------------------------------------------------------------------------


@pytest.mark.parametrize("user", USERS)
def test_run_shm_and_tmp_mounts_are_bounded_by_default(
    shared_tmp: Path, busybox_root: Path, user: str | None
) -> None:
    box = manifest(
        shared_tmp,
        "bounds-tmpfs",
        root={"path": str(busybox_root)},
        mounts=[{"type": "tmp", "target": "/tmp"}],
    )
    result = run_pflask("run", box, "--", "cat", "/proc/self/mountinfo", user=user)
    assert result.returncode == 0, describe(result)
    (run,) = tmpfs_at(result.stdout, "/run")
    (shm,) = tmpfs_at(result.stdout, "/dev/shm")
    (tmp,) = tmpfs_at(result.stdout, "/tmp")
    assert (run["size"], run["nr_inodes"], run["mode"]) == (
        f"{percent_of_ram_kib(10)}k",
        str(100 * 1024),
        "755",
    )
    assert (shm["size"], shm["nr_inodes"], shm.get("mode", "1777")) == (
        f"{percent_of_ram_kib(10)}k",
        str(100 * 1024),
        "1777",  # the kernel shows a mode only when it is not 1777
    )
    assert (tmp["size"], tmp["nr_inodes"]) == (f"{percent_of_ram_kib(25)}k", str(400 * 1024))


def test_a_full_dev_shm_says_so_and_the_host_keeps_its_memory(
    shared_tmp: Path, busybox_root: Path
) -> None:
    """Writing past the bound fails in the container with ENOSPC, as a full disk would."""
    box = manifest(
        shared_tmp,
        "bounds-shm-full",
        root={"path": str(busybox_root)},
        mounts=[{"type": "tmp", "target": "/dev/shm", "size": "4M"}],
    )
    script = "dd if=/dev/zero of=/dev/shm/fill bs=1M count=8 2>&1; df -k /dev/shm"
    result = run_pflask("run", box, "--", *sh(script))
    assert "No space left on device" in result.stdout, describe(result)
    assert result.stdout.splitlines()[-1].split()[1:3] == ["4096", "4096"]


def test_a_tmp_mount_at_run_or_dev_shm_replaces_pflasks_own(
    shared_tmp: Path, busybox_root: Path
) -> None:
    box = manifest(
        shared_tmp,
        "bounds-override",
        root={"path": str(busybox_root)},
        mounts=[
            {"type": "tmp", "target": "/dev/shm", "size": "2M"},
            {"type": "tmp", "target": "/run/", "mode": "0700", "noexec": True},
        ],
    )
    result = run_pflask("run", box, "--", "cat", "/proc/self/mountinfo")
    assert result.returncode == 0, describe(result)
    (shm,) = tmpfs_at(result.stdout, "/dev/shm")  # one tmpfs, not one stacked on another
    (run,) = tmpfs_at(result.stdout, "/run")
    # What the mount says replaces pflask's defaults; the rest stays as pflask has it.
    assert (shm["size"], shm["nr_inodes"]) == ("2048k", str(100 * 1024))
    assert "mode" not in shm  # 1777, as pflask has it
    assert (run["size"], run["mode"]) == (f"{percent_of_ram_kib(10)}k", "700")
    line = next(x for x in result.stdout.splitlines() if x.split()[4] == "/run")
    assert {"nosuid", "nodev", "noexec"} <= set(line.split()[5].split(","))


def test_cgroup_memory_bounds_every_tmpfs_at_once(shared_tmp: Path, busybox_root: Path) -> None:
    """tmpfs pages are charged to the writer's memory cgroup: the one hard bound."""
    box = manifest(
        shared_tmp, "bounds-memshm", root={"path": str(busybox_root)}, cgroup={"memory": "32M"}
    )
    script = "dd if=/dev/zero of=/dev/shm/x bs=1M count=64; echo written"
    result = run_pflask("run", box, "--", *sh(script))
    assert result.returncode == 137, describe(result)
    assert "written" not in result.stdout
    assert "OOM killer killed a process" in result.stderr


def run_mounts(data: dict[str, Any]) -> list[p.MountFs]:
    the_plan = compiler.compile_plan(
        records.from_data({"name": "c", **data}), Context(uid=0, gid=0)
    )
    return [s for s in the_plan.steps if isinstance(s, p.MountFs) and s.target == "/run"]


def test_the_last_tmp_mount_at_run_is_the_one() -> None:
    """Stacked, the last would be all the container sees: it replaces pflask's, alone."""
    tmp = [{"type": "tmp", "target": "/run", "size": n} for n in ("1M", "2M")]
    (run,) = run_mounts({"root": {"path": "/r"}, "mounts": tmp})
    assert run.data == "mode=755,size=2097152,nr_inodes=100k"
    # With the host's root pflask mounts no /run: a tmp mount there is the user's own.
    (run,) = run_mounts({"mounts": tmp[:1]})
    assert run.data == "size=1048576,nr_inodes=400k"


@pytest.mark.parametrize("user", USERS)
def test_the_ephemeral_roots_changes_are_bounded(
    shared_tmp: Path, busybox_root: Path, user: str | None
) -> None:
    default = manifest(
        shared_tmp, "bounds-eph", root={"path": str(busybox_root), "ephemeral": True}
    )
    result = run_pflask("run", default, "--", "df", "-k", "/", user=user)
    assert result.returncode == 0, describe(result)
    assert int(result.stdout.splitlines()[-1].split()[1]) == percent_of_ram_kib(25)

    sized = manifest(
        shared_tmp,
        "bounds-eph-8m",
        root={"path": str(busybox_root), "ephemeral": True, "size": "8M"},
    )
    script = "df -k /; dd if=/dev/zero of=/big bs=1M count=16 2>&1; echo status=$?"
    result = run_pflask("run", sized, "--", *sh(script), user=user)
    assert result.returncode == 0, describe(result)
    assert result.stdout.splitlines()[1].split()[1] == "8192"
    assert "No space left on device" in result.stdout
    assert "status=1" in result.stdout
    assert not (busybox_root / "big").exists()


def test_root_size_without_ephemeral_is_a_manifest_error(
    shared_tmp: Path, busybox_root: Path
) -> None:
    box = manifest(shared_tmp, "bounds-size", root={"path": str(busybox_root), "size": "1G"})
    result = run_pflask("run", box, "--", "true")
    assert result.returncode == 2, describe(result)
    assert result.stderr == (
        f"pflask: {box}:4:9: root.size: bounds the ephemeral root's changes: "
        "it needs ephemeral: true\n"
    )


def test_an_overlay_without_upper_is_bounded(shared_tmp: Path, busybox_root: Path) -> None:
    lower = shared_tmp / "lower"
    lower.mkdir()
    box = manifest(
        shared_tmp,
        "bounds-overlay",
        root={"path": str(busybox_root)},
        mounts=[{"type": "overlay", "target": "/tmp", "lower": [str(lower)]}],
    )
    result = run_pflask("run", box, "--", "df", "-k", "/tmp")
    assert result.returncode == 0, describe(result)
    assert int(result.stdout.splitlines()[-1].split()[1]) == percent_of_ram_kib(25)


# --- the task limit of a cgroup pflask makes ------------------------------------------------


def own_groups(stdout: str) -> dict[str, str]:
    """/proc/self/cgroup as {controllers: path}."""
    return {line.split(":")[1]: line.split(":", 2)[2] for line in stdout.splitlines()}


def test_a_created_cgroup_has_a_pids_limit_by_default(shared_tmp: Path, busybox_root: Path) -> None:
    """A fork bomb stops at 4096 tasks instead of taking the host's pids."""
    box = manifest(
        shared_tmp,
        "bounds-pids",
        root={"path": str(busybox_root)},
        cgroup={"memory": "1G"},
        namespaces={"cgroup": False},
    )
    script = (
        "cat /proc/self/cgroup; echo ---; "
        "i=0; while [ $i -lt 5000 ]; do sleep 30 & i=$((i+1)); echo $i; done"
    )
    result = run_pflask("run", box, "--", *sh(script), timeout=120)
    head, _, counts = result.stdout.partition("---\n")
    groups = own_groups(head)
    pids_path = groups.get("pids", groups[""])  # a v1 pids hierarchy, else cgroup2
    assert f"/pflask-bounds-pids-{TAG}-" in pids_path, head
    started = int(counts.split()[-1])
    # PID 1 (the reaper) and the shell count too; the fork that fails is the 4095th.
    assert 4090 <= started < 4096, (started, result.stderr[-500:])
    assert "can't fork" in result.stderr, result.stderr[-500:]


def test_pids_max_lifts_the_default(shared_tmp: Path, busybox_root: Path) -> None:
    """On this hybrid host the pids controller is v1's: no group is made there."""
    box = manifest(
        shared_tmp,
        "bounds-nopids",
        root={"path": str(busybox_root)},
        cgroup={"memory": "1G", "pids": "max"},
        namespaces={"cgroup": False},
    )
    result = run_pflask("run", box, "--", "cat", "/proc/self/cgroup")
    assert result.returncode == 0, describe(result)
    groups = own_groups(result.stdout)
    assert "pflask-bounds-nopids" in groups["memory"]
    assert "pflask-" not in groups["pids"]  # no group there: nothing limits the tasks
    plan = run_pflask("plan", box)
    assert "container moved in: memory=1G\n" in plan.stdout, plan.stdout


def test_the_default_is_skipped_where_the_host_has_no_pids_controller() -> None:
    """A cgroup2-only host whose tree does not offer pids: the container still runs."""
    layout = cgroups.Layout(
        v2=cgroups.Hierarchy(
            version=2, mount="/sys/fs/cgroup/unified", controllers=(), cgroup="/nonexistent"
        )
    )
    assert not cgroups._offers(layout, "pids")
    pids = cgroups.detect().v1_hierarchy("pids")
    assert pids is not None
    assert cgroups._offers(cgroups.detect(), "pids") == os.access(pids.cgroup, os.W_OK)


# --- resource limits above pflask's own hard limit -------------------------------------------


def nofile_box(directory: Path, root: Path, name: str, value: int) -> Path:
    return manifest(
        directory,
        name,
        root={"path": str(root)},
        security={"rlimits": {"nofile": value}},
    )


def test_an_ordinary_user_asking_for_more_than_its_hard_limit_is_told_why(
    shared_tmp: Path, busybox_root: Path
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # pflask-test inherits it
    assert hard < 1048576
    box = nofile_box(shared_tmp, busybox_root, "bounds-nofile", 1048576)
    result = run_pflask("run", box, "--", "true", user="pflask-test")
    assert result.returncode == 125, describe(result)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert (
        "setrlimit(2) nofile=1048576:1048576 (above the hard limit pflask was started "
        in (lines[0])
    )
    assert (
        f"with, {hard}; raising it needs CAP_SYS_RESOURCE on the host: ask for {hard} "
        in (lines[0])
    )
    assert lines[0].endswith("EPERM (Operation not permitted)")
    # At the hard limit it works, as an ordinary user.
    box = nofile_box(shared_tmp, busybox_root, "bounds-nofile-ok", hard)
    result = run_pflask("run", box, "--", *sh("ulimit -n; ulimit -Hn"), user="pflask-test")
    assert result.returncode == 0, describe(result)
    assert result.stdout.split() == [str(hard), str(hard)]


def has_cap_sys_resource() -> bool:
    with open("/proc/self/status") as f:
        effective = next(line for line in f if line.startswith("CapEff:")).split()[1]
    return bool(int(effective, 16) & (1 << 24))  # CAP_SYS_RESOURCE


def test_root_raises_the_hard_limit_only_with_cap_sys_resource(
    shared_tmp: Path, busybox_root: Path
) -> None:
    """Root too: only CAP_SYS_RESOURCE raises a hard limit (this VM's root may lack it,
    in its bounding set), and nofile never goes past fs.nr_open."""
    nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    box = nofile_box(shared_tmp, busybox_root, "bounds-nofile-root", nr_open)
    result = run_pflask("run", box, "--", *sh("ulimit -n"))
    if has_cap_sys_resource() or hard >= nr_open:
        assert result.returncode == 0, describe(result)
        assert result.stdout.split() == [str(nr_open)]
    else:
        assert result.returncode == 125, describe(result)
        assert f"(above the hard limit pflask was started with, {hard}; raising it " in (
            result.stderr
        )
    box = nofile_box(shared_tmp, busybox_root, "bounds-nofile-big", nr_open + 1)
    result = run_pflask("run", box, "--", "true")
    assert result.returncode == 125, describe(result)
    assert f"(above fs.nr_open, {nr_open}, the most the kernel allows: ask for less)" in (
        result.stderr
    )


def test_no_leftover_groups() -> None:
    """The groups of this module's containers are gone (host_clean checks the rest)."""
    layout = cgroups.detect()
    parents = [h.cgroup for h in layout.hierarchies()]
    assert not [g for p in parents for g in glob.glob(f"{p}/pflask-bounds-*-{TAG}-*")]
