"""The manifest reference in Markdown, written from the JSON Schema.

The README's reference section is this function's output (a test keeps them
equal), so the schema stays the single source of truth for every field.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def _type(node: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in node:
        return str(node["$ref"]).rsplit("/", 1)[-1].replace("_", " ")
    if "const" in node:
        return f"`{node['const']!r}`".replace("'", '"')
    if "enum" in node:
        return " \\| ".join(f"`{v}`" for v in node["enum"])
    for key in ("oneOf", "anyOf"):
        if key in node:
            return " or ".join(dict.fromkeys(_type(n, defs) for n in node[key]))
    kind = node.get("type", "")
    if kind == "array":
        return f"list of {_type(node.get('items', {}), defs)}"
    if kind == "string" and node.get("pattern") == "^/":
        return "absolute path"
    if kind == "object" and isinstance(node.get("additionalProperties"), dict):
        return f"map of {_type(node['additionalProperties'], defs)}"
    return {"boolean": "bool", "integer": "int", "number": "number"}.get(kind, kind or "any")


def _rows(prefix: str, node: dict[str, Any], defs: dict[str, Any], out: list[str]) -> None:
    required = set(node.get("required", ()))
    properties = node.get("properties", {})
    children = list(properties.values())
    if len(children) > 3 and all(child == children[0] for child in children):
        # Many fields of one shape (the rlimits): one row names them all.
        names = ",".join(properties)
        out.append(
            f"| `{prefix}{{{names}}}` | {_type(children[0], defs)} | "
            f"{children[0].get('description', '')} |"
        )
        return
    for name, child in properties.items():
        if name == "$schema":
            continue
        field = f"{prefix}{name}"
        mark = " (required)" if name in required else ""
        description = child.get("description", "")
        out.append(f"| `{field}`{mark} | {_type(child, defs)} | {description} |")
        if child.get("type") == "object" and "properties" in child:
            _rows(f"{field}.", child, defs, out)
        items = child.get("items", {})
        if child.get("type") == "array" and items.get("type") == "object" and "properties" in items:
            _rows(f"{field}[].", items, defs, out)


def markdown(schema: dict[str, Any]) -> str:
    """Tables: top-level fields, then each mount and interface type."""
    defs = schema.get("$defs", {})
    out = ["| field | type | meaning |", "|---|---|---|"]
    _rows("", schema, defs, out)
    for group, title in (("mount_", "mounts[]"), ("interface_", "network.interfaces[]")):
        for name, node in defs.items():
            if not name.startswith(group):
                continue
            kind = node["properties"]["type"]["const"]
            out += ["", f"**{title} with `type: {kind}`**: {node.get('description', '')}", ""]
            out += ["| field | type | meaning |", "|---|---|---|"]
            _rows(
                "",
                {
                    **node,
                    "properties": {k: v for k, v in node["properties"].items() if k != "type"},
                },
                defs,
                out,
            )
    return "\n".join(out) + "\n"
