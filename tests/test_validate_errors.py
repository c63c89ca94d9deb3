"""`pflask validate` and `pflask run` report every error, each where it is written.

Issue #20 item 6: validation stopped at the first unset `${VAR}` although the
README promises every error, and messages indexed the list `extends` merged
(a file's first mount was reported as `mounts[2]` when its base had two).
Each case runs the installed pflask, as a user would, and reads its stderr.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import describe, run_pflask

pytestmark = pytest.mark.usefixtures("host_clean")

HINT = "(write ${{{0}:-default}} for a default)"


def unset(name: str) -> str:
    return f"variable {name} is not set {HINT.format(name)}"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def errors(*args: str | Path, env: dict[str, str | None] | None = None) -> list[str]:
    """pflask's error lines for a run that must fail with exit 2 and no traceback."""
    result = run_pflask(*args, env=env)
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr, describe(result)
    lines = result.stderr.splitlines()
    assert all(line.startswith("pflask: ") for line in lines), describe(result)
    return [line.removeprefix("pflask: ") for line in lines]


BASE = """\
version: 1
hostname: "${BOX_NAME}"
mounts:
  - {type: tmp, target: /a}
  - {type: tmp, target: /b}
"""

CHILD = """\
version: 1
extends: base.yaml
workdir: "${WORK_DIR}"
mounts:
  - {type: tmp, target: relative}
  - {type: bind, source: "${SOURCE_DIR}", target: /src}
"""


def test_validate_reports_every_unset_variable_in_the_file_and_its_bases(tmp_path: Path) -> None:
    base = write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", CHILD)
    assert errors("validate", child) == [
        f"{base}:2:11: hostname: {unset('BOX_NAME')}",
        f"{child}:3:10: workdir: {unset('WORK_DIR')}",
        f"{child}:5:25: mounts[0].target: must be an absolute path inside the container, "
        "not 'relative'",
        f"{child}:6:26: mounts[1].source: {unset('SOURCE_DIR')}",
    ]


def test_run_reports_them_all_too(tmp_path: Path) -> None:
    base = write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", CHILD)
    lines = errors("run", "--no-cache", child, "--", "true")
    assert lines == errors("validate", child)
    assert len(lines) == 4 and str(base) in lines[0]


