"""Reading an image where it lies, with no daemon: an OCI layout directory, an
OCI archive or a docker-archive, down to one verified manifest and config.

Everything read is checked before it is believed: the manifest and the
config against their sha256 digests (the descriptor that names them, and
the reference's pin), and the JSON itself bounded in size and depth.  Layers
are only *named* here (digest, diff-id, media type); the store verifies each
one as it unpacks it, so a tampered layer is refused before it is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile

from pflask.errors import SetupError
from pflask.load.imageref import Reference, is_digest
from pflask.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

MAX_JSON = 4 << 20  # an index, manifest or config: real ones are a few KB
MAX_DEPTH = 32
MAX_MEMBERS = 100_000  # of an archive
MAX_LAYERS = 128  # Docker's own bound (127); overlayfs's mount options hold ~200 fd names
MAX_HEADER = 1 << 20  # a pax or GNU long-name header

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"
_ARCH = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "armv7l": "arm",
    "i686": "386",
    "ppc64le": "ppc64le",
}


class Layer(Record):
    digest: str  # of the blob as stored (compressed or not)
    diff_id: str  # of the uncompressed tar: what the store keys the layer by
    media_type: str = ""
    size: int = -1


class Image(Record):
    """One resolved image: its digest, config and layers, bottom layer first."""

    digest: str  # the manifest's (a docker-archive: the config's, its image id)
    config_digest: str
    config: dict[str, Any]
    layers: tuple[Layer, ...]
    reference: str = ""


class BoundedTarInfo(tarfile.TarInfo):
    """A tar header whose pax and long-name extensions are bounded: tarfile
    reads them whole into memory, and a hostile header may claim gigabytes."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in tarfile_extended and self.size > MAX_HEADER:
            raise tarfile_error(f"a {self.size}-byte extended header (at most {MAX_HEADER})")
        member: tarfile.TarInfo = super()._proc_member(archive)  # type: ignore[misc]
        return member


tarfile_extended = frozenset(
    (
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    )
)


def tarfile_error(message: str) -> tarfile.HeaderError:
    return tarfile.HeaderError(message)


