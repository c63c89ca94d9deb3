"""pflask.run.cgroups against the real cgroup hierarchies of this host.

Everything here creates, limits and removes real cgroups and runs real
processes in them.  The fabricated inputs are mountinfo text for the layouts
this machine does not have (pure v1, pure v2, a hybrid seen from inside a
container), which `detect` parses without touching files, and one directory
tree standing in for a cgroup2 group with memory, pids and cpu files (this
kernel binds those controllers to v1).  The v1 code path runs on the real v1
hierarchies with the v2 tree left out (`layout.replace(v2=None)`); the v2 code path
(placement, enabling controllers, attach, cgroup.kill, stale groups) on the
real cgroup2 tree with its one controller, hugetlb.

Needs root and a cgroup v1 or hybrid host with the memory, pids and cpu
controllers on v1 hierarchies (the development VM is hybrid); the tests that
depend on that skip elsewhere.  Every group a test makes is named `pytest-*`,
and an autouse fixture fails the test if one is left behind.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import load_error

from pflask.kernel import controllers
from pflask.kernel.libc import SyscallError
from pflask.run import cgroups

MiB = 1 << 20

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="cgroups need root")


def _layout() -> cgroups.Layout:
    return cgroups.detect()


def _ours() -> set[str]:
    """The `pflask-pytest-*` groups where `create` makes them, in every hierarchy."""
    found: set[str] = set()
    for hierarchy in _layout().hierarchies():
        try:
            names = os.listdir(hierarchy.cgroup)
        except FileNotFoundError:
            continue
        found.update(
            os.path.join(hierarchy.cgroup, n) for n in names if n.startswith("pflask-pytest-")
        )
    return found


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    before = _ours()
    yield
    leaked = _ours() - before
    for path in leaked:  # do not leave them on the host even when failing
        cgroups._remove_tree(path, 2 if "/unified/" in path else 1, time.monotonic() + 2)
    assert not leaked, f"cgroup directories left behind: {sorted(leaked)}"


def _need_v1(*controllers: str) -> cgroups.Layout:
    layout = _layout()
    missing = [c for c in controllers if layout.v1_hierarchy(c) is None]
    if missing:
        pytest.skip(f"no v1 hierarchy for {', '.join(missing)} on this host")
    return layout


def _dir(layout: cgroups.Layout, controller: str, group: cgroups.Group) -> str:
    """The group's directory in the v1 hierarchy of `controller`."""
    hierarchy = layout.v1_hierarchy(controller)
    assert hierarchy is not None
    return os.path.join(hierarchy.cgroup, group.name)


def _need_v2() -> cgroups.Layout:
    layout = _layout()
    if layout.v2 is None:
        pytest.skip("no cgroup2 hierarchy on this host")
    return layout


def _spawn(code: str) -> subprocess.Popen[bytes]:
    """A Python child that runs `code` only once `_go` is called, i.e. after attach."""
    prelude = "import sys\nsys.stdin.buffer.read(1)\n"
    return subprocess.Popen(
        [sys.executable, "-c", prelude + code], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )


def _go(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"g")
    proc.stdin.close()
    proc.stdin = None  # so that wait() and communicate() leave it alone


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _counter(path: str, key: str) -> int:
    return cgroups._counter(_read(path), key)


# --- detection ----------------------------------------------------------------


def test_detect_this_host_is_hybrid() -> None:
    layout = _layout()
    if layout.mode != "hybrid":
        pytest.skip(f"this host is {layout.mode}, the development VM is hybrid")
    v1 = {c for h in layout.v1 for c in h.controllers}
    expected = {"cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"}
    assert expected | {"name=systemd"} <= v1
    assert layout.v2 is not None and layout.v2.mount == "/sys/fs/cgroup/unified"
    # A controller bound to v1 is not offered by the v2 tree.
    assert not set(layout.v2.controllers) & v1
    # The memory group we are in (maybe not the root) is where groups are made.
    own = dict(line.split(":", 2)[1:] for line in _read("/proc/self/cgroup").splitlines())
    memory = layout.v1_hierarchy("memory")
    assert memory is not None
    assert memory.cgroup == os.path.normpath(memory.mount + own["memory"])


