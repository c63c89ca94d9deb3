"""Unpacking one layer into a directory, safely, in overlayfs form.

A layer is a tar stream from someone else: every name is checked before
anything is written.  Absolute names and `..` are refused; each parent
directory is walked one component at a time with O_NOFOLLOW from the
layer's own directory, so a symlink in the layer (`etc -> /etc`, then
`etc/passwd`) is refused rather than followed; files are created with
O_EXCL|O_NOFOLLOW and their metadata set without following links; hard
links point only at names already in the layer.  Sizes are bounded: the
whole layer, each name, each extended header (source.BoundedTarInfo).

Whiteouts become what overlayfs reads: `.wh.NAME` a 0/0 character device
NAME, `.wh..wh..opq` the opaque xattr on its directory (trusted.overlay.opaque
for a root overlay, user.overlay.opaque for one mounted in a user namespace;
root sets both).  A layer's own `trusted.*` and `*.overlay.*` xattrs are
dropped: they would steer overlayfs (redirects, metacopy) from inside a layer.

As root, owners, device nodes, setuid bits, hard links and xattrs are kept.
An ordinary user's layers are unpacked as root of a user namespace mapped
as its containers are (pflask.image.userns), so owners are kept there too;
without a subordinate range (or newuidmap) the user cannot own files as
others: the layers are flattened to the user (root inside its container).
Device nodes are skipped where they cannot be made (counted in the result).

The digest of the blob and the diff-id of its tar are computed while it
streams; the caller renames the directory into the store only if both match.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import stat
import tarfile
import zlib

from pflask.errors import SetupError
from pflask.image.source import BoundedTarInfo, Layer
from pflask.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO

MAX_LAYER_BYTES = 64 << 30  # uncompressed; a layer beyond this is refused
MAX_ENTRIES = 2_000_000
MAX_NAME = 4096
MAX_DEPTH = 256  # components of a name (real images: a few dozen)
CHUNK = 1 << 20
OPAQUE_XATTRS = ("trusted.overlay.opaque", "user.overlay.opaque")
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_PATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Stats(Record):
    entries: int = 0
    bytes: int = 0  # uncompressed tar bytes
    skipped_devices: int = 0


class Refused(Exception):
    """A member the layer may not have; the message names it."""


class _Hashing:
    """A reader that hashes what passes through it and bounds its total;
    `progress(count)` hears of every 4 MiB."""

    def __init__(
        self,
        raw: IO[bytes],
        limit: int,
        what: str,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.raw = raw
        self.hash = hashlib.sha256()
        self.count = 0
        self.limit = limit
        self.what = what
        self.progress = progress
        self.told = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(CHUNK if n is None or n < 0 else n)
        self.hash.update(data)
        self.count += len(data)
        if self.count > self.limit:
            raise Refused(f"{self.what} is over {self.limit} bytes")
        if self.progress is not None and self.count - self.told >= 4 << 20:
            self.told = self.count
            self.progress(self.count)
        return data

    def drain(self) -> None:
        while self.read(CHUNK):
            pass

    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


class _Zstd:
    """zstd through the `zstd` command (Debian's package): a pump thread feeds
    it the compressed stream, and its output is read here."""

    def __init__(self, source: _Peeked) -> None:
        import subprocess
        import threading

        try:
            self.proc = subprocess.Popen(
                ["zstd", "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
        except FileNotFoundError:
            raise Refused(
                "the layer is zstd-compressed and zstd is not installed (Debian package zstd)"
            ) from None
        self.error: BaseException | None = None

        def pump() -> None:
            assert self.proc.stdin is not None
            try:
                while data := source.read(CHUNK):
                    self.proc.stdin.write(data)
            except BaseException as e:  # reported by close()
                self.error = e
            finally:
                try:
                    self.proc.stdin.close()
                except OSError:
                    pass

        self.thread = threading.Thread(target=pump, daemon=True)
        self.thread.start()

    def read(self, n: int = -1) -> bytes:
        assert self.proc.stdout is not None
        return self.proc.stdout.read(CHUNK if n is None or n < 0 else n)

    def close(self) -> None:
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        status = self.proc.wait()
        self.thread.join()
        if self.error is not None:
            raise self.error
        if status != 0:
            raise Refused(f"zstd -d failed (status {status})")


class _Peeked:
    """A reader with its first bytes looked at (to tell the compression)."""

    def __init__(self, raw: _Hashing) -> None:
        self.raw = raw
        self.head = raw.read(4)

    def read(self, n: int = -1) -> bytes:
        if not self.head:
            return self.raw.read(n)
        if n is not None and 0 <= n < len(self.head):
            data, self.head = self.head[:n], self.head[n:]
            return data
        data, self.head = self.head, b""
        rest = -1 if n is None or n < 0 else n - len(data)
        return data + (self.raw.read(rest) if rest != 0 else b"")


def compression(head: bytes) -> str:
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return "tar"


def unpack(
    blob: IO[bytes],
    layer: Layer,
    dest: int,
    what: str,
    ownership: str = "",
    progress: Callable[[int], None] | None = None,
) -> Stats:
    """Unpack `blob` into the empty directory `dest` (an fd) and verify it:
    its digest (unless it has none of its own: a docker-archive layer) and
    the diff-id of its tar.  SetupError names the layer and what differs.

    `ownership`: "kept" (root: owners, devices, trusted.* xattrs), "mapped"
    (root in an ordinary user's user namespace: owners within its range,
    no devices, user.* xattrs only), "flattened" (the user's own, as it is);
    by default, "kept" for root and "flattened" for others.  `progress`
    hears how many bytes of tar were unpacked, every 4 MiB."""
    ownership = ownership or ("kept" if os.geteuid() == 0 else "flattened")
    compressed = _Hashing(blob, MAX_LAYER_BYTES, what)
    peeked = _Peeked(compressed)
    kind = compression(peeked.head)
    zstd: _Zstd | None = None
    try:
        if kind == "gzip":
            stream: object = gzip.GzipFile(fileobj=peeked, mode="rb")  # type: ignore[call-overload]
        elif kind == "zstd":
            stream = zstd = _Zstd(peeked)
        else:
            stream = peeked
        tar_stream = _Hashing(stream, MAX_LAYER_BYTES, f"{what} (uncompressed)", progress)  # type: ignore[arg-type]
        stats = _Extractor(dest, what, ownership).run(tar_stream)
        tar_stream.drain()
        if zstd is not None:
            zstd.close()
            zstd = None
        compressed.drain()
    except Refused as e:
        raise SetupError(f"{what}: refused: {e}") from None
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise SetupError(f"{what}: {type(e).__name__}: {e}") from None
    finally:
        if zstd is not None:
            zstd.proc.kill()
            try:
                zstd.close()
            except (Refused, OSError):
                pass
    if layer.digest and compressed.digest() != layer.digest:
        raise SetupError(
            f"{what}: blob does not match its digest: expected {layer.digest}, "
            f"got {compressed.digest()}"
        )
    if tar_stream.digest() != layer.diff_id:
        raise SetupError(
            f"{what}: uncompressed layer does not match its diff-id: expected "
            f"{layer.diff_id}, got {tar_stream.digest()}"
        )
    result: Stats = stats.replace(bytes=tar_stream.count)
    return result


def member_path(name: str) -> tuple[str, ...]:
    """A member's name as components below the layer's root; `..` and
    absolute names refused."""
    if len(name) > MAX_NAME:
        raise Refused(f"a member name of {len(name)} characters")
    if name.startswith("/"):
        raise Refused(f"member {name[:200]!r}: an absolute name")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if len(parts) > MAX_DEPTH:
        raise Refused(f"member {name[:200]!r}: more than {MAX_DEPTH} directories deep")
    if ".." in parts:
        raise Refused(f"member {name[:200]!r}: climbs out of the layer with '..'")
    if any("\0" in p for p in parts):
        raise Refused(f"member {name[:200]!r}: a NUL in its name")
    return parts


class _Extractor:
    def __init__(self, root: int, what: str, ownership: str) -> None:
        self.root = root
        self.what = what
        self.privileged = ownership == "kept"  # devices, trusted.* xattrs
        self.owners = ownership in ("kept", "mapped")
        self.dirs: dict[tuple[str, ...], int] = {}
        self.modes: list[tuple[tuple[str, ...], tarfile.TarInfo]] = []
        self.stats = Stats()
        self.entries = 0
        self.skipped = 0

    def run(self, stream: _Hashing) -> Stats:
        try:
            with tarfile.open(  # type: ignore[call-overload]
                fileobj=stream, mode="r|", tarinfo=BoundedTarInfo
            ) as tar:
                for member in tar:
                    self.entries += 1
                    if self.entries > MAX_ENTRIES:
                        raise Refused(f"more than {MAX_ENTRIES} members")
                    self.member(tar, member)
            # Directory modes last: a 0555 directory must first take its files.
            for parts, member in reversed(self.modes):
                try:
                    directory = self.directory(parts)
                except Refused:
                    continue  # replaced later in the layer
                self.metadata(directory, ".", member)
        finally:
            for fd in self.dirs.values():
                os.close(fd)
        return Stats(entries=self.entries, skipped_devices=self.skipped)

    def parent(self, parts: tuple[str, ...]) -> tuple[int, str]:
        """The directory holding `parts` (made where missing) and the last name."""
        if not parts:
            return self.root, "."
        return self.directory(parts[:-1]), parts[-1]

    def directory(self, parts: tuple[str, ...]) -> int:
        if not parts:
            return self.root
        fd = self.dirs.get(parts)
        if fd is not None:
            return fd
        parent = self.directory(parts[:-1])
        name = parts[-1]
        try:
            fd = os.open(name, _PATH, dir_fd=parent)
        except FileNotFoundError:
            os.mkdir(name, 0o755, dir_fd=parent)
            fd = os.open(name, _PATH, dir_fd=parent)
        except (NotADirectoryError, OSError) as e:
            raise Refused(
                f"{'/'.join(parts)[:200]!r} is not a directory of the layer "
                f"(a symlink or file in the way: {os.strerror(e.errno or 0)})"
            ) from None
        self.dirs[parts] = fd
        return fd

    def forget(self, parts: tuple[str, ...]) -> None:
        """The entry `parts` was replaced: drop the directory fds cached for it."""
        for cached in [c for c in self.dirs if c[: len(parts)] == parts]:
            os.close(self.dirs.pop(cached))

    def clear(self, parent: int, parts: tuple[str, ...], keep_dir: bool) -> None:
        """Make way for an entry: a later member of a layer replaces an earlier one."""
        name = parts[-1]
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            try:
                os.rmdir(name, dir_fd=parent)
            except OSError:
                raise Refused(f"{name!r}: a non-empty directory replaced by a file") from None
        else:
            os.unlink(name, dir_fd=parent)
        self.forget(parts)

    def member(self, tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        parts = member_path(member.name)
        base = parts[-1] if parts else ""
        if base == OPAQUE:
            directory = self.directory(parts[:-1])
            for attr in OPAQUE_XATTRS if self.privileged else OPAQUE_XATTRS[1:]:
                # The fd's magic link leads to the directory itself (no name is looked up).
                os.setxattr(f"/proc/self/fd/{directory}", attr, b"y")
            return
        if base.startswith(WHITEOUT):
            hidden = base[len(WHITEOUT) :]
            if not hidden or hidden in (".", ".."):
                raise Refused(f"member {member.name[:200]!r}: a whiteout of nothing")
            parent = self.directory(parts[:-1])
            self.clear(parent, (*parts[:-1], hidden), keep_dir=False)
            os.mknod(hidden, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
            return
        parent, name = self.parent(parts)
        if member.isdir():
            if parts:
                self.clear(parent, parts, keep_dir=True)
                try:
                    os.mkdir(name, 0o700, dir_fd=parent)
                except FileExistsError:
                    pass
            self.modes.append((parts, member))
            return
        if not parts:
            raise Refused(f"member {member.name!r}: the layer's root as a non-directory")
        self.clear(parent, parts, keep_dir=False)
        if member.isreg():
            fd = os.open(
                name,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=parent,
            )
            try:
                source = tar.extractfile(member)
                assert source is not None
                with os.fdopen(fd, "wb", closefd=False) as out:
                    while data := source.read(CHUNK):
                        out.write(data)
            finally:
                os.close(fd)
        elif member.issym():
            if len(member.linkname) > MAX_NAME or "\0" in member.linkname:
                raise Refused(f"member {member.name[:200]!r}: a symlink target too long")
            os.symlink(member.linkname, name, dir_fd=parent)
        elif member.islnk():
            target = member_path(member.linkname)
            if not target:
                raise Refused(f"member {member.name[:200]!r}: a hard link to the layer's root")
            source_dir, source_name = self.parent(target)
            try:
                os.link(
                    source_name,
                    name,
                    src_dir_fd=source_dir,
                    dst_dir_fd=parent,
                    follow_symlinks=False,
                )
            except FileNotFoundError:
                raise Refused(
                    f"member {member.name[:200]!r}: a hard link to {member.linkname[:200]!r}, "
                    "which is not in the layer"
                ) from None
            return  # the link shares its target's metadata
        elif member.ischr() or member.isblk() or member.isfifo():
            kind = (
                stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
            )
            if kind != stat.S_IFIFO and not self.privileged:
                self.skipped += 1
                return
            device = os.makedev(member.devmajor, member.devminor) if kind != stat.S_IFIFO else 0
            os.mknod(name, kind | 0o600, device, dir_fd=parent)
        else:
            return  # other kinds (sockets are not archived; GNU volume labels)
        self.metadata(parent, name, member)

    def metadata(self, parent: int, name: str, member: tarfile.TarInfo) -> None:
        """Owner, xattrs, mode (after chown, which clears setuid), times; never
        through a symlink."""
        link = member.issym()
        if self.owners:
            try:
                os.chown(name, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
            except OSError:
                if self.privileged:
                    raise
                # An id beyond the user's range: the user's own (root inside).
                os.chown(name, 0, 0, dir_fd=parent, follow_symlinks=False)
        if not link:
            for key, value in member.pax_headers.items():
                if key.startswith("SCHILY.xattr."):
                    self.xattr(parent, name, key[len("SCHILY.xattr.") :], value)
            os.chmod(name, member.mode & 0o7777, dir_fd=parent)
        os.utime(name, (member.mtime, member.mtime), dir_fd=parent, follow_symlinks=False)

    def xattr(self, parent: int, name: str, attr: str, value: str) -> None:
        if attr.startswith("trusted.") or ".overlay." in attr:
            return  # would steer overlayfs: never from a layer
        if not (
            attr.startswith("user.")
            or attr.startswith("security.capability")
            or attr.startswith("system.posix_acl")
        ):
            return
        try:
            data = value.encode("utf-8", "surrogateescape")
            if name == ".":  # the directory the fd is: its magic link leads there
                os.setxattr(f"/proc/self/fd/{parent}", attr, data)
            else:  # the name itself, never a symlink's target
                os.setxattr(f"/proc/self/fd/{parent}/{name}", attr, data, follow_symlinks=False)
        except OSError:
            pass  # the filesystem or the user cannot hold it: not worth failing the layer
