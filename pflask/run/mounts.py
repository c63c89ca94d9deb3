"""Building the container's mount tree: one small function per mount operation.

Everything here runs inside the container's mount namespace, before
pivot_root(2), so the host's paths are still reachable while the new root is
assembled under its own directory; only `preflight` and the janitor run on
the host side, in the supervisor before the container exists.

Safety: every target is resolved *inside* the container's root with
openat2(2) and RESOLVE_IN_ROOT, so a symlink or `..` in a hostile root
(`etc -> /host/etc`, `x -> ../../..`) is resolved as if the root were `/` and
never reaches a host path.  Missing components, dangling symlinks' targets
included, are created by a walk that does the same, one component at a time
(Root.make), so the mount lands where the container will look for it and
inside the root.  Mounts are then made onto `/proc/self/fd/N` of the
resolved O_PATH descriptor, so no path is looked up a second time.

Binds use the new mount API (open_tree(2), mount_setattr(2), move_mount(2);
Linux 5.12): the clone is made read-only, recursively, *before* it is attached,
so a read-only bind is never writable even for an instant, submounts included.

Nothing mounted here needs undoing: every mount lives in the container's
mount namespace (propagation is slave or private) and goes with it, and the
tmpfs behind a tmpfs-backed overlay or an ephemeral root is never mounted
anywhere a path could name.  Only directories made on the host outlive the
container: the aufs work directories, which the janitor looks after.
"""

from __future__ import annotations

import os
from errno import EACCES, EBUSY, EEXIST, EINVAL, EISDIR, ELOOP, ENOENT, ENOTDIR, EPERM, EXDEV

from pflask.errors import SetupError
from pflask.kernel import libc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

    from pflask.compile.plan import Step

MS_FLAGS = {
    "ro": libc.MS_RDONLY,
    "nosuid": libc.MS_NOSUID,
    "nodev": libc.MS_NODEV,
    "noexec": libc.MS_NOEXEC,
    "strictatime": libc.MS_STRICTATIME,
    "relatime": libc.MS_RELATIME,
    "noatime": libc.MS_NOATIME,
}
ATTR_FLAGS = {
    "ro": libc.MOUNT_ATTR_RDONLY,
    "nosuid": libc.MOUNT_ATTR_NOSUID,
    "nodev": libc.MOUNT_ATTR_NODEV,
    "noexec": libc.MOUNT_ATTR_NOEXEC,
}
# Character devices every program expects, with their fixed numbers (devices.txt).
DEVICES = {
    "null": (1, 3),
    "zero": (1, 5),
    "full": (1, 7),
    "random": (1, 8),
    "urandom": (1, 9),
    "tty": (5, 0),
}
_RESOLVE = libc.RESOLVE_IN_ROOT | libc.RESOLVE_NO_MAGICLINKS
MAX_SYMLINKS = 40  # as the kernel allows in one lookup (ELOOP beyond)
# open(2) flags for a file pflask makes in a directory fd: a new one only, never
# through a symlink left in its place.
NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def fd_path(fd: int) -> str:
    """A path naming exactly what `fd` refers to, for calls that take paths."""
    return f"/proc/self/fd/{fd}"


def ms_flags(names: tuple[str, ...]) -> int:
    flags = 0
    for name in names:
        flags |= MS_FLAGS[name]
    return flags


def attr_flags(names: tuple[str, ...]) -> int:
    flags = 0
    for name in names:
        flags |= ATTR_FLAGS.get(name, 0)
    return flags