# Fabricated: a v1-only host with co-mounted cpu,cpuacct, a hierarchy mounted
# twice (the bind mount is ignored) and a mount point with an escaped space.
V1_MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
25 22 0:22 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw shared:10 - cgroup cgroup rw,xattr,name=systemd
27 25 0:24 / /sys/fs/cgroup/cpu,cpuacct rw shared:11 - cgroup cgroup rw,cpu,cpuacct
28 25 0:25 / /sys/fs/cgroup/memory rw shared:12 - cgroup cgroup rw,memory
29 25 0:26 / /sys/fs/cgroup/pids\\040x rw shared:13 - cgroup cgroup rw,pids
30 22 0:25 /user.slice /srv/mem rw shared:12 - cgroup cgroup rw,memory
"""
V1_PROC_CGROUP = """\
4:pids:/user.slice/user-0.slice
3:memory:/user.slice
2:cpu,cpuacct:/
1:name=systemd:/user.slice/user-0.slice/session-1.scope
"""


def test_detect_fabricated_v1() -> None:
    layout = cgroups.detect(mountinfo=V1_MOUNTINFO, proc_cgroup=V1_PROC_CGROUP)
    assert layout.mode == "v1" and layout.v2 is None
    by_mount = {h.mount: h for h in layout.v1}
    assert set(by_mount) == {
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup/cpu,cpuacct",
        "/sys/fs/cgroup/memory",
        "/sys/fs/cgroup/pids x",
    }
    assert by_mount["/sys/fs/cgroup/cpu,cpuacct"].controllers == ("cpu", "cpuacct")
    assert by_mount["/sys/fs/cgroup/cpu,cpuacct"].cgroup == "/sys/fs/cgroup/cpu,cpuacct"
    assert by_mount["/sys/fs/cgroup/memory"].cgroup == "/sys/fs/cgroup/memory/user.slice"
    pids = by_mount["/sys/fs/cgroup/pids x"]
    assert pids.cgroup == "/sys/fs/cgroup/pids x/user.slice/user-0.slice"
    assert layout.v1_hierarchy("name=systemd") == by_mount["/sys/fs/cgroup/systemd"]
    assert layout.v1_hierarchy("cpuacct") == layout.v1_hierarchy("cpu")
    assert layout.v1_hierarchy("io") is None


# Fabricated: a pure v2 host (systemd's default), our shell in a session scope.
V2_MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
25 22 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec shared:9 - cgroup2 cgroup2 rw,nsdelegate
"""


def test_detect_fabricated_v2() -> None:
    layout = cgroups.detect(
        mountinfo=V2_MOUNTINFO,
        proc_cgroup="0::/user.slice/user-0.slice/session-3.scope\n",
        v2_controllers="cpuset cpu io memory pids\n",
    )
    assert layout.mode == "v2" and layout.v1 == ()
    assert layout.v2 == cgroups.Hierarchy(
        version=2,
        mount="/sys/fs/cgroup",
        controllers=("cpuset", "cpu", "io", "memory", "pids"),
        cgroup="/sys/fs/cgroup/user.slice/user-0.slice/session-3.scope",
    )


# Fabricated: a hybrid host seen from a container with a private cgroup
# namespace: the mounts show subtrees (root != /), /proc/self/cgroup is
# relative to them, and a bind mount of another subtree is skipped.
HYBRID_CONTAINER_MOUNTINFO = """\
600 500 0:50 / / rw - overlay overlay rw
610 600 0:60 / /sys/fs/cgroup rw - tmpfs tmpfs rw
611 610 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
612 610 0:36 /docker/abc /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids
613 610 0:38 /other /sys/fs/cgroup/unified ro - cgroup2 cgroup2 rw
614 610 0:38 /docker/abc /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
"""
HYBRID_CONTAINER_PROC_CGROUP = """\
8:pids:/docker/abc
4:memory:/docker/abc/inner
0::/docker/abc
"""


