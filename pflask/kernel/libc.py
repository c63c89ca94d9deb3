"""The thin ctypes layer: the Linux calls Python 3.11's `os` module lacks.

It is built on `_ctypes`, the C half of ctypes, not on `ctypes` itself:
`import ctypes` defines some forty classes and imports `struct` and `types`,
about 3 ms of every `pflask run` on this class of machine, while the calls
here need only a function type, three integer types and `get_errno`.  The
structures the kernel reads (`struct open_how`, `struct mount_attr`) are
passed as packed bytes.  Modules off the hot path that need real structures
(capabilities, rlimits) use `ctypes` and `LIBC`, which imports it on first use.

Every wrapper raises `SyscallError` (an `OSError`) naming the call and the path
it was given, so a failure deep in container setup reads
`mount(2) /src -> /work: ENOENT (No such file or directory)` and not a bare
errno.  Constants are named exactly as in the kernel headers so they can be
looked up there.  Nothing here decides policy; the compiler does.
"""

from __future__ import annotations

import _ctypes
import errno as _errno
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ctypes
    from collections.abc import Callable
    from typing import Any

    LIBC: ctypes.CDLL  # see __getattr__

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
MS_REC = 16384
MS_SILENT = 32768
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24

MNT_DETACH = 2

MOUNT_ATTR_RDONLY = 0x00000001
MOUNT_ATTR_NOSUID = 0x00000002
MOUNT_ATTR_NODEV = 0x00000004
MOUNT_ATTR_NOEXEC = 0x00000008
MOUNT_ATTR_IDMAP = 0x00100000
AT_RECURSIVE = 0x8000
AT_EMPTY_PATH = 0x1000
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
PR_SET_SECCOMP = 22
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

# <linux/seccomp.h>
SECCOMP_MODE_FILTER = 2

# Syscall numbers.  Those from 424 on are the same on every architecture.
SYS_pidfd_send_signal = 424
SYS_open_tree = 428
SYS_move_mount = 429
SYS_fsopen = 430
SYS_fsconfig = 431
SYS_fsmount = 432
SYS_close_range = 436
SYS_openat2 = 437
SYS_mount_setattr = 442
_SYS_pivot_root = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}
_SYS_keyctl = {"x86_64": 250, "aarch64": 219, "riscv64": 219, "ppc64le": 271, "s390x": 280}
_SYS_bpf = {"x86_64": 321, "aarch64": 280, "riscv64": 280, "ppc64le": 361, "s390x": 351}

# <linux/keyctl.h>
KEYCTL_JOIN_SESSION_KEYRING = 1

# <linux/capability.h>: version 3 carries 64 bits in two 32-bit words.
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


if TYPE_CHECKING:
    _Simple = _ctypes._SimpleCData[int]
else:
    _Simple = _ctypes._SimpleCData


class _Int(_Simple):
    _type_ = "i"


class _ULong(_Simple):
    _type_ = "L"


class _UByte(_Simple):
    _type_ = "B"


class _UInt(_Simple):
    _type_ = "I"


if TYPE_CHECKING:
    _Array = _ctypes.Array[_UInt]
else:
    _Array = _ctypes.Array


class _CapHeader(_Array):
    """struct __user_cap_header_struct: version, pid."""

    _type_ = _UInt
    _length_ = 2


class _CapData(_Array):
    """Two struct __user_cap_data_struct: effective, permitted, inheritable; low word first."""

    _type_ = _UInt
    _length_ = 6


_FLAGS = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO  # errno kept for get_errno()


class _Function(_ctypes.CFuncPtr):
    """A libc function returning int (syscall(2)'s long too: every call made
    through it here returns 0, -1 or a file descriptor)."""

    _flags_ = _FLAGS
    _restype_ = _Int


class _Program:
    """What `CFuncPtr` asks of a library: its dlopen(3) handle.  The program's
    own handle finds libc's functions, as `ctypes.CDLL(None)` does."""

    _handle = _ctypes.dlopen(None, 0)  # type: ignore[arg-type]  # NULL: the program


def _function(name: str) -> Callable[..., int]:
    program: Any = _Program()  # typeshed wants a ctypes.CDLL; its _handle is all that is used
    function: Callable[..., int] = _Function((name, program))
    return function


_syscall = _function("syscall")
_unshare = _function("unshare")
_setns = _function("setns")
_mount = _function("mount")
_umount2 = _function("umount2")
_sethostname = _function("sethostname")
_prctl = _function("prctl")
_capget = _function("capget")
_capset = _function("capset")


