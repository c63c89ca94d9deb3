"""Building the container's mount tree: one small function per mount operation.

Everything here runs inside the container's mount namespace, before
pivot_root(2), so the host's paths are still reachable while the new root is
assembled under its own directory.

Safety: every target is resolved *inside* the container's root with
openat2(2) and RESOLVE_IN_ROOT, so a symlink or `..` in a hostile root
(`etc -> /host/etc`, `x -> ../../..`) is resolved as if the root were `/` and
never reaches a host path; missing components are created the same way, one
at a time.  Mounts are then made onto `/proc/self/fd/N` of the resolved
O_PATH descriptor, so no path is looked up a second time.

Binds use the new mount API (open_tree(2), mount_setattr(2), move_mount(2);
Linux 5.12): the clone is made read-only, recursively, *before* it is attached,
so a read-only bind is never writable even for an instant, submounts included.
"""

from __future__ import annotations

import os

from pflask import libc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

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
        self.reopen()

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

    def exists(self, path: str) -> bool:
        try:
            os.close(self.open(path))
        except FileNotFoundError:
            return False
        except libc.SyscallError as e:
            if e.errno in (2, 20):  # ENOENT, ENOTDIR
                return False
            raise
        return True

    def make(self, path: str, directory: bool = True, mode: int = 0o755) -> int:
        """Open `path`, creating it (and missing parents) inside the root.

        Parents are created one at a time, each looked up again from the root
        with RESOLVE_IN_ROOT, so a symlinked component is followed only within
        the root.  The last component is a directory, or an empty file when
        `directory` is false (a bind target for a file).
        """
        try:
            return self.open(path)
        except libc.SyscallError as e:
            if e.errno != 2:
                raise
        parts = [p for p in path.split("/") if p and p != "."]
        done = ""
        for index, name in enumerate(parts):
            if name == "..":
                raise libc.SyscallError("mkdir(2)", 22, f"{self.host_path(path)}: '..' in a target")
            current = f"{done}/{name}"
            last = index == len(parts) - 1
            if not self.exists(current):
                parent = self.open(done or "/", os.O_PATH | os.O_DIRECTORY)
                try:
                    if last and not directory:
                        fd = os.open(
                            name,
                            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                            0o644,
                            dir_fd=parent,
                        )
                        os.close(fd)
                    else:
                        os.mkdir(name, mode, dir_fd=parent)
                except FileExistsError:
                    # A dangling symlink: its target would have to be created
                    # by following it, which is where escapes hide.  Refuse.
                    raise libc.SyscallError(
                        "mkdir(2)",
                        17,
                        f"{self.host_path(current)}: a dangling symlink in the target's path",
                    ) from None
                except OSError as e:
                    raise libc.SyscallError(
                        "mkdir(2)", e.errno or 0, self.host_path(current)
                    ) from None
                finally:
                    os.close(parent)
            done = current
        return self.open(path)


def make_private(mode: str) -> None:
    """Stop mount events from reaching the host: / recursively slave or private."""
    flag = libc.MS_SLAVE if mode == "slave" else libc.MS_PRIVATE
    libc.mount(None, "/", None, libc.MS_REC | flag, what="/ (propagation)")


def bind_root(path: str) -> None:
    """pivot_root(2) needs the new root to be a mount point: bind it onto itself."""
    libc.mount(path, path, None, libc.MS_BIND | libc.MS_REC, what=f"{path} -> {path}")


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


def ephemeral_root(path: str) -> None:
    """An overlay over the root with a tmpfs upper, mounted over the root's path."""
    lower = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    scratch = detached_tmpfs()
    try:
        os.mkdir("upper", 0o755, dir_fd=scratch)
        os.mkdir("work", 0o700, dir_fd=scratch)
        options = overlay_options(
            [fd_path(lower)], f"{fd_path(scratch)}/upper", f"{fd_path(scratch)}/work"
        )
        libc.mount("overlay", path, "overlay", 0, options, what=f"overlay on {path}")
    finally:
        os.close(lower)
        os.close(scratch)