def test_detect_fabricated_hybrid_in_a_container() -> None:
    layout = cgroups.detect(
        mountinfo=HYBRID_CONTAINER_MOUNTINFO,
        proc_cgroup=HYBRID_CONTAINER_PROC_CGROUP,
        v2_controllers="",
    )
    assert layout.mode == "hybrid"
    memory, pids = layout.v1_hierarchy("memory"), layout.v1_hierarchy("pids")
    assert memory is not None and memory.cgroup == "/sys/fs/cgroup/memory/inner"
    assert pids is not None and pids.cgroup == "/sys/fs/cgroup/pids"
    assert layout.v2 is not None and layout.v2.cgroup == "/sys/fs/cgroup/unified"
    assert layout.v2.controllers == ()
    assert layout.replace(v2=None).mode == "v1" and layout.replace(v1=()).mode == "v2"


def test_owner_names_round_trip() -> None:
    name = cgroups.group_name("pytest-a-b")
    assert name.startswith(f"pflask-pytest-a-b-{os.getpid()}-")
    assert cgroups.parse_owner(name) == (os.getpid(), cgroups.start_time(os.getpid()))
    assert cgroups.parse_owner("pflask-x-12") is None
    assert cgroups.parse_owner("system.slice") is None


# --- input errors -------------------------------------------------------------


# The manifest's validation refuses them; cgroups.create takes what it checked.


def test_unknown_controller_is_a_value_error_with_a_suggestion() -> None:
    with pytest.raises(ValueError) as info:
        controllers.check_name("memroy")
    assert str(info.value) == "unknown cgroup controller 'memroy' (did you mean 'memory'?)"


@pytest.mark.parametrize(
    ("limit", "field"),
    [
        ("memory: 0", "cgroup.memory"),
        ("memory: 0K", "cgroup.memory"),
        ("memory: true", "cgroup.memory"),
        ("pids: 0", "cgroup.pids"),
        ("cpu: -1.0", "cgroup.cpu"),
    ],
)
def test_bad_limits_are_manifest_errors(tmp_path: Path, limit: str, field: str) -> None:
    assert f"{field}: " in load_error(tmp_path, f"version: 1\ncgroup: {{{limit}}}\n")


@pytest.mark.parametrize("name", ['""', "a/b", "..", '"a\\nb"', "x" * 65])
def test_bad_names_are_manifest_errors(tmp_path: Path, name: str) -> None:
    assert "name: " in load_error(tmp_path, f"version: 1\nname: {name}\n")


# --- limits on this host (v1 controllers, hybrid) -----------------------------


def test_memory_limit_oom_kills() -> None:
    _need_v1("memory")
    group = cgroups.create("pytest-oom", (), 64 * MiB, None, None)
    try:
        memory = group._memory
        assert memory is not None
        assert int(_read(f"{memory}/memory.limit_in_bytes")) == 64 * MiB
        if os.path.exists(f"{memory}/memory.memsw.limit_in_bytes"):
            assert int(_read(f"{memory}/memory.memsw.limit_in_bytes")) == 64 * MiB
        proc = _spawn("chunks = [b'\\x01' * (1 << 20) for _ in range(200)]\nprint('survived')\n")
        group.attach(proc.pid)
        assert not group.oom_killed()
        _go(proc)
        assert proc.stdout is not None
        out = proc.stdout.read()
        assert proc.wait(timeout=10) == -9 and b"survived" not in out
        assert group.oom_killed()
    finally:
        group.remove()
    assert not any(os.path.exists(p) for p in group.paths)


