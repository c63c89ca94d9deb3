"""The thin ctypes layer: the Linux calls Python 3.11's `os` module lacks.

Every wrapper raises `SyscallError` (an `OSError`) naming the call and the path
it was given, so a failure deep in container setup reads
`mount(2) /src -> /work: ENOENT (No such file or directory)` and not a bare
errno.  Constants are named exactly as in the kernel headers so they can be
looked up there.  Nothing here decides policy; the executor does.
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <linux/mount.h>
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SILENT = 32768
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_FORCE = 1
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

MOUNT_ATTR_RDONLY = 0x00000001
MOUNT_ATTR_NOSUID = 0x00000002
MOUNT_ATTR_NODEV = 0x00000004
MOUNT_ATTR_NOEXEC = 0x00000008
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
AT_SYMLINK_NOFOLLOW = 0x100
AT_FDCWD = -100

OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x00000004
MOVE_MOUNT_T_EMPTY_PATH = 0x00000040

FSOPEN_CLOEXEC = 1
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 1

# <linux/close_range.h>
CLOSE_RANGE_CLOEXEC = 1 << 2

# <linux/openat2.h>
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10

# <linux/prctl.h>
PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

# Syscall numbers.  Those from 424 on are the same on every architecture.
SYS_pidfd_send_signal = 424
SYS_open_tree = 428
SYS_move_mount = 429
SYS_fsopen = 430
SYS_fsconfig = 431
SYS_fsmount = 432
SYS_pidfd_open = 434
SYS_close_range = 436
SYS_openat2 = 437
SYS_mount_setattr = 442
_SYS_pivot_root = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

# libc itself, for the modules that wrap calls of their own (capget, setrlimit).
LIBC = ctypes.CDLL(None, use_errno=True)
_syscall = LIBC.syscall
_syscall.restype = ctypes.c_long


class SyscallError(OSError):
    """An `OSError` that knows which call failed and on what."""

    def __init__(self, call: str, err: int, detail: str | None = None) -> None:
        super().__init__(err, os.strerror(err))
        self.call = call
        self.detail = detail

    def __str__(self) -> str:
        where = f" {self.detail}" if self.detail else ""
        return f"{self.call}{where}: {errno_name(self.errno or 0)} ({self.strerror})"


def errno_name(err: int) -> str:
    """ENOENT rather than 2: the name is what the man pages document."""
    return _errno.errorcode.get(err, str(err))


def _check(result: int, call: str, detail: str | None) -> int:
    if result < 0:
        raise SyscallError(call, ctypes.get_errno(), detail)
    return result


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def unshare(flags: int) -> None:
    _check(LIBC.unshare(ctypes.c_int(flags)), "unshare(2)", _clone_names(flags))


def setns(fd: int, nstype: int = 0, what: str | None = None) -> None:
    _check(LIBC.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns(2)", what)


def mount(
    source: str | None,
    target: str,
    fstype: str | None,
    flags: int = 0,
    data: str | None = None,
    what: str | None = None,
) -> None:
    result = LIBC.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(result, "mount(2)", what or target)


def umount2(target: str, flags: int = 0) -> None:
    _check(LIBC.umount2(_b(target), ctypes.c_int(flags)), "umount2(2)", target)


def pivot_root(new_root: str, put_old: str) -> None:
    number = _SYS_pivot_root[os.uname().machine]
    _check(_syscall(number, _b(new_root), _b(put_old)), "pivot_root(2)", new_root)


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(LIBC.sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname(2)", name)


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(LIBC.setdomainname(raw, ctypes.c_size_t(len(raw))), "setdomainname(2)", name)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    args = (ctypes.c_ulong(a) for a in (arg2, arg3, arg4, arg5))
    return _check(LIBC.prctl(ctypes.c_int(option), *args), "prctl(2)", str(option))


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def mount_setattr(
    dirfd: int, path: str, flags: int, attr_set: int, attr_clr: int = 0, what: str | None = None
) -> None:
    """Change mount attributes, recursively with AT_RECURSIVE (Linux 5.12)."""
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    result = _syscall(
        SYS_mount_setattr,
        ctypes.c_int(dirfd),
        _b(path),
        ctypes.c_uint(flags),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    _check(result, "mount_setattr(2)", what or path)


def open_tree(dirfd: int, path: str, flags: int, what: str | None = None) -> int:
    result = _syscall(SYS_open_tree, ctypes.c_int(dirfd), _b(path), ctypes.c_uint(flags))
    return _check(result, "open_tree(2)", what or path)


def move_mount(
    from_fd: int, from_path: str, to_fd: int, to_path: str, flags: int, what: str | None = None
) -> None:
    result = _syscall(
        SYS_move_mount,
        ctypes.c_int(from_fd),
        _b(from_path),
        ctypes.c_int(to_fd),
        _b(to_path),
        ctypes.c_uint(flags),
    )
    _check(result, "move_mount(2)", what or to_path)


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


def openat2(
    dirfd: int, path: str, flags: int, resolve: int, mode: int = 0, what: str | None = None
) -> int:
    """Open `path` below `dirfd` with the kernel enforcing `resolve` (Linux 5.6)."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    result = _syscall(
        SYS_openat2,
        ctypes.c_int(dirfd),
        _b(path),
        ctypes.byref(how),
        ctypes.c_size_t(ctypes.sizeof(how)),
    )
    return _check(result, "openat2(2)", what or path)


