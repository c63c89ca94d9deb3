"""Fuzzing the manifest front end: whatever a manifest holds, `validate` and
`plan` end with a status and one-line messages, never a traceback.

Three sources of documents: manifests the schema accepts (drawn from the
schema itself by hypothesis-jsonschema, so a new field is fuzzed as soon as
it is in the schema), manifests whose fields hold arbitrary values (every
error message's path), and arbitrary YAML-ish text (the parser and the limits
in front of it).  Each is written as YAML, JSON or TOML and run through
`pflask.cli.main`, the very function the console script calls, in this
process (a subprocess per example would leave time for a few dozen).

The seed is fixed (`derandomize`), so CI runs the same examples each time,
and the example counts keep all three within about 20 s here; set
PFLASK_FUZZ_SCALE=10 (say) for a longer local run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from pflask import cli
from pflask.load import schema

SCALE = float(os.environ.get("PFLASK_FUZZ_SCALE", "1"))


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)),
        derandomize=True,  # a fixed seed: the same examples in every run
        database=None,  # nothing written to .hypothesis/
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )


def _schema_manifests() -> st.SearchStrategy[dict[str, Any]]:
    """Manifests the schema accepts, one optional top-level field at a time
    (drawing from the whole schema at once is several times slower)."""
    document = schema.load()
    defs = document["$defs"]
    fields = {
        name: from_schema({**sub, "$defs": defs})
        for name, sub in document["properties"].items()
        if name != "version"
    }
    return st.fixed_dictionaries({"version": st.just(1)}, optional=fields)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["/", "/a", "unlimited", "tmp", "bind", "64M", "0", "veth", "${HOME}"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _mutated_manifests() -> st.SearchStrategy[dict[str, Any]]:
    """Each top-level field holding anything at all, or a real one's shape
    with arbitrary values (`mounts: [{type: tmp, size: ...}]`)."""
    names = [n for n in schema.load()["properties"] if n != "version"]
    shaped = st.dictionaries(
        st.sampled_from(["type", "source", "target", "size", "lower", "name", "soft", "hard"]),
        JSON_VALUES,
        max_size=4,
    )
    value = JSON_VALUES | shaped | st.lists(shaped, max_size=3)
    return st.dictionaries(st.sampled_from(names), value, min_size=1, max_size=6).map(
        lambda fields: {"version": 1, **fields}
    )


def _write(directory: Path, document: Any, fmt: str) -> Path | None:
    """The document as a file of `fmt`, or None when the format cannot say it."""
    path = directory / f"fuzz.{fmt}"
    try:
        if fmt == "json":
            text = json.dumps(document)
        elif fmt == "toml":
            text = tomli_w.dumps(document)
        else:
            text = yaml.safe_dump(document, allow_unicode=True)
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    except (TypeError, ValueError, UnicodeError):
        return None  # null in TOML, surrogates in UTF-8
    return path


def _main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """pflask's entry point: a status and its stderr lines, or the exception it let out."""
    status = cli.main(args)
    captured = capsys.readouterr()
    return status, captured.err.splitlines()


def _check(path: Path, capsys: pytest.CaptureFixture[str], env: dict[str, str]) -> None:
    for command in (["validate", str(path)], ["plan", str(path), "--", "/bin/sh"]):
        status, lines = _main(command, capsys)
        assert status in (0, 2), (command, status, lines)
        assert (status == 0) == (not lines), (command, status, lines)
        for line in lines:
            assert line.startswith("pflask: "), line
            assert "Traceback" not in line and len(line) < 1000, line


@pytest.fixture
def fuzz_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A known environment for `${VAR}` and a cache that is not the user's."""
    env = {"HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / "cache"), "V": "x"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


FORMATS = st.sampled_from(["yaml", "json", "toml"])


@pytest.mark.timeout(60)
def test_manifests_the_schema_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fuzz_env: dict[str, str]
) -> None:
    @fuzz_settings(60)
    @given(_schema_manifests(), FORMATS)
    def run(document: dict[str, Any], fmt: str) -> None:
        path = _write(tmp_path, document, fmt)
        if path is not None:
            _check(path, capsys, fuzz_env)

    run()


@pytest.mark.timeout(60)
def test_manifests_with_arbitrary_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fuzz_env: dict[str, str]
) -> None:
    @fuzz_settings(500)
    @given(_mutated_manifests(), FORMATS)
    def run(document: dict[str, Any], fmt: str) -> None:
        path = _write(tmp_path, document, fmt)
        if path is not None:
            _check(path, capsys, fuzz_env)

    run()


YAML_ALPHABET = "version: 1\n-[]{},&*!|>'\"#<.?%@`$~ \tabcmx0129\\"


@pytest.mark.timeout(60)
def test_arbitrary_yaml_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fuzz_env: dict[str, str]
) -> None:
    @fuzz_settings(400)
    @given(st.text(YAML_ALPHABET, max_size=200))
    def run(text: str) -> None:
        path = tmp_path / "text.yaml"
        path.write_text("version: 1\n" + text)
        _check(path, capsys, fuzz_env)

    run()