def test_pids_limit_makes_fork_fail_and_remove_kills_the_rest() -> None:
    _need_v1("pids")
    group = cgroups.create("pytest-pids", (), None, 20, None)
    proc = _spawn(
        "import os, time\n"
        "n, err = 0, None\n"
        "for _ in range(50):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError as e:\n"
        "        err = e.errno\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(30)\n"
        "        os._exit(0)\n"
        "    n += 1\n"
        "print(n, err, flush=True)\n"
        "time.sleep(30)\n"
    )
    try:
        group.attach(proc.pid)
        _go(proc)
        assert proc.stdout is not None
        forked, err = proc.stdout.readline().decode().split()
        assert (int(forked), err) == (19, str(errno.EAGAIN))  # 20 tasks with the parent
        pids_dir = next(p for p in group.paths if p.startswith("/sys/fs/cgroup/pids/"))
        assert int(_read(f"{pids_dir}/pids.current")) == 20
        assert _counter(f"{pids_dir}/pids.events", "max") >= 1
        start = time.monotonic()
        group.remove()  # 20 live tasks: killed, then removed
        elapsed = time.monotonic() - start
    finally:
        group.remove()
        proc.wait(timeout=5)
    assert proc.returncode == -9
    assert elapsed < 1.0
    assert not any(os.path.exists(p) for p in group.paths)


def test_cpu_limit_throttles() -> None:
    layout = _need_v1("cpu", "cpuacct")
    group = cgroups.create("pytest-cpu", ("cpuacct",), None, None, 0.2)
    try:
        cpu, acct = _dir(layout, "cpu", group), _dir(layout, "cpuacct", group)
        assert cpu in group.paths and acct in group.paths
        assert int(_read(f"{cpu}/cpu.cfs_quota_us")) == 20000
        assert int(_read(f"{cpu}/cpu.cfs_period_us")) == 100000
        proc = _spawn("import time\nt = time.monotonic()\nwhile time.monotonic() - t < 1.0: pass\n")
        group.attach(proc.pid)
        _go(proc)
        assert proc.wait(timeout=10) == 0
        assert _counter(f"{cpu}/cpu.stat", "nr_throttled") > 0
        used = int(_read(f"{acct}/cpuacct.usage")) / 1e9
        assert 0.1 < used < 0.4, used
    finally:
        group.remove()


def test_remove_takes_subgroups_made_inside() -> None:
    """A container (systemd, say) makes groups of its own inside ours."""
    layout = _need_v1("memory")
    group = cgroups.create("pytest-nested", ("memory",), None, None, None)
    proc = _spawn("import time\ntime.sleep(30)\n")
    try:
        inner = os.path.join(_dir(layout, "memory", group), "inner", "deeper")
        os.makedirs(inner)
        with open(f"{inner}/cgroup.procs", "w") as f:
            f.write(str(proc.pid))
    finally:
        group.remove()
        proc.wait(timeout=5)
    assert proc.returncode == -9
    assert not any(os.path.exists(p) for p in group.paths)


def test_failed_limit_names_the_file_and_undoes() -> None:
    layout = _need_v1("cpu", "memory")
    with pytest.raises(SyscallError) as info:
        cgroups.create("pytest-undo", ("memory",), None, None, 0.001)  # 100 us < 1 ms minimum
    assert info.value.errno == errno.EINVAL
    assert "cpu.cfs_quota_us (100)" in str(info.value) and "EINVAL" in str(info.value)
    # A layout that claims the cpu hierarchy has pids: pids.max is missing there.
    cpu = layout.v1_hierarchy("cpu")
    assert cpu is not None
    wrong = cgroups.Layout(v1=(cpu.replace(controllers=("pids",)),))
    with pytest.raises(SyscallError) as info:
        cgroups.create("pytest-undo", (), None, 20, None, layout=wrong)
    assert info.value.errno == errno.ENOENT
    assert str(info.value).startswith(f"open {cpu.cgroup}/pflask-pytest-undo-")
    assert "/pids.max (20): ENOENT" in str(info.value)
    # The no_leftovers fixture checks that the directories went away again.


# --- forced v1 and the v2 code path -------------------------------------------


