"""Writing OCI image layouts and archives from layer tars: how scripts/setup
makes the example's image from busybox, and how the tests and benchmarks
make theirs, with no registry, daemon or download.

    write_layout(DIR, [layer tar bytes, ...], config={...}, tag="latest")

Each layer is stored as given or compressed (gzip, zstd); the config gets
the layers' diff-ids, the manifest their digests, index.json the tag.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

from pflask.image.source import OCI_MANIFEST

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

LAYER_TYPES = {
    "tar": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compress(data: bytes, how: str) -> bytes:
    if how == "gzip":
        import gzip

        return gzip.compress(data, compresslevel=6, mtime=0)
    if how == "zstd":
        import subprocess

        return subprocess.run(
            ["zstd", "-q", "-c"], input=data, capture_output=True, check=True
        ).stdout
    return data


def tar_of_directory(path: str) -> bytes:
    """A layer tar of a directory's content, names relative to it, sorted,
    mtimes 0 and owners by number: the same content gives the same bytes,
    so the same digest."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def reset(info: tarfile.TarInfo) -> tarfile.TarInfo:
            info.mtime = 0
            info.uname = info.gname = ""  # owners by number: no host's names in it
            return info

        for directory, dirs, files in sorted(os.walk(path)):
            dirs.sort()
            for name in sorted([*dirs, *files]):
                full = os.path.join(directory, name)
                tar.add(full, arcname=os.path.relpath(full, path), recursive=False, filter=reset)
    return out.getvalue()


def _blob(layout: str, data: bytes) -> str:
    digest = digest_of(data)
    directory = os.path.join(layout, "blobs", "sha256")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, digest.partition(":")[2]), "wb") as f:
        f.write(data)
    return digest


def write_layout(
    layout: str,
    layers: list[bytes],
    config: dict[str, Any] | None = None,
    tag: str | None = "latest",
    compression: str = "gzip",
) -> str:
    """An OCI layout at `layout` (added to one already there) holding an image
    of `layers` (tars, bottom first); returns the manifest's digest."""
    os.makedirs(layout, exist_ok=True)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    descriptors = []
    for layer in layers:
        stored = compress(layer, compression)
        descriptors.append(
            {
                "mediaType": LAYER_TYPES[compression],
                "digest": _blob(layout, stored),
                "size": len(stored),
            }
        )
    image_config = {
        "architecture": {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, "amd64"),
        "os": "linux",
        "config": config or {},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(layer) for layer in layers]},
    }
    config_data = json.dumps(image_config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": _blob(layout, config_data),
            "size": len(config_data),
        },
        "layers": descriptors,
    }
    manifest_data = json.dumps(manifest, sort_keys=True).encode()
    digest = _blob(layout, manifest_data)
    index_path = os.path.join(layout, "index.json")
    try:
        with open(index_path) as f:
            index = json.load(f)
    except FileNotFoundError:
        index = {"schemaVersion": 2, "manifests": []}
    entry: dict[str, Any] = {
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": len(manifest_data),
    }
    if tag is not None:
        entry["annotations"] = {"org.opencontainers.image.ref.name": tag}
        index["manifests"] = [
            m
            for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") != tag
        ]
    index["manifests"].append(entry)
    with open(index_path + ".tmp", "w") as f:
        json.dump(index, f)
    os.rename(index_path + ".tmp", index_path)
    return digest


def archive(layout: str, path: str) -> None:
    """An OCI archive (oci-archive:) of a layout: the same files in a tar."""
    with tarfile.open(path, "w") as tar:
        for name in ("oci-layout", "index.json", "blobs"):
            tar.add(os.path.join(layout, name), arcname=name)


def docker_archive(
    path: str,
    layers: list[bytes],
    config: dict[str, Any] | None = None,
    repo_tag: str = "example:latest",
) -> str:
    """A docker-archive (what `docker save` writes) of uncompressed layers;
    returns the image id (the config's digest)."""
    image_config = {
        "architecture": "amd64",
        "os": "linux",
        "config": config or {},
        "rootfs": {"type": "layers", "diff_ids": [digest_of(layer) for layer in layers]},
    }
    config_data = json.dumps(image_config, sort_keys=True).encode()
    config_name = digest_of(config_data).partition(":")[2] + ".json"
    names = [f"{digest_of(layer).partition(':')[2]}/layer.tar" for layer in layers]
    manifest = [{"Config": config_name, "RepoTags": [repo_tag], "Layers": names}]
    with tarfile.open(path, "w") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("manifest.json", json.dumps(manifest).encode())
        add(config_name, config_data)
        for name, layer in zip(names, layers, strict=True):
            add(name, layer)
    return digest_of(config_data)