def sha256_hex(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_json(data: bytes, what: str) -> Any:
    """JSON of at most MAX_JSON bytes nested at most MAX_DEPTH deep."""
    if len(data) > MAX_JSON:
        raise SetupError(f"{what}: more than {MAX_JSON} bytes of JSON")
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise SetupError(f"{what}: not JSON ({str(e)[:80]})") from None
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise SetupError(f"{what}: JSON nested more than {MAX_DEPTH} deep")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return value


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SetupError(f"{what}: expected a JSON object")
    return value


class Blobs:
    """Where an image's files are: a directory or an archive's members."""

    where: str

    def read(self, name: str, what: str, limit: int = MAX_JSON) -> bytes:
        raise NotImplementedError

    def open(self, name: str, what: str) -> IO[bytes]:
        raise NotImplementedError

    def blob_name(self, digest: str) -> str:
        return "blobs/" + digest.replace(":", "/", 1)

    def verified(self, digest: str, what: str) -> bytes:
        """The small blob `digest` (a manifest or config), checked against it."""
        data = self.read(self.blob_name(digest), what)
        got = sha256_hex(data)
        if got != digest:
            raise SetupError(
                f"{self.where}: {what} blob {digest} does not match its digest: "
                f"expected {digest}, got {got}"
            )
        return data

    def close(self) -> None:
        pass


class Directory(Blobs):
    """An OCI image layout directory; every file is opened as a regular file,
    without blocking (a FIFO in a blob's place cannot hang pflask)."""

    def __init__(self, path: str) -> None:
        self.where = path

    def open(self, name: str, what: str) -> IO[bytes]:
        path = os.path.join(self.where, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as e:
            raise SetupError(f"{what}: open(2) {path}: {os.strerror(e.errno or 0)}") from None
        if (os.fstat(fd).st_mode & 0o170000) != 0o100000:
            os.close(fd)
            raise SetupError(f"{what}: {path} is not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")

    def read(self, name: str, what: str, limit: int = MAX_JSON) -> bytes:
        with self.open(name, what) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise SetupError(f"{what}: {os.path.join(self.where, name)} is over {limit} bytes")
        return data


class Archive(Blobs):
    """A tar archive's members by name (an OCI archive, a docker-archive)."""

    def __init__(self, path: str) -> None:
        self.where = path
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as e:
            raise SetupError(
                f"image archive: open(2) {path}: {os.strerror(e.errno or 0)}"
            ) from None
        if (os.fstat(fd).st_mode & 0o170000) != 0o100000:
            os.close(fd)
            raise SetupError(f"image archive: {path} is not a regular file")
        os.set_blocking(fd, True)
        self.file = os.fdopen(fd, "rb")
        self.members: dict[str, tarfile.TarInfo] = {}
        try:
            # Kept open for the members' reads; close() closes the file under it.
            self.tar = tarfile.open(fileobj=self.file, mode="r:", tarinfo=BoundedTarInfo)  # noqa: SIM115
            for count, member in enumerate(self.tar, 1):
                if count > MAX_MEMBERS:
                    raise SetupError(f"image archive {path}: more than {MAX_MEMBERS} members")
                name = os.path.normpath(member.name).lstrip("/")
                if member.isreg():
                    self.members[name] = member
        except (tarfile.TarError, EOFError, OSError) as e:
            self.file.close()
            raise SetupError(f"image archive {path}: not a tar archive ({e})") from None
        except BaseException:
            self.file.close()
            raise

    def open(self, name: str, what: str) -> IO[bytes]:
        member = self.members.get(os.path.normpath(name))
        if member is None:
            raise SetupError(f"{what}: {self.where} has no member {name}")
        f = self.tar.extractfile(member)
        assert f is not None  # a regular member
        return f

    def read(self, name: str, what: str, limit: int = MAX_JSON) -> bytes:
        member = self.members.get(os.path.normpath(name))
        if member is not None and member.size > limit:
            raise SetupError(f"{what}: {self.where}: {name} is over {limit} bytes")
        with self.open(name, what) as f:
            return f.read(limit + 1)

    def close(self) -> None:
        self.file.close()


def open_image(ref: Reference) -> tuple[Image, Blobs]:
    """The image `ref` names, verified down to its config, and where its layer
    blobs are (the caller closes it)."""
    if ref.transport == "oci":
        if not os.path.isdir(ref.path):
            raise SetupError(f"{ref}: {ref.path} is not a directory (an OCI image layout)")
        blobs: Blobs = Directory(ref.path)
    elif ref.transport in ("oci-archive", "docker-archive"):
        blobs = Archive(ref.path)
    else:
        raise SetupError(f"{ref}: cannot be read locally")
    try:
        if ref.transport == "docker-archive":
            image = _docker_archive(ref, blobs)
        else:
            image = _oci(ref, blobs)
    except BaseException:
        blobs.close()
        raise
    if ref.digest is not None and image.digest != ref.digest:
        blobs.close()
        raise SetupError(
            f"{ref}: the image does not match its pin: expected {ref.digest}, got {image.digest}"
        )
    return image, blobs


def _oci(ref: Reference, blobs: Blobs) -> Image:
    """The manifest a pin names (read by its digest: the tag no longer
    matters, as for a registry), else the one the tag, or the only image, names."""
    if ref.digest is not None:
        descriptor: dict[str, Any] = {"digest": ref.digest}
    else:
        what = f"{ref}: index.json"
        index = _object(parse_json(blobs.read("index.json", what), what), what)
        manifests = index.get("manifests")
        if not isinstance(manifests, list) or not manifests:
            raise SetupError(f"{ref}: index.json lists no manifests")
        descriptor = _choose(ref, [_object(d, "index.json: manifests[]") for d in manifests])
    digest = descriptor.get("digest")
    if not isinstance(digest, str) or not is_digest(digest):
        raise SetupError(f"{ref}: index.json: {digest!r} is no sha256 digest")
    named = digest  # the image's digest: what a pin or a lock names
    for _ in range(4):  # an index may name an index (a multi-platform image)
        what = f"{ref}: manifest"
        data = blobs.verified(digest, "manifest")
        manifest = _object(parse_json(data, what), what)
        media = manifest.get("mediaType") or descriptor.get("mediaType")
        if media in (OCI_INDEX, DOCKER_LIST) or "manifests" in manifest:
            descriptor = _platform(ref, manifest)
            digest = descriptor["digest"]
            continue
        return _from_manifest(ref, blobs, named, manifest)
    raise SetupError(f"{ref}: indexes nested too deep")


def _choose(ref: Reference, manifests: list[dict[str, Any]]) -> dict[str, Any]:
    """The descriptor the tag (or pin) names; the only one when there is one."""

    def tag(d: dict[str, Any]) -> str | None:
        annotations = d.get("annotations")
        return annotations.get(REF_NAME) if isinstance(annotations, dict) else None

    if ref.tag is not None:
        found = [d for d in manifests if tag(d) == ref.tag]
        if not found:
            tags = ", ".join(sorted({str(t) for d in manifests if (t := tag(d))})) or "none"
            raise SetupError(f"{ref}: no image tagged {ref.tag!r} (tags: {tags})")
        return found[0]
    if ref.digest is not None:
        for d in manifests:
            if d.get("digest") == ref.digest:
                return d
    if len(manifests) == 1:
        return manifests[0]
    tags = ", ".join(sorted({str(t) for d in manifests if (t := tag(d))}))
    raise SetupError(f"{ref}: holds {len(manifests)} images: which tag? ({tags})")


def _platform(ref: Reference, index: dict[str, Any]) -> dict[str, Any]:
    arch = _ARCH.get(os.uname().machine, os.uname().machine)
    for d in index.get("manifests") or ():
        if not isinstance(d, dict) or not is_digest(str(d.get("digest"))):
            continue
        platform = d.get("platform")
        if not isinstance(platform, dict):
            continue
        if platform.get("os") == "linux" and platform.get("architecture") == arch:
            return d
    raise SetupError(f"{ref}: no image for linux/{arch} in its index")


def _from_manifest(ref: Reference, blobs: Blobs, digest: str, manifest: dict[str, Any]) -> Image:
    config_d = _object(manifest.get("config"), f"{ref}: manifest: config")
    config_digest = config_d.get("digest")
    if not isinstance(config_digest, str) or not is_digest(config_digest):
        raise SetupError(f"{ref}: manifest: config digest {config_digest!r} is no sha256 digest")
    what = f"{ref}: config"
    config = _object(parse_json(blobs.verified(config_digest, "config"), what), what)
    layers_d = manifest.get("layers")
    if not isinstance(layers_d, list):
        raise SetupError(f"{ref}: manifest lists no layers")
    diff_ids = _diff_ids(ref, config, len(layers_d))
    layers = []
    for i, (d, diff_id) in enumerate(zip(layers_d, diff_ids, strict=True)):
        d = _object(d, f"{ref}: manifest: layers[{i}]")
        layer_digest = d.get("digest")
        if not isinstance(layer_digest, str) or not is_digest(layer_digest):
            raise SetupError(f"{ref}: manifest: layers[{i}]: {layer_digest!r} is no sha256 digest")
        size = d.get("size")
        layers.append(
            Layer(
                digest=layer_digest,
                diff_id=diff_id,
                media_type=str(d.get("mediaType", "")),
                size=size if isinstance(size, int) else -1,
            )
        )
    return Image(
        digest=digest,
        config_digest=config_digest,
        config=config,
        layers=tuple(layers),
        reference=str(ref),
    )


def _diff_ids(ref: Reference, config: dict[str, Any], count: int) -> list[str]:
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(
        isinstance(d, str) and is_digest(d) for d in diff_ids
    ):
        raise SetupError(f"{ref}: config: rootfs.diff_ids is not a list of sha256 digests")
    if len(diff_ids) != count:
        raise SetupError(
            f"{ref}: the manifest has {count} layers but the config {len(diff_ids)} diff_ids"
        )
    if count > MAX_LAYERS:
        raise SetupError(f"{ref}: {count} layers (pflask stacks at most {MAX_LAYERS})")
    return diff_ids


def _docker_archive(ref: Reference, blobs: Blobs) -> Image:
    what = f"{ref}: manifest.json"
    entries = parse_json(blobs.read("manifest.json", what), what)
    if not isinstance(entries, list) or not entries:
        raise SetupError(f"{what}: expected a list of images")
    entries = [_object(e, what) for e in entries]
    if ref.tag is not None:
        found = [
            e
            for e in entries
            if ref.tag in (e.get("RepoTags") or ())
            or any(str(t).endswith(f"/{ref.tag}") for t in e.get("RepoTags") or ())
        ]
        if not found:
            raise SetupError(f"{ref}: no image tagged {ref.tag!r}")
        entry = found[0]
    elif len(entries) == 1:
        entry = entries[0]
    else:
        raise SetupError(f"{ref}: holds {len(entries)} images: which one? (FILE:NAME:TAG)")
    config_name = entry.get("Config")
    layer_names = entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise SetupError(f"{what}: an entry without Config or Layers")
    data = blobs.read(config_name, f"{ref}: config")
    config_digest = sha256_hex(data)
    config = _object(parse_json(data, f"{ref}: config"), f"{ref}: config")
    diff_ids = _diff_ids(ref, config, len(layer_names))
    layers = []
    for name, diff_id in zip(layer_names, diff_ids, strict=True):
        if not isinstance(name, str):
            raise SetupError(f"{what}: a layer name that is not a string")
        # The blob is the uncompressed tar (or a compressed one in newer
        # archives): either way its member name, and the diff-id to check.
        layers.append(Layer(digest="", diff_id=diff_id, media_type=name))
    return Image(
        digest=config_digest,
        config_digest=config_digest,
        config=config,
        layers=tuple(layers),
        reference=str(ref),
    )


def layer_blob(blobs: Blobs, layer: Layer) -> IO[bytes]:
    """The stored blob of a layer, to stream into the store."""
    if not layer.digest:  # docker-archive: the member named in manifest.json
        return blobs.open(layer.media_type, f"layer {layer.diff_id}")
    return blobs.open(blobs.blob_name(layer.digest), f"layer {layer.digest}")
