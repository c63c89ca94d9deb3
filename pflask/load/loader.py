"""Read manifests: formats, positions, `${VAR}`, `extends`, relative paths, validation.

The loader knows files and formats and nothing about namespaces.  What it
returns is a plain manifest mapping that the JSON Schema accepts, with every
host path absolute, plus what the start-up cache needs to know to trust a
compiled plan later: every file read and every variable consulted.

Positions: YAML nodes keep their line and column; each mapping and list the
loader builds remembers where its items came from (file, line, column), so an
error found after merging `extends` still points into the file that holds the
offending value.  TOML and JSON parsers give no positions, so their errors
name the file and the field only.

Limits: a manifest is untrusted input (a checked-out repository's file), so
everything is bounded before it is expanded, and every bound is an error with
exit status 2 rather than a process that swells until the OOM killer ends it.
A manifest and each base must be a regular file (a FIFO, a device, /dev/zero
are refused before anything is read) of at most MAX_FILE_BYTES; YAML is
first walked as a stream of parser events, counting the values its aliases
would expand to and the nesting depth, before any node is built; TOML's
values are counted from its separators before tomllib (pure Python) parses
it; JSON and TOML are measured right after parsing (their parsers recurse: a
document nested past Python's recursion limit is the same error).  `extends`
is bounded in depth and in files read, and `${VAR}` in the characters it may
produce.  Strings and numbers then meet the schema's maxLength and maximum,
no string may hold a NUL or a lone surrogate (no system call can take one),
and no number may be NaN or infinite (NaN passes every maximum).
"""

from __future__ import annotations

import itertools
import os

from pflask.errors import SHOWN, ManifestError, ManifestErrors, shown
from pflask.load.positions import LocDict, LocList, error_at, locate

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any

    from pflask.load.positions import Loc, Path

SUFFIXES = (".yaml", ".yml", ".toml", ".json")

MAX_FILE_BYTES = 1 << 20
"""A manifest or a base file: 1 MiB (real manifests are a few KiB)."""
MAX_NODES = 10_000
"""Values (mapping keys included) in one load, over all its files, YAML
aliases counted as often as they are used: a few hundred are typical."""
MAX_DEPTH = 32
"""Nesting of mappings and lists; the schema's deepest field is 5 levels."""
MAX_EXTENDS_DEPTH = 8
"""A base's base's ... base: the chain `extends` may follow."""
MAX_FILES = 32
"""Files read for one load, the manifest included (a base named twice counts twice)."""
MAX_EXPANSION = 1 << 20
"""Characters `${VAR}` may produce in one load, over all its strings."""
PATH_MAX = 4096
"""A path, as the kernel takes it (and the schema's maxLength for paths)."""
MAX_ERRORS = 20
"""Errors reported for one file; the rest are counted."""


class Budget:
    """What is left for one load (a manifest and all its bases) to spend."""

    def __init__(self) -> None:
        self.nodes = MAX_NODES
        self.files = MAX_FILES
        self.expansion = MAX_EXPANSION


class Unset(str):
    """A string whose `${VAR}` could not be expanded, kept as written.

    Loading goes on past an unset variable so that one run reports every
    one (and every other error); an error the schema or a rule finds in this
    value is the variable's error, already reported, and is left out.
    """


class Loaded:
    """A loaded manifest and what it depended on."""

    def __init__(self, data: LocDict, files: list[str], env_used: dict[str, str | None]) -> None:
        self.data = data
        self.files = files
        self.env_used = env_used
        self.stamps: list[str] = []
        """Host paths (an image's archive, layout index, layers) the cache
        checks by their inode, size and times rather than their content."""

    def error(self, path: Path, message: str) -> ManifestError:
        """An error placed at the value a field path points to."""
        return error_at(self.data, path, message)

    def place(self, error: ManifestError) -> ManifestError:
        """A compiler's error (`FILE: mounts[3]: ...`, with merged indexes),
        placed at the file, line, column and own index of the entry it names."""
        path = parse_field(error.field or "")
        if error.line is not None or path is None or not path:
            return error
        if error.file is not None and os.path.abspath(error.file) != self.data.loc[0]:
            return error  # about another file (a seccomp profile): placed there already
        placed = error_at(self.data, path, error.message)
        return placed if placed.file != "<manifest>" else error


def parse_field(text: str) -> Path | None:
    """`mounts[3].lower[0]` as a path, or None if it is not one."""
    try:
        parts = _split_path(text)
    except ManifestError:
        return None
    ok = all(isinstance(p, int) or (p.isidentifier() and p.isascii()) for p in parts)
    return tuple(parts) if ok else None


# --- parsing ----------------------------------------------------------------------