def test_forced_v1_layout() -> None:
    layout = _need_v1("memory", "pids", "cpu").replace(v2=None)
    group = cgroups.create("pytest-v1", ("freezer",), 32 * MiB, 10, 0.5, layout=layout)
    proc = _spawn("import time\ntime.sleep(30)\n")
    try:
        mounts = {h.mount for h in layout.v1}
        assert all(os.path.dirname(p).startswith(tuple(mounts)) for p in group.paths)
        assert not any("/unified/" in p for p in group.paths)
        group.attach(proc.pid)
        own = _read(f"/proc/{proc.pid}/cgroup")
        assert f"pids:/{group.name}" in own or f"/{group.name}\n" in own
    finally:
        group.remove()
        proc.wait(timeout=5)
    # v1 has no hierarchy for a v2-only controller here.
    with pytest.raises(SyscallError, match="controller 'io' is not mounted"):
        cgroups.create("pytest-v1io", ("io",), None, None, None, layout=layout)


def test_v2_group_attach_and_kill() -> None:
    layout = _need_v2().replace(v1=())
    assert layout.v2 is not None
    # freezer is part of every v2 group (cgroup.freeze): nothing to enable.
    group = cgroups.create("pytest-v2", ("freezer",), None, None, None, layout=layout)
    proc = _spawn("import time\ntime.sleep(30)\n")
    try:
        assert group.paths == (os.path.join(layout.v2.cgroup, group.name),)
        group.attach(proc.pid)
        relative = group.paths[0][len(layout.v2.mount) :]
        assert f"0::{relative}\n" in _read(f"/proc/{proc.pid}/cgroup")
        assert _read(f"{group.paths[0]}/cgroup.procs").split() == [str(proc.pid)]
        assert not group.oom_killed()
    finally:
        group.remove()  # the process is still running: cgroup.kill
        proc.wait(timeout=5)
    assert proc.returncode == -9
    assert not os.path.exists(group.paths[0])
    group.remove()  # idempotent


def test_v2_enables_an_available_controller() -> None:
    layout = _need_v2().replace(v1=())
    assert layout.v2 is not None
    if "hugetlb" not in layout.v2.controllers:
        pytest.skip("the cgroup2 tree here offers no hugetlb controller")
    control = f"{layout.v2.cgroup}/cgroup.subtree_control"
    before = _read(control).split()
    group = cgroups.create("pytest-v2h", ("hugetlb",), None, None, None, layout=layout)
    try:
        assert "hugetlb" in _read(control).split()
        assert "hugetlb" in _read(f"{group.paths[0]}/cgroup.controllers").split()
    finally:
        group.remove()
        if "hugetlb" not in before:  # leave the host as it was
            with open(control, "w") as f:
                f.write("-hugetlb")


def test_v2_memory_limit_without_the_controller_is_a_clear_error() -> None:
    layout = _need_v2().replace(v1=())
    assert layout.v2 is not None
    if "memory" in layout.v2.controllers:
        pytest.skip("the cgroup2 tree here has the memory controller")
    with pytest.raises(SyscallError) as info:
        cgroups.create("pytest-v2m", (), 64 * MiB, None, None, layout=layout)
    text = str(info.value)
    assert info.value.errno == errno.ENOENT
    assert text.startswith(f"write {layout.v2.cgroup}/cgroup.subtree_control (+memory): ")
    assert f"'memory' is not in {layout.v2.cgroup}/cgroup.controllers" in text
    if layout.v1_hierarchy("memory") is not None:  # hybrid: say where it went
        assert "it is bound to cgroup v1 hierarchy" in text
    assert text.endswith("ENOENT (No such file or directory)")


def test_nothing_mounted() -> None:
    with pytest.raises(SyscallError, match="no cgroup hierarchy is mounted"):
        cgroups.create("pytest-none", (), None, None, None, layout=cgroups.Layout())


# --- stale groups -------------------------------------------------------------


