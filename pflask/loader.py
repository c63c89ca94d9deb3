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
"""

from __future__ import annotations

import itertools
import os

from pflask.errors import ManifestError, ManifestErrors

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping
    from typing import Any

    Loc = tuple[str, int | None, int | None]
    Path = tuple[str | int, ...]

SUFFIXES = (".yaml", ".yml", ".toml", ".json")


class LocDict(dict):  # type: ignore[type-arg]
    """A mapping that remembers where it and each of its keys came from."""

    def __init__(self, loc: Loc) -> None:
        super().__init__()
        self.loc = loc
        self.key_locs: dict[str, Loc] = {}
        self.value_locs: dict[str, Loc] = {}


class LocList(list):  # type: ignore[type-arg]
    """A list that remembers where it and each of its items came from."""

    def __init__(self, loc: Loc) -> None:
        super().__init__()
        self.loc = loc
        self.item_locs: list[Loc] = []


class Loaded:
    """A loaded manifest and what it depended on."""

    def __init__(self, data: LocDict, files: list[str], env_used: dict[str, str | None]) -> None:
        self.data = data
        self.files = files
        self.env_used = env_used

    def error(self, path: Path, message: str) -> ManifestError:
        """An error placed at the value a field path points to."""
        return error_at(self.data, path, message)


def field_name(path: Path) -> str:
    """`mounts[2].target`, the way users read a field path."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
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


def error_at(data: Any, path: Path, message: str, loc: Loc | None = None) -> ManifestError:
    file, line, column = loc or locate(data, path) or ("<manifest>", None, None)
    return ManifestError(message, file, line, column, field_name(path) or None)


# --- parsing ----------------------------------------------------------------------


def parse(text: str, file: str) -> LocDict:
    """Parse one manifest document by its file name's extension."""
    suffix = os.path.splitext(file)[1].lower()
    if suffix in (".yaml", ".yml"):
        data = _parse_yaml(text, file)
    elif suffix == ".toml":
        data = _parse_toml(text, file)
    elif suffix == ".json":
        data = _parse_json(text, file)
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


def _parse_yaml(text: str, file: str) -> Any:
    import yaml

    loader_class = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ManifestError("the manifest is empty", file)
        return _from_node(loader, node, file)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "invalid YAML"
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        raise ManifestError(f"YAML syntax error: {problem}", file, line, column) from None
    except yaml.YAMLError as e:
        raise ManifestError(f"YAML syntax error: {e}", file) from None
    finally:
        loader.dispose()


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
                raise ManifestError(f"keys must be strings, not {key!r}", *key_loc)
            if key in result:
                raise ManifestError(f"duplicate key {key!r}", *key_loc)
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
            items.append(_from_node(loader, item_node, file))
            items.item_locs.append(
                (file, item_node.start_mark.line + 1, item_node.start_mark.column + 1)
            )
        return items
    return loader.construct_object(node, deep=True)


def _parse_toml(text: str, file: str) -> Any:
    import tomllib

    try:
        return located(tomllib.loads(text), file)
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"TOML syntax error: {e}", file) from None


def _parse_json(text: str, file: str) -> Any:
    import json

    try:
        return located(json.loads(text), file)
    except json.JSONDecodeError as e:
        raise ManifestError(f"JSON syntax error: {e.msg}", file, e.lineno, e.colno) from None


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
            items.append(located(item, file))
            items.item_locs.append(loc)
        return items
    return value


# --- ${VAR} -----------------------------------------------------------------------


def interpolate(
    data: Any, env: Mapping[str, str], used: dict[str, str | None], path: Path = ()
) -> Any:
    """Expand `${VAR}` and `${VAR:-default}` in string values; `$$` is `$`."""
    if isinstance(data, LocDict):
        for key in data:
            data[key] = interpolate(data[key], env, used, (*path, key))
        return data
    if isinstance(data, LocList):
        for index, item in enumerate(data):
            data[index] = interpolate(item, env, used, (*path, index))
        return data
    if isinstance(data, str) and "$" in data:
        try:
            return expand(data, env, used)
        except KeyError as e:
            raise _Unresolved(path, str(e.args[0])) from None
    return data


class _Unresolved(Exception):
    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        self.message = message


def expand(text: str, env: Mapping[str, str], used: dict[str, str | None]) -> str:
    """One string's `${...}` expansion; raises KeyError with a message."""
    out: list[str] = []
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
                raise KeyError(f"unterminated '${{' in {text!r} (write $$ for a literal $)")
            out.append(_lookup(text[i + 2 : end], env, used))
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
        raise KeyError(f"bad variable reference '${{{expression}}}'")
    value = env.get(name)
    used[name] = value
    if value is not None and not (sep and value == ""):
        return value
    if sep:
        return default
    raise KeyError(f"variable {name} is not set (write ${{{name}:-default}} for a default)")