class Unreadable(ManifestError):
    """A file that cannot be a manifest at all: missing, not a regular file,
    too large, not UTF-8.  Raised for a base, it is reported at the `extends`
    entry that named it."""


def read(file: str) -> str:
    """A manifest file's text, refusing what is not a bounded regular file.

    The file is checked before it is opened (opening a device can do things)
    and the opened descriptor again (the name may have changed meanwhile);
    O_NONBLOCK keeps a FIFO from blocking open(2) until a writer comes, and
    at most one byte more than the cap is read, so /dev/zero behind a
    symlink costs nothing.
    """
    import stat

    try:
        fd = -1
        mode = os.stat(file).st_mode
        if not stat.S_ISREG(mode):
            raise Unreadable(f"not a regular file ({_kind_of(mode)})", file)
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise Unreadable(f"not a regular file ({_kind_of(mode)})", file)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FILE_BYTES:
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise Unreadable(f"cannot read: {e.strerror}", file) from None
    except ValueError:  # a NUL in the name
        raise Unreadable("cannot read: the name holds a NUL character", file) from None
    finally:
        if fd >= 0:
            os.close(fd)
    if size > MAX_FILE_BYTES:
        raise Unreadable(f"larger than {MAX_FILE_BYTES >> 20} MiB: not a manifest", file)
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError as e:
        raise Unreadable(f"not UTF-8 text (byte {e.start})", file) from None


def _kind_of(mode: int) -> str:
    import stat

    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((name for test, name in kinds if test(mode)), "not a file")


def parse(text: str, file: str, budget: Budget | None = None) -> LocDict:
    """Parse one manifest document by its file name's extension."""
    budget = Budget() if budget is None else budget
    suffix = os.path.splitext(file)[1].lower()
    if suffix in (".yaml", ".yml"):
        data = _parse_yaml(text, file, budget)
        if data is None:
            raise ManifestError("the manifest is empty", file)
    elif suffix == ".toml":
        data = located(_parse_toml(text, file, budget), file)
    elif suffix == ".json":
        data = located(_parse_json(text, file, budget), file)
    else:
        raise ManifestError(
            f"unknown manifest format {suffix or '(no extension)'!r}: "
            "use .yaml, .yml, .toml or .json",
            file,
        )
    if not isinstance(data, LocDict):
        raise ManifestError("a manifest must be a mapping of fields", file, *_first_loc(data))
    return data


def _first_loc(data: Any) -> tuple[int | None, int | None]:
    loc = getattr(data, "loc", None)
    return (loc[1], loc[2]) if loc else (None, None)


class YAMLSyntaxError(ManifestError):
    """Text that is not YAML (as opposed to YAML past a limit)."""


def _parse_yaml(text: str, file: str, budget: Budget) -> Any:
    """The document's value (None if empty), measured before it is built."""
    import yaml

    loader_class = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader = loader_class(text)
    try:
        _measure_yaml(loader, file, budget)
        loader.dispose()
        loader = loader_class(text)
        node = loader.get_single_node()
        return None if node is None else _from_node(loader, node, file)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "invalid YAML"
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise YAMLSyntaxError(f"YAML syntax error: {problem}", file, line, column) from None
    except yaml.YAMLError as e:
        raise YAMLSyntaxError(f"YAML syntax error: {shown(str(e))}", file) from None
    except (ValueError, OverflowError) as e:  # an int past 4300 digits, a date past 9999
        raise ManifestError(f"bad YAML value: {shown(str(e))}", file) from None
    finally:
        loader.dispose()


def _measure_yaml(loader: Any, file: str, budget: Budget) -> None:
    """Walk the parser's events: nesting depth, and values with aliases expanded.

    An alias is a reference to a node already seen, so nine aliases to a list
    of nine aliases to ... is a few hundred bytes that build a billion values.
    Each anchored node's expanded size is known when it ends, so the expanded
    size of the whole document is a sum over the events, checked as it grows:
    the walk stops at the first event past the budget, long before anything
    is built.  An alias to a node not yet ended refers to itself (a cycle).
    """
    import yaml

    open_nodes: list[tuple[str | None, int]] = []  # (anchor, values before it)
    sizes: dict[str, int] = {}
    spent = 0
    while loader.check_event():
        event = loader.get_event()
        if isinstance(event, yaml.CollectionEndEvent):
            anchor, before = open_nodes.pop()
            if anchor is not None:
                sizes[anchor] = spent - before
            continue
        if isinstance(event, yaml.AliasEvent):
            if any(anchor == event.anchor for anchor, _ in open_nodes):
                raise _at_event(f"alias *{shown(event.anchor)[1:-1]} refers to itself", file, event)
            spent += sizes.get(event.anchor or "", 1)
        elif isinstance(event, yaml.ScalarEvent):
            spent += 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            open_nodes.append((event.anchor, spent))
            spent += 1
            if len(open_nodes) > MAX_DEPTH:
                raise _at_event(f"nested deeper than {MAX_DEPTH} levels", file, event)
        else:
            continue
        if spent > budget.nodes:
            raise _at_event(_too_many(" (aliases expanded)"), file, event)
    budget.nodes -= spent


