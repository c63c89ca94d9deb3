"""Loop devices: attach an image through /dev/loop-control, autoclear, probe its type.

LOOP_CONFIGURE (Linux 5.8) binds the file and sets the flags in one ioctl, so
there is no window in which another process could grab a half-set-up device.
LO_FLAGS_AUTOCLEAR makes the kernel detach the device when its last user is
gone: once pflask has closed its descriptor that is the container's mount, so
the device is freed when the container's mount namespace goes away, whether
pflask exits normally or is killed.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct

from pflask.kernel import libc
from pflask.run.mounts import fd_path, ms_flags

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pflask.run.mounts import Root

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
# struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]; }
_LOOP_CONFIG = struct.Struct("=II" + "QQQQQ" + "IIII" + "64s64s32s" + "QQ" + "8Q")
ATTEMPTS = 16  # devices another process may take between GET_FREE and CONFIGURE

# (offset, magic, filesystem): the superblock signatures of common image types.
MAGIC = (
    (1080, b"\x53\xef", "ext4"),  # ext2/3/4 share the magic; ext4 mounts them all
    (0, b"hsqs", "squashfs"),
    (32769, b"CD001", "iso9660"),
    (0, b"XFSB", "xfs"),
    (65600, b"_BHRfS_M", "btrfs"),
    (1024, b"\xe2\xe1\xf5\xe0", "erofs"),
    (1024, b"\x10\x20\xf5\xf2", "f2fs"),
    (82, b"FAT32", "vfat"),
    (54, b"FAT1", "vfat"),  # FAT12, FAT16
    (3, b"EXFAT   ", "exfat"),
    (3, b"NTFS    ", "ntfs3"),
)
_PROBE_SIZE = max(offset + len(magic) for offset, magic, _ in MAGIC)


def probe(path: str) -> str | None:
    """The filesystem type of an image from its superblock magic; None if unknown."""
    try:
        with open(path, "rb") as f:
            head = f.read(_PROBE_SIZE)
    except OSError as e:
        raise libc.SyscallError("open(2)", e.errno or 0, f"loop image {path}") from None
    for offset, magic, fstype in MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return fstype
    return None


def block_filesystems() -> tuple[str, ...]:
    """The filesystems this kernel can mount from a block device (/proc/filesystems
    without the `nodev` ones), for images whose magic `probe` does not know."""
    with open("/proc/filesystems", encoding="ascii") as f:
        return tuple(line.split()[0] for line in f if line.strip() and not line.startswith("nodev"))


def attach(image: str, readonly: bool) -> tuple[int, str]:
    """Attach `image` to a free loop device; returns (device fd, device path).

    The device is set to autoclear: closing the returned descriptor while
    nothing is mounted from it (a failed mount, a killed pflask) detaches it.
    """
    mode = os.O_RDONLY if readonly else os.O_RDWR
    try:
        backing = os.open(image, mode | os.O_CLOEXEC)
    except OSError as e:
        hint = ""
        if e.errno in (errno.EACCES, errno.EROFS) and not readonly:
            hint = " (read-only image? mount it with readonly: true, or loop-ro:)"
        raise libc.SyscallError("open(2)", e.errno or 0, f"loop image {image}{hint}") from None
    try:
        try:
            control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise libc.SyscallError("open(2)", e.errno or 0, "/dev/loop-control") from None
        try:
            for _ in range(ATTEMPTS):
                attached = _configure_free_device(control, backing, image, readonly, mode)
                if attached is not None:
                    return attached
            raise libc.SyscallError("ioctl(2) LOOP_CTL_GET_FREE", errno.EBUSY, image)
        finally:
            os.close(control)
    finally:
        os.close(backing)  # the device holds its own reference to the file


def _configure_free_device(
    control: int, backing: int, image: str, readonly: bool, mode: int
) -> tuple[int, str] | None:
    """One LOOP_CTL_GET_FREE + LOOP_CONFIGURE; None if someone took the device first."""
    try:
        number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
    except OSError as e:
        raise libc.SyscallError("ioctl(2) LOOP_CTL_GET_FREE", e.errno or 0, image) from None
    device = f"/dev/loop{number}"
    try:
        fd = os.open(device, mode | os.O_CLOEXEC)
    except OSError as e:
        raise libc.SyscallError("open(2)", e.errno or 0, device) from None
    flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if readonly else 0)
    name = os.fsencode(image)[:63]
    config = _LOOP_CONFIG.pack(
        backing, 0, 0, 0, 0, 0, 0, 0, 0, 0, flags, name, b"", b"", 0, 0, *(0,) * 8
    )
    try:
        fcntl.ioctl(fd, LOOP_CONFIGURE, config)
    except OSError as e:
        os.close(fd)
        if e.errno == errno.EBUSY:  # taken by someone else in between: the next one
            return None
        raise libc.SyscallError(
            "ioctl(2) LOOP_CONFIGURE", e.errno or 0, f"{device} <- {image}"
        ) from None
    return fd, device


def mount_image(
    root: Root,
    source: str,
    target: str,
    fstype: str,
    readonly: bool,
    options: str,
    flags: tuple[str, ...],
) -> None:
    """Attach `source` to a loop device and mount its filesystem on `target`.

    `fstype: auto` reads the superblock's magic; an image it does not know
    is tried with each block filesystem the kernel has, as mount(8) does.
    The device descriptor is closed before returning, so from then on the
    mount alone holds the device, and autoclear frees it with the mount.
    """
    if fstype == "auto":
        found = probe(source)
        candidates = (found,) if found else block_filesystems()
    else:
        candidates = (fstype,)
    mount_flags = ms_flags(flags) | (libc.MS_RDONLY if readonly else 0)
    fd, device = attach(source, readonly)
    try:
        dst = root.make(target)
        try:
            where = f"{source} ({device}) on {root.host_path(target)}"
            _mount_first(device, dst, candidates, mount_flags, options, where)
            root.covered(dst)
        finally:
            os.close(dst)
    finally:
        os.close(fd)


def disk_root(path: str, source: str, tmpfs: str, flags: tuple[str, ...]) -> None:
    """A raw filesystem image as the root: its filesystem mounted read-only on
    `path` (this mount namespace only), then an overlay with a tmpfs for the
    changes over it (mounts.ephemeral_root).  The image file is never written."""
    from pflask.run import mounts

    found = probe(source)
    candidates = (found,) if found else block_filesystems()
    fd, device = attach(source, True)
    try:
        dst = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            mount_flags = ms_flags(flags) | libc.MS_RDONLY
            _mount_first(device, dst, candidates, mount_flags, "", f"{source} ({device}) on {path}")
        finally:
            os.close(dst)
    finally:
        os.close(fd)
    mounts.ephemeral_root(path, tmpfs, flags)


def _mount_first(
    device: str, dst: int, candidates: tuple[str, ...], flags: int, options: str, where: str
) -> None:
    """Mount `device` with the first of `candidates` the kernel accepts."""
    guessing = len(candidates) > 1
    if guessing:
        flags |= libc.MS_SILENT  # no kernel log line for each wrong guess
    for fstype in candidates:
        what = f"{where} as {fstype}"
        try:
            libc.mount(device, fd_path(dst), fstype, flags, options or None, what=what)
            return
        except libc.SyscallError as e:
            if guessing and e.errno in (errno.EINVAL, errno.ENODEV, errno.EIO, errno.EUCLEAN):
                continue
            if e.errno == errno.ENODEV:
                raise libc.SyscallError(
                    "mount(2)",
                    errno.ENODEV,
                    f"{what}: this kernel has no {fstype} filesystem (see /proc/filesystems)",
                ) from None
            raise
    raise libc.SyscallError(
        "mount(2)",
        errno.EINVAL,
        f"{where}: no filesystem this kernel knows recognises the image "
        f"(tried {', '.join(candidates)}); set fstype",
    )
