"""Building images for the tests: layer tars entry by entry (hostile ones
too), OCI layouts, archives, a busybox base layer; and manifests that use them."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any

import yaml

from pflask.image import layout


def entry(
    name: str,
    data: bytes | None = None,
    *,
    kind: bytes = tarfile.REGTYPE,
    mode: int = 0o644,
    uid: int = 0,
    gid: int = 0,
    link: str = "",
    size: int | None = None,
    pax: dict[str, str] | None = None,
    device: tuple[int, int] = (0, 0),
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.uid, info.gid = uid, gid
    info.linkname = link
    info.devmajor, info.devminor = device
    info.mtime = 1_600_000_000
    if pax:
        info.pax_headers = dict(pax)
    if data is not None:
        info.size = len(data) if size is None else size
    return info, data


def directory(name: str, mode: int = 0o755, **kw: Any) -> tuple[tarfile.TarInfo, bytes | None]:
    return entry(name, kind=tarfile.DIRTYPE, mode=mode, **kw)


def symlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes | None]:
    return entry(name, kind=tarfile.SYMTYPE, link=target, mode=0o777)


def hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes | None]:
    return entry(name, kind=tarfile.LNKTYPE, link=target)


def layer(*entries: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


_BASE: dict[str, bytes] = {}


def busybox_layer(root: Path) -> bytes:
    """The busybox root as one layer (cached per root)."""
    key = os.fspath(root)
    if key not in _BASE:
        _BASE[key] = layout.tar_of_directory(key)
    return _BASE[key]


def oci(path: Path, layers: list[bytes], tag: str | None = "latest", **kw: Any) -> str:
    """An OCI layout at `path` (readable by everyone); the manifest's digest."""
    digest = layout.write_layout(os.fspath(path), layers, tag=tag, **kw)
    for directory_path, _, files in os.walk(path):
        os.chmod(directory_path, 0o755)
        for name in files:
            os.chmod(os.path.join(directory_path, name), 0o644)
    return digest


def blob(layout_dir: Path, digest: str) -> Path:
    return layout_dir / "blobs" / "sha256" / digest.partition(":")[2]


def manifest(directory: Path, image: str, **fields: Any) -> Path:
    path = directory / "box.yaml"
    fields.setdefault("name", f"img{os.getpid()}-{directory.name[1:5]}")
    root = {"image": image, **fields.pop("root", {})}
    path.write_text(yaml.safe_dump({"version": 1, "root": root, **fields}))
    path.chmod(0o644)
    return path
