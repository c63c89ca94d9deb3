"""Image references: where an image comes from, and the digest it is pinned to.

    oci:DIR[:TAG][@sha256:HEX]            an OCI image layout directory
    oci-archive:FILE[:TAG][@sha256:HEX]   the same, as a tar archive
    docker-archive:FILE[:NAME[:TAG]][@sha256:HEX]  what `docker save` / `podman save` write
    docker://HOST/NAME[:TAG][@sha256:HEX] a registry, fetched with skopeo
    disk:FILE                             a raw filesystem image (ext4, squashfs, erofs)

A pin names the image's manifest (for a docker-archive, which has none, its
config: the image id `docker images` shows); an image that resolves to
another digest is refused.  Parsing is pure: no file is read here.
"""

from __future__ import annotations

from pflask.record import Record

TRANSPORTS = ("oci", "oci-archive", "docker-archive", "docker", "disk")
_HEX = frozenset("0123456789abcdef")
MAX_REFERENCE = 4096


class Reference(Record):
    transport: str
    path: str  # a host path; for docker: HOST/NAME[:TAG] without the scheme
    tag: str | None = None
    digest: str | None = None  # "sha256:HEX"

    def __str__(self) -> str:
        if self.transport == "docker":
            text = f"docker://{self.path}"
        else:
            text = f"{self.transport}:{self.path}"
        if self.tag is not None and self.transport != "docker":
            text += f":{self.tag}"
        return text + (f"@{self.digest}" if self.digest else "")

    def pinned(self, digest: str) -> Reference:
        result: Reference = self.replace(digest=digest)
        return result


class BadReference(ValueError):
    """A reference that does not parse; the message says what was expected."""


def is_digest(text: str) -> bool:
    algorithm, _, hex_part = text.partition(":")
    return algorithm == "sha256" and len(hex_part) == 64 and _HEX.issuperset(hex_part)


def parse(text: str) -> Reference:
    """A reference, or BadReference saying what is wrong with it."""
    if len(text) > MAX_REFERENCE:
        raise BadReference(f"longer than {MAX_REFERENCE} characters")
    if "\0" in text or "\n" in text:
        raise BadReference("contains a NUL or newline")
    if text.startswith("docker://"):
        return _docker(text[len("docker://") :])
    transport, colon, rest = text.partition(":")
    if not colon or transport not in TRANSPORTS or transport == "docker":
        raise BadReference(
            "expected oci:DIR[:TAG], oci-archive:FILE[:TAG], docker-archive:FILE, "
            "docker://NAME[:TAG] or disk:FILE (each may end in @sha256:HEX)"
        )
    digest = None
    if "@" in rest:
        rest, _, digest = rest.rpartition("@")
        if not is_digest(digest):
            raise BadReference(f"{digest!r} is no digest (expected sha256: and 64 hex digits)")
    tag = None
    if transport == "docker-archive":
        # FILE[:NAME[:TAG]]: the name may hold a colon, so the file ends at the first.
        rest, colon, name = rest.partition(":")
        tag = name if colon and name else None
    elif transport != "disk":
        # The tag follows the last colon, unless that colon is part of the path.
        path, colon, maybe = rest.rpartition(":")
        if colon and path and maybe and "/" not in maybe:
            rest, tag = path, maybe
    if not rest:
        raise BadReference(f"{transport}: which {'directory' if transport == 'oci' else 'file'}?")
    if transport == "disk" and digest is not None:
        raise BadReference("a disk image cannot be pinned by digest")
    return Reference(transport=transport, path=rest, tag=tag, digest=digest)


def _docker(rest: str) -> Reference:
    digest = None
    if "@" in rest:
        rest, _, digest = rest.rpartition("@")
        if not is_digest(digest):
            raise BadReference(f"{digest!r} is no digest (expected sha256: and 64 hex digits)")
    if not rest or any(c.isspace() for c in rest):
        raise BadReference("docker://: expected HOST/NAME[:TAG]")
    return Reference(transport="docker", path=rest, digest=digest)


def with_path(text: str, fix: object) -> str:
    """`text` with its host path passed through `fix` (the loader makes it
    absolute against the manifest's directory); other text unchanged."""
    try:
        ref = parse(text)
    except BadReference:
        return text
    if ref.transport == "docker" or not callable(fix):
        return text
    return str(ref.replace(path=fix(ref.path)))
