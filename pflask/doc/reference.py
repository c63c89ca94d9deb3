"""The manifest reference, written from the JSON Schema: Markdown for the
README, roff for the pflask.yaml(5) man page (pflask.doc.manpage).  A field's
`default` keyword is printed after its description (the schema states a
default once: not in the description too).

The README's reference section and the man page are this module's output
(tests keep them equal), so the schema stays the single source of truth for
every field.
"""

from __future__ import annotations

import json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from typing import Any

    Literal = Callable[[str], str]
    """How a format marks a literal value (a field name, an enum value)."""


class Row:
    """One field of the reference: its dotted path, type and meaning."""

    __slots__ = ("description", "field", "required", "type")

    def __init__(self, field: str, required: bool, type: str, description: str) -> None:
        self.field = field
        self.required = required
        self.type = type
        self.description = description


class Table:
    """A titled group of rows: the top-level fields, or one mount or
    interface type (`kind`, with the type's own description as `intro`)."""

    __slots__ = ("intro", "kind", "rows", "title")

    def __init__(self, title: str, kind: str, intro: str, rows: list[Row]) -> None:
        self.title = title
        self.kind = kind
        self.intro = intro
        self.rows = rows


def _type(node: dict[str, Any], literal: Literal, either: str) -> str:
    if "$ref" in node:
        return str(node["$ref"]).rsplit("/", 1)[-1].replace("_", " ")
    if "const" in node:
        return literal(f"{node['const']!r}".replace("'", '"'))
    if "enum" in node:
        return either.join(literal(str(v)) for v in node["enum"])
    for key in ("oneOf", "anyOf"):
        if key in node:
            return " or ".join(dict.fromkeys(_type(n, literal, either) for n in node[key]))
    kind = node.get("type", "")
    if kind == "array":
        return f"list of {_type(node.get('items', {}), literal, either)}"
    if kind == "string" and node.get("pattern") == "^/":
        return "absolute path"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of {_type(node['additionalProperties'], literal, either)}"
    return {"boolean": "bool", "integer": "int", "number": "number"}.get(kind, kind or "any")


def _rows(prefix: str, node: dict[str, Any], literal: Literal, either: str) -> Iterator[Row]:
    required = set(node.get("required", ()))
    properties = node.get("properties", {})
    children = list(properties.values())
    if len(children) > 3 and all(child == children[0] for child in children):
        # Many fields of one shape (the rlimits): one row names them all.
        names = ",".join(properties)
        yield Row(
            f"{prefix}{{{names}}}",
            False,
            _type(children[0], literal, either),
            children[0].get("description", ""),
        )
        return
    for name, child in properties.items():
        if name == "$schema":
            continue
        field = f"{prefix}{name}"
        description = child.get("description", "")
        if "default" in child:
            description += f" Default: {literal(json.dumps(child['default']))}."
        yield Row(field, name in required, _type(child, literal, either), description)
        if child.get("type") == "object" and "properties" in child:
            yield from _rows(f"{field}.", child, literal, either)
        items = child.get("items", {})
        if child.get("type") == "array" and items.get("type") == "object" and "properties" in items:
            yield from _rows(f"{field}[].", items, literal, either)


def tables(schema: dict[str, Any], literal: Literal, either: str) -> list[Table]:
    """The top-level fields, then each mount and interface type, in schema order."""
    defs = schema.get("$defs", {})
    out = [Table("", "", "", list(_rows("", schema, literal, either)))]
    for group, title in (("mount_", "mounts[]"), ("interface_", "network.interfaces[]")):
        for name, node in defs.items():
            if not name.startswith(group):
                continue
            kind = node["properties"]["type"]["const"]
            own = {k: v for k, v in node["properties"].items() if k != "type"}
            rows = list(_rows("", {**node, "properties": own}, literal, either))
            out.append(Table(title, kind, node.get("description", ""), rows))
    return out


def markdown(schema: dict[str, Any]) -> str:
    """Tables: top-level fields, then each mount and interface type."""
    out: list[str] = []
    for table in tables(schema, lambda text: f"`{text}`", " \\| "):
        if table.kind:
            out += ["", f"**{table.title} with `type: {table.kind}`**: {table.intro}", ""]
        out += ["| field | type | meaning |", "|---|---|---|"]
        for row in table.rows:
            mark = " (required)" if row.required else ""
            out.append(f"| `{row.field}`{mark} | {row.type} | {row.description} |")
    return "\n".join(out) + "\n"
