"""What a booting OS gets at run time beyond an ordinary root: its own boot id.

The kernel has one boot id (/proc/sys/kernel/random/boot_id), a random UUID
made when the host booted.  systemd and journald read it to tell one boot
from the next: `journalctl -b`, `journalctl --list-boots`, `systemd-analyze`
and the journal files' headers all key on it.  A container that boots sees the
host's, so every boot of it would look like one long boot (the journal merges
them) and the host's own boot id would be shown inside.  Each boot therefore
gets a fresh random id, bound read-only over the kernel's file, as
systemd-nspawn does.

The value is random per run, so it cannot be in the plan (plans are cached):
the plan holds a step, and the step makes the value.  Hot path: imported by
`pflask run` for a boot; imports only `os` and `pflask.run.mounts`.
"""

from __future__ import annotations

import os

from pflask.kernel import libc
from pflask.run import mounts

BOOT_ID = "/proc/sys/kernel/random/boot_id"


def random_uuid() -> str:
    """A version 4 (random) UUID in the 8-4-4-4-12 form the kernel uses."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def fresh_boot_id(root: mounts.Root, scratch: str, target: str = BOOT_ID) -> str:
    """Bind a file holding a new random boot id read-only over `target`; return the id."""
    value = random_uuid()
    bind_text(root, scratch, target, f"{value}\n", "boot id")
    return value


def etc_hostname(root: mounts.Root, scratch: str, target: str, name: str) -> None:
    """The hostname over the root's /etc/hostname, which systemd reads first
    (a root without one keeps none: systemd then keeps the kernel's name,
    which the Hostname step sets)."""
    import stat

    for _, fd in mounts.existing(root, (target,)):
        if stat.S_ISREG(os.fstat(fd).st_mode):  # else not a file systemd would read
            bind_text(root, scratch, target, f"{name}\n", "hostname")


def bind_text(root: mounts.Root, scratch: str, target: str, text: str, what: str) -> None:
    """Bind a file holding `text` read-only over `target`.

    The file is made at `scratch` (a path on the container's own /run
    tmpfs), bound, then unlinked: the mount keeps it alive, and nothing of it
    is left to see in /run.
    """
    parent_path, _, name = scratch.rstrip("/").rpartition("/")
    parent = root.make(parent_path or "/")
    try:
        try:
            fd = os.open(name, mounts.NEW_FILE, 0o444, dir_fd=parent)
        except OSError as e:
            raise libc.SyscallError("open(2)", e.errno or 0, root.host_path(scratch)) from None
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)
        source = root.open(scratch)
        try:
            destination = root.open(target)
            try:
                mounts.bind_fd(
                    source,
                    destination,
                    readonly=True,
                    recursive=False,
                    flags=("nosuid", "nodev", "noexec"),
                    what=f"{what} -> {root.host_path(target)}",
                )
            finally:
                os.close(destination)
        finally:
            os.close(source)
        os.unlink(name, dir_fd=parent)
    finally:
        os.close(parent)