def mount_fs(
    root: Root,
    fstype: str,
    target: str,
    flags: tuple[str, ...],
    data: str,
    fallback_bind: str | None,
) -> None:
    """A kernel filesystem on a target; when the kernel refuses it in a user
    namespace (proc without a PID namespace, sysfs without a network one),
    bind the host's instance instead, read-only as asked."""
    fd = root.make(target)
    try:
        try:
            libc.mount(
                fstype,
                fd_path(fd),
                fstype,
                ms_flags(flags),
                data or None,
                what=f"{fstype} on {root.host_path(target)}",
            )
        except libc.SyscallError as e:
            if fallback_bind is None or e.errno not in (1, 13):  # EPERM, EACCES
                raise
            bind_fd(fallback_bind, fd, readonly="ro" in flags, recursive=True, flags=flags)
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
    """Clone `source` (a path or an O_PATH fd), set attributes, attach at `target_fd`."""
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
    """Bind a host path (or one inside the root) onto a target; False if skipped."""
    try:
        src = root.open(source) if inside else os.open(source, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, libc.SyscallError) as e:
        if optional and e.errno == 2:
            return False
        if isinstance(e, libc.SyscallError):
            raise
        raise libc.SyscallError("open(2)", e.errno or 2, f"bind source {source}") from None
    try:
        is_dir = os.path.isdir(fd_path(src))
        dst = root.make(target, directory=is_dir)
        try:
            bind_fd(
                src, dst, readonly, recursive, flags, what=f"{source} -> {root.host_path(target)}"
            )
        finally:
            os.close(dst)
    finally:
        os.close(src)
    return True


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
) -> None:
    """overlayfs at a target; a private tmpfs holds the changes when there is no upper."""
    fds: list[int] = []
    try:
        for layer in lower:
            fds.append(root.open(layer) if lower_inside else _open_dir(layer, "lower layer"))
        layers = [fd_path(fd) for fd in fds]
        if upper is None:
            scratch = detached_tmpfs()
            fds.append(scratch)
            os.mkdir("upper", 0o755, dir_fd=scratch)
            os.mkdir("work", 0o700, dir_fd=scratch)
            upper_path, work_path = f"{fd_path(scratch)}/upper", f"{fd_path(scratch)}/work"
        else:
            assert work is not None
            if temporary_work:
                _make_work_dir(work)
            fds.append(_open_dir(upper, "upper layer"))
            fds.append(_open_dir(work, "work directory"))
            upper_path, work_path = fd_path(fds[-2]), fd_path(fds[-1])
        dst = root.make(target)
        fds.append(dst)
        options = overlay_options(layers, upper_path, work_path)
        libc.mount(
            "overlay",
            fd_path(dst),
            "overlay",
            ms_flags(flags) | (libc.MS_RDONLY if readonly else 0),
            options,
            what=f"overlay on {root.host_path(target)}",
        )
    finally:
        for fd in fds:
            os.close(fd)


def _open_dir(path: str, what: str) -> int:
    try:
        return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise libc.SyscallError("open(2)", e.errno or 2, f"{what} {path}") from None


def _make_work_dir(path: str) -> None:
    """The aufs work directory pflask owns: stale ones (a killed run) are emptied."""
    if os.path.lexists(path):
        remove_tree(path)
    try:
        os.mkdir(path, 0o700)
    except OSError as e:
        raise libc.SyscallError("mkdir(2)", e.errno or 0, f"work directory {path}") from None


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
    """Device nodes by mknod(2); in a user namespace (EPERM) bind the host's."""
    for name in nodes:
        path = f"{target.rstrip('/')}/{name}"
        major, minor = DEVICES[name]
        parent = root.open(target, os.O_PATH | os.O_DIRECTORY)
        try:
            os.mknod(name, 0o20666, os.makedev(major, minor), dir_fd=parent)
            os.chmod(name, 0o666, dir_fd=parent, follow_symlinks=False)
            continue
        except PermissionError:
            pass
        finally:
            os.close(parent)
        dst = root.make(path, directory=False)
        try:
            bind_fd(
                f"/dev/{name}",
                dst,
                readonly=False,
                recursive=False,
                flags=(),
                what=f"/dev/{name} -> {root.host_path(path)}",
            )
        finally:
            os.close(dst)


def symlink(root: Root, value: str, path: str) -> None:
    parent_path, _, name = path.rstrip("/").rpartition("/")
    parent = root.make(parent_path or "/")
    try:
        os.symlink(value, name, dir_fd=parent)
    except FileExistsError:
        if os.readlink(name, dir_fd=parent) != value:
            raise libc.SyscallError("symlink(2)", 17, root.host_path(path)) from None
    finally:
        os.close(parent)


def mask(root: Root, paths: tuple[str, ...]) -> None:
    """Hide kernel files behind /dev/null and directories behind an empty read-only tmpfs."""
    for path in paths:
        try:
            fd = root.open(path)
        except libc.SyscallError as e:
            if e.errno in (2, 20):
                continue
            raise
        try:
            if os.path.isdir(fd_path(fd)):
                libc.mount(
                    "tmpfs",
                    fd_path(fd),
                    "tmpfs",
                    libc.MS_RDONLY,
                    "size=0,mode=000",
                    what=f"mask {root.host_path(path)}",
                )
            else:
                bind_fd(
                    "/dev/null",
                    fd,
                    readonly=True,
                    recursive=False,
                    flags=(),
                    what=f"mask {root.host_path(path)}",
                )
        finally:
            os.close(fd)


def make_readonly(root: Root, paths: tuple[str, ...]) -> None:
    """Bind each existing path onto itself, read-only, submounts included."""
    for path in paths:
        try:
            fd = root.open(path)
        except libc.SyscallError as e:
            if e.errno in (2, 20):
                continue
            raise
        try:
            bind_fd(
                fd,
                fd,
                readonly=True,
                recursive=True,
                flags=(),
                what=f"read-only {root.host_path(path)}",
            )
        finally:
            os.close(fd)


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
