"""The content-addressed image store: each layer unpacked once, by diff-id.

    root:            /var/lib/pflask/images
    an ordinary user: $XDG_DATA_HOME/pflask/images (~/.local/share/pflask/images)

    layers/HEX/root/      a layer, unpacked in overlayfs form (HEX: its diff-id)
    images/HEX.json       an image: its digest, config, layers, the names it was used by
    tmp/                  unpacks under way (PID.RANDOM); a killed one is swept later
    oci/                  an OCI layout skopeo copies registry images into

A layer directory exists only once it was verified: it is unpacked under
tmp/ and renamed into layers/ after its digest and diff-id matched, so a
killed unpack leaves nothing later runs would use.  Every directory is made
0700 and checked on the way in (owner, no symlink, writable by nobody
else): root's store is trusted only while it is root's alone, since an
ordinary user who could write a layer there could put a setuid shell in
root's containers.
"""

from __future__ import annotations

import os
import stat
import sys

from pflask.errors import SetupError
from pflask.image import source
from pflask.image.source import Image, Layer
from pflask.load import imageref
from pflask.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

ROOT_STORE = "/var/lib/pflask/images"
RECORD_FORMAT = 1
# What a container takes from an image's config (the rest stays in the image).
CONFIG_KEYS = ("Env", "WorkingDir", "User", "Entrypoint", "Cmd", "StopSignal")


STORE_VARIABLES = ("PFLASK_STORE", "XDG_DATA_HOME", "HOME")
"""The environment that decides where the store is (a cached plan watches it)."""


def directory() -> str:
    """PFLASK_STORE if set (tests and benchmarks keep their own); else root's
    or the user's default.  The store's checks apply wherever it is."""
    chosen = os.environ.get("PFLASK_STORE")
    if chosen:
        return os.path.abspath(chosen)
    if os.geteuid() == 0:
        return ROOT_STORE
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.environ.get("HOME") or os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(base, "pflask", "images")


class Resolved(Record):
    """An image ready to be a root: its layer directories, top layer first."""

    digest: str
    layers: tuple[str, ...]
    config: dict[str, Any]
    watch: tuple[str, ...] = ()  # host files whose change may change what `ref` names
    store: str | None = None  # the store's directory, which holds the layers


def hex_of(digest: str) -> str:
    return digest.partition(":")[2]


