"""Where each value of a manifest came from, and errors placed there.

The loader builds its mappings and lists as LocDict and LocList, which
remember the file, line and column of every key and item; an error found
later (by the schema, by semantics.py's rules, by the compiler) names the
field the way users read it (`mounts[2].target`) and points into the file
that holds the value, even after `extends` merged several files.  Kept apart
from loader.py so that the rules that place errors (semantics.py) need not
import the loader, which calls them.
"""

from __future__ import annotations

from pflask.errors import ManifestError, shown

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Loc = tuple[str, int | None, int | None]
    Path = tuple[str | int, ...]


class LocDict(dict):  # type: ignore[type-arg]
    """A mapping that remembers where it and each of its keys came from."""

    def __init__(self, loc: Loc) -> None:
        super().__init__()
        self.loc = loc
        self.key_locs: dict[str, Loc] = {}
        self.value_locs: dict[str, Loc] = {}


class LocList(list):  # type: ignore[type-arg]
    """A list that remembers where it and each of its items came from.

    `item_index` is each item's index in the file that holds it: `extends`
    appends lists, so a file's first mount may be the merged list's third,
    and a message about it must say `mounts[0]` with that file's position.
    """

    def __init__(self, loc: Loc) -> None:
        super().__init__()
        self.loc = loc
        self.item_locs: list[Loc] = []
        self.item_index: list[int] = []

    def add(self, item: Any, loc: Loc) -> None:
        """Append an item that is the `len(self)`th of its own file."""
        self.item_index.append(len(self))
        self.append(item)
        self.item_locs.append(loc)


def own_path(data: Any, path: Path) -> Path:
    """`path` with each list index replaced by the item's index in its own file."""
    result: list[str | int] = []
    node = data
    for part in path:
        if isinstance(node, LocList) and isinstance(part, int) and part < len(node):
            result.append(node.item_index[part])
            node = node[part]
            continue
        result.append(part)
        node = node.get(part) if isinstance(node, dict) and isinstance(part, str) else None
    return tuple(result)


def entry_name(data: Any, path: Path, file: str | None) -> str:
    """How a message names another entry (`interfaces[0]`): by its own
    file's index, and with that file when it is not `file`."""
    loc = locate(data, path)
    if loc is None or loc[0] == "command line":
        return field_name(path)
    name = field_name(own_path(data, path))
    return name if loc[0] == file else f"{name} ({loc[0]})"


def field_name(path: Path) -> str:
    """`mounts[2].target`, the way users read a field path."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif len(part) > 64 or not part.isprintable() or not part or any(c in part for c in ".[]"):
            text += f"[{shown(part)}]"  # a key only a hostile manifest would hold
        else:
            text += f".{part}" if text else part
    return text


def locate(data: Any, path: Path) -> Loc | None:
    """The deepest position known along `path`."""
    loc: Loc | None = getattr(data, "loc", None)
    node = data
    for part in path:
        if isinstance(node, LocDict) and isinstance(part, str) and part in node:
            loc = node.value_locs.get(part, loc)
            node = node[part]
        elif isinstance(node, LocList) and isinstance(part, int) and part < len(node):
            loc = node.item_locs[part]
            node = node[part]
        else:
            break
    return loc


def error_at(
    data: Any, path: Path, message: str, loc: Loc | None = None, value: bool = True
) -> ManifestError:
    """An error at `path` of the merged `data`, placed in the file that holds it.

    Indexes are the file's own (see LocList), except for a value `--set`
    gave ("command line"), which keeps the merged indexes the user typed.
    `value`: the error is about the value at `path` (not a key's name), so
    an unset variable there makes it redundant.
    """
    file, line, column = loc or locate(data, path) or ("<manifest>", None, None)
    shown_path = path if file == "command line" else own_path(data, path)
    error = ManifestError(message, file, line, column, field_name(shown_path) or None)
    if value:
        error.path = path
    return error
