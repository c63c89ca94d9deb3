"""The loader: formats, positions, ${VAR}, extends, relative paths, validation errors."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pflask.errors import ManifestError, ManifestErrors
from pflask.load import loader


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def load_error(path: Path, env: dict[str, str] | None = None) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        loader.load(str(path), env=env or {})
    return info.value


def all_errors(path: Path) -> list[str]:
    with pytest.raises((ManifestError, ManifestErrors)) as info:
        loader.load(str(path), env={})
    error = info.value
    return [str(e) for e in error.errors] if isinstance(error, ManifestErrors) else [str(error)]


def test_yaml_loads_with_defaults_and_name_from_the_file(tmp_path: Path) -> None:
    f = write(tmp_path / "devbox.yaml", "version: 1\nhostname: box\n")
    data = loader.load(str(f), env={}).data
    assert data["name"] == "devbox"
    assert data["hostname"] == "box"


def test_yaml_syntax_error_names_file_line_and_column(tmp_path: Path) -> None:
    f = write(tmp_path / "bad.yaml", "version: 1\nmounts: [\n  {type: bind\n")
    error = load_error(f)
    assert error.file == str(f)
    assert error.line is not None and error.line >= 3
    assert "YAML syntax error" in str(error)


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    f = write(tmp_path / "bad.toml", 'version = 1\nhostname = "x\n')
    error = load_error(f)
    assert str(error).startswith(f"{f}: TOML syntax error")


def test_json_syntax_error_has_a_position(tmp_path: Path) -> None:
    f = write(tmp_path / "bad.json", '{"version": 1,\n "hostname": }\n')
    error = load_error(f)
    assert (error.line, error.file) == (2, str(f))


def test_unknown_key_suggests_the_right_one_at_its_line(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", "version: 1\n\nhostnme: box\n")
    error = load_error(f)
    assert str(error) == f"{f}:3:1: hostnme: unknown field (did you mean 'hostname'?)"


def test_nested_unknown_key_has_its_field_path(tmp_path: Path) -> None:
    f = write(
        tmp_path / "m.yaml",
        "version: 1\nmounts:\n  - type: bind\n    source: /a\n    target: /b\n    redonly: true\n",
    )
    assert str(load_error(f)) == (
        f"{f}:6:5: mounts[0].redonly: unknown field (did you mean 'readonly'?)"
    )


def test_wrong_type(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", "version: 1\nroot:\n  path: /r\n  ephemeral: 3\n")
    assert str(load_error(f)) == f"{f}:4:14: root.ephemeral: must be true or false, not 3"


def test_bad_enum_value_suggests(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", "version: 1\nmounts:\n  - {type: bnd, source: /a, target: /b}\n")
    message = str(load_error(f))
    assert message.startswith(f"{f}:3:")
    assert "mounts[0].type: 'bnd' is not one of bind, tmp, overlay, aufs, loop" in message
    assert "(did you mean 'bind'?)" in message


def test_missing_required_field(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", "version: 1\nmounts:\n  - {type: bind, target: /b}\n")
    assert str(load_error(f)) == f"{f}:3:5: mounts[0].source: required field is missing"


def test_missing_version(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", "hostname: x\n")
    assert "version: required field is missing" in str(load_error(f))


def test_relative_container_path_is_refused(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", "version: 1\nmounts:\n  - {type: tmp, target: tmp}\n")
    assert str(load_error(f)) == (
        f"{f}:3:25: mounts[0].target: must be an absolute path inside the container, not 'tmp'"
    )


def test_bad_id_map_is_refused(tmp_path: Path) -> None:
    f = write(
        tmp_path / "m.yaml",
        "version: 1\nidmap:\n  uid:\n    - {inside: 0, outside: 100000, count: 0}\n",
    )
    assert str(load_error(f)).startswith(f"{f}:4:")
    assert "idmap.uid[0].count: must be >= 1" in str(load_error(f))


def test_overlapping_id_ranges_are_refused(tmp_path: Path) -> None:
    f = write(
        tmp_path / "m.yaml",
        "version: 1\nidmap:\n  uid:\n    - {inside: 0, outside: 100000, count: 10}\n"
        "    - {inside: 5, outside: 200000, count: 10}\n",
    )
    assert "idmap.uid[1]: inside range overlaps another uid range" in str(load_error(f))


def test_unknown_capability_is_placed_and_suggested(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", "version: 1\ncapabilities: [-all, +chwon]\n")
    message = str(load_error(f))
    assert message.startswith(f"{f}:2:")
    assert "capabilities[1]" in message and "did you mean 'chown'" in message


def test_every_error_is_reported(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", "version: 1\nhostnme: x\nworkdir: rel\n")
    errors = all_errors(f)
    assert len(errors) == 2
    assert errors[0].startswith(f"{f}:2:1: hostnme")
    assert errors[1].startswith(f"{f}:3:10: workdir")


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", "version: 1\nhostname: a\nhostname: b\n")
    assert str(load_error(f)) == f"{f}:3:1: duplicate key 'hostname'"


def test_unquoted_mode_gets_a_hint(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", "version: 1\nmounts:\n  - {type: tmp, target: /t, mode: 1777}\n")
    message = str(load_error(f))
    assert "mounts[0].mode: must be a string, not 1777" in message


# --- ${VAR} ---------------------------------------------------------------------------


def test_variables_defaults_and_dollar_escape(tmp_path: Path) -> None:
    f = write(
        tmp_path / "m.yaml",
        'version: 1\nhostname: "${HOST}"\nenv:\n  set:\n    A: "${UNSET:-fallback}"\n'
        '    B: "cost $$5 and $HOME"\n',
    )
    loaded = loader.load(str(f), env={"HOST": "box"})
    assert loaded.data["hostname"] == "box"
    assert loaded.data["env"]["set"] == {"A": "fallback", "B": "cost $5 and $HOME"}
    assert loaded.env_used == {"HOST": "box", "UNSET": None}


def test_unset_variable_is_an_error_naming_it(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", 'version: 1\n\nhostname: "${NOPE}"\n')
    assert str(load_error(f)) == (
        f"{f}:3:11: hostname: variable NOPE is not set (write ${{NOPE:-default}} for a default)"
    )


def test_unterminated_reference(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", 'version: 1\nhostname: "${HOST"\n')
    assert "unterminated" in str(load_error(f))


# --- paths and extends -------------------------------------------------------------------


def test_host_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    sub = tmp_path / "sub"
    sub.mkdir()
    f = write(
        sub / "m.yaml",
        "version: 1\nroot: {path: ./rootfs}\nmounts:\n  - {type: bind, source: .., target: /src}\n"
        "  - {type: overlay, lower: [a, /abs], upper: u, work: w, target: /o}\n",
    )
    data = loader.load(str(f), env={}).data
    assert data["root"]["path"] == str(sub / "rootfs")
    assert data["mounts"][0]["source"] == str(tmp_path)
    assert data["mounts"][1]["lower"] == [str(sub / "a"), "/abs"]
    assert (data["mounts"][1]["upper"], data["mounts"][1]["work"]) == (
        str(sub / "u"),
        str(sub / "w"),
    )


def test_extends_merges_deeply_and_appends_lists(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    write(
        tmp_path / "base" / "base.yaml",
        "version: 1\nname: basename\nhostname: base\nenv: {set: {A: '1', B: '2'}}\n"
        "mounts:\n  - {type: bind, source: data, target: /data}\n",
    )
    f = write(
        tmp_path / "child.toml",
        'version = 1\nextends = "base/base.yaml"\nhostname = "child"\n[env.set]\nB = "3"\n'
        '[[mounts]]\ntype = "tmp"\ntarget = "/tmp"\n',
    )
    loaded = loader.load(str(f), env={})
    data = loaded.data
    assert data["name"] == "child"  # a base's name is not inherited
    assert data["hostname"] == "child"
    assert data["env"]["set"] == {"A": "1", "B": "3"}
    assert [m["target"] for m in data["mounts"]] == ["/data", "/tmp"]
    assert data["mounts"][0]["source"] == str(tmp_path / "base" / "data")
    assert loaded.files == [str(f), str(tmp_path / "base" / "base.yaml")]


def test_error_in_a_base_is_reported_in_the_base(tmp_path: Path) -> None:
    base = write(tmp_path / "base.yaml", "version: 1\nmounts:\n  - {type: tmp, target: nope}\n")
    f = write(tmp_path / "child.yaml", "version: 1\nextends: base.yaml\nhostname: c\n")
    assert str(load_error(f)).startswith(f"{base}:3:25: mounts[0].target:")


def test_extends_cycle_is_detected(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", "version: 1\nextends: b.yaml\n")
    b = write(tmp_path / "b.yaml", "version: 1\nextends: [a.yaml]\n")
    message = str(load_error(tmp_path / "a.yaml"))
    assert "extends cycle" in message and message.startswith(str(tmp_path / "a.yaml"))
    assert str(b) in message


def test_extends_missing_file(tmp_path: Path) -> None:
    f = write(tmp_path / "a.yaml", "version: 1\nextends: [nothere.yaml]\n")
    assert str(load_error(f)) == (
        f"{f}:2:11: extends[0]: no such file: {tmp_path / 'nothere.yaml'}"
    )


def test_unknown_extension(tmp_path: Path) -> None:
    f = write(tmp_path / "a.ini", "version=1")
    assert "unknown manifest format '.ini'" in str(load_error(f))


def test_set_overrides_fields(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", "version: 1\nmounts:\n  - {type: tmp, target: /t}\n")
    data = loader.load(
        str(f), env={}, overrides=("hostname=x", "root.path=/r", "mounts[0].size=1M")
    ).data
    assert data["hostname"] == "x"
    assert data["root"]["path"] == "/r"
    assert data["mounts"][0]["size"] == "1M"


def test_set_with_a_bad_value_is_validated(tmp_path: Path) -> None:
    f = write(tmp_path / "m.yaml", "version: 1\n")
    with pytest.raises(ManifestError) as info:
        loader.load(str(f), env={}, overrides=("root.ephemeral=maybe",))
    assert str(info.value) == "command line: root.ephemeral: must be true or false, not 'maybe'"


def test_dump_round_trips_yaml_and_toml(tmp_path: Path) -> None:
    data = {
        "version": 1,
        "hostname": "h",
        "mounts": [{"type": "bind", "source": "/a", "target": "/b", "readonly": True}],
        "env": {"set": {"A": "b"}},
    }
    for fmt in ("yaml", "toml"):
        f = write(tmp_path / f"m.{fmt}", loader.dump(data, fmt))
        assert loader.plain(loader.load(str(f), env={}).data) == {**data, "name": "m"}


def test_examples_are_valid() -> None:
    examples = Path(__file__).resolve().parent.parent / "examples"
    files = sorted(examples.glob("*.yaml")) + sorted(examples.glob("*.toml"))
    assert len(files) >= 6
    for f in files:
        loader.load(str(f), env={k: v for k, v in os.environ.items() if k != "PROJECT"})
