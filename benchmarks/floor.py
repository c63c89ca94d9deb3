#!/usr/bin/env python3
"""The floor of any Python container start with pflask's process model.

    /opt/pflask/bin/python benchmarks/floor.py ROOT    (as root)

A measurement reference for benchmarks/startup.py, not a container runtime:
it makes the same namespaces, mounts and processes as `pflask run` of a
manifest that names only a root (`pflask plan` lists them), with the same
system calls through pflask's own libc module, and nothing else.  No plan,
no cache, no state record beyond one small file, and none of pflask's checks:
mount targets are plain paths (pflask resolves each inside the root with
openat2(2) so nothing escapes through a symlink), errors end in a traceback.
Never run anything with it.  Its time is what a Python implementation of this
container costs before any of pflask's own work: the interpreter, `_ctypes`,
a fork of the interpreter, the mounts, a PID 1 that spawns and reaps the
command, and the teardown.
"""

from __future__ import annotations

import os
import sys

from pflask import libc

NAMESPACES = libc.CLONE_NEWNS | libc.CLONE_NEWUTS | libc.CLONE_NEWIPC | libc.CLONE_NEWCGROUP
NOSUID, NODEV, NOEXEC, RDONLY = libc.MS_NOSUID, libc.MS_NODEV, libc.MS_NOEXEC, libc.MS_RDONLY
# (fstype, target, flags, data) in the order of the default plan
SYSTEM_MOUNTS = (
    ("proc", "/proc", NOSUID | NODEV | NOEXEC, None),
    ("sysfs", "/sys", RDONLY | NOSUID | NODEV | NOEXEC, None),
    ("cgroup2", "/sys/fs/cgroup", RDONLY | NOSUID | NODEV | NOEXEC, None),
    ("tmpfs", "/dev", NOSUID | libc.MS_STRICTATIME, "mode=755,size=65536k"),
)
DEV_MOUNTS = (
    ("devpts", "/dev/pts", NOSUID | NOEXEC, "newinstance,ptmxmode=0666,mode=0620,gid=5"),
    ("tmpfs", "/dev/shm", NOSUID | NODEV, "mode=1777"),
    ("mqueue", "/dev/mqueue", NOSUID | NODEV | NOEXEC, None),
    ("tmpfs", "/run", NOSUID | NODEV, "mode=755"),
)
DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9))
LINKS = (
    ("pts/ptmx", "/dev/ptmx"),
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
)
MASKED = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READ_ONLY = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root", "USER": "root"}
RECORD = "/run/pflask-floor.state"


def mounts(root: str) -> None:
    libc.mount(None, "/", None, libc.MS_REC | libc.MS_SLAVE)
    libc.mount(root, root, None, libc.MS_BIND | libc.MS_REC)
    for fstype, target, flags, data in SYSTEM_MOUNTS:
        libc.mount(fstype, root + target, fstype, flags, data)
    umask = os.umask(0)
    for name, major, minor in (*DEVICES, ("tty", 5, 0)):
        os.mknod(f"{root}/dev/{name}", 0o20666, os.makedev(major, minor))
    os.umask(umask)
    for name in ("pts", "shm", "mqueue"):
        os.mkdir(f"{root}/dev/{name}", 0o755)
    for fstype, target, flags, data in DEV_MOUNTS:
        libc.mount(fstype, root + target, fstype, flags, data)
    for value, path in LINKS:
        os.symlink(value, root + path)
    for path in MASKED:
        if os.path.isdir(root + path):
            libc.mount("tmpfs", root + path, "tmpfs", RDONLY, "size=0,mode=000")
        elif os.path.exists(root + path):
            libc.mount(f"{root}/dev/null", root + path, None, libc.MS_BIND)
    for path in READ_ONLY:
        if os.path.exists(root + path):
            libc.mount(root + path, root + path, None, libc.MS_BIND | libc.MS_REC)
            libc.mount(None, root + path, None, libc.MS_BIND | libc.MS_REMOUNT | RDONLY)
    os.chdir(root)
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")


def pid1(root: str, go: int, started: int) -> None:
    libc.prctl(libc.PR_SET_PDEATHSIG, 9)
    libc.unshare(NAMESPACES)
    os.setsid()
    mounts(root)
    libc.sethostname("floor")
    if os.read(go, 1) != b"g":  # the supervisor has written its record
        os._exit(125)
    command = os.posix_spawn("/bin/true", ["/bin/true"], ENV)
    os.close(started)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == command:
            os._exit(os.waitstatus_to_exitcode(status))


def main() -> None:
    root = os.path.realpath(sys.argv[1])
    go_r, go_w = os.pipe2(os.O_CLOEXEC)
    started_r, started_w = os.pipe2(os.O_CLOEXEC)
    libc.unshare(libc.CLONE_NEWPID)
    child = os.fork()
    if child == 0:
        os.close(go_w)
        os.close(started_r)
        pid1(root, go_r, started_w)
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