# --- relative paths -------------------------------------------------------------------

# Fields holding host paths, which are relative to the manifest that holds them.
_HOST_PATH_FIELDS = ("source", "upper", "work")


# `security.seccomp` values that are not a profile file's path.
SECCOMP_WORDS = ("default", "unconfined")


def absolutize(data: LocDict, base: str) -> None:
    """Make host paths absolute against the directory of their manifest."""

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value:
            return os.path.normpath(os.path.join(base, os.path.expanduser(value)))
        return value

    root = data.get("root")
    if isinstance(root, LocDict) and "path" in root:
        root["path"] = fix(root["path"])
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
    data = _load_tree(os.path.abspath(file), env, used, files, ())
    data.pop("extends", None)
    data.key_locs.pop("extends", None)
    if "name" not in data:
        data["name"] = default_name(file)
        data.key_locs["name"] = data.value_locs["name"] = data.loc
    for override in overrides:
        apply_override(data, override)
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
        check(loaded.data)
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
) -> LocDict:
    real = os.path.realpath(file)
    if real in stack:
        chain = " -> ".join((*stack, real))
        raise ManifestError(f"extends cycle: {chain}", file)
    try:
        with open(file, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ManifestError(f"cannot read manifest: {e.strerror}", file) from None
    except UnicodeDecodeError:
        raise ManifestError("the manifest is not UTF-8 text", file) from None
    files.append(real)
    data = parse(text, file)
    try:
        interpolate(data, env, used)
    except _Unresolved as e:
        raise error_at(data, e.path, e.message) from None
    if data.get("version") != 1:
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
        path = os.path.join(base_dir, os.path.expanduser(base))
        if not os.path.exists(path):
            where: Path = ("extends",) if isinstance(bases, str) else ("extends", index)
            raise error_at(data, where, f"no such file: {path}")
        loaded = _load_tree(path, env, used, files, (*stack, real))
        loaded.pop("name", None)
        loaded.pop("extends", None)
        merged = loaded if merged is None else merge(merged, loaded)
    if merged is None:
        return data
    result: LocDict = merge(merged, data)
    return result


def apply_override(data: LocDict, override: str) -> None:
    """`--set PATH=VALUE`: PATH is dotted (`root.ephemeral`, `mounts[0].readonly`)."""
    import yaml

    path_text, sep, value_text = override.partition("=")
    if not sep or not path_text:
        raise ManifestError(f"--set {override!r}: expected PATH=VALUE", "command line")
    try:
        value = yaml.safe_load(value_text) if value_text else ""
    except yaml.YAMLError:
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
            node.append(value)
            node.item_locs.append(("command line", None, None))
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

        from pflask import schema

        _VALIDATOR = jsonschema.Draft202012Validator(schema.load())
    return _VALIDATOR


def check(data: LocDict) -> None:
    """Validate against the schema, then the rules a schema cannot say."""
    errors = [_explain(data, e) for e in validator().iter_errors(data)]
    if not errors:
        from pflask import semantics

        errors = semantics.check(data)
    if errors:
        errors.sort(key=lambda e: (e.file or "", e.line or 0, e.column or 0))
        if len(errors) == 1:
            raise errors[0]
        raise ManifestErrors(errors)


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
        return error_at(data, (*path, key), message, loc)
    if validator_name == "required":
        missing = error.message.split("'")[1] if "'" in error.message else "?"
        return error_at(data, (*path, missing), "required field is missing", locate(data, path))
    if validator_name == "enum":
        choices = [str(c) for c in error.validator_value]
        hint = _suggest(str(value), choices)
        return error_at(data, path, f"{value!r} is not one of {', '.join(choices)}{hint}")
    if validator_name == "const":
        return error_at(data, path, f"must be {error.validator_value!r}")
    if validator_name == "type":
        return error_at(
            data, path, f"must be {_article(error.validator_value)}, not {_kind(value)}"
        )
    if validator_name == "pattern":
        if error.validator_value == "^/":
            return error_at(
                data, path, f"must be an absolute path inside the container, not {value!r}"
            )
        description = schema.get("description") or f"the pattern {error.validator_value}"
        return error_at(data, path, f"{value!r} is not valid: {description}")
    if validator_name in ("oneOf", "anyOf"):
        return _explain_alternatives(data, path, error)
    if validator_name in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        words = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
        return error_at(data, path, f"must be {words[validator_name]} {error.validator_value}")
    if validator_name in ("minItems", "minLength"):
        return error_at(data, path, "must not be empty")
    return error_at(data, path, error.message)


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
    return repr(value)


def _suggest(word: str, choices: list[str]) -> str:
    import difflib

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
