"""Resource limits (`security.rlimits`) and no_new_privs.

Limits are set in the container just before exec and are inherited by the
command and everything it starts.  They are applied *before* capabilities are
dropped: raising a hard limit above the current one needs CAP_SYS_RESOURCE,
which the container usually does not keep.  Lowering limits needs nothing.

setrlimit(2) is called through ctypes rather than `resource.setrlimit`
because the latter turns EPERM and EINVAL into a bare `ValueError`, losing the
errno the failed step reports.  The RLIMIT_* numbers are hard-coded: `resource`
is cheap to import (about 0.3 ms) but has no RLIMIT_LOCKS, and they are the
same on every architecture pflask supports (asm-generic/resource.h: x86_64,
aarch64, riscv64, ppc64le, s390x), as is rlim_t being an unsigned long with
RLIM_INFINITY = ~0UL.
"""

from __future__ import annotations

import ctypes
import errno

from pflask.kernel import libc
from pflask.kernel.libc import SyscallError

# <asm-generic/resource.h>, under the names the manifest schema uses.
RESOURCES: dict[str, int] = {
    "cpu": 0,
    "fsize": 1,
    "data": 2,
    "stack": 3,
    "core": 4,
    "rss": 5,
    "nproc": 6,
    "nofile": 7,
    "memlock": 8,
    "as": 9,
    "locks": 10,
    "sigpending": 11,
    "msgqueue": 12,
    "nice": 13,
    "rtprio": 14,
    "rttime": 15,
}

UNLIMITED = -1
RLIM_INFINITY = ctypes.c_ulong(-1).value


class _Rlimit(ctypes.Structure):
    _fields_ = [("rlim_cur", ctypes.c_ulong), ("rlim_max", ctypes.c_ulong)]


def _show(value: int) -> str:
    return "unlimited" if value == UNLIMITED else str(value)


def _raw(value: int) -> int:
    return RLIM_INFINITY if value < 0 else value


def apply(limits: tuple[tuple[str, int, int], ...]) -> None:
    """setrlimit(2) each (name, soft, hard), in order; -1 is RLIM_INFINITY.

    Raising a hard limit above the current one fails with EPERM unless the
    process has CAP_SYS_RESOURCE (so run this before capabilities are
    dropped); the error is a `SyscallError` naming the limit.
    """
    setrlimit = libc.LIBC.setrlimit
    for name, soft, hard in limits:
        limit = _Rlimit(_raw(soft), _raw(hard))
        if setrlimit(ctypes.c_int(RESOURCES[name]), ctypes.byref(limit)) < 0:
            err = ctypes.get_errno()
            detail = f"{name}={_show(soft)}:{_show(hard)}"
            if err == errno.EPERM:
                detail += _why_refused(name, hard)
            raise SyscallError("setrlimit(2)", err, detail)


def _why_refused(name: str, hard: int) -> str:
    """What the kernel's EPERM means for this limit, and what to do instead.

    A hard limit can only be raised with CAP_SYS_RESOURCE in the host's user
    namespace (a user namespace's root does not count), so an ordinary
    user's pflask cannot raise it, however the manifest asks; nofile also
    stops at fs.nr_open, for root too.  The limit is refused rather than
    quietly lowered: a service told it has a million descriptors and given
    twenty thousand fails later, and further from the cause.
    """
    current = _Rlimit()
    if libc.LIBC.getrlimit(ctypes.c_int(RESOURCES[name]), ctypes.byref(current)) < 0:
        return ""
    have = UNLIMITED if current.rlim_max == RLIM_INFINITY else int(current.rlim_max)
    if name == "nofile" and hard != UNLIMITED:
        try:
            with open("/proc/sys/fs/nr_open", "rb") as f:
                nr_open = int(f.read())
        except (OSError, ValueError):
            nr_open = -1
        if 0 <= nr_open < hard:
            return f" (above fs.nr_open, {nr_open}, the most the kernel allows: ask for less)"
    if have != UNLIMITED and (hard == UNLIMITED or hard > have):
        return (
            f" (above the hard limit pflask was started with, {have}; raising it needs "
            f"CAP_SYS_RESOURCE on the host: ask for {have} or less, or start pflask with "
            "a higher limit)"
        )
    return ""


def set_no_new_privs() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS, 1): execve can no longer grant privileges.

    Setuid/setgid bits and file capabilities stop working for the container's
    processes, and it cannot be undone.  Capabilities kept through the
    ambient set still survive execve: they are not new privileges.
    """
    result = libc.LIBC.prctl(
        ctypes.c_int(libc.PR_SET_NO_NEW_PRIVS), *(ctypes.c_ulong(a) for a in (1, 0, 0, 0))
    )
    if result < 0:
        raise SyscallError("prctl(2)", ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS")