def _at_event(message: str, file: str, event: Any) -> ManifestError:
    mark = event.start_mark
    return ManifestError(message, file, mark.line + 1, mark.column + 1)


def _too_many(aliases: str = "") -> str:
    return f"more than {MAX_NODES} values{aliases} in the manifest and its bases"


def _measure(value: Any, file: str, budget: Budget) -> None:
    """Depth and size of a parsed JSON or TOML document, without recursion."""
    spent = 0
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        spent += 1
        if isinstance(item, dict):
            spent += len(item)
            pending.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            pending.extend((v, depth + 1) for v in item)
        else:
            continue
        if depth > MAX_DEPTH:
            raise ManifestError(f"nested deeper than {MAX_DEPTH} levels", file)
        if spent + len(pending) > budget.nodes:
            raise ManifestError(_too_many(), file)
    budget.nodes -= spent


def _from_node(loader: Any, node: Any, file: str) -> Any:
    import yaml

    loc: Loc = (file, node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<` merge keys
        result = LocDict(loc)
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            key_loc: Loc = (file, key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            if not isinstance(key, str):
                raise ManifestError(f"keys must be strings, not {shown(key)}", *key_loc)
            if key in result:
                raise ManifestError(f"duplicate key {shown(key)}", *key_loc)
            result[key] = _from_node(loader, value_node, file)
            result.key_locs[key] = key_loc
            result.value_locs[key] = getattr(result[key], "loc", None) or (
                file,
                value_node.start_mark.line + 1,
                value_node.start_mark.column + 1,
            )
        return result
    if isinstance(node, yaml.SequenceNode):
        items = LocList(loc)
        for item_node in node.value:
            item_loc: Loc = (file, item_node.start_mark.line + 1, item_node.start_mark.column + 1)
            items.add(_from_node(loader, item_node, file), item_loc)
        return items
    return loader.construct_object(node, deep=True)


def _parse_toml(text: str, file: str, budget: Budget) -> Any:
    import tomllib

    if _toml_values(text) > budget.nodes:
        raise ManifestError(_too_many(), file)
    try:
        value = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"TOML syntax error: {e}", file) from None
    except RecursionError:
        raise ManifestError(f"nested deeper than {MAX_DEPTH} levels", file) from None
    except ValueError as e:  # an integer past 4300 digits
        raise ManifestError(f"bad TOML value: {shown(str(e))}", file) from None
    _measure(value, file, budget)
    return value


def _toml_values(text: str) -> int:
    """A lower bound of the values `text` holds, found without parsing it.

    tomllib is pure Python: a megabyte of `0,0,0,...` takes it a second, so
    the size is bounded first.  Outside strings and comments each `=` is a
    key, each `,` an item, each `[` or `{` an array or a table, so their
    count never exceeds what `_measure` would count after parsing.
    """
    import re

    outside = re.sub(
        r'"""[\s\S]*?"""|\'\'\'[\s\S]*?\'\'\'|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\'|#[^\n]*',
        "",
        text,
    )
    return sum(outside.count(c) for c in "=,[{")


def _parse_json(text: str, file: str, budget: Budget) -> Any:
    import json

    def no_constant(name: str) -> Any:
        raise ManifestError(f"JSON syntax error: {name} is not a JSON number", file)

    try:
        value = json.loads(text, parse_constant=no_constant)
    except json.JSONDecodeError as e:
        raise ManifestError(f"JSON syntax error: {e.msg}", file, e.lineno, e.colno) from None
    except RecursionError:
        raise ManifestError(f"nested deeper than {MAX_DEPTH} levels", file) from None
    except ValueError as e:  # a number past 4300 digits
        raise ManifestError(f"bad JSON value: {shown(str(e))}", file) from None
    _measure(value, file, budget)
    return value


def read_json(file: str) -> Any:
    """A JSON file that is not a manifest (a seccomp profile), read and parsed
    within a manifest's limits: size, depth, values, no NaN; plain data."""
    return _parse_json(read(file), file, Budget())


def located(value: Any, file: str) -> Any:
    """Wrap a position-less document so errors still name the file."""
    loc: Loc = (file, None, None)
    if isinstance(value, dict):
        result = LocDict(loc)
        for key, item in value.items():
            result[key] = located(item, file)
            result.key_locs[key] = result.value_locs[key] = loc
        return result
    if isinstance(value, list):
        items = LocList(loc)
        for item in value:
            items.add(located(item, file), loc)
        return items
    return value


# --- ${VAR} -----------------------------------------------------------------------


def interpolate(
    data: Any,
    env: Mapping[str, str],
    used: dict[str, str | None],
    path: Path = (),
    budget: Budget | None = None,
    unset: list[tuple[Path, str]] | None = None,
) -> Any:
    """Expand `${VAR}` and `${VAR:-default}` in string values; `$$` is `$`.

    A string that cannot be expanded (an unset variable, a bad reference)
    stays as written, marked Unset, and `(path, message)` goes to `unset`;
    without that list the first one raises.  What the expansions add is
    bounded by `budget` (a megabyte-long variable named a thousand times
    would otherwise make a gigabyte), and going past it always raises.
    """
    budget = Budget() if budget is None else budget
    if isinstance(data, LocDict):
        for key in data:
            data[key] = interpolate(data[key], env, used, (*path, key), budget, unset)
        return data
    if isinstance(data, LocList):
        for index, item in enumerate(data):
            data[index] = interpolate(item, env, used, (*path, index), budget, unset)
        return data
    if isinstance(data, str) and "$" in data:
        try:
            expanded = expand(data, env, used, budget.expansion)
        except _TooLong as e:
            raise _Unresolved(path, str(e.args[0])) from None
        except KeyError as e:
            if unset is None:
                raise _Unresolved(path, str(e.args[0])) from None
            unset.append((path, str(e.args[0])))
            return Unset(data)
        budget.expansion -= max(0, len(expanded) - len(data))
        return expanded
    return data


class _Unresolved(Exception):
    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        self.message = message


class _TooLong(KeyError):
    """The expansion budget is spent: a limit, which ends the load."""


def expand(
    text: str, env: Mapping[str, str], used: dict[str, str | None], limit: int = MAX_EXPANSION
) -> str:
    """One string's `${...}` expansion, of at most `limit` characters; raises
    KeyError with a message."""
    out: list[str] = []
    size = 0
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$":
            out.append(char)
            i += 1
            continue
        following = text[i + 1 : i + 2]
        if following == "$":
            out.append("$")
            i += 2
        elif following == "{":
            end = text.find("}", i + 2)
            if end < 0:
                raise KeyError(f"unterminated '${{' in {shown(text)} (write $$ for a literal $)")
            value = _lookup(text[i + 2 : end], env, used)
            out.append(value)
            size += len(value)
            if size > limit:
                raise _TooLong(f"variables expand to more than {MAX_EXPANSION >> 20} MiB")
            i = end + 1
        else:
            out.append("$")
            i += 1
    return "".join(out)


def _lookup(expression: str, env: Mapping[str, str], used: dict[str, str | None]) -> str:
    name, sep, default = expression.partition(":-")
    if (
        not name
        or not (name[0].isalpha() or name[0] == "_")
        or not all(c.isalnum() or c == "_" for c in name)
    ):
        raise KeyError(f"bad variable reference {shown('${' + expression + '}')}")
    value = env.get(name)
    used[name] = value
    if value is not None and not (sep and value == ""):
        return value
    if sep:
        return default
    if len(name) > 64:
        raise KeyError(f"variable {shown(name)} is not set")
    raise KeyError(f"variable {name} is not set (write ${{{name}:-default}} for a default)")


# --- relative paths -------------------------------------------------------------------

# Fields holding host paths, which are relative to the manifest that holds them.
_HOST_PATH_FIELDS = ("source", "upper", "work")


# `security.seccomp` values that are not a profile file's path.
SECCOMP_WORDS = ("default", "unconfined")


def absolutize(data: LocDict, base: str) -> None:
    """Make host paths absolute against the directory of their manifest."""

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not isinstance(value, Unset):
            return os.path.normpath(os.path.join(base, os.path.expanduser(value)))
        return value

    root = data.get("root")
    if isinstance(root, LocDict) and "path" in root:
        root["path"] = fix(root["path"])
    if isinstance(root, LocDict) and "upper" in root:
        root["upper"] = fix(root["upper"])
    if isinstance(root, LocDict) and isinstance(root.get("image"), str):
        from pflask.load import imageref

        root["image"] = imageref.with_path(root["image"], fix)
    security = data.get("security")
    if isinstance(security, LocDict) and security.get("seccomp") not in (None, *SECCOMP_WORDS):
        security["seccomp"] = fix(security["seccomp"])
    mounts = data.get("mounts")
    if isinstance(mounts, LocList):
        for mount in mounts:
            if not isinstance(mount, LocDict):
                continue
            for key in _HOST_PATH_FIELDS:
                if key in mount:
                    mount[key] = fix(mount[key])
            lower = mount.get("lower")
            if isinstance(lower, LocList):
                for index, item in enumerate(lower):
                    lower[index] = fix(item)
            elif lower is not None:
                mount["lower"] = fix(lower)


# --- extends ------------------------------------------------------------------------


def merge(base: Any, over: Any) -> Any:
    """Deep merge: mappings merge, lists append, anything else is replaced."""
    if isinstance(base, LocDict) and isinstance(over, LocDict):
        result = LocDict(over.loc)
        for key in (*base, *(k for k in over if k not in base)):
            if key in over and key in base:
                result[key] = merge(base[key], over[key])
                result.key_locs[key] = over.key_locs[key]
                result.value_locs[key] = over.value_locs[key]
            else:
                source = over if key in over else base
                result[key] = source[key]
                result.key_locs[key] = source.key_locs[key]
                result.value_locs[key] = source.value_locs[key]
        return result
    if isinstance(base, LocList) and isinstance(over, LocList):
        items = LocList(over.loc)
        items.extend(base)
        items.extend(over)
        items.item_locs = [*base.item_locs, *over.item_locs]
        items.item_index = [*base.item_index, *over.item_index]
        return items
    return over


# --- the whole load -------------------------------------------------------------------------


def load(
    file: str,
    env: Mapping[str, str] | None = None,
    overrides: tuple[str, ...] = (),
    validate: bool = True,
) -> Loaded:
    """Load `file` with everything it extends, expand, resolve and validate it."""
    env = os.environ if env is None else env
    files: list[str] = []
    used: dict[str, str | None] = {}
    unset: list[ManifestError] = []
    try:
        data = _load_tree(os.path.abspath(file), env, used, files, (), Budget(), unset)
        data.pop("extends", None)
        data.key_locs.pop("extends", None)
        if "name" not in data:
            data["name"] = default_name(file)
            data.key_locs["name"] = data.value_locs["name"] = data.loc
        for override in overrides:
            apply_override(data, override)
    except ManifestError as e:
        report([*unset, e])  # what stopped the load, with what was found before it
        raise
    profile = (
        data.get("security", {}).get("seccomp") if isinstance(data.get("security"), dict) else None
    )
    if isinstance(profile, str) and profile not in SECCOMP_WORDS:
        # A profile file is read by the compiler: a cached plan holds its
        # filter only as long as the file's content is the same.
        profile = data["security"]["seccomp"] = os.path.abspath(profile)
        files.append(profile)
    loaded = Loaded(data, files, used)
    if validate:
        check(loaded.data, text=True, found=unset)
    else:
        report(unset)
    return loaded


def default_name(file: str) -> str:
    stem = os.path.splitext(os.path.basename(file))[0]
    cleaned = "".join(c if c.isalnum() or c in "_.-" else "-" for c in stem).lstrip("_.-")
    return cleaned[:64] or "container"


def _load_tree(
    file: str,
    env: Mapping[str, str],
    used: dict[str, str | None],
    files: list[str],
    stack: tuple[str, ...],
    budget: Budget,
    unset: list[ManifestError],
) -> LocDict:
    """`file` merged over its bases; unset variables go to `unset` (each
    placed in its own file, before merging), every other error raises."""
    real = os.path.realpath(file)
    if real in stack:
        chain = " -> ".join((*stack, real))
        raise ManifestError(f"extends cycle: {chain}", file)
    budget.files -= 1
    text = read(file)
    files.append(real)
    data = parse(text, file, budget)
    del text
    found: list[tuple[Path, str]] = []
    try:
        interpolate(data, env, used, (), budget, found)
    except _Unresolved as e:
        raise error_at(data, e.path, e.message) from None
    for unset_path, message in found:
        error = error_at(data, unset_path, message)
        if str(error) not in {str(e) for e in unset}:  # a base named twice
            unset.append(error)
    if data.get("version") != 1 and not isinstance(data.get("version"), Unset):
        problem = "must be 1" if "version" in data else "required field is missing"
        raise error_at(data, ("version",), problem)
    base_dir = os.path.dirname(file)
    absolutize(data, base_dir)
    bases = data.get("extends", [])
    base_paths = [bases] if isinstance(bases, str) else bases
    if not isinstance(base_paths, list) or not all(isinstance(b, str) for b in base_paths):
        raise error_at(data, ("extends",), "must be a file name or a list of file names")
    merged: LocDict | None = None
    for index, base in enumerate(base_paths):
        where: Path = ("extends",) if isinstance(bases, str) else ("extends", index)
        if isinstance(base, Unset):
            continue  # its variable is reported; there is no file to read
        if not base or len(base) > PATH_MAX or "\0" in base:
            raise error_at(data, where, f"{shown(base)} is not a file name")
        if len(stack) + 1 > MAX_EXTENDS_DEPTH:
            raise error_at(data, where, f"extends nested deeper than {MAX_EXTENDS_DEPTH} files")
        if budget.files <= 0:
            raise error_at(data, where, f"extends reads more than {MAX_FILES} files")
        path = os.path.join(base_dir, os.path.expanduser(base))
        if not os.path.exists(path):
            raise error_at(data, where, f"no such file: {_path_shown(path)}")
        try:
            loaded = _load_tree(path, env, used, files, (*stack, real), budget, unset)
        except Unreadable as e:
            if e.file != path:
                raise
            raise error_at(data, where, f"{_path_shown(path)}: {e.message}") from None
        loaded.pop("name", None)
        loaded.pop("extends", None)
        merged = loaded if merged is None else merge(merged, loaded)
    if merged is None:
        return data
    result: LocDict = merge(merged, data)
    return result


def _path_shown(path: str) -> str:
    """A path named by a manifest, as a message quotes it: whole if short."""
    return path if len(path) <= 2 * SHOWN and path.isprintable() else shown(path)


def apply_override(data: LocDict, override: str) -> None:
    """`--set PATH=VALUE`: PATH is dotted (`root.ephemeral`, `mounts[0].readonly`)."""
    path_text, sep, value_text = override.partition("=")
    if not sep or not path_text:
        raise ManifestError(f"--set {override!r}: expected PATH=VALUE", "command line")
    try:
        value = _parse_yaml(value_text, "command line", Budget()) if value_text else ""
    except YAMLSyntaxError:
        value = value_text
    parts = _split_path(path_text)
    node: Any = data
    for part, following in itertools.pairwise(parts):
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise ManifestError(f"--set {path_text}: no item {part}", "command line")
            node = node[part]
            continue
        if not isinstance(node, LocDict):
            raise ManifestError(
                f"--set {path_text}: {part} is not inside a mapping", "command line"
            )
        if part not in node:
            node[part] = LocList(node.loc) if isinstance(following, int) else LocDict(node.loc)
            node.key_locs[part] = node.value_locs[part] = ("command line", None, None)
        node = node[part]
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(node, LocList) or last > len(node):
            raise ManifestError(f"--set {path_text}: no item {last}", "command line")
        if last == len(node):
            node.add(value, ("command line", None, None))
        else:
            node[last] = value
            node.item_locs[last] = ("command line", None, None)
    elif isinstance(node, LocDict):
        node[last] = located(value, "command line")
        node.key_locs[last] = node.value_locs[last] = ("command line", None, None)
    else:
        raise ManifestError(f"--set {path_text}: not inside a mapping", "command line")


def _split_path(text: str) -> list[str | int]:
    parts: list[str | int] = []
    for piece in text.split("."):
        name, _, rest = piece.partition("[")
        if name:
            parts.append(name)
        while rest:
            index, _, rest = rest.partition("]")
            if not index.isdigit():
                raise ManifestError(f"--set {text}: bad index [{index}]", "command line")
            parts.append(int(index))
            rest = rest.removeprefix("[")
    return parts


# --- validation -------------------------------------------------------------------------


_VALIDATOR: Any = None


def validator() -> Any:
    """The schema's validator, made once (jsonschema costs ~100 ms to import)."""
    global _VALIDATOR
    if _VALIDATOR is None:
        import jsonschema

        from pflask.load import schema

        kind = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})
        _VALIDATOR = kind(schema.load())
    return _VALIDATOR


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    """`pattern` as JSON Schema (ECMA-262) means it: `$` ends the string.

    Python's `$` also matches before a final newline, so `hostname: "box\\n"`
    would pass `^[A-Za-z0-9.-]+$`; an anchored match must reach the end.
    """
    if not isinstance(instance, str):
        return
    import re

    import jsonschema

    match = re.search(pattern, instance)
    if match is None or (pattern.endswith("$") and match.end() != len(instance)):
        yield jsonschema.ValidationError(f"does not match {pattern!r}")


def check(data: LocDict, text: bool = False, found: list[ManifestError] | None = None) -> None:
    """Validate against the schema, then the rules a schema cannot say.

    `text`: the data came from manifest files, which are Unicode text, so a
    surrogate in a string is an error; the original flags' arguments are
    bytes, where a surrogate stands for a byte that is not UTF-8 (PEP 383).
    `found`: errors already found while loading (unset variables), reported
    with these; an error about a value left Unset is theirs, and dropped.
    The rules run only on a document the schema accepted (they rely on its
    shapes), Unset strings included.
    """
    errors = _unrepresentable(data, text)
    if not errors:
        errors = _one_per_field(data, validator().iter_errors(data))
    if not errors:
        from pflask.load import semantics

        errors = semantics.check(data)
    report([*(found or ()), *(e for e in errors if not _about_unset(data, e))])


def report(errors: list[ManifestError]) -> None:
    """Raise `errors`, if any: in file order, at most MAX_ERRORS and a count of the rest."""
    if not errors:
        return
    errors = sorted(errors, key=lambda e: (e.file or "", e.line or 0, e.column or 0))
    if len(errors) > MAX_ERRORS:
        more = ManifestError(f"and {len(errors) - MAX_ERRORS} more errors", errors[0].file)
        errors = [*errors[:MAX_ERRORS], more]
    if len(errors) == 1:
        raise errors[0]
    raise ManifestErrors(errors)


def _about_unset(data: Any, error: ManifestError) -> bool:
    """Whether the value `error` judges is, or lies in, an Unset string."""
    node = data
    for part in error.path or ():
        in_dict = isinstance(node, dict) and isinstance(part, str) and part in node
        if not in_dict and not (isinstance(node, list) and isinstance(part, int)):
            return False
        if isinstance(part, int) and part >= len(node):
            return False
        node = node[part]
        if isinstance(node, Unset):
            return True
    return False


def _unrepresentable(data: Any, text: bool) -> list[ManifestError]:
    """Strings and keys holding a NUL or a lone surrogate, numbers that are not finite.

    No path, name or argument can hold a NUL: checked on the whole document,
    whatever the schema says of a field, a "\\0" escape never reaches a
    system call as a silently shortened string.  JSON's "\\ud800" is a
    string no UTF-8 encoder takes (it would fail at run time, in the
    container).  NaN passes every `minimum` and `maximum` (each comparison
    is false), so it is refused here.
    """
    import math

    errors = []
    pending: list[tuple[Any, Path]] = [(data, ())]
    while pending:
        value, path = pending.pop()
        if isinstance(value, dict):
            key_locs = getattr(value, "key_locs", {})
            for key, item in value.items():
                problem = _bad_text(key, text) if isinstance(key, str) else None
                if problem:
                    message = f"the name holds {problem}"
                    place = key_locs.get(key)
                    errors.append(error_at(data, (*path, key), message, place, value=False))
                pending.append((item, (*path, key)))
        elif isinstance(value, list):
            pending.extend((item, (*path, index)) for index, item in enumerate(value))
        elif isinstance(value, str) and (problem := _bad_text(value, text)):
            errors.append(error_at(data, path, f"holds {problem}"))
        elif isinstance(value, float) and not math.isfinite(value):
            errors.append(error_at(data, path, f"{value} is not a finite number"))
    return errors


def _bad_text(value: str, text: bool) -> str | None:
    if "\0" in value:
        return "a NUL character"
    if text and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            return f"a lone surrogate ({e.object[e.start]!a}): not Unicode text"
    return None


def _one_per_field(data: LocDict, schema_errors: Iterator[Any]) -> list[ManifestError]:
    """One error for each field: a megabyte-long hostname is too long, and
    saying that its characters are also wrong adds nothing."""
    chosen: dict[Path, Any] = {}
    for error in schema_errors:
        path: Path = tuple(error.absolute_path)
        if path not in chosen or error.validator == "maxLength":
            chosen[path] = error
    return [_explain(data, e) for e in chosen.values()]


def _explain(data: LocDict, error: Any) -> ManifestError:
    """A schema error as a sentence with a place, and a suggestion when we can."""
    path: Path = tuple(error.absolute_path)
    validator_name = error.validator
    value = error.instance
    schema = error.schema
    if validator_name == "additionalProperties" and isinstance(value, dict):
        allowed = list(schema.get("properties", {}))
        extra = [k for k in value if k not in allowed]
        key = extra[0] if extra else "?"
        node = _node_at(data, path)
        loc = node.key_locs.get(key) if isinstance(node, LocDict) else None
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        message = f"unknown field{_suggest(key, allowed)}{more}"
        return error_at(data, (*path, key), message, loc, value=False)
    if validator_name == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "?"
        return error_at(data, (*path, missing), "required field is missing", locate(data, path))
    if validator_name == "enum":
        choices = [str(c) for c in error.validator_value]
        hint = _suggest(str(value), choices)
        return error_at(data, path, f"{shown(value)} is not one of {', '.join(choices)}{hint}")
    if validator_name == "const":
        return error_at(data, path, f"must be {error.validator_value!r}")
    if validator_name == "type":
        return error_at(
            data, path, f"must be {_article(error.validator_value)}, not {_kind(value)}"
        )
    if validator_name == "pattern":
        if error.validator_value == "^/":
            return error_at(
                data, path, f"must be an absolute path inside the container, not {shown(value)}"
            )
        description = schema.get("description") or f"the pattern {error.validator_value}"
        return error_at(data, path, f"{shown(value)} is not valid: {description}")
    if validator_name in ("oneOf", "anyOf"):
        return _explain_alternatives(data, path, error)
    if validator_name in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        words = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
        return error_at(data, path, f"must be {words[validator_name]} {error.validator_value}")
    if validator_name in ("minItems", "minLength"):
        return error_at(data, path, "must not be empty")
    if validator_name == "maxLength":
        limit = error.validator_value
        return error_at(data, path, f"longer than {limit} characters ({len(value)})")
    if validator_name == "maxItems":
        return error_at(data, path, f"more than {error.validator_value} items ({len(value)})")
    message = error.message
    if len(message) > 2 * SHOWN:  # jsonschema's messages quote the whole value
        message = f"{shown(value)} is not valid ({validator_name})"
    return error_at(data, path, message)


def _explain_alternatives(data: LocDict, path: Path, error: Any) -> ManifestError:
    kinds = []
    for sub in error.context:
        if sub.validator == "type" and not sub.relative_path:
            kinds.append(_article(sub.validator_value))
        elif sub.validator == "const" and not sub.relative_path:
            kinds.append(repr(sub.validator_value))
    deeper = [
        sub for sub in error.context if sub.relative_path or sub.validator not in ("type", "const")
    ]
    if deeper:
        best = max(deeper, key=lambda s: len(s.relative_path))
        return _explain(data, best)
    described = error.schema.get("description")
    choices = " or ".join(dict.fromkeys(kinds)) or "another value"
    tail = f" ({described})" if described else ""
    return error_at(data, path, f"must be {choices}, not {_kind(error.instance)}{tail}")


def _node_at(data: Any, path: Path) -> Any:
    node = data
    for part in path:
        node = node[part]
    return node


def _article(kind: Any) -> str:
    names = {
        "string": "a string",
        "integer": "an integer",
        "number": "a number",
        "boolean": "true or false",
        "array": "a list",
        "object": "a mapping",
        "null": "null",
    }
    if isinstance(kind, list):
        return " or ".join(names.get(str(k), str(k)) for k in kind)
    return names.get(kind, str(kind))


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    return shown(value)


def _suggest(word: str, choices: list[str]) -> str:
    import difflib

    if len(word) > 2 * SHOWN:
        return ""  # no field name is this long, and difflib's time grows with it
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def iter_files(paths: list[str]) -> Iterator[str]:
    """Manifest files named directly or found in directories."""
    for path in paths:
        if os.path.isdir(path):
            for entry in sorted(os.listdir(path)):
                if entry.endswith(SUFFIXES):
                    yield os.path.join(path, entry)
        else:
            yield path


# --- writing -------------------------------------------------------------------------


def plain(data: Any) -> Any:
    """Plain dicts and lists, for the YAML and TOML writers."""
    if isinstance(data, dict):
        return {k: plain(v) for k, v in data.items()}
    if isinstance(data, list):
        return [plain(v) for v in data]
    return data


def dump(data: dict[str, Any], fmt: str) -> str:
    """A manifest mapping as YAML or TOML text."""
    if fmt == "toml":
        import tomli_w

        return tomli_w.dumps(data)
    import yaml

    text: str = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return text


def rebase(data: LocDict, old_dir: str, new_dir: str) -> None:
    """Rewrite relative host paths (and extends) for a file that moves directories."""

    def move(value: Any) -> Any:
        if (
            not isinstance(value, str)
            or os.path.isabs(value)
            or "$" in value
            or value.startswith("~")
        ):
            return value
        return os.path.relpath(os.path.join(old_dir, value), new_dir)

    extends = data.get("extends")
    if isinstance(extends, list):
        data["extends"] = [move(e) for e in extends]
    elif extends is not None:
        data["extends"] = move(extends)
    root = data.get("root")
    if isinstance(root, dict) and "path" in root:
        root["path"] = move(root["path"])
    if isinstance(root, dict) and "upper" in root:
        root["upper"] = move(root["upper"])
    if isinstance(root, dict) and isinstance(root.get("image"), str):
        from pflask.load import imageref

        root["image"] = imageref.with_path(root["image"], move)
    security = data.get("security")
    if isinstance(security, dict) and security.get("seccomp") not in (None, *SECCOMP_WORDS):
        security["seccomp"] = move(security["seccomp"])
    for mount in data.get("mounts", []) if isinstance(data.get("mounts"), list) else []:
        if not isinstance(mount, dict):
            continue
        for key in (*_HOST_PATH_FIELDS, "lower"):
            if isinstance(mount.get(key), list):
                mount[key] = [move(v) for v in mount[key]]
            elif key in mount:
                mount[key] = move(mount[key])