def __getattr__(name: str) -> Any:
    """`LIBC`: libc through `ctypes` proper, imported only by the modules that
    need its structures (capget(2), setrlimit(2))."""
    if name == "LIBC":
        import ctypes

        library = ctypes.CDLL(None, use_errno=True)
        globals()["LIBC"] = library
        return library
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _u64s(*values: int) -> bytes:
    """A C struct of __u64 fields, as the kernel reads it."""
    return b"".join(v.to_bytes(8, sys.byteorder) for v in values)


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
        raise SyscallError(call, _ctypes.get_errno(), detail)
    return result


def _b(path: str | None) -> bytes | None:
    return None if path is None else os.fsencode(path)


def unshare(flags: int) -> None:
    _check(_unshare(flags), "unshare(2)", _clone_names(flags))


def setns(fd: int, nstype: int = 0, what: str | None = None) -> None:
    _check(_setns(fd, nstype), "setns(2)", what)


def mount(
    source: str | None,
    target: str,
    fstype: str | None,
    flags: int = 0,
    data: str | None = None,
    what: str | None = None,
) -> None:
    result = _mount(_b(source), _b(target), _b(fstype), _ULong(flags), _b(data))
    _check(result, "mount(2)", what or target)


def umount2(target: str, flags: int = 0) -> None:
    _check(_umount2(_b(target), flags), "umount2(2)", target)


def pivot_root(new_root: str, put_old: str) -> None:
    number = _SYS_pivot_root[os.uname().machine]
    _check(_syscall(number, _b(new_root), _b(put_old)), "pivot_root(2)", new_root)


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_sethostname(raw, _ULong(len(raw))), "sethostname(2)", name)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    args = (_ULong(a) for a in (arg2, arg3, arg4, arg5))
    return _check(_prctl(option, *args), "prctl(2)", str(option))


def c_array(data: bytes | int) -> Any:
    """A C array holding `data`, or that many zero bytes: memory a pointer inside
    a structure passed to the kernel can name.  Keep it referenced until the
    call returns; `address` is the pointer, bytes(array) what it holds."""
    if isinstance(data, int):
        return (_UByte * data)()
    return (_UByte * len(data)).from_buffer_copy(data)


def address(array: Any) -> int:
    return _ctypes.addressof(array)


def bpf(command: int, attr: bytes) -> tuple[int, int]:
    """bpf(2) with a union bpf_attr the caller filled: (result, errno)."""
    result = _syscall(_SYS_bpf[os.uname().machine], command, attr, len(attr))
    return result, _ctypes.get_errno() if result < 0 else 0