def fsopen(fstype: str) -> int:
    result = _syscall(SYS_fsopen, _b(fstype), ctypes.c_uint(FSOPEN_CLOEXEC))
    return _check(result, "fsopen(2)", fstype)


def fsconfig_string(fd: int, key: str, value: str, what: str | None = None) -> None:
    result = _syscall(
        SYS_fsconfig,
        ctypes.c_int(fd),
        ctypes.c_uint(FSCONFIG_SET_STRING),
        _b(key),
        _b(value),
        ctypes.c_int(0),
    )
    _check(result, "fsconfig(2)", what or f"{key}={value}")


def fsconfig_create(fd: int, what: str | None = None) -> None:
    result = _syscall(
        SYS_fsconfig,
        ctypes.c_int(fd),
        ctypes.c_uint(FSCONFIG_CMD_CREATE),
        None,
        None,
        ctypes.c_int(0),
    )
    _check(result, "fsconfig(2) create", what)


def fsmount(fd: int, attr_flags: int = 0, what: str | None = None) -> int:
    result = _syscall(
        SYS_fsmount, ctypes.c_int(fd), ctypes.c_uint(FSMOUNT_CLOEXEC), ctypes.c_uint(attr_flags)
    )
    return _check(result, "fsmount(2)", what)


def close_range_cloexec(first: int) -> None:
    """Mark every fd from `first` up close-on-exec (Linux 5.11), in one call."""
    result = _syscall(
        SYS_close_range,
        ctypes.c_uint(first),
        ctypes.c_uint(0xFFFFFFFF),
        ctypes.c_uint(CLOSE_RANGE_CLOEXEC),
    )
    _check(result, "close_range(2)", None)


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    result = _syscall(
        SYS_pidfd_send_signal, ctypes.c_int(pidfd), ctypes.c_int(sig), None, ctypes.c_uint(0)
    )
    _check(result, "pidfd_send_signal(2)", None)


_CLONE_NAMES = (
    (CLONE_NEWUSER, "user"),
    (CLONE_NEWNS, "mount"),
    (CLONE_NEWPID, "pid"),
    (CLONE_NEWIPC, "ipc"),
    (CLONE_NEWUTS, "uts"),
    (CLONE_NEWNET, "net"),
    (CLONE_NEWCGROUP, "cgroup"),
)


def _clone_names(flags: int) -> str:
    return ",".join(name for bit, name in _CLONE_NAMES if flags & bit)


def namespace_flags(names: Any) -> int:
    """CLONE_NEW* bits for namespace names as the manifest spells them."""
    table = {name: bit for bit, name in _CLONE_NAMES}
    flags = 0
    for name in names:
        flags |= table[name]
    return flags
