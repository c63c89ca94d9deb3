#!/usr/bin/env python3
"""The floor of any Python container start with pflask's process model.

    /opt/pflask/bin/python benchmarks/floor.py OPS    (as root; OPS from startup.py)

A measurement reference for benchmarks/startup.py, not a container runtime.
startup.py compiles the benchmark's manifest with pflask and lowers the plan's
container steps to bare system calls (`lower`); this script makes them, with
pflask's process model (the supervisor forks PID 1 of a new PID namespace,
which builds the mounts, pivots, then spawns and reaps the command) and
nothing else: no plan, no cache, no state record beyond one small file, and
none of pflask's checks (targets are plain paths under the root, where pflask
resolves each inside the root with openat2(2) so nothing escapes; errors end
in a traceback).  Never run anything with it.  Its time is what a Python
implementation of this container costs before any of pflask's own work.
"""

from __future__ import annotations

import marshal
import os
import sys

from pflask.kernel import libc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from pflask.compile.plan import Plan

    Op = tuple[Any, ...]  # (what, its arguments...)

RECORD = "/run/pflask-floor.state"


def lower(plan: Plan) -> list[Op]:
    """The plan's container steps as the system calls they come down to, for a
    root the benchmark made (so every parent directory exists).  Raises on a
    step it does not know: the floor must make the same container as pflask."""
    from pflask.compile import plan as p
    from pflask.run import mounts

    ops: list[Op] = []
    root = ""
    for step in plan.steps:
        if step.where == p.HOST or isinstance(step, (p.Console, p.AwaitHost, p.Reaper)):
            continue  # host side; a terminal the benchmark has not; the fork and spawn below
        if isinstance(step, p.Unshare):
            flags = libc.namespace_flags(step.namespaces)
            ops.append(("unshare", flags & ~libc.CLONE_NEWPID if step.pid1 else flags))
        elif isinstance(step, p.Propagation):
            mode = libc.MS_SLAVE if step.mode == "slave" else libc.MS_PRIVATE
            ops.append(("mount", None, "/", None, libc.MS_REC | mode, None))
        elif isinstance(step, p.BindRoot):
            root = step.path
            ops.append(("mount", root, root, None, libc.MS_BIND | libc.MS_REC, None))
            if step.flags:  # nodev: a bind takes its flags in a remount
                flags = libc.MS_BIND | libc.MS_REMOUNT | mounts.ms_flags(step.flags)
                ops.append(("mount", None, root, None, flags, None))
        elif isinstance(step, p.MountFs):
            flags = mounts.ms_flags(step.flags)
            ops.append(("mount", step.fstype, root + step.target, step.fstype, flags, step.data))
        elif isinstance(step, p.DevNodes):
            for name in step.nodes:
                ops.append(("mknod", f"{root}{step.target}/{name}", *mounts.DEVICES[name]))
        elif isinstance(step, p.Symlink):
            ops.append(("symlink", step.value, root + step.path))
        elif isinstance(step, p.MaskPaths):
            ops.extend(("mask", root + path) for path in step.paths)
        elif isinstance(step, p.ReadonlyPaths):
            ops.extend(("readonly", root + path) for path in step.paths)
        elif isinstance(step, p.PivotRoot):
            ops.append(("pivot_root", step.path))
        elif isinstance(step, p.Hostname):
            ops.append(("hostname", step.name))
        elif isinstance(step, p.Environment):
            ops.append(("environment", dict(step.set)))
        elif isinstance(step, p.SessionKeyring):
            ops.append(("keyring",))
        elif isinstance(step, p.Capabilities):
            from pflask.kernel import capabilities

            wanted = 0
            for name in step.keep:
                wanted |= 1 << capabilities.NUMBERS[name]
            top = capabilities.last_cap()
            drops = [n for n in range(top + 1) if not wanted >> n & 1]
            ops.append(("capabilities", drops, wanted))
        elif isinstance(step, p.Seccomp):
            ops.extend(("seccomp", bytes.fromhex(program)) for program in step.programs)
        elif isinstance(step, p.Exec):
            ops.append(("exec", step.argv))
        else:
            raise ValueError(f"floor.py cannot make step {step.kind!r}")
    return ops


def _unshare(flags: int) -> None:
    libc.unshare(flags)
    os.setsid()


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str) -> None:
    if target != "/" and not os.path.exists(target):
        os.mkdir(target, 0o755)  # under a tmpfs made by an earlier op (/dev/pts)
    libc.mount(source, target, fstype, flags, data or None)


def _mknod(path: str, major: int, minor: int) -> None:
    umask = os.umask(0)
    os.mknod(path, 0o20666, os.makedev(major, minor))
    os.umask(umask)


def _mask(path: str) -> None:
    if os.path.isdir(path):
        libc.mount("tmpfs", path, "tmpfs", libc.MS_RDONLY, "size=0,mode=000")
    elif os.path.exists(path):
        libc.mount("/dev/null", path, None, libc.MS_BIND)


def _readonly(path: str) -> None:
    if os.path.exists(path):
        libc.mount(path, path, None, libc.MS_BIND | libc.MS_REC)
        libc.mount(None, path, None, libc.MS_BIND | libc.MS_REMOUNT | libc.MS_RDONLY)


def _capabilities(drops: list[int], wanted: int) -> None:
    for number in drops:
        libc.prctl(libc.PR_CAPBSET_DROP, number)
    libc.capset(wanted, wanted, 0)


def _pivot_root(path: str) -> None:
    os.chdir(path)
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")


ACTIONS: dict[str, Callable[..., None]] = {
    "unshare": _unshare,
    "mount": _mount,
    "mknod": _mknod,
    "symlink": os.symlink,
    "mask": _mask,
    "readonly": _readonly,
    "pivot_root": _pivot_root,
    "hostname": libc.sethostname,
    "seccomp": libc.seccomp_set_mode_filter,
    "keyring": libc.join_session_keyring,
    "capabilities": _capabilities,
}


def pid1(ops: list[Op], go: int, started: int) -> None:
    """Make the ops, then spawn the command (once the supervisor says so) and reap."""
    libc.prctl(libc.PR_SET_PDEATHSIG, 9)
    env: dict[str, str] = {}
    for what, *args in ops:
        if what == "environment":
            env = args[0]
        elif what == "exec":
            argv = list(args[0])
            if os.read(go, 1) != b"g":  # the supervisor has written its record
                os._exit(125)
            command = os.posix_spawn(argv[0], argv, env)
            os.close(started)
            while True:
                pid, status = os.waitpid(-1, 0)
                if pid == command:
                    os._exit(os.waitstatus_to_exitcode(status))
        else:
            ACTIONS[what](*args)
    os._exit(125)


def main() -> None:
    with open(sys.argv[1], "rb") as f:
        ops = marshal.load(f)
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    started_r, started_w = os.pipe2(os.O_CLOEXEC)
    libc.unshare(libc.CLONE_NEWPID)
    child = os.fork()
    if child == 0:
        os.close(go_w)
        os.close(started_r)
        pid1(ops, go_r, started_w)
    os.close(go_r)
    os.close(started_w)
    with open(RECORD, "wb") as record:
        record.write(b"%d\n" % child)
    os.write(go_w, b"g")
    os.read(started_r, 1)  # EOF once the command runs
    _, status = os.waitpid(child, 0)
    os.unlink(RECORD)
    os._exit(os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
