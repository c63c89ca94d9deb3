"""What a container process must not keep of the invoker's: fds, argv, environment.

A process that enters the container without exec(2) (a reaper PID 1,
`pflask exec`'s child until it execs) is a fork of pflask: through
/proc/PID/{fd,environ,cmdline,mem,map_files} it would show the container
whatever pflask inherited.  `seclude` closes, wipes and hides it.
"""

from __future__ import annotations

import errno
import os

from pflask.kernel import libc

PR_SET_DUMPABLE = 4  # <linux/prctl.h>


def close_inherited(keep: tuple[int, ...]) -> None:
    """Close every fd above 2 but those in `keep` (pflask's own pipes).

    Whatever the invoker gave pflask (`exec 9</home; pflask run ...`) is
    closed before the container exists, so no container process, PID 1
    included, holds it: /proc/1/fd shows 0, 1 and 2 and pflask's pipes only,
    and those close before the command runs.
    """
    first = 3
    for fd in sorted(k for k in keep if k >= 3):
        if fd > first:
            libc.close_range(first, fd - 1)
        first = fd + 1
    libc.close_range(first)


def forget_invoker(name: bytes) -> None:
    """Wipe pflask's command line and the invoker's environment from our memory.

    /proc/PID/cmdline and /proc/PID/environ read the process's memory between
    arg_start/arg_end and env_start/env_end (fields 48-51 of /proc/PID/stat).
    A forked process that never execs (a reaper PID 1) would show the
    container pflask's arguments and the invoking environment, secrets
    included.  Python's os.environ is a copy taken at start-up, so the
    Environment step still chooses from it; PID 1 drops it once the command
    has its own (Container._spawn_and_reap).

    The argument area is left holding `name`, a NUL, zeros, and a last byte
    that is not NUL: the kernel then takes the process for one that rewrote
    its title (setproctitle(3)) and shows /proc/PID/cmdline up to the first
    NUL, which is exactly `name`.
    """
    fd = os.open("/proc/self/stat", os.O_RDONLY | os.O_CLOEXEC)
    try:
        stat = os.read(fd, 4096)
    finally:
        os.close(fd)
    fields = stat.rpartition(b")")[2].split()  # the name may hold spaces: fields from 3 on
    arg_start, arg_end, env_start, env_end = (int(f) for f in fields[45:49])
    if not 0 < arg_start <= arg_end <= env_start <= env_end:
        raise libc.SyscallError("read(2)", errno.EINVAL, "/proc/self/stat: arg_start..env_end")
    libc.memset(env_start, 0, env_end - env_start)
    libc.memset(arg_start, 0, arg_end - arg_start)
    if arg_end - arg_start > len(name) + 1:
        libc.memcpy(arg_start, name)
        libc.memcpy(arg_end - 1, b" ")
    libc.pr_set_name(name)


def seclude(keep: tuple[int, ...], name: bytes, dumpable: bool) -> None:
    """Keep nothing of the invoker's that the container could reach through us.

    Done first thing in a process that enters the container without exec
    (its PID 1; `pflask exec`'s child until it execs): only fds 0-2 and
    pflask's own pipes (`keep`) stay open, the command line and environment
    are wiped from memory (forget_invoker), and, unless `dumpable`, the
    process is not dumpable.  A process that is not dumpable keeps
    /proc/PID/{fd,mem,map_files,root,cwd} from every process without
    CAP_SYS_PTRACE in the user namespace of its memory, which is the host's
    for a fork of pflask: the container's root cannot read PID 1's memory
    (Python's copy of the environment is there), nor reach host files
    through its fds, root, or mapped files (a container with
    CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE could otherwise open the host's
    libraries for writing through /proc/1/map_files).  /proc/PID/environ is
    not among them (a process of the same uid still reads it, on Linux 6.18
    at least): the wipe is what keeps it empty.  The command is a new exec
    and dumpable as usual.

    PID 1 of an ordinary user's pflask stays dumpable: the user's
    `pflask exec` enters it with setns(2) on its pidfd, which asks for ptrace
    access, and so does writing its uid_map; the user has no CAP_SYS_PTRACE
    in the host's user namespace.  Its container's root then can read PID 1's
    memory as it could read any process of its uid (map_files stays closed:
    it needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE in the host's user
    namespace, which no process in a user namespace has).
    """
    close_inherited(keep)
    if not dumpable:
        libc.prctl(PR_SET_DUMPABLE, 0)
    forget_invoker(name)