class Root:
    """The container's root directory, and safe lookups below it."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1
        # What `make` created in the root's own filesystem (paths inside the
        # root, parents first): in a root that stays, the supervisor removes
        # them after the container.  What it made on a mount over the root
        # (a tmpfs on /dev) goes with that mount and is not counted.
        self.made: list[str] = []
        self.reopen()
        self.device = os.fstat(self.fd).st_dev

    def reopen(self) -> None:
        """Pick up whatever is now mounted at the root's path."""
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def host_path(self, path: str) -> str:
        """Where a container path lies on the host (for messages only)."""
        return os.path.join(self.path, path.lstrip("/")) if self.path != "/" else path

    def open(self, path: str, flags: int = os.O_PATH) -> int:
        """Resolve `path` inside the root; the kernel keeps `..` and symlinks in."""
        relative = path.lstrip("/") or "."
        return libc.openat2(self.fd, relative, flags, _RESOLVE, what=self.host_path(path))

    def make(self, path: str, directory: bool = True, mode: int = 0o755) -> int:
        """Open `path` inside the root, creating what is missing, as a mount target.

        A missing last component becomes a directory, or an empty file when
        `directory` is false (a bind target for a file); missing parents
        become directories.  Symlinks on the way, dangling ones included, are
        followed the way the container will see them: an absolute value
        starts again at the root and `..` stops there, so `etc -> /host/etc`
        makes `<root>/host/etc` and never touches the host's /host/etc.
        """
        try:
            return self.open(path)
        except libc.SyscallError as e:
            if e.errno != ENOENT:
                raise
        made = self._make_last(path, directory, mode)
        return made if made >= 0 else self.open(self._create(path, directory, mode))

    def _make_last(self, path: str, directory: bool, mode: int) -> int:
        """The common case, one missing name in an existing directory (/dev/pts
        on a fresh /dev): create it there and open it; -1 for anything else
        (missing parents, a dangling symlink), which `_create` walks through."""
        parent_path, _, name = path.rstrip("/").rpartition("/")
        if name in ("", ".", ".."):
            return -1
        try:
            parent = self.open(parent_path, os.O_PATH | os.O_DIRECTORY)
        except libc.SyscallError as e:
            if e.errno in (ENOENT, ENOTDIR):
                return -1
            raise
        try:
            if not _create_entry(parent, name, directory, mode, self.host_path(path)):
                return -1  # a dangling symlink, or made meanwhile: walk it
            self._made(parent, "/" + path.strip("/"))
            return libc.openat2(parent, name, os.O_PATH, _RESOLVE, what=self.host_path(path))
        finally:
            os.close(parent)

    def _create(self, path: str, directory: bool, mode: int) -> str:
        """Walk `path` one component at a time from the root, creating what is
        missing; return the symlink-free path inside the root it leads to.

        Each step opens the (symlink-free) parent with RESOLVE_IN_ROOT and
        works on one name relative to it: readlinkat(2) to see a symlink,
        mkdirat(2) or openat(2) with O_CREAT|O_EXCL (neither follows a
        symlink) to create, so nothing is ever looked up outside the root.
        """
        pending = [name for name in reversed(path.split("/")) if name]
        done: list[str] = []
        links = 0
        while pending:
            name = pending.pop()
            if name == ".":
                continue
            if name == "..":
                if done:
                    done.pop()
                continue
            parent = self.open("/".join(done), os.O_PATH | os.O_DIRECTORY)
            try:
                value = _readlink(name, parent)
                if value is None:  # missing: make it, then look at it again
                    kind_dir = directory or bool(pending)
                    if _create_entry(parent, name, kind_dir, mode, self.host_path(path)):
                        self._made(parent, "/" + "/".join([*done, name]))
                    pending.append(name)
                    continue
            finally:
                os.close(parent)
            if not value:  # it exists and is not a symlink
                done.append(name)
                continue
            links += 1
            if links > MAX_SYMLINKS:
                raise libc.SyscallError("openat2(2)", ELOOP, self.host_path(path))
            if value.startswith("/"):
                done = []
            pending.extend(n for n in reversed(value.split("/")) if n)
        return "/" + "/".join(done)

    def _made(self, parent: int, path: str) -> None:
        if os.fstat(parent).st_dev == self.device:
            self.made.append(path)

    def covered(self, fd: int) -> None:
        """After a mount on `fd`: if that was the root itself, use the new mount."""
        if _same_file(os.fstat(fd), os.fstat(self.fd)):
            self.reopen()


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _readlink(name: str, parent: int) -> str | None:
    """A symlink's value; "" for anything else that exists; None when missing."""
    try:
        return os.readlink(name, dir_fd=parent)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno == EINVAL:  # exists, not a symlink
            return ""
        raise libc.SyscallError("readlinkat(2)", e.errno or 0, name) from None


def _create_entry(parent: int, name: str, directory: bool, mode: int, what: str) -> bool:
    """mkdirat(2), or an empty file by openat(2) O_CREAT|O_EXCL; neither follows a symlink.
    False when `name` exists (a symlink, or made meanwhile): the caller looks at it again."""
    try:
        if directory:
            os.mkdir(name, mode, dir_fd=parent)
        else:
            os.close(os.open(name, NEW_FILE, 0o644, dir_fd=parent))
    except FileExistsError:
        return False
    except OSError as e:
        call = "mkdir(2)" if directory else "open(2)"
        raise libc.SyscallError(call, e.errno or 0, f"{what}: creating {name!r}") from None
    return True


def make_private(mode: str) -> None:
    """Stop mount events from reaching the host: / recursively slave or private."""
    flag = libc.MS_SLAVE if mode == "slave" else libc.MS_PRIVATE
    libc.mount(None, "/", None, libc.MS_REC | flag, what="/ (propagation)")


def bind_root(path: str, flags: tuple[str, ...] = ()) -> None:
    """pivot_root(2) needs the new root to be a mount point: bind it onto itself.

    `flags` (nodev) go on the bind and every mount below it.
    """
    libc.mount(path, path, None, libc.MS_BIND | libc.MS_REC, what=f"{path} -> {path}")
    if flags:
        libc.mount_setattr(
            libc.AT_FDCWD, path, libc.AT_RECURSIVE, attr_flags(flags), what=f"{path} ({flags})"
        )


