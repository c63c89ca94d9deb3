"""Tests of the test infrastructure itself (conftest.py, helpers.py)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import (
    SESSION_ENV,
    TEST_USER,
    HostState,
    UserInfo,
    pflask_cmd,
    read_mounts,
    remove_tree,
    run_as,
    wait_for,
    wait_until_clean,
)


def sh(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=True, capture_output=True, text=True)


# --------------------------------------------------------------------------- pflask


def test_pflask_cmd_is_the_installed_script() -> None:
    script = Path(pflask_cmd()[0])
    assert script.parent == Path(sys.executable).parent
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!")


def test_tests_import_the_installed_pflask() -> None:
    import pflask

    checkout = Path(__file__).resolve().parent.parent
    direct = __import__("importlib.metadata").metadata.distribution("pflask")
    editable = '"editable": true' in (direct.read_text("direct_url.json") or "")
    if not editable:
        assert not Path(pflask.__file__).resolve().is_relative_to(checkout)


# --------------------------------------------------------------------------- busybox


def test_busybox_root_runs_a_shell(busybox_root: Path) -> None:
    result = subprocess.run(
        ["chroot", str(busybox_root), "/bin/busybox", "sh", "-c", "echo ok"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
    # Applets are reachable by name, through PATH, inside the root.
    result = subprocess.run(
        [
            "chroot",
            str(busybox_root),
            "/bin/sh",
            "-c",
            "id -un; cat /etc/hostname; ls /bin | wc -l",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/bin:/sbin:/usr/bin"},
    )
    assert result.returncode == 0, result.stderr
    name, hostname, applets = result.stdout.split()
    assert (name, hostname) == ("root", "busybox")
    assert int(applets) > 100


def test_busybox_root_layout(busybox_root: Path) -> None:
    for d in (
        "bin",
        "sbin",
        "usr/bin",
        "etc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "root",
        "home",
        "var",
    ):
        assert (busybox_root / d).is_dir(), d
    assert stat.S_IMODE((busybox_root / "tmp").stat().st_mode) == 0o1777
    assert (busybox_root / "bin/sh").resolve() == (busybox_root / "bin/busybox")
    passwd = (busybox_root / "etc/passwd").read_text().splitlines()
    assert "alice:x:1000:1000:Alice:/home/alice:/bin/sh" in passwd
    assert any(line.startswith("nobody:") for line in passwd)
    group = (busybox_root / "etc/group").read_text().splitlines()
    assert "staff:x:50:alice" in group
    assert "alice:x:1000:" in group


def test_busybox_root_is_readable_by_the_test_user(test_user: UserInfo, busybox_root: Path) -> None:
    result = run_as(["cat", str(busybox_root / "etc/passwd")], user=TEST_USER)
    assert result.returncode == 0, result.stderr
    result = run_as(["ls", str(busybox_root / "root")], user=TEST_USER)
    assert result.returncode == 0, result.stderr


def test_writable_busybox_root_is_a_private_copy(
    busybox_root: Path, writable_busybox_root: Path
) -> None:
    assert writable_busybox_root != busybox_root
    (writable_busybox_root / "etc/hostname").write_text("changed\n")
    assert (busybox_root / "etc/hostname").read_text() == "busybox\n"
    assert (writable_busybox_root / "bin/ls").is_symlink()
    assert (writable_busybox_root / "home/alice").stat().st_uid == 1000


# --------------------------------------------------------------------------- test user


def test_test_user_exists_with_subordinate_ranges(test_user: UserInfo) -> None:
    assert test_user.name == TEST_USER
    assert test_user.uid != 0 and test_user.gid != 0
    assert test_user.home.is_dir()
    assert test_user.subuid is not None and test_user.subuid[1] >= 65536
    assert test_user.subgid is not None and test_user.subgid[1] >= 65536


def test_run_as_the_test_user(test_user: UserInfo) -> None:
    result = run_as(
        [
            "sh",
            "-c",
            'id -u; id -g; echo "$HOME"; pwd; grep ^CapEff /proc/self/status; '
            'echo "${XDG_RUNTIME_DIR-unset}"; echo "$FOO"; cat',
        ],
        user=TEST_USER,
        input=b"from stdin\n",
        env={"FOO": "bar"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:4] == [
        str(test_user.uid),
        str(test_user.gid),
        str(test_user.home),
        str(test_user.home),
    ]
    assert lines[4].split() == ["CapEff:", "0000000000000000"]
    assert lines[5:] == ["unset", "bar", "from stdin"]


def test_run_as_kills_the_process_group_on_timeout(shared_tmp: Path) -> None:
    pidfile = shared_tmp / "pid"
    with pytest.raises(subprocess.TimeoutExpired) as info:
        run_as(["sh", "-c", f"sleep 60 & echo $! > {pidfile}; echo started; wait"], timeout=1)
    assert info.value.output == "started\n"
    pid = int(pidfile.read_text())
    wait_for(
        lambda: not Path(f"/proc/{pid}").exists() or _is_zombie(pid),
        5,
        message="the background sleep to die",
    )


def _is_zombie(pid: int) -> bool:
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat_line.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def test_shared_tmp_is_readable_by_the_test_user(test_user: UserInfo, shared_tmp: Path) -> None:
    assert "pflask" not in str(shared_tmp)
    (shared_tmp / "a-file").write_text("hello\n")
    result = run_as(["ls", str(shared_tmp)], user=TEST_USER)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "a-file\n"
    result = run_as(["cat", str(shared_tmp / "a-file")], user=TEST_USER)
    assert result.stdout == "hello\n"


def test_shared_tmp_is_fresh_per_test(shared_tmp: Path) -> None:
    assert list(shared_tmp.iterdir()) == []


# --------------------------------------------------------------------------- wait_for


def test_wait_for_returns_the_value() -> None:
    start = time.monotonic()
    assert wait_for(lambda: time.monotonic() - start > 0.1 and "done", 5) == "done"


def test_wait_for_times_out() -> None:
    with pytest.raises(AssertionError, match="the impossible"):
        wait_for(lambda: False, 0.2, message="the impossible")


# --------------------------------------------------------------------------- host state


def test_host_state_is_stable() -> None:
    assert wait_until_clean(HostState.capture()) == ""


def test_host_state_sees_a_tmpfs_mount(shared_tmp: Path) -> None:
    target = shared_tmp / "mnt dir"  # a space: mountinfo escapes it
    target.mkdir()
    before = HostState.capture()
    sh("mount", "-t", "tmpfs", "-o", "size=1m", "pft-test-tmpfs", str(target))
    try:
        assert (str(target), "tmpfs", "pft-test-tmpfs") in read_mounts()
        diff = before.diff(HostState.capture())
        assert diff == f"+ mounts: {target} (tmpfs from pft-test-tmpfs)"
    finally:
        sh("umount", str(target))
    assert wait_until_clean(before) == ""


def test_host_state_sees_a_network_link() -> None:
    name = f"pft{os.getpid() % 100000}"
    before = HostState.capture()
    # The dummy driver is not in every kernel; a bridge is.
    created = subprocess.run(["ip", "link", "add", name, "type", "dummy"], capture_output=True)
    if created.returncode != 0:
        sh("ip", "link", "add", name, "type", "bridge")
    try:
        assert before.diff(HostState.capture()) == f"+ links: {name}"
    finally:
        sh("ip", "link", "del", name)
    assert wait_until_clean(before) == ""


def test_host_state_sees_a_loop_device(shared_tmp: Path) -> None:
    image = shared_tmp / "disk.img"
    with image.open("wb") as f:
        f.truncate(1 << 20)
    before = HostState.capture()
    device = sh("losetup", "--find", "--show", str(image)).stdout.strip()
    try:
        diff = before.diff(HostState.capture())
        assert diff == f"+ loops: {Path(device).name} -> {image}"
    finally:
        sh("losetup", "--detach", device)
    assert wait_until_clean(before) == ""


def test_host_state_sees_processes() -> None:
    before = HostState.capture()
    child = subprocess.Popen(["sleep", "60"])
    try:
        diff = before.diff(HostState.capture())
        assert diff == f"+ processes: pid {child.pid}: sleep 60"
    finally:
        child.kill()
        child.wait()
    assert wait_until_clean(before) == ""


def _escaped_process(name: str, env: dict[str, str] | None = None) -> int:
    """Start `sleep 60` as *name*, re-parented away from this process."""
    out = subprocess.run(
        ["bash", "-c", f"(exec -a {name} sleep 60) </dev/null >/dev/null 2>&1 & echo $!"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    return int(out)


def test_host_state_sees_an_escaped_pflask_process() -> None:
    before = HostState.capture()
    ours = _escaped_process("pflask-escaped")
    other_env = {**os.environ, SESSION_ENV: "another-session"}
    theirs = _escaped_process("pflask-other-session", env=other_env)
    try:
        assert Path(f"/proc/{ours}/stat").read_text().split()[3] != str(os.getpid())
        assert before.diff(HostState.capture()) == f"+ processes: pid {ours}: pflask-escaped 60"
    finally:
        os.kill(ours, signal.SIGKILL)
        os.kill(theirs, signal.SIGKILL)
    assert wait_until_clean(before) == ""


def test_host_state_sees_named_entries_and_cgroups() -> None:
    entry = Path(f"/run/pflask-infra-probe-{os.getpid()}")
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        hierarchy = Path("/sys/fs/cgroup")  # cgroup v2
    else:
        hierarchy = Path("/sys/fs/cgroup/unified")  # hybrid
        if not hierarchy.is_dir():
            hierarchy = Path("/sys/fs/cgroup/pids")
    group = hierarchy / f"pflask-infra-probe-{os.getpid()}"
    before = HostState.capture()
    entry.mkdir()
    group.mkdir()
    try:
        diff = before.diff(HostState.capture()).splitlines()
        assert diff == [f"+ cgroups: {group}", f"+ entries: {entry}"]
    finally:
        entry.rmdir()
        group.rmdir()
    assert wait_until_clean(before) == ""


def test_host_state_sees_a_state_root_and_what_it_holds() -> None:
    root = Path("/run/pflask")
    assert not root.exists(), "a pflask state directory is left from elsewhere"
    before = HostState.capture()
    root.mkdir()
    try:
        assert before.diff(HostState.capture()) == f"+ entries: {root}"
        (root / "probe").mkdir()
        try:
            assert before.diff(HostState.capture()) == (
                f"+ entries: {root}\n+ entries: {root}/probe"
            )
        finally:
            (root / "probe").rmdir()
    finally:
        root.rmdir()


def test_remove_tree_does_not_descend_into_mounts(shared_tmp: Path) -> None:
    outside = shared_tmp / "precious"
    outside.mkdir()
    (outside / "keep").write_text("x")
    tree = shared_tmp / "tree"
    (tree / "mnt").mkdir(parents=True)
    sh("mount", "--bind", str(outside), str(tree / "mnt"))
    assert remove_tree(tree) is None
    assert not tree.exists()
    assert (outside / "keep").read_text() == "x"


def test_host_clean_fixture_passes_for_a_clean_test(host_clean: HostState) -> None:
    assert host_clean.links


def test_host_clean_fixture_fails_a_leaky_test(tmp_path: Path) -> None:
    here = Path(__file__).parent
    for name in ("conftest.py", "helpers.py"):
        (tmp_path / name).write_text((here / name).read_text())
    (tmp_path / "test_leaky.py").write_text(
        "import subprocess\n"
        "import pytest\n"
        "pytestmark = pytest.mark.usefixtures('host_clean')\n"
        "def test_leaks(shared_tmp):\n"
        "    subprocess.run(['mount', '-t', 'tmpfs', 'pft-leak', str(shared_tmp)], check=True)\n"
        "def test_clean():\n"
        "    pass\n"
    )
    result = subprocess.run(
        [str(Path(sys.executable).with_name("pytest")), "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "the test left the host changed" in result.stdout, result.stdout
    assert "+ mounts: " in result.stdout and "(tmpfs from pft-leak)" in result.stdout
    assert "2 passed, 1 error" in result.stdout, result.stdout
    assert result.returncode == 1
    # The session's temporary directory was unmounted and removed.
    assert not [m for m in read_mounts() if m.source == "pft-leak"]