def test_setting_the_variables_leaves_only_the_schema_error(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", BASE)
    child = write(tmp_path / "child.yaml", CHILD)
    env = {"BOX_NAME": "box", "WORK_DIR": "/", "SOURCE_DIR": str(tmp_path)}
    assert errors("validate", child, env=env) == [
        f"{child}:5:25: mounts[0].target: must be an absolute path inside the container, "
        "not 'relative'"
    ]


def test_a_value_left_unset_is_not_also_called_the_wrong_type(tmp_path: Path) -> None:
    """`readonly: ${RO}` unset is one error (the variable), not also "must be true or false"."""
    f = write(
        tmp_path / "m.yaml",
        'version: 1\nroot: {readonly: "${RO}", path: /}\nhostname: "${HOST}"\n'
        'mounts:\n  - {type: tmp, target: /t, size: "${SIZE}"}\n',
    )
    assert errors("validate", f) == [
        f"{f}:2:18: root.readonly: {unset('RO')}",
        f"{f}:3:11: hostname: {unset('HOST')}",
        f"{f}:5:35: mounts[0].size: {unset('SIZE')}",
    ]


def test_an_unset_base_name_and_a_missing_base_are_both_reported(tmp_path: Path) -> None:
    f = write(
        tmp_path / "m.yaml",
        'version: 1\nhostname: "${HOST}"\nextends: ["${BASE_FILE}", nosuch.yaml]\n',
    )
    assert errors("validate", f) == [
        f"{f}:2:11: hostname: {unset('HOST')}",
        f"{f}:3:11: extends[0]: {unset('BASE_FILE')}",
        f"{f}:3:27: extends[1]: no such file: {tmp_path}/nosuch.yaml",
    ]


def test_more_than_twenty_unset_variables_are_counted(tmp_path: Path) -> None:
    lines = "".join(f'    V{i}: "${{UNSET_{i}}}"\n' for i in range(25))
    f = write(tmp_path / "m.yaml", f"version: 1\nenv:\n  set:\n{lines}")
    reported = errors("validate", f)
    assert len(reported) == 21
    assert reported[0] == f"{f}:4:9: env.set.V0: {unset('UNSET_0')}"
    assert reported[-1] == f"{f}: and 5 more errors"


# --- indexes of the file that holds the entry ------------------------------------------


def test_an_entry_keeps_its_own_files_index(tmp_path: Path) -> None:
    """The base has two mounts, the child one: the child's is its mounts[0]."""
    base = write(
        tmp_path / "base.yaml",
        "version: 1\nmounts:\n  - {type: tmp, target: /a}\n  - {type: tmp, target: b}\n",
    )
    child = write(
        tmp_path / "child.yaml",
        "version: 1\nextends: base.yaml\nmounts:\n  - {type: tmp, target: c, mode: 1777}\n",
    )
    assert errors("validate", child) == [
        f"{base}:4:25: mounts[1].target: must be an absolute path inside the container, not 'b'",
        f"{child}:4:25: mounts[0].target: must be an absolute path inside the container, not 'c'",
        f"{child}:4:34: mounts[0].mode: must be a string, not 1777",
    ]


LOOP_ERROR = (
    "loop mounts need root without a user namespace (the kernel refuses to mount block "
    "devices from one)"
)


def test_compiler_errors_name_the_file_and_index_that_hold_the_entry(tmp_path: Path) -> None:
    """The compiler sees the merged list (the loop mount is its third item)."""
    write(
        tmp_path / "base.yaml",
        "version: 1\nmounts:\n  - {type: tmp, target: /a}\n  - {type: tmp, target: /b}\n",
    )
    child = write(
        tmp_path / "child.yaml",
        "version: 1\nextends: base.yaml\nnamespaces: {user: true}\n"
        "mounts:\n  - {type: loop, source: disk.img, target: /disk}\n",
    )
    expected = [f"{child}:5:5: mounts[0]: {LOOP_ERROR}"]
    assert errors("validate", child) == expected
    assert errors("run", "--no-cache", child, "--", "true") == expected
    assert errors("plan", child) == expected


def test_a_compiler_error_in_a_base_names_the_base(tmp_path: Path) -> None:
    base = write(
        tmp_path / "base.yaml",
        "version: 1\nmounts:\n  - {type: tmp, target: /a}\n"
        "  - {type: loop, source: disk.img, target: /disk}\n",
    )
    child = write(
        tmp_path / "child.yaml",
        "version: 1\nextends: base.yaml\nnamespaces: {user: true}\n"
        "mounts:\n  - {type: tmp, target: /c}\n",
    )
    assert errors("validate", child) == [f"{base}:4:5: mounts[1]: {LOOP_ERROR}"]


def test_another_entry_is_named_with_its_own_file(tmp_path: Path) -> None:
    base = write(
        tmp_path / "base.yaml",
        "version: 1\nnetwork:\n  interfaces:\n    - {type: veth, host: pft-vb0, name: eth0}\n",
    )
    child = write(
        tmp_path / "child.yaml",
        "version: 1\nextends: base.yaml\nnetwork:\n  interfaces:\n"
        "    - {type: veth, host: pft-vc0, name: eth1}\n"
        "    - {type: veth, host: pft-vc1, name: eth0}\n",
    )
    assert errors("validate", child) == [
        f"{child}:6:41: network.interfaces[1].name: interface name 'eth0' is already used by "
        f"interfaces[0] ({base})"
    ]


def test_set_indexes_the_merged_list(tmp_path: Path) -> None:
    """`--set` edits the manifest that runs: mounts[2] is the child's first mount."""
    write(
        tmp_path / "base.yaml",
        "version: 1\nmounts:\n  - {type: tmp, target: /a}\n  - {type: tmp, target: /b}\n",
    )
    child = write(
        tmp_path / "child.yaml",
        "version: 1\nextends: base.yaml\nmounts:\n  - {type: tmp, target: /c}\n",
    )
    plan = run_pflask("plan", child, "--set", "mounts[2].target=/moved")
    assert plan.returncode == 0, describe(plan)
    assert "/moved" in plan.stdout and " /c" not in plan.stdout, plan.stdout
    assert " /a" in plan.stdout and " /b" in plan.stdout, plan.stdout
    assert errors("plan", child, "--set", "mounts[2].target=moved") == [
        "command line: mounts[2].target: must be an absolute path inside the container, not 'moved'"
    ]
