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

from pflask import libc

LOOP_CTL_GET_FREE = 0x4C82
LOOP_CONFIGURE = 0x4C0A
LO_FLAGS_READ_ONLY = 1
LO_FLAGS_AUTOCLEAR = 4
# struct loop_config { u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]; }
_LOOP_CONFIG = struct.Struct("=II" + "QQQQQ" + "IIII" + "64s64s32s" + "QQ" + "8Q")

# (offset, magic, filesystem): the superblock signatures of common image types.
MAGIC = (
    (1080, b"\x53\xef", "ext4"),  # ext2/3/4 share the magic; ext4 mounts them all
    (0, b"hsqs", "squashfs"),
    (32769, b"CD001", "iso9660"),
    (0, b"XFSB", "xfs"),
    (65600, b"_BHRfS_M", "btrfs"),
    (1024, b"\xe2\xe1\xf5\xe0", "erofs"),
    (82, b"FAT32", "vfat"),
    (54, b"FAT1", "vfat"),
    (3, b"NTFS", "ntfs3"),
)


def probe(path: str) -> str:
    """The filesystem type of an image, from its superblock magic."""
    try:
        with open(path, "rb") as f:
            head = f.read(65664)
    except OSError as e:
        raise libc.SyscallError("open(2)", e.errno or 0, f"loop image {path}") from None
    for offset, magic, fstype in MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return fstype
    raise libc.SyscallError(
        "probe", errno.EINVAL, f"{path}: unknown filesystem (set fstype in the manifest)"
    )


def attach(image: str, readonly: bool) -> tuple[int, str]:
    """Attach `image` to a free loop device; returns (device fd, device path)."""
    mode = os.O_RDONLY if readonly else os.O_RDWR
    try:
        backing = os.open(image, mode | os.O_CLOEXEC)
    except OSError as e:
        raise libc.SyscallError("open(2)", e.errno or 0, f"loop image {image}") from None
    try:
        try:
            control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise libc.SyscallError("open(2)", e.errno or 0, "/dev/loop-control") from None
        try:
            for _ in range(16):
                number = fcntl.ioctl(control, LOOP_CTL_GET_FREE)
                device = f"/dev/loop{number}"
                fd = os.open(device, mode | os.O_CLOEXEC)
                flags = LO_FLAGS_AUTOCLEAR | (LO_FLAGS_READ_ONLY if readonly else 0)
                name = os.fsencode(image)[:63]
                config = _LOOP_CONFIG.pack(
                    backing, 0, 0, 0, 0, 0, 0, 0, 0, 0, flags, name, b"", b"", 0, 0, *(0,) * 8
                )
                try:
                    fcntl.ioctl(fd, LOOP_CONFIGURE, config)
                    return fd, device
                except OSError as e:
                    os.close(fd)
                    if e.errno != errno.EBUSY:  # taken by someone else in between: next one
                        raise libc.SyscallError(
                            "ioctl(2) LOOP_CONFIGURE", e.errno or 0, f"{device} <- {image}"
                        ) from None
            raise libc.SyscallError("ioctl(2) LOOP_CTL_GET_FREE", errno.EBUSY, image)
        finally:
            os.close(control)
    finally:
        os.close(backing)