class Store:
    def __init__(self, path: str | None = None, create: bool = True) -> None:
        self.path = path or directory()
        self.uid = os.geteuid()
        if create:
            _make_private(self.path, self.uid)
            for sub in ("layers", "images", "tmp"):
                _make_private(os.path.join(self.path, sub), self.uid)
        self.check()

    def check(self) -> None:
        """Refuse a store another user could write to (see the module's docstring)."""
        path = self.path
        chain = [path, *(os.path.join(path, s) for s in ("layers", "images", "tmp"))]
        if self.uid == 0:  # every ancestor too: root's store must be root's alone
            parent = os.path.dirname(path)
            while parent != "/":
                chain.append(parent)
                parent = os.path.dirname(parent)
        for item in chain:
            try:
                st = os.lstat(item)
            except FileNotFoundError:
                continue
            _trusted(item, st, self.uid, item in chain[:4])

    def mount_point(self) -> str:
        """An empty directory for a disk image's root (mounted on only in a
        container's own mount namespace)."""
        path = os.path.join(self.path, "mnt")
        _make_private(path, self.uid)
        _trusted(path, os.lstat(path), self.uid, True)
        return path

    def layer_dir(self, diff_id: str) -> str:
        return os.path.join(self.path, "layers", hex_of(diff_id))

    def has_layer(self, diff_id: str) -> bool:
        top = self.layer_dir(diff_id)
        try:
            st = os.lstat(top)
        except FileNotFoundError:
            return False
        _trusted(top, st, self.uid, True)
        return os.path.isdir(os.path.join(top, "root"))

    def add_layer(self, blobs: source.Blobs, layer: Layer, what: str) -> None:
        """Unpack and verify a layer, then rename it into place: as root with
        every owner kept; as an ordinary user in a user namespace mapped as
        its containers are (image.userns), else with owners flattened."""
        from pflask.image import userns

        self.sweep()
        if self.uid == 0 or not userns.run(
            lambda: self._unpack(blobs, layer, what, "mapped"), what
        ):
            self._unpack(blobs, layer, what, "kept" if self.uid == 0 else "flattened")

    def _unpack(self, blobs: source.Blobs, layer: Layer, what: str, ownership: str) -> None:
        from pflask.image import unpack

        temporary = os.path.join(self.path, "tmp", f"{os.getpid()}.{os.urandom(6).hex()}")
        os.mkdir(temporary, 0o700)
        try:
            os.mkdir(os.path.join(temporary, "root"), 0o755)
            flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
            dest = os.open(os.path.join(temporary, "root"), flags)
            try:
                meter = _meter(what)
                with source.layer_blob(blobs, layer) as blob:
                    stats = unpack.unpack(blob, layer, dest, what, ownership, meter)
            finally:
                os.close(dest)
                if meter is not None:
                    sys.stderr.write("\r\x1b[K")  # the count's line, cleared
                    sys.stderr.flush()
            _write(
                os.path.join(temporary, "layer.json"),
                {
                    "diff_id": layer.diff_id,
                    "digest": layer.digest,
                    "bytes": stats.bytes,
                    "entries": stats.entries,
                    "skipped_devices": stats.skipped_devices,
                    "ownership": ownership,
                },
            )
            try:
                os.rename(temporary, self.layer_dir(layer.diff_id))
            except OSError:  # another pflask was first: its copy is as good
                if not os.path.isdir(os.path.join(self.layer_dir(layer.diff_id), "root")):
                    raise
                _remove(temporary)
        except BaseException:
            _remove(temporary)
            raise
        if stats.skipped_devices:
            print(
                f"pflask: {what}: {stats.skipped_devices} device nodes skipped "
                "(an ordinary user cannot make them)",
                file=sys.stderr,
            )

    def remove_trees(self, paths: list[str]) -> None:
        """Remove store directories; an ordinary user's in its user namespace,
        where the ids of its range are its own."""
        if not paths:
            return
        from pflask.image import userns

        def body() -> None:
            for path in paths:
                _remove(path)

        if self.uid == 0 or not userns.run(body, f"removing {len(paths)} store entries"):
            body()

    def sweep(self) -> None:
        """Remove unpacks that a killed pflask left in tmp/."""
        tmp = os.path.join(self.path, "tmp")
        stale = []
        for name in os.listdir(tmp):
            pid, _, _ = name.partition(".")
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                stale.append(os.path.join(tmp, name))
        self.remove_trees(stale)

    # --- images ---------------------------------------------------------------------------

    def record_path(self, digest: str) -> str:
        return os.path.join(self.path, "images", hex_of(digest) + ".json")

    def save(self, image: Image, name: str) -> None:
        old = self.load(image.digest) or {}
        names = [n for n in old.get("names", []) if n != name] + [name]
        config = image.config.get("config")
        _write(
            self.record_path(image.digest),
            {
                "format": RECORD_FORMAT,
                "digest": image.digest,
                "config_digest": image.config_digest,
                "config": {k: v for k, v in (config or {}).items() if k in CONFIG_KEYS}
                if isinstance(config, dict)
                else {},
                "layers": [layer.diff_id for layer in image.layers],
                "names": names,
                "architecture": image.config.get("architecture"),
                "created": image.config.get("created"),
            },
        )

    def load(self, digest: str) -> dict[str, Any] | None:
        path = self.record_path(digest)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        _trusted(path, st, self.uid, True, directory=False)
        with open(path, "rb") as f:
            data = source.parse_json(f.read(source.MAX_JSON + 1), path)
        return data if isinstance(data, dict) and data.get("format") == RECORD_FORMAT else None

    def images(self) -> list[dict[str, Any]]:
        found = []
        for name in sorted(os.listdir(os.path.join(self.path, "images"))):
            if name.endswith(".json") and imageref.is_digest("sha256:" + name[:-5]):
                record = self.load("sha256:" + name[:-5])
                if record is not None:
                    found.append(record)
        return found

    def find(self, text: str) -> list[dict[str, Any]]:
        """The images a name, a digest or a digest's prefix (12 digits or more) names."""
        hex_text = text.removeprefix("sha256:")
        found = []
        for record in self.images():
            digest = str(record.get("digest", ""))
            if text in record.get("names", ()) or (
                len(hex_text) >= 12 and hex_of(digest).startswith(hex_text)
            ):
                found.append(record)
        return found

    def remove(self, record: dict[str, Any]) -> None:
        os.unlink(self.record_path(str(record["digest"])))

    def prune(self) -> tuple[int, int]:
        """Remove layers no image uses and stale unpacks: (layers removed, bytes)."""
        self.sweep()
        used = {hex_of(str(d)) for r in self.images() for d in r.get("layers", ())}
        layers = os.path.join(self.path, "layers")
        unused = [os.path.join(layers, name) for name in os.listdir(layers) if name not in used]
        freed = sum(_size(os.path.join(path, "layer.json")) for path in unused)
        self.remove_trees(unused)
        return len(unused), freed

    def known(self, digest: str) -> Resolved | None:
        """An image the store holds whole (its record and every layer), or None."""
        record = self.load(digest)
        if record is None:
            return None
        layers = [str(d) for d in record.get("layers", ())]
        if not layers or not all(imageref.is_digest(d) and self.has_layer(d) for d in layers):
            return None
        config = record.get("config")
        return Resolved(
            digest=digest,
            layers=tuple(os.path.join(self.layer_dir(d), "root") for d in reversed(layers)),
            config=config if isinstance(config, dict) else {},
            store=self.path,
        )

    def resolved(self, image: Image) -> Resolved:
        config = image.config.get("config")
        return Resolved(
            digest=image.digest,
            layers=tuple(
                os.path.join(self.layer_dir(layer.diff_id), "root")
                for layer in reversed(image.layers)
            ),
            config={k: v for k, v in config.items() if k in CONFIG_KEYS}
            if isinstance(config, dict)
            else {},
            store=self.path,
        )


