"""pflask.kernel.libc: the calls `os` lacks, made on the real kernel.

Each test runs the call where it can only affect a forked child (its own
mount or UTS namespace) and checks what the kernel did, plus the error text
a user reads when a call fails.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import in_child, ok

from pflask.kernel import libc


def test_error_names_call_path_and_errno() -> None:
    with pytest.raises(libc.SyscallError) as caught:
        libc.mount("/nonexistent-source", "/nonexistent-target", None, libc.MS_BIND)
    assert caught.value.errno == errno.ENOENT
    assert str(caught.value) == "mount(2) /nonexistent-target: ENOENT (No such file or directory)"


def test_unshare_and_sethostname_stay_in_the_child() -> None:
    host = os.uname().nodename

    def body(w: int) -> None:
        libc.unshare(libc.CLONE_NEWUTS)
        libc.sethostname("libc-test")
        os.write(w, os.uname().nodename.encode())

    assert ok(in_child(body)) == "libc-test"
    assert os.uname().nodename == host


def test_openat2_in_root_keeps_absolute_symlinks_inside(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "marker").write_text("inside")
    (tmp_path / "link").symlink_to("/etc")  # the host's /etc, were it followed outside
    root = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        fd = libc.openat2(root, "link/marker", os.O_RDONLY, libc.RESOLVE_IN_ROOT)
        with os.fdopen(fd) as f:
            assert f.read() == "inside"
        with pytest.raises(libc.SyscallError) as caught:
            libc.openat2(root, "../etc/passwd", os.O_RDONLY, libc.RESOLVE_BENEATH, what="x")
        assert str(caught.value).startswith("openat2(2) x: EXDEV")
    finally:
        os.close(root)


@contextlib.contextmanager
def renaming(directory: Path) -> Iterator[None]:
    """A child process renaming a directory back and forth as fast as it can:
    every rename on the system makes a racing RESOLVE_IN_ROOT `..` lookup
    fail with EAGAIN."""
    (directory / "x").mkdir()
    pid = os.fork()
    if pid == 0:
        try:
            while True:
                os.rename(directory / "x", directory / "y")
                os.rename(directory / "y", directory / "x")
        finally:
            os._exit(0)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _raw_openat2(root: int, path: str) -> int:
    """One openat2 call, no retry: the errno, or 0 when it opened."""
    how = libc._u64s(os.O_RDONLY | os.O_CLOEXEC, 0, libc.RESOLVE_IN_ROOT)
    fd = libc._syscall(libc.SYS_openat2, root, path.encode(), how, len(how))
    if fd < 0:
        return libc._ctypes.get_errno()
    os.close(fd)
    return 0


def test_openat2_retries_when_a_rename_races_the_lookup(tmp_path: Path) -> None:
    """The flaky EAGAIN of a hostile-symlink test, forced: with renames going on,
    a bare call fails now and then; pflask's call always opens the file."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("found")
    path = "a/b/../../" * 4 + "a/b/f"
    root = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        with renaming(tmp_path):
            errors = [_raw_openat2(root, path) for _ in range(20000)]
            assert errno.EAGAIN in errors  # the race is real
            assert set(errors) <= {0, errno.EAGAIN}
            for _ in range(5000):
                os.close(libc.openat2(root, path, os.O_RDONLY, libc.RESOLVE_IN_ROOT))
    finally:
        os.close(root)


def test_openat2_gives_up_on_endless_races_quickly(tmp_path: Path) -> None:
    """A lookup that loses the race nearly every time (hundreds of `..` against
    a stream of renames) is tried a bounded number of times: it ends in well
    under a second, opened or with an EAGAIN naming the path."""
    (tmp_path / "a").mkdir()
    path = "a/../" * 400 + "a"
    root = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        with renaming(tmp_path):
            assert errno.EAGAIN in [_raw_openat2(root, path) for _ in range(200)]
            start = time.monotonic()
            for _ in range(20):
                try:
                    os.close(libc.openat2(root, path, os.O_PATH, libc.RESOLVE_IN_ROOT, what="p"))
                except libc.SyscallError as e:
                    assert str(e).startswith("openat2(2) p: EAGAIN")
            assert time.monotonic() - start < 1
    finally:
        os.close(root)


def test_read_only_bind_through_open_tree_mount_setattr_move_mount(tmp_path: Path) -> None:
    source = tmp_path / "source"
    target = tmp_path / "target"
    source.mkdir()
    target.mkdir()

    def body(w: int) -> None:
        libc.unshare(libc.CLONE_NEWNS)
        libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
        tree = libc.open_tree(
            libc.AT_FDCWD, str(source), libc.OPEN_TREE_CLONE | libc.OPEN_TREE_CLOEXEC
        )
        libc.mount_setattr(tree, "", libc.AT_EMPTY_PATH | libc.AT_RECURSIVE, libc.MOUNT_ATTR_RDONLY)
        to = os.open(target, os.O_PATH | os.O_CLOEXEC)
        libc.move_mount(
            tree, "", to, "", libc.MOVE_MOUNT_F_EMPTY_PATH | libc.MOVE_MOUNT_T_EMPTY_PATH
        )
        try:
            (target / "file").write_text("x")
        except OSError as e:
            os.write(w, (libc.errno_name(e.errno or 0)).encode())

    assert ok(in_child(body)) == "EROFS"
    assert not (source / "file").exists()
    assert str(target) not in Path("/proc/self/mountinfo").read_text()


def test_detached_tmpfs_from_fsopen_fsconfig_fsmount() -> None:
    def body(w: int) -> None:
        fd = libc.fsopen("tmpfs")
        libc.fsconfig_string(fd, "size", "1m")
        libc.fsconfig_create(fd)
        mounted = libc.fsmount(fd)
        os.write(w, str(os.statvfs(f"/proc/self/fd/{mounted}").f_blocks * 4096).encode())

    assert ok(in_child(body)) == str(1024 * 1024)


def test_close_range_cloexec_marks_every_later_fd() -> None:
    def body(w: int) -> None:
        fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(3)]
        libc.close_range_cloexec(min(fds))
        flags = [fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC for fd in fds]
        os.write(w, repr(flags).encode())

    assert ok(in_child(body)) == repr([fcntl.FD_CLOEXEC] * 3)


def test_prctl_returns_the_kernels_answer() -> None:
    assert libc.prctl(libc.PR_CAPBSET_READ, 0) == 1  # CAP_CHOWN: root's bounding set has it
    with pytest.raises(libc.SyscallError) as caught:
        libc.prctl(libc.PR_CAPBSET_READ, 4096)
    assert caught.value.errno == errno.EINVAL


def test_namespace_flags_from_manifest_names() -> None:
    flags = libc.namespace_flags(("mount", "pid", "user"))
    assert flags == libc.CLONE_NEWNS | libc.CLONE_NEWPID | libc.CLONE_NEWUSER

    def body(w: int) -> None:
        try:
            libc.unshare(libc.CLONE_NEWUSER | libc.CLONE_NEWNS | 0x1)  # a bit unshare refuses
        except libc.SyscallError as e:
            os.write(w, str(e).encode())

    assert ok(in_child(body)) == "unshare(2) user,mount: EINVAL (Invalid argument)"


def test_ctypes_proper_is_imported_only_for_LIBC() -> None:
    code = (
        "import sys\n"
        "from pflask.kernel import libc\n"
        "print('ctypes' in sys.modules)\n"
        "libc.LIBC.getpid\n"
        "print('ctypes' in sys.modules, type(libc.LIBC).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split("\n")[:2] == ["False", "True CDLL"], result.stderr