def detached_tmpfs(data: str = "mode=0755") -> int:
    """A tmpfs mounted nowhere (fsmount(2)), for scratch layers that vanish with us."""
    fs = libc.fsopen("tmpfs")
    try:
        for option in data.split(","):
            key, _, value = option.partition("=")
            libc.fsconfig_string(fs, key, value, "tmpfs")
        libc.fsconfig_create(fs, "tmpfs")
        return libc.fsmount(fs, 0, "tmpfs")
    finally:
        os.close(fs)


def overlay_options(lower: list[str], upper: str | None, work: str | None) -> str:
    """overlayfs options; layers are named by /proc/self/fd paths, so no escaping is needed."""
    options = "lowerdir=" + ":".join(lower)
    if upper is not None and work is not None:
        options += f",upperdir={upper},workdir={work}"
    return options


def scratch_layers(like: int, tmpfs: str = "") -> tuple[int, str, str]:
    """A tmpfs upper and work directory for changes that vanish with the container.

    The merged directory takes its owner and mode from the upper layer's
    root, so the upper is given those of the layer it covers (`like`): a
    tmpfs-backed overlay over /home/alice stays alice's, 0700 stays 0700.
    `tmpfs`: more options for the tmpfs (the plan's size bound: without
    one, a tmpfs may grow to half the host's RAM).
    Returns (the tmpfs's fd, upper path, work path).
    """
    scratch = detached_tmpfs("mode=0755" + ("," + tmpfs if tmpfs else ""))
    try:
        os.mkdir("upper", 0o755, dir_fd=scratch)
        os.mkdir("work", 0o700, dir_fd=scratch)
        st = os.fstat(like)
        os.chmod("upper", st.st_mode & 0o7777, dir_fd=scratch)
        try:
            os.chown("upper", st.st_uid, st.st_gid, dir_fd=scratch)
        except OSError:  # an owner not mapped in this user namespace: keep ours
            pass
    except BaseException:
        os.close(scratch)
        raise
    return scratch, f"{fd_path(scratch)}/upper", f"{fd_path(scratch)}/work"


def ephemeral_root(path: str, tmpfs: str = "", flags: tuple[str, ...] = ()) -> None:
    """An overlay over the root with a tmpfs upper, mounted over the root's path.

    Everything the container writes lands in a tmpfs that no path names, so
    it is gone with the container's mount namespace, however that ends.
    `tmpfs`: that tmpfs's options beyond its mode (its size and inode bound);
    `flags`: the overlay's mount flags (nodev).
    """
    lower = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        scratch, upper, work = scratch_layers(lower, tmpfs)
        try:
            options = overlay_options([fd_path(lower)], upper, work)
            try:
                libc.mount(
                    "overlay", path, "overlay", ms_flags(flags), options, what=f"overlay on {path}"
                )
            except libc.SyscallError as e:
                raise overlay_refused(e, f"ephemeral root: overlay on {path}") from None
        finally:
            os.close(scratch)
    finally:
        os.close(lower)


def image_root(
    path: str,
    layers: tuple[str, ...],
    upper: str | None = None,
    tmpfs: str = "",
    userxattr: bool = False,
    flags: tuple[str, ...] = (),
) -> None:
    """An image's layers as the root: an overlay mounted over `path` (the top
    layer's directory; this mount namespace only).

    The layers are opened first and named by their fds, so mounting over one
    of them hides nothing the overlay needs.  Without `upper` the changes go
    to a tmpfs no path names (as ephemeral_root); with it, to `upper`/upper,
    with `upper`/work as overlayfs's work directory, both made if missing.
    """
    what = f"image root: overlay on {path}"
    fds: list[int] = []
    try:
        for layer in layers:
            fds.append(_open_dir(layer, "image layer"))
        if upper is None:
            scratch, upper_path, work_path = scratch_layers(fds[0], tmpfs)
            fds.append(scratch)
        else:
            keep = _open_dir(upper, "root.upper")
            fds.append(keep)
            for name in ("upper", "work"):
                try:
                    os.mkdir(name, 0o755, dir_fd=keep)
                except FileExistsError:
                    pass
                except OSError as e:
                    raise libc.SyscallError("mkdir(2)", e.errno or 0, f"{upper}/{name}") from None
                fds.append(_open_dir_at(keep, name, f"{upper}/{name}"))
            upper_path, work_path = fd_path(fds[-2]), fd_path(fds[-1])
        options = overlay_options([fd_path(fd) for fd in fds[: len(layers)]], upper_path, work_path)
        if userxattr:
            options += ",userxattr"
        try:
            libc.mount("overlay", path, "overlay", ms_flags(flags), options, what=what)
        except libc.SyscallError as e:
            raise overlay_refused(e, what) from None
    finally:
        for fd in fds:
            os.close(fd)


