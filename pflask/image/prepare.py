"""A manifest's image made ready before compiling: resolved, unpacked, applied.

The compiler stays pure: it sees a Manifest whose root already names the
layer directories (`root.layers`, top first; `root.path` the top one, where
the overlay goes) and whose command, environment, working directory and user
carry the image config's defaults where the manifest said nothing:

- Entrypoint + Cmd: the command, unless the manifest (or `-- COMMAND`) gives one;
- Env: set before the manifest's `env.set` (which wins, name by name);
- WorkingDir, User: unless the manifest sets `workdir`, `user`.
"""

from __future__ import annotations

from pflask.errors import ManifestError
from pflask.load import imageref

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pflask.image.store import Resolved
    from pflask.load.manifest import Manifest


def apply(m: Manifest, progress: bool = True) -> tuple[Manifest, tuple[str, ...]]:
    """`m` with its image resolved, and the host paths a cached plan must
    watch (the layout's index.json, an archive, the layer directories)."""
    if m.root.image is None:
        return m, ()
    from pflask.image import store

    try:
        ref = imageref.parse(m.root.image)
    except imageref.BadReference as e:
        raise ManifestError(str(e), file=m.source, field="root.image") from None
    if ref.transport == "disk":
        return _disk(m, ref.path), ()
    resolved = store.resolve(ref, progress=progress)
    return with_image(m, resolved), (*resolved.watch, *resolved.layers)


def _disk(m: Manifest, path: str) -> Manifest:
    """A raw filesystem image as the root: mounted (read-only, through a loop
    device) on the store's empty `mnt` directory in the container's mount
    namespace, changes on a tmpfs above it (compiler: DiskRoot)."""
    import os

    from pflask.errors import SetupError
    from pflask.image import store

    if not os.path.isfile(path):
        raise SetupError(f"disk:{path}: not a regular file (a raw ext4, squashfs or erofs image)")
    if os.geteuid() != 0:
        raise ManifestError(
            "a disk image is mounted through a loop device, which needs root "
            "(an ordinary user can use an OCI image)",
            file=m.source,
            field="root.image",
        )
    mount_point = store.Store().mount_point()
    result: Manifest = m.replace(root=m.root.replace(path=mount_point, disk=path))
    return result


def unresolved(m: Manifest) -> Manifest:
    """`m` as if its image were resolved, for `pflask validate`: checking a
    manifest should not fetch or unpack anything (the reference's syntax was
    checked with the rest)."""
    result: Manifest = m.replace(
        root=m.root.replace(path="/", layers=("/",), digest="(not resolved)")
    )
    return result


def with_image(m: Manifest, image: Resolved) -> Manifest:
    config = image.config
    changes: dict[str, Any] = {
        "root": m.root.replace(
            path=image.layers[0], layers=image.layers, digest=image.digest, store=image.store
        )
    }
    if m.command is None:
        argv = [*_strings(config.get("Entrypoint")), *_strings(config.get("Cmd"))]
        if argv:
            changes["command"] = tuple(argv)
    env = []
    for item in _strings(config.get("Env")):
        name, equals, value = item.partition("=")
        if equals and name:
            env.append((name, value))
    if env:
        given = {name for name, _ in m.env_set}
        changes["env_set"] = (*((n, v) for n, v in env if n not in given), *m.env_set)
    workdir = config.get("WorkingDir")
    if m.workdir is None and isinstance(workdir, str) and workdir:
        changes["workdir"] = workdir
    user = config.get("User")
    if m.user is None and isinstance(user, str) and user:
        changes["user"] = user
    result: Manifest = m.replace(**changes)
    return result


def _strings(value: object) -> list[str]:
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []
