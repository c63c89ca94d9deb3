"""The pipeline, written out once: manifest -> loader -> Manifest -> compiler -> Plan.

Every way in (`pflask run` on a cache miss, `validate`, `plan`, the original
flags) goes through here, so they load, check and compile alike and place a
compiler's error in the file that holds the value.  Nothing is imported until
it is needed: `pflask run` on a cached plan never comes here.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pflask.compile.context import Context
    from pflask.compile.plan import Plan
    from pflask.load.loader import Loaded
    from pflask.load.manifest import Manifest
    from pflask.load.positions import LocDict


def compile_file(
    file: str, overrides: tuple[str, ...], ctx: Context, images: bool = True
) -> tuple[Plan, Loaded]:
    """The plan for a manifest file with `--set` overrides, and what it was loaded from
    (the files and variables the cache must watch).  `images`: resolve and
    unpack the manifest's image; without (validate), its layers are placeholders."""
    from pflask.errors import ManifestError
    from pflask.load import loader

    loaded = loader.load(file, overrides=overrides)
    try:
        plan, watch = _compile(loaded.data, file, ctx, images)
        if watch:
            import os

            from pflask.image.store import STORE_VARIABLES

            loaded.stamps.extend(watch)
            for name in STORE_VARIABLES:
                loaded.env_used[name] = os.environ.get(name)
        return plan, loaded
    except ManifestError as e:  # its field indexes the merged lists: place it
        raise loaded.place(e) from None


def compile_data(data: LocDict, origin: str, ctx: Context) -> tuple[Plan, tuple[str, ...]]:
    """The plan for a manifest mapping that was not read from a file (the original
    flags'): checked against the schema and the rules first, as a file is; and
    the host paths its image came from."""
    from pflask.load import loader

    loader.check(data)
    return _compile(data, origin, ctx)


def compile_bundle(
    bundle: str, ctx: Context, name: str | None = None, start_fifo: str | None = None
) -> Plan:
    """The plan for an OCI bundle (pflask.load.oci), as `pflask-oci create`
    runs it: a container called `name`, waiting on `start_fifo` if given."""
    from pflask.compile import compiler
    from pflask.load import oci

    return compiler.compile_plan(oci.load(bundle, name, start_fifo), ctx)


def _compile(
    data: dict[str, Any], source: str, ctx: Context, images: bool = True
) -> tuple[Plan, tuple[str, ...]]:
    """The plan, and the host paths its image came from (see image.prepare)."""
    from pflask.compile import compiler

    m, watch = prepared(data, source, ctx, images)
    return compiler.compile_plan(m, ctx), watch


def prepared(
    data: dict[str, Any], source: str, ctx: Context, images: bool = True, progress: bool = True
) -> tuple[Manifest, tuple[str, ...]]:
    """The typed Manifest ready to compile, its image (if any) checked against
    the id map, resolved and unpacked (`images`; else placeholders, for
    validate), and the host paths the image came from.  The Python API keeps
    this Manifest and compiles it once per command."""
    from pflask.load import manifest

    m = manifest.from_data(data, source=source)
    watch: tuple[str, ...] = ()
    if m.root.image is not None:
        from pflask.compile import compiler
        from pflask.image import prepare

        compiler.check_image_owners(m, ctx)
        m, watch = prepare.apply(m, progress) if images else (prepare.unresolved(m), ())
    return m, watch