def idmap_tree(path: str, userns: int) -> None:
    """Mount over the directory `path` an idmapped, read-only clone of
    itself, whose files' owners go through the user namespace `userns`'s
    maps, in a mount namespace of our own (see plan.IdmapLayers).

    / becomes a slave first: a shared / would carry the mount to the host's
    namespace.  The directory is opened once and that fd is both the clone's
    source and its target, so nothing in between can swap the path.
    """
    what = f"idmapped mount of {path}"
    libc.unshare(libc.CLONE_NEWNS)
    libc.mount(None, "/", None, libc.MS_SLAVE | libc.MS_REC, what=what)
    fd = _open_dir(path, "image store")
    try:
        flags = libc.OPEN_TREE_CLONE | libc.OPEN_TREE_CLOEXEC | libc.AT_EMPTY_PATH
        clone = libc.open_tree(fd, "", flags, what)
        try:
            # Read-only too: the overlay only reads its lower layers.
            attr = libc.MOUNT_ATTR_IDMAP | libc.MOUNT_ATTR_RDONLY
            libc.mount_setattr(clone, "", libc.AT_EMPTY_PATH, attr, what=what, userns_fd=userns)
            flags = libc.MOVE_MOUNT_F_EMPTY_PATH | libc.MOVE_MOUNT_T_EMPTY_PATH
            libc.move_mount(clone, "", fd, "", flags, what)
        finally:
            os.close(clone)
    finally:
        os.close(fd)


def _open_dir_at(parent: int, name: str, what: str) -> int:
    try:
        flags = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(name, flags, dir_fd=parent)
    except OSError as e:
        raise libc.SyscallError("open(2)", e.errno or 0, what) from None


def mount_fs(
    root: Root,
    fstype: str,
    target: str,
    flags: tuple[str, ...],
    data: str,
    fallback_bind: str | None,
    source: str = "",
) -> None:
    """A kernel filesystem on a target; when the kernel refuses it in a user
    namespace (proc without a PID namespace, sysfs without a network one),
    bind the host's instance instead, read-only as asked.  `source` is only
    a name (mountinfo's source field); the fstype's by default."""
    fd = root.make(target)
    try:
        try:
            libc.mount(
                source or fstype,
                fd_path(fd),
                fstype,
                ms_flags(flags),
                data or None,
                what=f"{fstype} on {root.host_path(target)}",
            )
        except libc.SyscallError as e:
            if fallback_bind is None or e.errno not in (EPERM, EACCES):
                raise
            bind_fd(fallback_bind, fd, readonly="ro" in flags, recursive=True, flags=flags)
        root.covered(fd)
    finally:
        os.close(fd)


def bind_fd(
    source: str | int,
    target_fd: int,
    readonly: bool,
    recursive: bool,
    flags: tuple[str, ...],
    what: str | None = None,
) -> None:
    """Clone `source` (a path or an O_PATH fd), set attributes, attach at `target_fd`.

    The attributes go on the detached clone, recursively, before
    move_mount(2) attaches it: a read-only bind is never writable, not even
    for an instant and not in a submount.
    """
    clone_flags = libc.OPEN_TREE_CLONE | libc.OPEN_TREE_CLOEXEC
    if recursive:
        clone_flags |= libc.AT_RECURSIVE
    if isinstance(source, int):
        tree = libc.open_tree(source, "", clone_flags | libc.AT_EMPTY_PATH, what=what)
    else:
        tree = libc.open_tree(libc.AT_FDCWD, source, clone_flags, what=what or source)
    try:
        attrs = attr_flags(flags) | (libc.MOUNT_ATTR_RDONLY if readonly else 0)
        if attrs:
            libc.mount_setattr(tree, "", libc.AT_EMPTY_PATH | libc.AT_RECURSIVE, attrs, what=what)
        libc.move_mount(
            tree,
            "",
            target_fd,
            "",
            libc.MOVE_MOUNT_F_EMPTY_PATH | libc.MOVE_MOUNT_T_EMPTY_PATH,
            what=what,
        )
    finally:
        os.close(tree)


def bind(
    root: Root,
    source: str,
    target: str,
    readonly: bool,
    recursive: bool,
    flags: tuple[str, ...],
    optional: bool,
    inside: bool,
) -> bool:
    """Bind a host path (or one inside the root) onto a target; False if skipped.

    The target is made to match the source: a directory for a directory, an
    empty file for anything else (a file, a socket, a device node).
    """
    try:
        src = root.open(source) if inside else os.open(source, os.O_PATH | os.O_CLOEXEC)
    except OSError as e:
        if optional and e.errno == ENOENT:
            return False
        if isinstance(e, libc.SyscallError):
            raise
        raise libc.SyscallError("open(2)", e.errno or 0, f"bind source {source}") from None
    try:
        if "nodev" in flags and _is_device(src):
            # Binding a device node is how a manifest hands that device over.
            flags = tuple(flag for flag in flags if flag != "nodev")
        dst = root.make(target, directory=_is_dir(src))
        try:
            bind_fd(
                src, dst, readonly, recursive, flags, what=f"{source} -> {root.host_path(target)}"
            )
            root.covered(dst)
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return True


def _is_dir(fd: int) -> bool:
    return os.fstat(fd).st_mode & 0o170000 == 0o040000


def _is_device(fd: int) -> bool:
    return os.fstat(fd).st_mode & 0o170000 in (0o020000, 0o060000)  # S_IFCHR, S_IFBLK


def overlay(
    root: Root,
    target: str,
    lower: tuple[str, ...],
    upper: str | None,
    work: str | None,
    readonly: bool,
    flags: tuple[str, ...],
    lower_inside: bool,
    temporary_work: bool,
    tmpfs: str = "",
) -> None:
    """overlayfs at a target.

    Without an upper layer the changes go to a private tmpfs (with `tmpfs`'s
    options: its size bound).
    `lower_inside` layers are container paths (the original's aufs: a
    directory over the target's own content), so the target is made first.
    A `temporary_work` directory is already there: the janitor made it
    before the container's first process existed (see preflight).
    """
    what = f"overlay on {root.host_path(target)}"
    fds: list[int] = []
    try:
        dst = root.make(target)
        fds.append(dst)
        layers = []
        for layer in lower:
            fds.append(root.open(layer) if lower_inside else _open_dir(layer, "overlay lower"))
            layers.append(fd_path(fds[-1]))
        if upper is None:  # overlayfs wants an upper with a single lower, even read-only
            scratch, upper_path, work_path = scratch_layers(fds[1], tmpfs)
            fds.append(scratch)
        else:
            assert work is not None  # the manifest's validation: upper and work go together
            fds.append(_open_dir(upper, "overlay upper"))
            fds.append(_open_dir(work, "overlay work directory"))
            _same_filesystem(fds[-2], fds[-1], upper, work, what)
            upper_path, work_path = fd_path(fds[-2]), fd_path(fds[-1])
        try:
            libc.mount(
                "overlay",
                fd_path(dst),
                "overlay",
                ms_flags(flags) | (libc.MS_RDONLY if readonly else 0),
                overlay_options(layers, upper_path, work_path),
                what=what,
            )
        except libc.SyscallError as e:
            raise overlay_refused(e, what) from None
        root.covered(dst)
    finally:
        for fd in fds:
            os.close(fd)


def _same_filesystem(upper: int, work: int, upper_path: str, work_path: str, what: str) -> None:
    """overlayfs wants upper and work on one filesystem; say so before it says EINVAL."""
    if os.fstat(upper).st_dev != os.fstat(work).st_dev:
        raise libc.SyscallError(
            "mount(2)",
            EXDEV,
            f"{what}: upper {upper_path} and work directory {work_path} are on different "
            "filesystems (overlayfs needs both on one; give a work directory beside the upper)",
        )


def overlay_refused(error: libc.SyscallError, what: str, release: str | None = None) -> OSError:
    """The overlay mount's error, explained when a user namespace is the reason.

    Mounting overlayfs inside a user namespace needs Linux 5.11; older
    kernels answer EPERM, which alone says nothing about why.
    """
    if error.errno != EPERM or not in_user_namespace():
        return error
    release = release or os.uname().release
    if _version(release) < (5, 11):
        reason = f"overlayfs in a user namespace needs Linux 5.11 or later (this is {release})"
    else:
        reason = "the kernel refuses overlayfs in this user namespace"
    return libc.SyscallError("mount(2)", EPERM, f"{what}: {reason}")


def _version(release: str) -> tuple[int, int]:
    parts = [*release.split("-")[0].split("."), "0"][:2]
    digits = ["".join(c for c in part if c.isdigit()) or "0" for part in parts]
    return int(digits[0]), int(digits[1])


def in_user_namespace() -> bool:
    """True unless this is the initial user namespace (its uid_map maps everything)."""
    try:
        with open("/proc/self/uid_map", "rb") as f:
            return f.read().split() != [b"0", b"0", b"4294967295"]
    except OSError:
        return False


def _open_dir(path: str, what: str) -> int:
    try:
        return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise libc.SyscallError("open(2)", e.errno or 0, f"{what} {path}") from None


def remove_tree(path: str) -> None:
    """rm -rf without shutil; overlayfs leaves a mode-000 `work` dir inside."""
    try:
        os.chmod(path, 0o700, follow_symlinks=False)
    except OSError:
        pass
    try:
        entries = list(_scandir(path))
    except NotADirectoryError:
        os.unlink(path)
        return
    except FileNotFoundError:
        return
    for entry, is_dir in entries:
        if is_dir:
            remove_tree(entry)
        else:
            os.unlink(entry)
    os.rmdir(path)


def _scandir(path: str) -> Iterator[tuple[str, bool]]:
    with os.scandir(path) as it:
        for entry in it:
            yield entry.path, entry.is_dir(follow_symlinks=False)


