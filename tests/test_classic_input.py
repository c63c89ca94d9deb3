"""Hostile command lines: every option with a missing, empty, `--` or 10 KB value.

The original flags, `pflask run` and `pflask plan` must answer any command
line with either a sensible result or one `pflask:` line and exit 2 that
names the option; never a traceback.  Each case runs pflask's entry point in
a forked child of the test (the interpreter is already warm, so hundreds of
cases take seconds, not minutes), with its own cache directory; the cases
that are valid run real containers from the busybox root.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pflask import cli
from pflask.load import classic

pytestmark = pytest.mark.usefixtures("host_clean")

BIG = 10 * 1024


class Result(NamedTuple):
    status: int
    stdout: str
    stderr: str


def pflask_main(argv: list[str], cwd: Path) -> Result:
    """`pflask ARGV` through cli.main in a forked child: its status and output.

    An exception that escapes main() is printed as a traceback, as the
    console script would, so the assertions see what a user would.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            status = 1
            try:
                os.chdir(cwd)
                os.environ["XDG_CACHE_HOME"] = str(cwd / "cache")
                null = os.open("/dev/null", os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdin = open(0, closefd=False)  # noqa: SIM115
                sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
                sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
                status = cli.main(argv)
            except SystemExit as e:
                status = e.code if isinstance(e.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        _, wait_status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return Result(
            os.waitstatus_to_exitcode(wait_status),
            out.read().decode(errors="replace"),
            err.read().decode(errors="replace"),
        )


def classic_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pflask")
    classic.add_arguments(parser)
    return parser


def value_options() -> list[tuple[str, str]]:
    """(long, short) of every original option that takes a value; short may be ""."""
    found = []
    for action in classic_parser()._actions:
        if action.option_strings and action.nargs != 0:
            longs = [o for o in action.option_strings if o.startswith("--")]
            shorts = [o for o in action.option_strings if not o.startswith("--")]
            found.append((longs[0], shorts[0] if shorts else ""))
    return found


VALUE_OPTIONS = value_options()
OPTIONS = [o for pair in VALUE_OPTIONS for o in pair if o]

# A long value shaped as each option expects (the plain "xxx..." case is there too).
SHAPED = {
    "--chroot": "/" + "d" * BIG,
    "--image": "oci:/" + "d" * BIG,
    "--chdir": "/" + "d/" * (BIG // 2),
    "--hostname": "h" * BIG,
    "--mount": "tmp:/" + "m" * BIG,
    "--netif": "veth:" + "o" * BIG + ":" + "i" * BIG,
    "--user": "9" * BIG,
    "--user-map": "0:0:" + "9" * BIG,
    "--cgroup": "c" * BIG,
    "--caps": ",".join(["+chown"] * (BIG // 6)),
    "--attach": "9" * BIG,
    "--detach-keys": ",".join(["ctrl-p"] * (BIG // 7)),
    "--setenv": "A=" + "v" * BIG,
    "--name": "n" * BIG,
    "--save": "s" * BIG + ".yaml",
    "--seccomp": "/" + "p" * BIG + ".json",
}


def long_name(option: str) -> str:
    return next(pair[0] for pair in VALUE_OPTIONS if option in pair)


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    # What every case needs, made once here rather than in every forked child.
    from pflask.commands import commands
    from pflask.compile import compiler
    from pflask.load import loader

    assert commands and compiler
    loader.validator()
    with tempfile.TemporaryDirectory(prefix="pft-classic-") as tmp:
        path = Path(tmp)
        (path / "cache").mkdir()
        yield path


def fronts(root: Path, work: Path) -> dict[str, list[str]]:
    """How the options reach pflask: running a container, --plan, --save."""
    return {
        "run": ["-r", str(root), "--name", "pft-classic"],
        "plan": ["--plan", "-r", str(root)],
        "save": ["--save", str(work / "saved.yaml"), "-r", str(root)],
    }


def assert_usage_error(result: Result, option: str) -> str:
    """Exit 2 and one `pflask:` line naming `option` (long or short form)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert result.status == 2, result
    assert lines, result
    names = {option, *(pair[0] for pair in VALUE_OPTIONS if option in pair)}
    for line in lines:  # one line per problem, each naming the option
        assert line.startswith("pflask: "), line
        assert any(name in line for name in names), (option, line[:300])
    return lines[0]


def assert_sane(result: Result, option: str) -> None:
    """No traceback; success, or one line of a documented failure that says what."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.status in (0, 2, 125, 126, 127), result
    if result.status == 2 and option == "--attach":
        assert result.stderr.startswith("pflask: no running container named '"), result
    elif result.status == 2:
        assert_usage_error(result, option)
    elif result.status != 0:
        assert len(result.stderr.splitlines()) == 1, result.stderr[:2000]


@pytest.mark.parametrize("front", ["run", "plan", "save"])
@pytest.mark.parametrize("option", OPTIONS)
def test_an_option_without_its_value_is_a_usage_error(
    option: str, front: str, busybox_root: Path, work: Path
) -> None:
    base = fronts(busybox_root, work)[front]
    (work / "saved.yaml").unlink(missing_ok=True)
    netif = long_name(option) == "--netif"  # its value is optional: a bare --netif
    at_end = pflask_main([*base, option], work)
    before_dashes = pflask_main([*base, option, "--", "/bin/true"], work)
    before_option = pflask_main([*base, option, "--no-cache", "/bin/true"], work)
    if netif:
        # A network namespace with only lo: runs, shows its plan, or is saved.
        for result in (at_end, before_dashes, before_option):
            assert result.status == 0, result
        return
    for result in (at_end, before_dashes, before_option):
        line = assert_usage_error(result, option)
        assert line.startswith(f"pflask: {option} needs a value ("), line
    assert not (work / "saved.yaml").exists()


@pytest.mark.parametrize("front", ["run", "plan", "save"])
@pytest.mark.parametrize("option", OPTIONS)
def test_an_empty_value_is_a_usage_error(
    option: str, front: str, busybox_root: Path, work: Path
) -> None:
    base = fronts(busybox_root, work)[front]
    joined = f"{option}=" if option.startswith("--") else option
    results = [pflask_main([*base, option, "", "/bin/true"], work)]
    if joined != option:
        results.append(pflask_main([*base, joined, "/bin/true"], work))
    for result in results:
        if long_name(option) == "--netif":
            assert result.status == 0, result
        else:
            line = assert_usage_error(result, option)
            assert "the value is empty" in line, line


@pytest.mark.parametrize("front", ["run", "plan", "save"])
@pytest.mark.parametrize("option", [pair[0] for pair in VALUE_OPTIONS])
def test_a_10k_value_never_tracebacks(
    option: str, front: str, busybox_root: Path, work: Path
) -> None:
    base = fronts(busybox_root, work)[front]
    for value in ("x" * BIG, SHAPED[option]):
        result = pflask_main([*base, option, value, "--", "/bin/true"], work)
        assert_sane(result, option)
        (work / "saved.yaml").unlink(missing_ok=True)


def test_examples_of_the_messages(busybox_root: Path, work: Path) -> None:
    """The issue's command line, and what a user reads for a few others."""
    root = str(busybox_root)
    result = pflask_main(["--chroot", root, "--mount", "--", "/bin/true"], work)
    assert result == Result(2, "", "pflask: --mount needs a value (SPEC)\n")
    result = pflask_main(["-r", root, "-c"], work)
    assert result == Result(2, "", "pflask: -c needs a value (DIR)\n")
    result = pflask_main(["--chroot", "--plan"], work)
    assert result == Result(2, "", "pflask: --chroot needs a value (DIR)\n")
    result = pflask_main(["-r", root, "--hostname=", "/bin/true"], work)
    assert result == Result(2, "", "pflask: --hostname: the value is empty (expected NAME)\n")
    # A value that starts with '-' is still a value, as with getopt(3).
    result = pflask_main(["-r", root, "--caps", "-all", "--", "/bin/true"], work)
    assert result == Result(0, "", ""), result
    result = pflask_main(["-r", root, "--bogus"], work)
    assert result == Result(2, "", "pflask: unrecognized arguments: --bogus (see pflask -h)\n")
    result = pflask_main(["-r", root, "--hostname", "h" * BIG, "/bin/true"], work)
    assert_usage_error(result, "--hostname")


# --- run and plan ------------------------------------------------------------------------

MANIFEST_OPTIONS = {
    "run": ["--set", "--name"],
    "plan": ["--set"],
}


@pytest.fixture(scope="module")
def manifest(work: Path, busybox_root: Path) -> Path:
    path = work / "box.yaml"
    path.write_text(f"version: 1\nname: pft-classic-m\nroot: {{path: {busybox_root}}}\n")
    return path


@pytest.mark.parametrize(
    ("sub", "option"), [(s, o) for s, options in MANIFEST_OPTIONS.items() for o in options]
)
def test_run_and_plan_options_without_values(
    sub: str, option: str, manifest: Path, work: Path
) -> None:
    for argv in (
        [sub, str(manifest), option],
        [sub, str(manifest), option, "--", "/bin/true"],
        [sub, str(manifest), f"{option}="],
        [sub, str(manifest), option, ""],
    ):
        result = pflask_main(argv, work)
        line = assert_usage_error(result, option)
        assert sub in line or option in line, line


@pytest.mark.parametrize(
    ("sub", "option"), [(s, o) for s, options in MANIFEST_OPTIONS.items() for o in options]
)
def test_run_and_plan_options_with_10k_values(
    sub: str, option: str, manifest: Path, work: Path
) -> None:
    values = ["x" * BIG, "hostname=" + "h" * BIG, "env.set.A=" + "v" * BIG, "n" * BIG]
    for value in values:
        result = pflask_main([sub, str(manifest), option, value, "--", "/bin/true"], work)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.status in (0, 2), result
        if result.status == 2:
            assert len(result.stderr.splitlines()) == 1, result.stderr[:2000]


def test_run_and_plan_without_a_file(work: Path) -> None:
    for argv in (["run"], ["plan"], ["run", "--"], ["plan", "--json"]):
        result = pflask_main(argv, work)
        assert result.status == 2, result
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"pflask: {argv[0]}: "), result.stderr


# --- random command lines --------------------------------------------------------------

WORDS = st.sampled_from(
    [
        *OPTIONS,
        "--",
        "-",
        "",
        "=",
        ":",
        "-all",
        "--plan",
        "--ephemeral",
        "-w",
        "-k",
        "-U",
        "--no-netns",
        "bind::",
        "tmp:/t",
        "tmp:relative",
        "overlay:/a:/b:/c",
        "loop:/x:/y:ext4:z",
        "veth:a:b",
        "macvlan:eth0:",
        "0:0:1",
        "0:0:99999999999999999999",
        "-1:0:1",
        "A=1,B",
        "root",
        "0",
        "4294967296",
        "/",
        "/bin/true",
        "memory",
        "memroy",
        "+chown,-all",
        "x" * 300,
    ]
)
TEXT = st.text(alphabet=st.characters(exclude_characters="\0"), max_size=20)


@settings(
    max_examples=120,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(st.one_of(WORDS, TEXT), max_size=8))
def test_random_classic_command_lines_never_traceback(work: Path, words: list[str]) -> None:
    """Only --plan and --save runs: a random command line could run anything."""
    for front in (["--plan"], ["--save", str(work / "random.yaml")]):
        result = pflask_main([*front, "-r", "/nonexistent-pft-root", *words], work)
        assert "Traceback" not in result.stderr, (words, result.stderr)
        assert result.status in (0, 2, 125), (words, result)
        (work / "random.yaml").unlink(missing_ok=True)
