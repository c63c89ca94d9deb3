"""The README stays true: its reference is the schema's, its commands exist."""

from __future__ import annotations

from pathlib import Path

from helpers import run_pflask

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_readme_reference_is_generated_from_the_schema() -> None:
    start, end = "<!-- reference:start -->\n", "<!-- reference:end -->"
    section = README.split(start, 1)[1].split(end, 1)[0]
    assert section == run_pflask("schema", "--markdown").stdout, "run scripts/update-readme"


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_one() -> None:
    demo = "sudo scripts/setup && sudo /opt/pflask/bin/pflask run examples/hello.yaml"
    tests = "sudo scripts/setup && sudo scripts/test"
    assert demo in README and tests in README
    ci = (REPO / ".ci" / "run").read_text()
    assert tests in ci and "bash scripts/setup" in ci and "bash scripts/test" in ci


def test_readme_demo_command_runs() -> None:
    result = run_pflask("run", REPO / "examples" / "hello.yaml")
    assert result.returncode == 0, result.stderr
    assert "hello from hello" in result.stdout
