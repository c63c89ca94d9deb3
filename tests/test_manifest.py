"""The schema and the typed records describe one manifest.

The records in pflask.load.manifest hold the defaults the code uses; the schema's
`default` keywords are what editors and the reference (README, pflask.yaml(5))
show.  These tests keep them one: every schema property has a record field and
every record field a schema property, and a property set to its schema default
builds the same Manifest as the property left out.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest

from pflask.compile import compiler
from pflask.load import manifest, schema
from pflask.record import Record

SCHEMA: dict[str, Any] = schema.load()
DEFS: dict[str, Any] = SCHEMA["$defs"]

LOADER_ONLY = {"$schema", "version", "extends"}
"""Top-level properties the loader consumes; no record holds them."""

RECORD_ONLY = {
    manifest.Manifest: {"source", "oci"},
    manifest.Root: {"layers", "digest", "store", "disk"},
}
"""Record fields no schema property fills (where the manifest came from; what
the pipeline resolved an image to; what only an OCI bundle's config.json
says, pflask.load.oci)."""

FLATTENED = {
    "env": {"clear": "env_clear", "keep": "env_keep", "set": "env_set"},
    "idmap": {"uid": "uid_map", "gid": "gid_map"},
    "network": {"interfaces": "interfaces"},
    "stop": {"signal": "stop_signal", "timeout": "stop_timeout"},
}
"""Objects of the schema whose properties are fields of Manifest itself."""

RENAMED = {
    "address": "addresses",
    "gateway": "gateways",
    "host_address": "host_addresses",
    **{flag: "flags" for flag in manifest.MOUNT_FLAGS},
}
"""Properties whose record field has another name (lists are plural; the mount
flags are one tuple)."""

NESTED: dict[str, type[Record]] = {
    "root": manifest.Root,
    "namespaces": manifest.Namespaces,
    "cgroup": manifest.CgroupSpec,
    "security": manifest.Security,
}

MOUNTS = {
    "mount_bind": manifest.BindMount,
    "mount_tmp": manifest.TmpMount,
    "mount_overlay": manifest.OverlayMount,
    "mount_aufs": manifest.AufsMount,
    "mount_loop": manifest.LoopMount,
}


def fields(properties: dict[str, Any]) -> set[str]:
    """The record fields these schema properties fill (`type` selects the record)."""
    return {RENAMED.get(name, name) for name in properties if name != "type"}


def test_manifest_fields_are_the_top_level_properties() -> None:
    names: set[str] = set()
    for name, node in SCHEMA["properties"].items():
        if name in LOADER_ONLY:
            continue
        if name in FLATTENED:
            assert set(node["properties"]) == set(FLATTENED[name]), name
            names |= set(FLATTENED[name].values())
        else:
            names.add(name)
    assert names == set(manifest.Manifest._fields) - RECORD_ONLY[manifest.Manifest]


@pytest.mark.parametrize("name", sorted(NESTED))
def test_nested_records_have_the_schema_properties(name: str) -> None:
    record = NESTED[name]
    expected = set(record._fields) - RECORD_ONLY.get(record, set())
    assert fields(SCHEMA["properties"][name]["properties"]) == expected


def test_id_ranges_have_the_schema_properties() -> None:
    for kind in ("uid", "gid"):
        items = SCHEMA["properties"]["idmap"]["properties"][kind]["items"]
        assert fields(items["properties"]) == set(manifest.IdRange._fields)


@pytest.mark.parametrize("name", sorted(MOUNTS))
def test_mount_records_have_the_schema_properties(name: str) -> None:
    assert fields(DEFS[name]["properties"]) == set(MOUNTS[name]._fields)
    assert {f"mount_{kind}" for kind in DEFS["mount"]["properties"]["type"]["enum"]} == set(MOUNTS)


def test_interface_record_has_every_interface_property() -> None:
    kinds = DEFS["interface"]["properties"]["type"]["enum"]
    union = set().union(*(fields(DEFS[f"interface_{kind}"]["properties"]) for kind in kinds))
    assert union | {"type"} == set(manifest.Interface._fields)


# --- defaults ---------------------------------------------------------------------


def placeholder(node: dict[str, Any]) -> Any:
    """Some value of a required property's type (from_data does not validate)."""
    kinds = [node.get("type")] + [n.get("type") for n in node.get("oneOf", ())]
    if "const" in node:
        return node["const"]
    return 1 if "integer" in kinds else "/x"


def minimal(definition: dict[str, Any], common: dict[str, Any]) -> dict[str, Any]:
    """An entry of a mount or interface definition with its required properties
    only (its own and those `common` to its kind)."""
    properties = definition["properties"]
    required = dict.fromkeys([*common["required"], *definition["required"]])
    return {name: placeholder(properties[name]) for name in required}


def with_defaults() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(field, manifest without it, the same manifest with it at its schema default)
    for every schema property that states a default."""
    base: dict[str, Any] = {"name": "box"}

    def walk(
        node: dict[str, Any], where: list[str | int], data: dict[str, Any], field: str
    ) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
        for name, child in node.get("properties", {}).items():
            if "default" in child:
                given = copy.deepcopy(data)
                target: Any = given
                for key in where:
                    target = target[key]
                target[name] = child["default"]
                yield f"{field}{name}", data, given
            if child.get("type") == "object":
                inner = copy.deepcopy(data)
                target = inner
                for key in where:
                    target = target[key]
                target[name] = {}
                yield from walk(child, [*where, name], inner, f"{field}{name}.")

    yield from walk(SCHEMA, [], base, "")
    for group, path in (("mount_", ["mounts"]), ("interface_", ["network", "interfaces"])):
        for name, definition in DEFS.items():
            if not name.startswith(group):
                continue
            data = copy.deepcopy(base)
            target: Any = data
            for key in path[:-1]:
                target = target.setdefault(key, {})
            target[path[-1]] = [minimal(definition, DEFS[group.rstrip("_")])]
            yield from walk(definition, [*path, 0], data, f"{name}.")


CASES = list(with_defaults())


def test_the_schema_states_defaults() -> None:
    names = {name for name, _, _ in CASES}
    assert {"stop.timeout", "terminal", "namespaces.mount", "mount_bind.recursive"} <= names
    assert {"interface_macvlan.mode", "interface_ipvlan.mode", "cgroup.pids"} <= names


@pytest.mark.parametrize(("name", "without", "given"), CASES, ids=[c[0] for c in CASES])
def test_a_schema_default_is_the_records_default(
    name: str, without: dict[str, Any], given: dict[str, Any]
) -> None:
    if name == "cgroup.pids":
        # The compiler applies it, only where the host offers the pids controller.
        assert given["cgroup"]["pids"] == compiler.DEFAULT_PIDS
        return
    assert manifest.from_data(given) == manifest.from_data(without)


def test_every_record_default_is_in_the_schema() -> None:
    """A record default that is more than "not given" (None, empty) is a stated one."""
    stated = {name.rsplit(".", 1)[-1] for name, _, _ in CASES}
    for record in (manifest.Manifest, manifest.Root, manifest.Namespaces, manifest.Security):
        for field, default in record._defaults.items():
            if default not in (None, (), "<manifest>") and not isinstance(default, Record):
                assert field.removeprefix("stop_") in stated, (record.__name__, field)
    for record in (*MOUNTS.values(), manifest.Interface):
        for field, default in record._defaults.items():
            if default not in (None, ()):
                assert field in stated, (record.__name__, field)