def dev_nodes(root: Root, target: str, nodes: tuple[str, ...]) -> None:
    """The standard device nodes, bound from the host's /dev.

    Bound, not made with mknod(2): the container's /dev is a nodev tmpfs, so
    that a node the container makes there cannot be opened, while each bind
    is a mount of its own that keeps the host's node usable.  (A user
    namespace could not make them anyway.)  The tmpfs is fresh: each node's
    file is created in it through one directory fd (this runs at every
    start), and only a name that exists already goes through `bind_file`.
    """
    for name in nodes:
        if name not in DEVICES:
            raise libc.SyscallError("mknod(2)", EINVAL, f"/dev/{name}: not a standard device")
    directory = root.make(target)
    try:
        for name in nodes:
            path = f"{target.rstrip('/')}/{name}"
            try:
                dst = os.open(name, NEW_FILE, 0o644, dir_fd=directory)
            except FileExistsError:
                bind_file(root, f"/dev/{name}", path)
                continue
            except OSError as e:
                raise libc.SyscallError("open(2)", e.errno or 0, root.host_path(path)) from None
            try:
                what = f"/dev/{name} -> {root.host_path(path)}"
                bind_fd(f"/dev/{name}", dst, readonly=False, recursive=False, flags=(), what=what)
            finally:
                os.close(dst)
    finally:
        os.close(directory)


def device_node(
    root: Root, path: str, kind: str, major: int, minor: int, mode: int, uid: int, gid: int
) -> None:
    """Make one device node (or FIFO) in the root with mknod(2), then its mode
    and owner; a name that exists already is left as it is (runc's rule: a
    bundle may list /dev/null, which the standard nodes made)."""
    import stat

    parent_path, _, name = path.rpartition("/")
    parent = root.make(parent_path or "/")
    try:
        file_type = {"c": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}[kind]
        try:
            os.mknod(name, file_type | 0o600, os.makedev(major, minor), dir_fd=parent)
        except FileExistsError:
            return
        except OSError as e:
            raise libc.SyscallError("mknod(2)", e.errno or 0, root.host_path(path)) from None
        try:
            os.chown(name, uid, gid, dir_fd=parent, follow_symlinks=False)
            os.chmod(name, mode, dir_fd=parent)  # just made: no symlink, whatever the umask
        except OSError as e:
            raise libc.SyscallError("chown(2)", e.errno or 0, root.host_path(path)) from None
    finally:
        os.close(parent)


def bind_file(root: Root, source: str | int, path: str, mode: int = 0o644) -> None:
    """Bind a single file (a path, or an fd such as a pty slave) onto `path`,
    made as an empty file inside the root when missing."""
    dst = root.make(path, directory=False, mode=mode)
    try:
        shown = source if isinstance(source, str) else os.readlink(fd_path(source))
        what = f"{shown} -> {root.host_path(path)}"
        bind_fd(source, dst, readonly=False, recursive=False, flags=(), what=what)
    finally:
        os.close(dst)


def symlink(root: Root, value: str, path: str) -> None:
    parent_path, _, name = path.rstrip("/").rpartition("/")
    parent = root.make(parent_path or "/")
    try:
        os.symlink(value, name, dir_fd=parent)
    except FileExistsError:
        if os.readlink(name, dir_fd=parent) != value:
            raise libc.SyscallError("symlink(2)", EEXIST, root.host_path(path)) from None
    finally:
        os.close(parent)


def existing(root: Root, paths: tuple[str, ...]) -> Iterator[tuple[str, int]]:
    """(path, O_PATH fd) for each path that exists in the root; the fd is closed after."""
    for path in paths:
        try:
            fd = root.open(path)
        except libc.SyscallError as e:
            if e.errno in (ENOENT, ENOTDIR):  # nothing there to protect
                continue
            raise
        try:
            yield path, fd
        finally:
            os.close(fd)


def mask(root: Root, paths: tuple[str, ...]) -> None:
    """Hide kernel files behind /dev/null and directories behind an empty read-only tmpfs."""
    for path, fd in existing(root, paths):
        what = f"mask {root.host_path(path)}"
        if _is_dir(fd):
            libc.mount("tmpfs", fd_path(fd), "tmpfs", libc.MS_RDONLY, "size=0,mode=000", what=what)
        else:
            bind_fd("/dev/null", fd, readonly=True, recursive=False, flags=(), what=what)


def make_readonly(root: Root, paths: tuple[str, ...]) -> None:
    """Bind each existing path onto itself, read-only, submounts included."""
    for path, fd in existing(root, paths):
        what = f"read-only {root.host_path(path)}"
        bind_fd(fd, fd, readonly=True, recursive=True, flags=(), what=what)


def remount_root_readonly(root: Root) -> None:
    libc.mount_setattr(
        root.fd, "", libc.AT_EMPTY_PATH, libc.MOUNT_ATTR_RDONLY, what=f"{root.path} read-only"
    )


def pivot_root(path: str) -> None:
    """Enter the root; the old root is stacked under it and detached at once."""
    os.chdir(path)
    libc.pivot_root(".", ".")
    libc.umount2(".", libc.MNT_DETACH)
    os.chdir("/")


# --- before the fork: the host side -------------------------------------------------------


