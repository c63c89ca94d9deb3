"""The command line as users meet it: subcommands, classic flags, errors, round trips."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import pflask_cmd, run_pflask

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def one_line_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit 2, a single `pflask:` line on stderr naming what is wrong, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pflask: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.mark.parametrize(
    ("name", "text", "fragments"),
    [
        ("syntax.yaml", "version: 1\nmounts: [\n", ["syntax.yaml:", "YAML syntax error"]),
        ("syntax.toml", "version = 1\nhostname = \n", ["syntax.toml:", "TOML syntax error"]),
        ("unknown.yaml", "version: 1\nhostnam: x\n", [":2:1: hostnam: unknown field", "hostname"]),
        ("type.toml", "version = 1\nhostname = 5\n", ["type.toml: hostname: must be a string"]),
        (
            "enum.yaml",
            "version: 1\npid1: reeper\n",
            [":2:7: pid1: 'reeper' is not one of", "reaper"],
        ),
        (
            "missing.yaml",
            "version: 1\nmounts:\n  - {type: loop, target: /x}\n",
            [":3:5: mounts[0].source: required field is missing"],
        ),
        (
            "relative.yaml",
            "version: 1\nworkdir: src\n",
            [":2:10: workdir: must be an absolute path"],
        ),
        (
            "idmap.yaml",
            "version: 1\nidmap: {uid: [{inside: 0, outside: -1, count: 1}]}\n",
            ["idmap.uid[0].outside: must be >= 0"],
        ),
        (
            "var.yaml",
            "version: 1\nhostname: ${PFLASK_TEST_UNSET_VARIABLE}\n",
            [":2:11: hostname: variable PFLASK_TEST_UNSET_VARIABLE is not set"],
        ),
        ("cycle.yaml", "version: 1\nextends: cycle.yaml\n", ["cycle.yaml: extends cycle"]),
        ("nobase.yaml", "version: 1\nextends: gone.yaml\n", [":2:10: extends: no such file"]),
        (
            "caps.yaml",
            "version: 1\ncapabilities: '-all,+net_admn'\n",
            ["capabilities:", "did you mean 'net_admin'"],
        ),
    ],
)
def test_bad_manifests_exit_2_with_file_and_field(
    tmp_path: Path, name: str, text: str, fragments: list[str]
) -> None:
    manifest = tmp_path / name
    manifest.write_text(text)
    for subcommand in ("validate", "plan", "run"):
        line = one_line_error(run_pflask(subcommand, manifest), *fragments)
        assert str(manifest) in line


def test_validate_reports_every_error_and_every_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\nhostnme: x\nworkdir: rel\n")
    result = run_pflask("validate", good, bad)
    assert result.returncode == 2
    assert f"{good}: ok" in result.stdout
    errors = result.stderr.strip().splitlines()
    assert [e.split(": ", 2)[1] for e in errors] == [f"{bad}:2:1", f"{bad}:3:10"]
    assert run_pflask("validate", good).returncode == 0


def test_validate_a_directory_of_examples() -> None:
    result = run_pflask("validate", EXAMPLES, env={"PROJECT": None})
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(": ok") >= 8


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["-m", "bind:/a"], "--mount 'bind:/a': expected bind:SRC:DST"),
        (["--mount", "tmp:relative"], "must be an absolute path"),
        (["--mount", "nfs:/a:/b"], "unknown type 'nfs'"),
        (["--mount", "loop:img"], "expected loop:IMAGE:DST[:FSTYPE]"),
        (["-n", "veth:onlyone"], "expected veth:OUTSIDE:INSIDE"),
        (["-n", "macvlan:eth0"], "expected macvlan:MASTER:NAME"),
        (["-e", "0:1000"], "expected INSIDE:OUTSIDE:COUNT"),
        (["-s", "NOVALUE"], "--setenv 'NOVALUE': expected NAME=VALUE"),
        (["--caps", "+chwon"], "did you mean 'chown'"),
        (["-t", "bad host name"], "hostname"),
        (["--ephemeral"], "--ephemeral needs --chroot"),
        (["--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_malformed_classic_flags_exit_2(flags: list[str], fragment: str) -> None:
    result = run_pflask(*flags, "--", "true")
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert fragment in result.stderr


def test_plan_text_and_stable_json() -> None:
    manifest = EXAMPLES / "devbox.yaml"
    text = run_pflask("plan", manifest, env={"PROJECT": None})
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "container devbox"
    assert "[container] bind root" in text.stdout and "pivot_root into" in text.stdout
    first = run_pflask("plan", "--json", manifest, env={"PROJECT": None})
    second = run_pflask("plan", "--json", manifest, env={"PROJECT": None})
    assert first.stdout == second.stdout
    data = json.loads(first.stdout)
    assert list(data) == sorted(data)
    assert data["steps"][0] == {
        "namespaces": ["mount", "pid", "ipc", "uts", "cgroup"],
        "pid1": True,
        "step": "unshare",
        "where": "container",
    }
    assert " at 0x" not in first.stdout


def test_plan_with_another_command() -> None:
    result = run_pflask("plan", EXAMPLES / "hello.yaml", "--", "ls", "-l")
    assert result.stdout.splitlines()[-2].endswith("exec ls -l")


def test_schema_is_the_json_schema() -> None:
    result = run_pflask("schema")
    schema = json.loads(result.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"version", "root", "mounts", "network", "cgroup"} <= set(schema["properties"])


def test_convert_round_trip_gives_the_same_plan(tmp_path: Path) -> None:
    source = EXAMPLES / "devbox.yaml"
    toml = tmp_path / "devbox.toml"
    yaml_again = tmp_path / "devbox.yaml"
    assert run_pflask("convert", source, "--to", "toml", "-o", toml).returncode == 0
    assert run_pflask("convert", toml, "--to", "yaml", "-o", yaml_again).returncode == 0
    plans = [
        run_pflask("plan", "--json", f, env={"PROJECT": None}).stdout
        for f in (source, toml, yaml_again)
    ]
    assert plans[0] == plans[1] == plans[2]
    assert "${PROJECT:-pflask}" in toml.read_text()  # variables stay variables


def test_convert_to_stdout() -> None:
    result = run_pflask("convert", EXAMPLES / "ephemeral.toml", "--to", "yaml")
    assert result.returncode == 0
    assert "ephemeral: true" in result.stdout


@pytest.mark.parametrize("suffix", ["yaml", "toml"])
def test_flags_saved_as_manifest_give_the_flags_plan(tmp_path: Path, suffix: str) -> None:
    saved = tmp_path / f"saved.{suffix}"
    flags = [
        "--name",
        "demo",
        "--chroot",
        str(tmp_path),
        "-t",
        "box",
        "-m",
        "bind:/etc:/hostetc",
        "-m",
        "bind-ro:/usr:/hostusr",
        "-m",
        "tmp:/scratch",
        "-m",
        f"aufs:{tmp_path}/up:/opt",
        "-m",
        f"overlay:{tmp_path}/up2:/srv:{tmp_path}/work",
        "-m",
        "loop-ro:/img:/data:ext4",
        "-u",
        "alice",
        "-c",
        "/tmp",
        "-s",
        "A=1,B=2",
        "-k",
        "-b",
        "-all,+chown",
        "-g",
        "memory",
        "-n",
        "veth:vhost0:eth0",
        "-I",
    ]
    command = ["--", "/bin/sh", "-c", "echo hi"]
    direct = run_pflask(*flags, "--plan", *command)
    assert direct.returncode == 0, direct.stderr
    assert run_pflask(*flags, "--save", saved, *command).returncode == 0
    from_file = run_pflask("plan", saved)
    assert from_file.returncode == 0, from_file.stderr
    assert from_file.stdout == direct.stdout


def test_a_subcommand_name_counts_only_first() -> None:
    result = run_pflask("--", "run")
    assert result.returncode == 127
    assert "run: command not found" in result.stderr


def test_python_m_pflask_and_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pflask", "--version"], capture_output=True, text=True, check=False
    )
    assert result.stdout.startswith("pflask ")


def test_plan_and_validate_never_import_pyroute2_or_run_heavy_paths() -> None:
    for args in (["plan", EXAMPLES / "network.yaml"], ["validate", EXAMPLES / "network.yaml"]):
        result = subprocess.run(
            [sys.executable, "-X", "importtime", *pflask_cmd(), *map(str, args)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert "pyroute2" not in result.stderr


def test_pflask_alone_starts_a_shell_in_new_namespaces() -> None:
    result = run_pflask(input=b'echo "shell:$container:$$"\n')
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "shell:pflask:2"


def test_verbose_traces_each_step() -> None:
    result = run_pflask("run", EXAMPLES / "hello.yaml", "-v", "--", "true")
    assert result.returncode == 0, result.stderr
    trace = [line for line in result.stderr.splitlines() if line.startswith("pflask: step ")]
    first = (
        "pflask: step 1: [container] start PID 1 of the new PID namespace; "
        "unshare namespaces: mount, pid, ipc, uts, cgroup"
    )
    assert trace[0] == first
    assert trace[-1].endswith("exec true")


def test_the_wheel_carries_the_schema(tmp_path: Path) -> None:
    repo = EXAMPLES.parent
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(repo),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    import zipfile

    (wheel,) = tmp_path.glob("pflask-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "pflask/manifest.schema.json" in names
    assert "pflask/cli.py" in names and "pflask/__main__.py" in names
