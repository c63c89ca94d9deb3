"""User namespace id maps: /proc/PID/uid_map and gid_map, or newuidmap/newgidmap.

A process may write its own single mapping (itself as some id inside); any
other range needs privilege over the parent namespace, which an ordinary user
gets only through the setuid helpers of shadow's `uidmap` package, checked
against /etc/subuid and /etc/subgid.  The compiler has already chosen which
way (and denied setgroups where writing gid_map ourselves requires it).
"""

from __future__ import annotations

import errno
import os

from pflask.kernel import libc


def _write(path: str, text: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise libc.SyscallError("write(2)", e.errno or 0, f"{path} <- {text.strip()!r}") from None


def deny_setgroups(pid: int) -> None:
    _write(f"/proc/{pid}/setgroups", "deny")


def write_map(pid: int, kind: str, ranges: tuple[tuple[int, int, int], ...], helper: bool) -> None:
    """Map ids for the user namespace of `pid`; kind is "uid" or "gid"."""
    if not helper:
        _write(f"/proc/{pid}/{kind}_map", "".join(f"{i} {o} {c}\n" for i, o, c in ranges))
        return
    tool = f"new{kind}map"
    argv = [tool, str(pid), *(str(n) for r in ranges for n in r)]
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        child = os.posix_spawnp(
            tool,
            argv,
            os.environ,
            file_actions=[(os.POSIX_SPAWN_DUP2, write_end, 2), (os.POSIX_SPAWN_DUP2, write_end, 1)],
        )
    except FileNotFoundError:
        os.close(read_end)
        os.close(write_end)
        raise libc.SyscallError(
            "execve(2)", errno.ENOENT, f"{tool}: not installed (Debian package uidmap)"
        ) from None
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        output = f.read().decode(errors="replace").strip()
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        detail = output.splitlines()[-1] if output else f"exit status {status}"
        raise libc.SyscallError(tool, errno.EPERM, f"{' '.join(argv[2:])}: {detail}")


def userns_fd(
    uid_ranges: tuple[tuple[int, int, int], ...], gid_ranges: tuple[tuple[int, int, int], ...]
) -> int:
    """An fd of a user namespace mapped with these ranges, as mount_setattr(2)
    wants for an idmapped mount (root only: the maps are written directly).

    The caller must stay in its own user namespace, so a throwaway child
    makes the namespace; we write its maps, open /proc/CHILD/ns/user (the fd
    keeps the namespace alive) and let the child go.
    """
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    hold_r, hold_w = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:  # pragma: no cover (the child)
        status = 1
        try:
            os.close(ready_r)
            os.close(hold_w)
            try:
                libc.unshare(libc.CLONE_NEWUSER)
                os.write(ready_w, b"\0")
            except OSError as e:
                os.write(ready_w, bytes([min(e.errno or 1, 255)]))
            os.read(hold_r, 1)  # EOF: the parent has what it needs, or is gone
            status = 0
        finally:
            os._exit(status)
    os.close(ready_w)
    os.close(hold_r)
    try:
        answer = os.read(ready_r, 1)
        if answer != b"\0":
            err = answer[0] if answer else errno.ECHILD
            raise libc.SyscallError("unshare(2)", err, "CLONE_NEWUSER (the id map's namespace)")
        write_map(child, "uid", uid_ranges, helper=False)
        write_map(child, "gid", gid_ranges, helper=False)
        path = f"/proc/{child}/ns/user"
        try:
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise libc.SyscallError("open(2)", e.errno or 0, path) from None
    finally:
        os.close(ready_r)
        os.close(hold_w)
        os.waitpid(child, 0)