def preflight(steps: tuple[Step, ...]) -> None:
    """Check every host path the mount steps need, before anything is mounted.

    Runs in the supervisor, before the container's first process exists, so
    a typo in a source is one clear error (the step, the field, the path)
    rather than a half-built container.  Then, if steps have pflask make
    overlay work directories (aufs), the janitor makes them (start_janitor).
    """
    from pflask.compile import plan

    work_dirs: list[tuple[int, plan.Overlay]] = []
    for number, step in enumerate(steps, 1):
        try:
            if isinstance(step, plan.Bind) and not (step.optional or step.inside):
                _check(step.source, "bind source", None)
            elif isinstance(step, plan.Overlay):
                if not step.lower_inside:
                    for layer in step.lower:
                        _check(layer, "overlay lower", True)
                if step.upper is not None:
                    _check(step.upper, "overlay upper", True)
                if step.work is not None and step.temporary_work:
                    _check(os.path.dirname(step.work) or "/", "overlay work's parent", True)
                    work_dirs.append((number, step))
                elif step.work is not None:
                    _check(step.work, "overlay work", True)
            elif isinstance(step, plan.LoopMount):
                _check(step.source, "loop source", False)
            elif isinstance(step, plan.DiskRoot):
                _check(step.source, "disk image", False)
            elif isinstance(step, plan.ImageRoot):
                for layer in step.layers:
                    _check(layer, "image layer", True)
                if step.upper is not None:
                    _check(step.upper, "root.upper", True)
        except OSError as e:
            raise SetupError(f"step {number} ({step.describe()}): {e}") from None
    if work_dirs:
        start_janitor(
            [(f"step {n} ({s.describe()})", s.work or "", s.upper or "") for n, s in work_dirs]
        )


def _check(path: str, field: str, directory: bool | None) -> None:
    """`path` exists (and is a directory, or is not one, as `directory` says)."""
    try:
        st = os.stat(path)
    except OSError as e:
        call = "open(2)" if e.errno == ENOENT else "stat(2)"
        raise libc.SyscallError(call, e.errno or 0, f"{field} {path}") from None
    is_dir = st.st_mode & 0o170000 == 0o040000
    if directory is True and not is_dir:
        raise libc.SyscallError("open(2)", ENOTDIR, f"{field} {path}")
    if directory is False and is_dir:
        raise libc.SyscallError("open(2)", EISDIR, f"{field} {path}")


# --- the janitor: temporary work directories, even when pflask is SIGKILLed ---------------

_janitor = -1  # the write end of the janitor's lifetime pipe, once started


def start_janitor(work_dirs: list[tuple[str, str, str]]) -> None:
    """Fork the janitor, which makes the overlay work directories pflask owns
    and removes them once pflask and its container are gone, however they end.

    `work_dirs` is (step, work directory, upper) for each.  The supervisor
    removes them itself after a normal run; the janitor is for a supervisor
    killed with SIGKILL, which takes the container with it
    (PR_SET_PDEATHSIG) and leaves nobody else to clean up.  It makes the
    directories itself, before the container exists, so no moment exists
    in which a directory is made and nobody knows it; it keeps each open
    and locked (flock(2)) while the container runs, so another pflask can
    tell a live work directory from one a killed run left behind.

    Its lifetime pipe is held by the supervisor and, inherited, by the
    container's processes until they exec or exit: EOF means all are gone.
    It ignores the terminal's signals and holds no stdio, so a caller
    reading pflask's output sees EOF when pflask exits.
    """
    global _janitor
    life_r, life_w = os.pipe2(os.O_CLOEXEC)
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.close(life_w)
            os.close(status_r)
            _janitor_main(life_r, status_w, work_dirs)
        finally:
            os._exit(0)
    os.close(life_r)
    os.close(status_w)
    report = b""
    while chunk := os.read(status_r, 4096):
        report += chunk
        if report.endswith(b"\n"):
            break
    os.close(status_r)
    if report != b"ok\n":
        os.close(life_w)  # the janitor removes what it made, and exits
        os.waitpid(pid, 0)
        raise SetupError(report.decode(errors="replace").strip() or "the janitor died")
    _janitor = life_w


def _janitor_main(life: int, status: int, work_dirs: list[tuple[str, str, str]]) -> None:
    if TYPE_CHECKING:
        import signal as _signal
    else:
        import _signal

    for name in ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGTSTP", "SIGTTIN", "SIGTTOU"):
        _signal.signal(getattr(_signal, name), _signal.SIG_IGN)
    os.chdir("/")  # pin no mount: the paths it works on are absolute
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    keep = sorted((life, status))
    os.closerange(3, keep[0])
    os.closerange(keep[0] + 1, keep[1])
    os.closerange(keep[1] + 1, 1 << 20)
    held: list[tuple[str, int]] = []
    try:
        for step, work, upper in work_dirs:
            try:
                held.append((work, make_work_dir(work, upper)))
            except OSError as e:
                os.write(status, f"{step}: {e}\n".encode())
                return
        os.write(status, b"ok\n")
        os.close(status)
        while os.read(life, 4096):
            pass
    finally:
        for work, fd in held:
            sweep(work, fd)


