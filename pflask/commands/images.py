"""`pflask image import|ls|inspect|rm|prune` and `pflask lock FILE`.

`lock` writes the digest into the manifest itself (REF@sha256:HEX), not into
a lock file beside it: the manifest is then the one file that says what runs
(a checked-in manifest reproduces the same root anywhere, with no second
file to keep in step), and a review of the change is one line, the digest.
Only that value's text is edited, so the file's comments and layout stay.
Locking again resolves the reference without its old pin: after the tag has
moved, the diff is the new digest.
"""

from __future__ import annotations

import json
import os
import sys

from pflask.errors import SetupError, UsageError
from pflask.load import imageref

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def image_command(action: str, text: str | None, as_json: bool) -> int:
    from pflask.image import store as image_store

    if action in ("import", "inspect", "rm") and not text:
        raise UsageError(f"image {action}: which image? (pflask image {action} REF)")
    if action == "import":
        assert text is not None
        resolved = image_store.resolve(_parse(text))
        print(resolved.digest)
        return 0
    store = image_store.Store()
    if action == "ls":
        records = store.images()
        if as_json:
            print(json.dumps(records, indent=2, sort_keys=True))
            return 0
        print(f"{'DIGEST':<19} {'LAYERS':>6}  NAMES")
        for r in records:
            names = ", ".join(r.get("names", ()))
            print(f"{str(r['digest'])[:19]:<19} {len(r.get('layers', ())):>6}  {names}")
        return 0
    if action == "prune":
        removed, freed = store.prune()
        print(f"removed {removed} layers ({freed / (1 << 20):.1f} MiB)")
        return 0
    assert text is not None
    records = store.find(_lookup_name(text))
    if not records:
        raise UsageError(f"image {action}: no image {text!r} in {store.path} (see pflask image ls)")
    if action == "inspect":
        print(json.dumps(records[0] if len(records) == 1 else records, indent=2, sort_keys=True))
        return 0
    if len(records) > 1:
        digests = ", ".join(str(r["digest"])[:19] for r in records)
        raise UsageError(f"image rm: {text!r} names {len(records)} images ({digests}): which?")
    store.remove(records[0])
    print(f"removed {records[0]['digest']} (its layers go with pflask image prune)")
    return 0


def _parse(text: str) -> imageref.Reference:
    try:
        ref = imageref.parse(imageref.with_path(text, os.path.abspath))
    except imageref.BadReference as e:
        raise UsageError(f"{text!r}: {e}") from None
    if ref.transport == "disk":
        raise UsageError(f"{text!r}: disk images are not stored (they are mounted as they are)")
    return ref


def _lookup_name(text: str) -> str:
    """A name as `image ls` shows it: a reference's path made absolute."""
    try:
        imageref.parse(text)
    except imageref.BadReference:
        return text
    return imageref.with_path(text, os.path.abspath)


def lock(file: str) -> int:
    """Pin FILE's root.image to the digest it resolves to (see the docstring)."""
    from pflask.image import store as image_store
    from pflask.load import loader, positions

    loaded = loader.load(file)
    root = loaded.data.get("root")
    if not isinstance(root, dict) or "image" not in root:
        raise UsageError(f"lock {file}: the manifest has no root.image to pin")
    ref = _parse(str(root["image"]))
    # Resolved without its pin: locking again takes what the tag names now.
    resolved = image_store.resolve(ref.replace(digest=None))
    loc = positions.locate(loaded.data, ("root", "image"))
    where = loc[0] if loc is not None and loc[0] not in ("<manifest>", "command line") else file
    raw = _raw_image(where)
    pinned = raw.partition("@sha256:")[0] + "@" + resolved.digest
    if pinned == raw:
        print(f"{where}: root.image already pinned to {resolved.digest}")
        return 0
    with open(where, encoding="utf-8") as f:
        text = f.read()
    if text.count(raw) != 1:
        raise SetupError(
            f"lock {where}: {raw!r} appears {text.count(raw)} times in the file; "
            f"pin it by hand: {pinned}"
        )
    temporary = f"{where}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text.replace(raw, pinned))
    os.chmod(temporary, os.stat(where).st_mode & 0o7777)
    os.rename(temporary, where)
    print(f"{where}: root.image: {pinned}", file=sys.stderr)
    return 0


def _raw_image(path: str) -> str:
    """root.image as the file spells it (before `${VAR}` and relative paths)."""
    with open(path, "rb") as f:
        data = f.read(1 << 20)
    parsed: Any
    if path.endswith(".toml"):
        import tomllib

        parsed = tomllib.loads(data.decode())
    elif path.endswith(".json"):
        parsed = json.loads(data)
    else:
        import yaml

        parsed = yaml.safe_load(data)
    value = parsed.get("root", {}).get("image") if isinstance(parsed, dict) else None
    if not isinstance(value, str):
        raise SetupError(f"lock {path}: root.image is not written in this file as a string")
    return value