def seccomp_set_mode_filter(program: bytes) -> None:
    """Install a classic BPF program (struct sock_filter[]) as a seccomp filter.

    prctl(PR_SET_SECCOMP) takes a struct sock_fprog: the number of
    instructions (an unsigned short, padded to the pointer's alignment) and a
    pointer to them.  The kernel copies the program during the call.
    """
    instructions = c_array(program)
    pointer = _ctypes.sizeof(_ULong)
    fprog = (len(program) // 8).to_bytes(2, sys.byteorder) + bytes(pointer - 2)  # len, padding
    fprog += address(instructions).to_bytes(pointer, sys.byteorder)
    result = _prctl(PR_SET_SECCOMP, _ULong(SECCOMP_MODE_FILTER), fprog, _ULong(0), _ULong(0))
    _check(result, "prctl(2) PR_SET_SECCOMP", f"{len(program) // 8} BPF instructions")


def syscall_errno(number: int) -> int:
    """syscall(2) `number` without arguments, for probing: its errno, 0 if it worked."""
    return _ctypes.get_errno() if _syscall(number) < 0 else 0


def prctl_errno(option: int, arg2: int = 0, arg3: int = 0) -> tuple[int, int]:
    """prctl(2) without raising: (result, errno), for probing and for callers
    that name the operation in their own error."""
    result = _prctl(option, _ULong(arg2), _ULong(arg3), _ULong(0), _ULong(0))
    return result, _ctypes.get_errno() if result < 0 else 0


def capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of this thread as 64-bit masks."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _CapData()
    _check(_capget(header, data), "capget(2)", None)
    lo_eff, lo_prm, lo_inh, hi_eff, hi_prm, hi_inh = data
    return lo_eff | hi_eff << 32, lo_prm | hi_prm << 32, lo_inh | hi_inh << 32


def capset(effective: int, permitted: int, inheritable: int, what: str | None = None) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    words = []
    for shift in (0, 32):
        words += [(mask >> shift) & 0xFFFFFFFF for mask in (effective, permitted, inheritable)]
    _check(_capset(header, _CapData(*words)), "capset(2)", what)


def join_session_keyring() -> None:
    """A new anonymous session keyring for this process and its children.

    A session keyring is inherited across fork and exec, and every key in it
    is "possessed", hence readable, by whoever holds it: without this, a
    container would read the keys of the session that started pflask.
    """
    number = _SYS_keyctl[os.uname().machine]
    result = _syscall(number, KEYCTL_JOIN_SESSION_KEYRING, None)
    if result < 0 and _ctypes.get_errno() in (_errno.EPERM, _errno.ENOSYS):
        # A seccomp filter around pflask (a pflask inside a container) refuses
        # the keyring calls: then no keyring is reachable from here either.
        return
    _check(result, "keyctl(2)", "KEYCTL_JOIN_SESSION_KEYRING")


def mount_setattr(
    dirfd: int,
    path: str,
    flags: int,
    attr_set: int,
    attr_clr: int = 0,
    what: str | None = None,
    userns_fd: int = 0,
) -> None:
    """Change mount attributes, recursively with AT_RECURSIVE (Linux 5.12);
    MOUNT_ATTR_IDMAP takes `userns_fd`, a user namespace whose maps the mount
    applies to its files' owners (a detached mount, not yet idmapped)."""
    # struct mount_attr: set, clr, propagation, userns_fd
    attr = _u64s(attr_set, attr_clr, 0, userns_fd)
    result = _syscall(SYS_mount_setattr, dirfd, _b(path), flags, attr, len(attr))
    _check(result, "mount_setattr(2)", what or path)


def open_tree(dirfd: int, path: str, flags: int, what: str | None = None) -> int:
    result = _syscall(SYS_open_tree, dirfd, _b(path), flags)
    return _check(result, "open_tree(2)", what or path)


def move_mount(
    from_fd: int, from_path: str, to_fd: int, to_path: str, flags: int, what: str | None = None
) -> None:
    result = _syscall(SYS_move_mount, from_fd, _b(from_path), to_fd, _b(to_path), flags)
    _check(result, "move_mount(2)", what or to_path)


OPENAT2_ATTEMPTS = 64
"""How often openat2 is tried when a rename or mount anywhere on the system
raced its RESOLVE_IN_ROOT/RESOLVE_BENEATH lookup (EAGAIN).  Each attempt is
a few microseconds, and a lookup loses the race only while it walks `..`, so
64 ends any real race; the bound keeps a hostile stream of renames from
holding pflask in a loop."""


def openat2(
    dirfd: int, path: str, flags: int, resolve: int, mode: int = 0, what: str | None = None
) -> int:
    """Open `path` below `dirfd` with the kernel enforcing `resolve` (Linux 5.6).

    With RESOLVE_IN_ROOT or RESOLVE_BENEATH the kernel cannot prove a `..`
    stayed inside when a rename or mount happened meanwhile, anywhere: it
    returns EAGAIN and, as openat2(2) advises, the call is tried again (at
    most OPENAT2_ATTEMPTS times, then the EAGAIN is raised).
    """
    how = _u64s(flags | os.O_CLOEXEC, mode, resolve)  # struct open_how
    encoded = _b(path)
    for _ in range(OPENAT2_ATTEMPTS - 1):
        result = _syscall(SYS_openat2, dirfd, encoded, how, len(how))
        if result >= 0 or _ctypes.get_errno() != _errno.EAGAIN:
            break
    else:
        result = _syscall(SYS_openat2, dirfd, encoded, how, len(how))
    return _check(result, "openat2(2)", what or path)


ROOT_FILE_MAX = 16 << 20
"""The most pflask reads of one file of a container's root (passwd, group,
machine-id): 16 MiB is some 200,000 passwd lines, and a root that is a
stranger's download must not make pflask read gigabytes into memory."""

_FILE_KINDS = {
    0o010000: "a FIFO",
    0o020000: "a character device",
    0o040000: "a directory",
    0o060000: "a block device",
    0o140000: "a socket",
}


class RefusedFile(OSError):
    """A file of a container's root that is not a regular file of a sane size."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(_errno.EINVAL, why)
        self.path = path
        self.why = why

    def __str__(self) -> str:
        return f"{self.path}: {self.why}: refused"


def read_in_root(
    root: int | str, path: str, limit: int = ROOT_FILE_MAX, what: str | None = None
) -> bytes | None:
    """The content of the regular file `path` of a container's root; None if it is missing.

    Everything here is the root's to choose, so: the path is resolved inside
    `root` (an fd or a path) by the kernel (openat2(2) RESOLVE_IN_ROOT: `..`
    and absolute symlinks stay in, /proc magic links are refused); opened
    O_NONBLOCK, so a FIFO cannot hang us, and O_NOCTTY; it must then be a
    regular file (never /dev/zero, a FIFO, a socket); and at most `limit`
    bytes are read.  Anything else raises `RefusedFile` naming the file
    (`what`, default `path`), or `SyscallError` for the call that failed.
    """
    shown = what or path
    if isinstance(root, str):
        try:
            directory = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # no root, no file in it
        except OSError as e:
            raise SyscallError("open(2)", e.errno or 0, root) from None
    else:
        directory = root
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY
    try:
        fd = openat2(directory, path.lstrip("/") or ".", flags, _IN_ROOT, what=shown)
    except SyscallError as e:
        if e.errno == _errno.ENOENT:
            return None
        raise
    finally:
        if directory != root:
            os.close(directory)
    try:
        return _read_regular(fd, limit, shown)
    finally:
        os.close(fd)


_IN_ROOT = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS


def _read_regular(fd: int, limit: int, shown: str) -> bytes:
    st = os.fstat(fd)
    kind = st.st_mode & 0o170000
    if kind != 0o100000:
        raise RefusedFile(shown, f"{_FILE_KINDS.get(kind, 'an odd file')}, not a regular file")
    if st.st_size > limit:
        raise RefusedFile(shown, f"{st.st_size} bytes, more than the {limit} pflask reads")
    chunks = []
    left = limit + 1  # one byte more tells a file that grew (or lied about its size)
    while left > 0:
        try:
            chunk = os.read(fd, min(left, 1 << 20))
        except OSError as e:
            raise SyscallError("read(2)", e.errno or 0, shown) from None
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    if left <= 0:
        raise RefusedFile(shown, f"more than the {limit} bytes pflask reads")
    return b"".join(chunks)


def fsopen(fstype: str) -> int:
    result = _syscall(SYS_fsopen, _b(fstype), FSOPEN_CLOEXEC)
    return _check(result, "fsopen(2)", fstype)


def fsconfig_string(fd: int, key: str, value: str, what: str | None = None) -> None:
    result = _syscall(SYS_fsconfig, fd, FSCONFIG_SET_STRING, _b(key), _b(value), 0)
    _check(result, "fsconfig(2)", what or f"{key}={value}")


def fsconfig_create(fd: int, what: str | None = None) -> None:
    result = _syscall(SYS_fsconfig, fd, FSCONFIG_CMD_CREATE, None, None, 0)
    _check(result, "fsconfig(2) create", what)


def fsmount(fd: int, attr_flags: int = 0, what: str | None = None) -> int:
    result = _syscall(SYS_fsmount, fd, FSMOUNT_CLOEXEC, attr_flags)
    return _check(result, "fsmount(2)", what)


def close_range_cloexec(first: int) -> None:
    """Mark every fd from `first` up close-on-exec (Linux 5.11), in one call."""
    result = _syscall(SYS_close_range, first, _ULong(0xFFFFFFFF), CLOSE_RANGE_CLOEXEC)
    _check(result, "close_range(2)", None)


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    result = _syscall(SYS_pidfd_send_signal, pidfd, sig, None, 0)
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


# --- process hygiene: what the container's processes inherit from pflask --------------------
# (close_range(2) without CLOSE_RANGE_CLOEXEC, PR_SET_NAME with a string, and writes into
# this process's own memory, for run.hygiene's seclusion of the container's first process)

_memset = _function("memset")  # returns a pointer, truncated by _Int: never looked at
_memcpy = _function("memcpy")


def close_range(first: int, last: int = 0xFFFFFFFF) -> None:
    """Close every fd from `first` to `last` included (Linux 5.9), in one call."""
    result = _syscall(SYS_close_range, first, _ULong(last), 0)
    _check(result, "close_range(2)", f"{first}-{last}")


def pr_set_name(name: bytes) -> None:
    """This thread's name (comm: `ps`, /proc/PID/status), at most 15 bytes."""
    _check(
        _prctl(PR_SET_NAME, name[:15], _ULong(0), _ULong(0), _ULong(0)), "prctl(2)", "PR_SET_NAME"
    )


def memset(address: int, byte: int, size: int) -> None:
    """Fill `size` bytes of our own memory at `address` with `byte` (memset(3)).

    The address must come from the kernel (/proc/self/stat), never from a guess:
    a wrong one is a segmentation fault, not an error.
    """
    _memset(_ULong(address), byte, _ULong(size))


def memcpy(address: int, data: bytes) -> None:
    """Copy `data` into our own memory at `address` (memcpy(3)); trusted addresses only."""
    _memcpy(_ULong(address), data, _ULong(len(data)))
