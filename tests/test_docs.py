"""The README stays true: its reference is the schema's, its commands exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from helpers import run_pflask

from pflask import cli
from pflask.doc import manpage, options

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


# --- man pages ---------------------------------------------------------------------------

MAN = REPO / "man"


def _rendered(path: Path) -> subprocess.CompletedProcess[str]:
    """The page as man(1) shows it (groff with every warning on, 100 columns)."""
    result = subprocess.run(
        ["groff", "-ww", "-man", "-Tutf8", "-rLL=100n", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    result.stdout = re.sub(".\b", "", result.stdout)  # overstrike (bold, underline) to plain
    return result


@pytest.mark.parametrize("page", manpage.PAGES)
def test_the_committed_man_pages_are_generated_from_the_parsers_and_schema(page: str) -> None:
    assert (MAN / page).read_text() == manpage.render(page), "run scripts/update-readme"


@pytest.mark.parametrize("page", manpage.PAGES)
def test_the_man_pages_render_without_a_warning(page: str) -> None:
    result = _rendered(MAN / page)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "NAME" in result.stdout and "SEE ALSO" in result.stdout


@pytest.mark.parametrize("page", ["pflask", "pflask.yaml"])
def test_man_finds_the_installed_pages(page: str) -> None:
    """scripts/setup puts them where man(1) looks."""
    where = subprocess.run(["man", "-w", page], capture_output=True, text=True, check=False)
    assert where.returncode == 0, where.stderr
    section = "1" if page == "pflask" else "5"
    assert Path(where.stdout.strip()).read_text() == (MAN / f"{page}.{section}").read_text()


def _help_options(*args: str) -> set[str]:
    """The option names `pflask ARGS --help` lists."""
    result = run_pflask(*args, "--help")
    assert result.returncode == 0, result.stderr
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", result.stdout)) - {"-h", "--help"}


@pytest.mark.parametrize("args", [(), *((name,) for name in options.subcommands(options.parser()))])
def test_every_option_help_lists_is_in_the_man_page(args: tuple[str, ...]) -> None:
    page = _rendered(MAN / "pflask.1").stdout
    # groff prints option dashes as U+2010 hyphens or ASCII; compare both ways.
    page = page.replace("\u2010", "-").replace("\u2212", "-")
    options = _help_options(*args)
    missing = sorted(o for o in options if o not in page)
    assert not missing, f"pflask {' '.join(args)}: {missing} not in pflask(1)"


def test_every_option_and_argument_has_help_text() -> None:
    """--help, the man page and the shells' descriptions all come from it."""
    parsers = {"pflask": options.classic_parser(), **options.subcommands(options.parser())}
    bare = [
        f"{name} {'/'.join(action.option_strings) or action.dest}"
        for name, parser in parsers.items()
        for action in parser._actions
        if not action.help and action.dest not in ("help", "version")
    ]
    assert bare == []


def test_run_fast_path_knows_every_option_its_help_lists() -> None:
    """cli.py parses `run` by hand; its help comes from options.add_run_arguments."""
    run = options.subcommands(options.parser())["run"]
    for action in run._actions:
        for option in action.option_strings:
            if option in ("-h", "--help"):
                continue
            args = ["box.yaml", option] + (["x=1"] if action.nargs != 0 else [])
            cli._parse_run(args)  # raises UsageError for an option it does not know