def resolve(ref: imageref.Reference, progress: bool = True) -> Resolved:
    """The image `ref` names, every layer in the store and verified.

    A pinned registry image already in the store resolves without the
    network: its record and layers were verified when it was fetched."""
    store = Store()
    if ref.transport == "docker":
        if ref.digest is not None:
            known = store.known(ref.digest)
            if known is not None:
                return known
        from pflask.image import registry

        if progress:
            _progress(f"fetching {ref} with skopeo")
        fetched = registry.fetch(ref, store)
        try:
            return _resolve(store, fetched, str(ref.replace(digest=None)), progress, ())
        finally:
            _remove(fetched.path)
    watch = (os.path.join(ref.path, "index.json"),) if ref.transport == "oci" else (ref.path,)
    return _resolve(store, ref, str(ref.replace(digest=None)), progress, watch)


def _resolve(
    store: Store, ref: imageref.Reference, name: str, progress: bool, watch: tuple[str, ...]
) -> Resolved:
    image, blobs = source.open_image(ref)
    try:
        total = len(image.layers)
        for number, layer in enumerate(image.layers, 1):
            if store.has_layer(layer.diff_id):
                continue
            what = f"{name}: layer {number}/{total} {layer.digest or layer.diff_id}"
            if progress:
                _progress(f"unpacking layer {number}/{total} {hex_of(layer.diff_id)[:12]}")
            store.add_layer(blobs, layer, what)
    finally:
        blobs.close()
    store.save(image, name)
    resolved: Resolved = store.resolved(image).replace(watch=watch)
    return resolved


def _progress(line: str) -> None:
    print(f"pflask: {line}", file=sys.stderr, flush=True)


def _meter(what: str) -> Callable[[int], None] | None:
    """On a terminal, a line that counts what a layer's unpack has done
    (rewritten in place); in a pipe nothing beyond the one line per layer."""
    if not sys.stderr.isatty():
        return None
    short = what.rsplit(" ", 1)[0]

    def show(count: int) -> None:
        sys.stderr.write(f"\r\x1b[Kpflask: {short}: {count / (1 << 20):.0f} MiB unpacked")
        sys.stderr.flush()

    return show


def _size(layer_json: str) -> int:
    try:
        with open(layer_json, "rb") as f:
            data = source.parse_json(f.read(65536), layer_json)
        return int(data.get("bytes", 0)) if isinstance(data, dict) else 0
    except (OSError, SetupError, ValueError, TypeError):
        return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _make_private(path: str, uid: int) -> None:
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise SetupError(f"image store: mkdir(2) {path}: {os.strerror(e.errno or 0)}") from None


def _trusted(path: str, st: os.stat_result, uid: int, own: bool, directory: bool = True) -> None:
    """`path` is a real directory (or file) that only `uid` (or root) can write;
    `own`: the store's own entries, which must be `uid`'s."""
    kind = 0o040000 if directory else 0o100000
    owners = (uid,) if own else (uid, 0)
    if (st.st_mode & 0o170000) != kind:
        raise SetupError(
            f"image store: {path} is not a {'directory' if directory else 'file'} "
            "(a symlink?): refused"
        )
    if st.st_uid not in owners:
        raise SetupError(f"image store: {path} belongs to uid {st.st_uid}, not {uid}: refused")
    sticky_root = st.st_mode & 0o1000 and st.st_uid == 0  # /tmp: others cannot replace ours
    if st.st_mode & 0o022 and not (sticky_root and not own):
        raise SetupError(
            f"image store: {path} is writable by others (mode {st.st_mode & 0o7777:o}): refused"
        )


def _write(path: str, data: dict[str, Any]) -> None:
    import json

    temporary = f"{path}.{os.getpid()}.tmp"
    fd = os.open(
        temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
    )
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.rename(temporary, path)


def _remove(path: str) -> None:
    """rm -rf through directory fds, never following a symlink (a layer's
    content is someone else's); directories made writable first (a layer
    may hold 0555 ones)."""
    parent, name = os.path.split(path)
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        _remove_at(fd, name)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def _remove_at(parent: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=parent)
        return
    except IsADirectoryError:
        pass
    except PermissionError:  # EPERM: a directory (unlink(2) says so for one)
        if not stat.S_ISDIR(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
            raise
    try:
        os.chmod(name, 0o700, dir_fd=parent, follow_symlinks=False)
    except (OSError, NotImplementedError):
        pass
    fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    try:
        for entry in list(os.scandir(fd)):
            _remove_at(fd, entry.name)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)