def test_clean_stale_removes_dead_owners_only() -> None:
    layout = _need_v1("pids")
    pids = layout.v1_hierarchy("pids")
    assert pids is not None
    child = os.fork()
    if child == 0:  # a pflask that dies without cleaning up
        try:
            cgroups.create("pytest-dead", ("pids",), None, None, None)
            os._exit(0)
        finally:
            os._exit(1)
    assert os.waitpid(child, 0)[1] == 0
    dead = [p for p in _ours() if f"pflask-pytest-dead-{child}-" in p]
    assert dead and any(p.startswith(pids.cgroup) for p in dead)
    # Our pid but another start time: a previous process that had our pid.
    reused = os.path.join(pids.cgroup, f"pflask-pytest-reused-{os.getpid()}-1")
    os.mkdir(reused)
    alive = cgroups.create("pytest-alive", ("pids",), None, None, None)
    try:
        removed = cgroups.clean_stale()
        assert set(dead) | {reused} <= set(removed)
        assert not any(p in removed for p in alive.paths)
        assert all(os.path.isdir(p) for p in alive.paths)
        assert not any(os.path.exists(p) for p in [*dead, reused])
    finally:
        alive.remove()


# --- v2 placement: beside a cgroup that has processes ---------------------------


@pytest.fixture
def v2_slice() -> Iterator[tuple[cgroups.Layout, str, subprocess.Popen[bytes]]]:
    """`pytest-slice/leaf` in the real cgroup2 tree with a process in the leaf, as a
    systemd slice with a session scope; the layout says we live in the leaf.  hugetlb,
    the one controller this kernel leaves to cgroup2, is switched off again after."""
    layout = _need_v2()
    assert layout.v2 is not None
    top = os.path.join(layout.v2.mount, f"pytest-slice-{os.getpid()}")
    os.makedirs(f"{top}/leaf")
    before = _read(f"{layout.v2.mount}/cgroup.subtree_control").split()
    sleeper = _spawn("import time\ntime.sleep(30)\n")
    try:
        with open(f"{top}/leaf/cgroup.procs", "w") as f:
            f.write(str(sleeper.pid))
        forced = cgroups.Layout(v2=layout.v2.replace(cgroup=f"{top}/leaf"))
        yield forced, top, sleeper
    finally:
        sleeper.kill()
        sleeper.wait()
        for path in (f"{top}/leaf", top):
            cgroups._remove_tree(path, 2, time.monotonic() + 2)
        if "hugetlb" not in before:
            try:
                with open(f"{layout.v2.mount}/cgroup.subtree_control", "w") as f:
                    f.write("-hugetlb")
            except OSError:
                pass  # another test's group uses it right now: it stays on, harmlessly


def test_v2_group_needing_a_controller_goes_beside_a_cgroup_with_processes(
    v2_slice: tuple[cgroups.Layout, str, subprocess.Popen[bytes]],
) -> None:
    layout, top, sleeper = v2_slice
    assert layout.v2 is not None
    assert cgroups.v2_parent(layout.v2, controllers=False) == f"{top}/leaf"
    assert cgroups.v2_parent(layout.v2, controllers=True) == top
    plain = cgroups.create("pytest-plain", ("freezer",), None, None, None, layout=layout)
    try:  # nothing to enable: below our own cgroup, processes or not
        assert plain.paths == (f"{top}/leaf/{plain.name}",)
    finally:
        plain.remove()
    group = cgroups.create("pytest-beside", ("hugetlb",), None, None, None, layout=layout)
    try:
        assert group.paths == (f"{top}/{group.name}",)
        # Enabled from the root down to the group's parent.
        assert "hugetlb" in _read(f"{layout.v2.mount}/cgroup.subtree_control").split()
        assert "hugetlb" in _read(f"{top}/cgroup.subtree_control").split()
        assert "hugetlb" in _read(f"{group.paths[0]}/cgroup.controllers").split()
        group.attach(sleeper.pid)  # the kernel allows the move from leaf to sibling
        assert _read(f"{group.paths[0]}/cgroup.procs").split() == [str(sleeper.pid)]
    finally:
        group.remove()
    assert not os.path.exists(group.paths[0])