def make_work_dir(path: str, upper: str) -> int:
    """Make the overlay work directory `path`; return it open and flock(2)ed.

    A directory already there is a killed run's, unless its janitor still
    holds the lock: then another container is using it, and removing it
    would break that container, so this is an error.  As root, the
    directory gets the upper's owner, who is the one overlayfs writes as.
    """
    what = f"overlay work directory {path}"
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        stale = os.open(path, flags)
    except FileNotFoundError:
        stale = -1
    except OSError as e:
        if e.errno not in (ENOTDIR, ELOOP):  # a file or a symlink: not ours to follow
            raise libc.SyscallError("open(2)", e.errno or 0, what) from None
        os.unlink(path)
        stale = -1
    if stale >= 0:
        try:
            _lock(stale, what)
            remove_tree(path)
        finally:
            os.close(stale)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:  # another pflask made it just now
        raise libc.SyscallError("mkdir(2)", EBUSY, f"{what}: in use by another container") from None
    except OSError as e:
        raise libc.SyscallError("mkdir(2)", e.errno or 0, what) from None
    fd = os.open(path, flags)
    try:
        _lock(fd, what)
        if os.geteuid() == 0:
            st = os.stat(upper)
            os.fchown(fd, st.st_uid, st.st_gid)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _lock(fd: int, what: str) -> None:
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise libc.SyscallError(
            "flock(2)",
            EBUSY,
            f"{what}: in use by another running container (give each its own work directory)",
        ) from None


SWEEP_PATIENCE = 5.0
"""Seconds the janitor keeps trying to remove a work directory."""


def sweep(path: str, held: int) -> None:
    """Remove `path` if it is still the directory `held` is open on.

    An open directory's inode cannot be reused, so a later run's directory
    of the same name never looks like this one and is left alone.  When the
    supervisor was killed, the janitor gets here at once, while the
    container's PID 1 may still be ending (its parent-death signal is
    asynchronous) and its overlay still mounted and writing in the work
    directory: a removal that fails is tried again, every 20 ms, for up to
    SWEEP_PATIENCE seconds.
    """
    import time

    deadline = time.monotonic() + SWEEP_PATIENCE
    try:
        st = os.fstat(held)
        while True:
            try:
                now = os.lstat(path)
            except FileNotFoundError:
                return
            if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
                return
            try:
                remove_tree(path)
                return
            except OSError:
                if time.monotonic() >= deadline:
                    return
                time.sleep(0.02)
    except OSError:
        pass
    finally:
        os.close(held)


# --- mount points made in a root that stays --------------------------------------------------

# Host-side lookups of what pflask made: beneath the root, through no symlink
# (one the container left must not lead the host's pflask anywhere) and across
# no mount.
_HOST_RESOLVE = libc.RESOLVE_BENEATH | libc.RESOLVE_NO_SYMLINKS | libc.RESOLVE_NO_XDEV


def mount_targets(steps: tuple[Step, ...]) -> list[str]:
    """Where the steps mount, in a root of its own: the paths Root.make may create.
    The supervisor trusts a path the container says it made only if it is one
    of these or a parent of one (see `remove_made`)."""
    from pflask.compile import plan

    targets: list[str] = []
    for step in steps:
        kinds = (plan.Bind, plan.MountFs, plan.Overlay, plan.LoopMount)
        if isinstance(step, kinds) and step.target.strip("/"):
            targets.append(step.target)
    return targets


def remove_made(root: str, paths: list[str]) -> list[str]:
    """After the container: remove the mount points pflask made in `root`
    (Root.made, as the container reported them) that are still empty,
    deepest first; return those it was refused (EACCES, EPERM), for a warning.

    Only an empty directory or an empty regular file goes: anything the
    container wrote there stays.  The parent is opened beneath the root with
    no symlink and no mount crossed, and unlinkat(2) does not follow the name
    itself, so a symlink left in the root cannot point the removal elsewhere.
    """
    import stat

    refused: list[str] = []
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return refused
    try:
        for path in sorted(paths, key=lambda p: p.count("/"), reverse=True):
            parent_path, _, name = path.rpartition("/")
            try:
                relative = parent_path.lstrip("/") or "."
                parent = libc.openat2(root_fd, relative, os.O_PATH | os.O_DIRECTORY, _HOST_RESOLVE)
            except libc.SyscallError:
                continue  # gone, or no longer a plain directory: leave it
            try:
                found = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if stat.S_ISDIR(found.st_mode):
                    os.rmdir(name, dir_fd=parent)
                elif stat.S_ISREG(found.st_mode) and found.st_size == 0:
                    os.unlink(name, dir_fd=parent)
            except OSError as e:
                if e.errno in (EACCES, EPERM):
                    refused.append(path)
                # ENOENT: made on a mount (a tmpfs), not in the root; ENOTEMPTY: used
            finally:
                os.close(parent)
    finally:
        os.close(root_fd)
    return refused