def test_clean_stale_looks_beside_a_cgroup_with_processes(
    v2_slice: tuple[cgroups.Layout, str, subprocess.Popen[bytes]],
) -> None:
    layout, top, _ = v2_slice
    child = os.fork()
    if child == 0:  # a pflask that dies without cleaning up
        try:
            cgroups.create("pytest-dead", ("hugetlb",), None, None, None, layout=layout)
            os._exit(0)
        finally:
            os._exit(1)
    assert os.waitpid(child, 0)[1] == 0
    (dead,) = (p for p in os.listdir(top) if p.startswith(f"pflask-pytest-dead-{child}-"))
    assert cgroups.clean_stale(layout) == [f"{top}/{dead}"]
    assert not os.path.exists(f"{top}/{dead}")


# --- v2 limits: files this kernel cannot give cgroup2 here -------------------------


def test_v2_limits_are_written_in_v2_terms(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """memory.max, memory.swap.max, pids.max, cpu.max and memory.events.

    Mocked, because this machine cannot have it: memory, pids and cpu are bound
    to v1 hierarchies here, so no cgroup2 group can offer those files.  The tree
    is a plain directory whose new groups get the kernel's interface files as
    empty regular files; everything else (placement, enabling, the writes, OOM
    detection) is the code that runs on a v2 host.
    """
    mount = os.path.join(tmp_path, "cgroup2")
    os.mkdir(mount)
    with open(f"{mount}/cgroup.subtree_control", "w") as f:
        f.write("cpu memory pids\n")
    files = ("cgroup.procs", "memory.max", "memory.swap.max", "pids.max", "cpu.max")
    real_mkdir = cgroups._mkdir

    def kernel_mkdir(hierarchy: cgroups.Hierarchy, parent: str, dirname: str) -> str:
        path = real_mkdir(hierarchy, parent, dirname)
        for name in files:
            open(os.path.join(path, name), "w").close()
        with open(os.path.join(path, "memory.events"), "w") as f:
            f.write("low 0\nhigh 0\nmax 3\noom 1\noom_kill 0\n")
        return path

    monkeypatch.setattr(cgroups, "_mkdir", kernel_mkdir)
    v2 = cgroups.Hierarchy(
        version=2, mount=mount, controllers=("cpu", "memory", "pids"), cgroup=mount
    )
    group = cgroups.create("pytest-v2f", (), 64 * MiB, 50, 1.5, layout=cgroups.Layout(v2=v2))
    path = os.path.join(mount, group.name)
    assert group.paths == (path,)
    written = {name: _read(f"{path}/{name}") for name in files[1:]}
    assert written == {
        "memory.max": str(64 * MiB),
        "memory.swap.max": "0",
        "pids.max": "50",
        "cpu.max": "150000 100000",
    }
    assert not group.oom_killed()
    with open(f"{path}/memory.events", "w") as f:
        f.write("oom 2\noom_kill 1\n")
    assert group.oom_killed()


def test_v2_cgroups_path_shares_and_swap(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OCI cgroups path on a v2 host: missing parents made (and removed
    again), an existing one joined and kept; cpu.shares as cpu.weight and
    memory+swap as memory.swap.max, both converted as runc converts them.
    Mocked as the test above, for the same reason (no v2 controllers here)."""
    mount = os.path.join(tmp_path, "cgroup2")
    os.mkdir(mount)
    with open(f"{mount}/cgroup.subtree_control", "w") as f:
        f.write("cpu memory pids\n")
    files = ("cgroup.procs", "cgroup.subtree_control", "memory.max", "memory.swap.max")
    files += ("cpu.weight",)
    real_mkdir = cgroups._mkdir

    def kernel_mkdir(hierarchy: cgroups.Hierarchy, parent: str, dirname: str) -> str:
        path = real_mkdir(hierarchy, parent, dirname)
        for name in files:
            open(os.path.join(path, name), "w").close()
        return path

    monkeypatch.setattr(cgroups, "_mkdir", kernel_mkdir)
    v2 = cgroups.Hierarchy(
        version=2, mount=mount, controllers=("cpu", "memory", "pids"), cgroup=mount
    )
    layout = cgroups.Layout(v2=v2)
    made = cgroups.create(
        "c1", (), 64 * MiB, None, None, layout=layout, path="/pod/c1", shares=1024, swap=96 * MiB
    )
    leaf = f"{mount}/pod/c1"
    assert made.paths == (leaf,) and made.made == ((f"{mount}/pod", 2), (leaf, 2))
    assert _read(f"{leaf}/memory.swap.max") == str(32 * MiB)
    assert _read(f"{leaf}/cpu.weight") == "39"  # runc: 1 + (1024 - 2) * 9999 // 262142
    assert cgroups.shares_to_weight(2) == 1 and cgroups.shares_to_weight(262144) == 10000
    kept = cgroups.create("c2", (), None, None, None, layout=layout, path="pod/c2", swap=-1)
    assert kept.made == ((f"{mount}/pod/c2", 2),)  # pod exists: joined, not made
    assert _read(f"{mount}/pod/c2/memory.swap.max") == "max"
    for path, _, names in os.walk(f"{mount}/pod"):  # rmdir takes a kernel's files, not these
        for name in names:
            os.unlink(os.path.join(path, name))
    made.remove()
    assert os.path.isdir(f"{mount}/pod") and not os.path.exists(leaf)  # c2 still in it
    kept.remove()
    assert os.path.isdir(f"{mount}/pod")  # not made by c2's group: left
    with pytest.raises(SyscallError, match="memory\\+swap 10 is below the memory limit"):
        cgroups.create("c3", (), 64 * MiB, None, None, layout=layout, path="/c3", swap=10)


# --- what is asked for, and by whom -------------------------------------------------


def test_nothing_asked_on_a_v1_host_uses_the_named_hierarchy() -> None:
    layout = _need_v1("name=systemd").replace(v2=None)
    systemd = layout.v1_hierarchy("name=systemd")
    assert systemd is not None
    group = cgroups.create("pytest-named", (), None, None, None, layout=layout)
    try:
        assert group.paths == (os.path.join(systemd.cgroup, group.name),)
    finally:
        group.remove()
    unnamed = cgroups.Layout(v1=tuple(h for h in layout.v1 if h is not systemd))
    with pytest.raises(SyscallError, match="no controller or limit was asked for"):
        cgroups.create("pytest-named", (), None, None, None, layout=unnamed)


def test_classic_default_name_is_not_doubled() -> None:
    assert cgroups.group_name("pflask-123").startswith(f"pflask-123-{os.getpid()}-")
    assert cgroups.parse_owner(cgroups.group_name("pflask-123")) is not None


def _as_user(body: Callable[[], object]) -> tuple[int, str]:
    """Run `body` in a child that became uid/gid 1001 (no capabilities); its result or error."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(r)
        try:
            os.setgroups([])
            os.setresgid(1001, 1001, 1001)
            os.setresuid(1001, 1001, 1001)
            os.write(w, repr(body()).encode())
            os._exit(0)
        except BaseException as e:
            os.write(w, f"{type(e).__name__}: {e}".encode())
            os._exit(1)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), text


def test_without_delegation_an_ordinary_user_is_told_so_before_anything_is_made() -> None:
    layout = _need_v1("pids")
    pids = layout.v1_hierarchy("pids")
    assert pids is not None
    code, text = _as_user(lambda: cgroups.create("pytest-user", (), None, 20, None))
    assert code == 1
    assert text.startswith(
        f"SyscallError: mkdir {pids.cgroup}: not writable by uid 1001 (owned by uid 0, mode "
    )
    assert "no cgroup is delegated to this user" in text
    assert text.endswith("EACCES (Permission denied)")


def test_clean_stale_leaves_another_users_groups_alone() -> None:
    layout = _need_v1("pids")
    pids = layout.v1_hierarchy("pids")
    assert pids is not None
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)
    stale = os.path.join(pids.cgroup, f"pflask-pytest-root-{child}-1")
    os.mkdir(stale)
    try:
        code, text = _as_user(lambda: cgroups.clean_stale(layout.replace(v2=None)))
        assert (code, text) == (0, "[]")  # skipped, not an error
    finally:
        if os.path.isdir(stale):
            os.rmdir(stale)
