"""Hostile manifests: each ends `pflask validate` and `pflask run` with one line and exit 2.

A manifest is input from whoever wrote the repository it was checked out of.
Each case here once made pflask swell until the OOM killer ended it, hang
forever, print a traceback, or accept a value that failed only at run time
(issue #14).  Every case runs the installed pflask as a real process and
measures it the way a user would notice: its exit status, its stderr (one
line naming the file, no traceback, no more than 80 characters of a value),
its wall time and its peak RSS (wait4(2)'s ru_maxrss, which covers the
process and the children it waited for: `run` compiles in a child).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import pflask_cmd, run_as, user_info

from pflask import errors
from pflask.load import loader, semantics

pytestmark = pytest.mark.usefixtures("host_clean")

TIME_LIMIT = 1.0  # seconds, pflask's whole run (interpreter start-up included)
RSS_LIMIT = 100 << 20  # bytes
LINE_LIMIT = 80 + 200  # a line: the file and field names, the message, 80 characters of value


class Outcome:
    def __init__(self, status: int, stderr: str, seconds: float, rss: int) -> None:
        self.status = status
        self.stderr = stderr
        self.seconds = seconds
        self.rss = rss

    def __repr__(self) -> str:
        return (
            f"exit {self.status} in {self.seconds:.2f}s, {self.rss >> 20} MiB: "
            f"{self.stderr[:2000]!r}"
        )


# Runs pflask and reports its exit status, wall time and peak RSS.  A small
# interpreter of its own starts it: a child forked from pytest would count
# pytest's own pages (a 100 MB test string, say) in its ru_maxrss, as memory
# held before exec(2) is counted too.
LAUNCHER = """
import os, sys, time
start = time.monotonic()
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ, setsid=True,
                     file_actions=[(os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0)])
_, status, usage = os.wait4(pid, 0)
print(os.waitstatus_to_exitcode(status), time.monotonic() - start, usage.ru_maxrss << 10)
"""


def measured(*args: str | os.PathLike[str], env: dict[str, str] | None = None) -> Outcome:
    """Run pflask; its status, time and peak RSS come from wait4(2) in the launcher."""
    argv = [sys.executable, "-I", "-S", "-c", LAUNCHER, *pflask_cmd(), *map(os.fspath, args)]
    result = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env={**os.environ, **(env or {})},
        timeout=30,
    )
    assert result.returncode == 0, result
    status, seconds, rss = result.stdout.split()
    return Outcome(int(status), result.stderr.decode(errors="replace"), float(seconds), int(rss))


def assert_refused(outcome: Outcome, file: Path | str, *words: str) -> str:
    """Exit 2, quickly and small, with one line that names `file`; returns the line."""
    assert outcome.status == 2, outcome
    assert "Traceback" not in outcome.stderr, outcome
    lines = outcome.stderr.splitlines()
    assert len(lines) == 1, outcome
    line = lines[0]
    assert line.startswith(f"pflask: {file}"), outcome
    assert len(line) <= LINE_LIMIT + len(str(file)), outcome
    for word in words:
        assert word in line, outcome
    assert outcome.seconds < TIME_LIMIT, outcome
    assert outcome.rss < RSS_LIMIT, outcome
    return line


def both(manifest: Path, *words: str, shown: Path | None = None) -> None:
    """`validate` and `run` refuse `manifest` alike."""
    for command in ("validate", "run"):
        assert_refused(measured(command, manifest), shown or manifest, *words)


# --- files that are not manifests -----------------------------------------------------------


def test_manifest_that_is_a_symlink_to_dev_zero_or_urandom(tmp_path: Path) -> None:
    for device in ("/dev/zero", "/dev/urandom"):
        link = tmp_path / f"{Path(device).name}.yaml"
        link.symlink_to(device)
        both(link, "not a regular file (a character device)")


def test_manifest_that_is_a_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    both(fifo, "not a regular file (a FIFO)")


def test_manifest_that_is_a_directory(tmp_path: Path) -> None:
    directory = tmp_path / "dir.yaml"
    directory.mkdir()
    assert_refused(measured("run", directory), directory, "not a regular file (a directory)")


def test_bases_that_are_devices_or_fifos_are_refused_at_their_extends_line(
    tmp_path: Path,
) -> None:
    os.mkfifo(tmp_path / "fifo.yaml")
    (tmp_path / "random.yaml").symlink_to("/dev/urandom")
    cases = {
        "/dev/zero": "a character device",
        "fifo.yaml": "a FIFO",
        "random.yaml": "a character device",
    }
    for base, kind in cases.items():
        manifest = tmp_path / "m.yaml"
        manifest.write_text(f"version: 1\n\nextends: [{base}]\n")
        both(manifest, ":3:11: extends[0]: ", f"not a regular file ({kind})", shown=manifest)


def test_a_file_over_one_mebibyte_is_refused_unread(tmp_path: Path) -> None:
    manifest = tmp_path / "big.yaml"
    with manifest.open("w") as f:
        f.write("version: 1\nhostname: ")
        f.write("a" * (100 << 20))  # the 100 MB hostname
        f.write("\n")
    both(manifest, "larger than 1 MiB")


def test_a_base_over_one_mebibyte_is_refused(tmp_path: Path) -> None:
    base = tmp_path / "base.json"
    base.write_text(json.dumps({"version": 1, "env": {"set": {"A": "x" * (1 << 20)}}}))
    manifest = tmp_path / "m.toml"
    manifest.write_text('version = 1\nextends = "base.json"\n')
    both(manifest, "extends: ", "base.json: larger than 1 MiB")


def test_non_utf8_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "latin1.yaml"
    manifest.write_bytes(b"version: 1\nhostname: caf\xe9\n")
    both(manifest, "not UTF-8 text (byte 24)")


def test_a_cached_manifest_replaced_by_a_fifo_or_dev_zero(tmp_path: Path) -> None:
    """`run` looks in the plan cache first, and hashes the manifest to trust an
    entry: that read is bounded too, and the compile it falls back to refuses."""
    cache = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    manifest = tmp_path / "cached.yaml"
    manifest.write_text('version: 1\ncommand: ["true"]\n')
    assert measured("run", manifest, env=cache).status == 0
    assert len(os.listdir(tmp_path / "cache" / "pflask")) == 1
    manifest.unlink()
    os.mkfifo(manifest)
    assert_refused(measured("run", manifest, env=cache), manifest, "a FIFO")
    manifest.unlink()
    manifest.symlink_to("/dev/zero")
    assert_refused(measured("run", manifest, env=cache), manifest, "a character device")


def test_convert_reads_through_the_same_checks(tmp_path: Path) -> None:
    manifest = tmp_path / "fifo.yaml"
    os.mkfifo(manifest)
    outcome = measured("convert", manifest, "--to", "toml")
    assert_refused(outcome, manifest, "a FIFO")


# --- expansion ----------------------------------------------------------------------------


def billion_laughs(field: str) -> str:
    """Nine levels of nine aliases: a few hundred bytes, 9^9 values once expanded."""
    lines = ["version: 1", f'{field}: &a0 ["lol"]']
    for level in range(1, 10):
        aliases = ", ".join([f"*a{level - 1}"] * 9)
        lines.append(f"x{level}: &a{level} [{aliases}]")
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_in_an_unused_field(tmp_path: Path) -> None:
    manifest = tmp_path / "lol.yaml"
    manifest.write_text(billion_laughs("unused"))
    both(manifest, "more than 10000 values (aliases expanded)")


def test_yaml_alias_bomb_in_a_real_field(tmp_path: Path) -> None:
    value = "&c0 [" + ", ".join(["lol"] * 9) + "]"
    for n in range(1, 9):
        value = f"&c{n} [{value}, " + ", ".join([f"*c{n - 1}"] * 8) + "]"
    manifest = tmp_path / "lol.yaml"
    manifest.write_text(f"version: 1\ncommand: {value}\n")
    both(manifest, "more than 10000 values")


def test_yaml_merge_keys_are_counted_like_aliases(tmp_path: Path) -> None:
    manifest = tmp_path / "merge.yaml"
    text = "version: 1\nb0: &b0 {k: v}\n"
    for n in range(1, 7):
        keys = ", ".join(f"k{i}: *b{n - 1}" for i in range(9))
        text += f"b{n}: &b{n} {{<<: *b{n - 1}, {keys}}}\n"
    manifest.write_text(text)
    both(manifest, "more than 10000 values")


def test_yaml_recursive_alias(tmp_path: Path) -> None:
    manifest = tmp_path / "loop.yaml"
    manifest.write_text("version: 1\nmounts: &m [*m]\n")
    both(manifest, ":2:13: alias *m refers to itself")


def test_variables_expanding_past_a_mebibyte(tmp_path: Path) -> None:
    manifest = tmp_path / "vars.yaml"
    manifest.write_text("version: 1\nenv: {set: {A: '" + "${BIG}" * 20_000 + "'}}\n")
    env = {"BIG": "x" * 100_000}  # 2 GB once expanded
    outcome = measured("validate", manifest, env=env)
    assert_refused(outcome, manifest, "env.set.A: variables expand to more than 1 MiB")


# --- nesting --------------------------------------------------------------------------------


DEEPER = "nested deeper than 32 levels"


@pytest.mark.parametrize(
    ("name", "text", "words"),
    [
        ("deep.json", '{"version": 1, "x": ' + "[" * 10_000 + "]" * 10_000 + "}", DEEPER),
        # 10,000 arrays are too many values before they are too deep
        ("deep.toml", "version = 1\nx = " + "[" * 10_000 + "]" * 10_000 + "\n", "10000 values"),
        ("deeper.toml", "version = 1\nx = " + "[" * 5_000 + "]" * 5_000 + "\n", DEEPER),
        ("tables.toml", "version = 1\n[" + ".".join(["t"] * 10_000) + "]\n", DEEPER),
        ("inline.toml", "version = 1\nx = " + "{a = " * 3_000 + "1" + "}" * 3_000, DEEPER),
        # libyaml's own limit (1000 flow levels) comes first, with a position
        ("deep.yaml", "version: 1\nx: " + "[" * 10_000 + "]" * 10_000, ":2:1003: YAML syntax"),
        ("flow.yaml", "version: 1\nx: " + "[" * 40 + "]" * 40, ":2:35: " + DEEPER),
        ("block.yaml", "".join(f"{' ' * i}k:\n" for i in range(1_000)), ":33:33: " + DEEPER),
    ],
)
def test_nesting_10000_deep(tmp_path: Path, name: str, text: str, words: str) -> None:
    manifest = tmp_path / name
    manifest.write_text(text)
    both(manifest, words)


def test_json_with_one_hundred_thousand_values(tmp_path: Path) -> None:
    manifest = tmp_path / "wide.json"
    manifest.write_text(json.dumps({"version": 1, "command": ["x"] * 100_000}))
    both(manifest, "more than 10000 values")


@pytest.mark.parametrize(
    ("name", "text"),
    [
        # tomllib is pure Python: parsed, this megabyte would take it a second
        ("items.toml", "version = 1\nx = [" + "0," * 500_000 + "]\n"),
        ("keys.toml", "version = 1\n" + "".join(f"k{i} = 1\n" for i in range(80_000))),
        ("tables.toml", "version = 1\n" + "[[a]]\n" * 150_000),
        ("items.yaml", "version: 1\nx: [" + "0," * 500_000 + "]\n"),
    ],
)
def test_a_mebibyte_of_small_values(tmp_path: Path, name: str, text: str) -> None:
    manifest = tmp_path / name
    manifest.write_text(text)
    both(manifest, "more than 10000 values")


def test_an_extends_chain_of_1000_files(tmp_path: Path) -> None:
    for n in range(1000):
        (tmp_path / f"b{n}.yaml").write_text(f"version: 1\nextends: b{n + 1}.yaml\n")
    (tmp_path / "b1000.yaml").write_text("version: 1\n")
    base = tmp_path / "b8.yaml"  # b1 ... b8 are 8 levels of bases
    both(tmp_path / "b0.yaml", "extends: extends nested deeper than 8 files", shown=base)


def test_extends_reading_more_than_32_files(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("version: 1\n")
    manifest = tmp_path / "fan.yaml"
    manifest.write_text("version: 1\nextends:\n" + "  - base.yaml\n" * 40)
    both(manifest, ":34:5: extends[31]: extends reads more than 32 files")


def test_a_long_missing_base_is_quoted_short(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text("version: 1\nextends: " + "d/" * 2000 + "b.yaml\n")
    line = assert_refused(measured("validate", manifest), manifest, ":2:10: extends: no such file")
    assert "d/" * 50 not in line


def test_extends_names_are_checked_before_use(tmp_path: Path) -> None:
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"version": 1, "extends": ["a\u0000b", "x" * 5000]}))
    line = assert_refused(measured("validate", manifest), manifest, "'a\\x00b' is not a file name")
    assert "\x00" not in line


# --- numbers and strings out of range ---------------------------------------------------------


def test_cgroup_cpu_infinite_or_nan(tmp_path: Path) -> None:
    for value in (".inf", "-.inf", ".nan", "1.0e+400"):
        manifest = tmp_path / "cpu.yaml"
        manifest.write_text(f"version: 1\ncgroup:\n  cpu: {value}\n")
        both(manifest, ":3:8: cgroup.cpu: ")
    manifest = tmp_path / "cpu.json"
    manifest.write_text('{"version": 1, "cgroup": {"cpu": Infinity}}')
    both(manifest, "Infinity is not a JSON number")


def test_integers_past_4300_digits(tmp_path: Path) -> None:
    digits = "9" * 5000
    for name, text in {
        "int.yaml": f"version: 1\ncgroup: {{pids: {digits}}}\n",
        "int.json": f'{{"version": 1, "cgroup": {{"pids": {digits}}}}}',
        "int.toml": f"version = 1\n[cgroup]\npids = {digits}\n",
    }.items():
        manifest = tmp_path / name
        manifest.write_text(text)
        both(manifest, "Exceeds the limit (4300 digits)")


@pytest.mark.parametrize(
    ("fields", "where", "words"),
    [
        ("hostname: " + "a" * 900_000, ":2:11: hostname: ", "longer than 64 characters (900000)"),
        ("cgroup: {pids: 99999999999}", ":2:16: cgroup.pids: ", "must be <= 4194304"),
        ("cgroup: {memory: 18446744073709551616}", ":2:18: cgroup.memory: ", "<= 9007199254740992"),
        ("cgroup: {memory: 99999999999T}", ":2:18: cgroup.memory: ", "at most 8 PiB"),
        ("cgroup: {memory: '0K'}", ":2:18: cgroup.memory: ", "at least 1 byte"),
        (
            "mounts: [{type: tmp, target: /t, size: 99999999999999T}]",
            ":2:40: mounts[0].size: ",
            "at most 8 PiB",
        ),
        (
            "mounts: [{type: tmp, target: /t, size: 18446744073709551617}]",
            ":2:40: mounts[0].size: ",
            "",
        ),
        (
            "security: {rlimits: {nproc: 18446744073709551616}}",
            ":2:29: security.rlimits.nproc: ",
            "",
        ),
        (
            "security: {rlimits: {nofile: 4294967296}}",
            ":2:30: security.rlimits.nofile: ",
            "largest fs.nr_open",
        ),
        ("user: 4294967295", ":2:7: user: ", ""),
        ("user: '99999999999:0'", ":2:7: user: ", "id '99999999999' is above 4294967294"),
        ("user: '0:4294967296'", ":2:7: user: ", "above 4294967294"),
        (
            "idmap: {uid: [{inside: 0, outside: 4294967290, count: 100}]}",
            ":2:15: idmap.uid[0]: ",
            "outside + count goes past uid 4294967294",
        ),
        ("stop: {timeout: 1.0e+300}", ":2:17: stop.timeout: ", "must be <= 31536000"),
        ("capabilities: [" + "zz, " * 9000 + "]", ":2:15: capabilities: ", "more than 128 items"),
        ("capabilities: +" + "x" * 4000, ":2:15: capabilities: ", "is not a capability name"),
        # a CFS quota under 1 ms is EINVAL: 0.01 CPU is 1 ms of each 100 ms period
        ("cgroup: {cpu: 0.001}", ":2:15: cgroup.cpu: ", "must be >= 0.01"),
        ('hostname: "box\\n"', ":2:11: hostname: ", "'box\\n' is not valid"),
        ('name: "a\\nb"', ":2:7: name: ", "'a\\nb' is not valid"),
    ],
)
def test_values_out_of_range_fail_validation(
    tmp_path: Path, fields: str, where: str, words: str
) -> None:
    manifest = tmp_path / "range.yaml"
    manifest.write_text(f"version: 1\n{fields}\n")
    line = assert_refused(measured("validate", manifest), manifest, where, words)
    assert "aaaaa" * 17 not in line  # at most 80 characters of the value


@pytest.mark.parametrize(
    ("name", "text", "where"),
    [
        ("nul.yaml", 'version: 1\ncommand: ["echo", "a\\0b"]\n', ":2:19: command[1]: "),
        ("nul.json", '{"version": 1, "workdir": "/a\\u0000b"}', ": workdir: "),
        ("nul.toml", 'version = 1\nhostname = "a\\u0000"\n', ": hostname: "),
        ("key.yaml", 'version: 1\nenv: {set: {"A\\0": x}}\n', ":2:13: env.set['A\\x00']: "),
        ("mount.yaml", 'version: 1\nmounts: [{type: bind, source: "/\\0", target: /x}]\n', ""),
        (
            "surrogate.json",
            '{"version": 1, "command": ["a", "\\udc80"]}',
            "lone surrogate ('\\udc80')",
        ),
        ("key.json", '{"version": 1, "env": {"set": {"\\ud800": "x"}}}', "the name holds a lone"),
    ],
)
def test_nul_characters_and_lone_surrogates_fail_validation(
    tmp_path: Path, name: str, text: str, where: str
) -> None:
    manifest = tmp_path / name
    manifest.write_text(text)
    line = assert_refused(measured("validate", manifest), manifest, where)
    assert "\x00" not in line and ("NUL character" in line or "surrogate" in line)


def test_a_long_unknown_key_and_control_characters_stay_on_one_short_line(tmp_path: Path) -> None:
    manifest = tmp_path / "keys.json"
    manifest.write_text(json.dumps({"version": 1, "\x1b[2J\n" + "k" * 500_000: 1}))
    line = assert_refused(measured("validate", manifest), manifest, "unknown field")
    assert "\x1b" not in line and "k" * 81 not in line


def test_many_errors_are_counted_past_twenty(tmp_path: Path) -> None:
    manifest = tmp_path / "many.yaml"
    mounts = "".join(f"  - {{type: bind, source: /s, target: rel{n}}}\n" for n in range(500))
    manifest.write_text(f"version: 1\nmounts:\n{mounts}")
    outcome = measured("validate", manifest)
    lines = outcome.stderr.splitlines()
    assert outcome.status == 2 and len(lines) == 21, outcome
    assert lines[-1] == f"pflask: {manifest}: and 480 more errors"
    assert outcome.seconds < TIME_LIMIT and outcome.rss < RSS_LIMIT, outcome


# --- the unprivileged path and the limits themselves ---------------------------------------------


def test_an_ordinary_user_is_refused_the_same_way(shared_tmp: Path) -> None:
    user = user_info()
    bomb = shared_tmp / "lol.yaml"
    bomb.write_text(billion_laughs("unused"))
    bomb.chmod(0o644)
    fifo = shared_tmp / "fifo.yaml"
    os.mkfifo(fifo)
    for manifest, words in ((bomb, "more than 10000 values"), (fifo, "a FIFO")):
        start = time.monotonic()
        result = run_as([*pflask_cmd(), "run", str(manifest)], user=user.name, timeout=10)
        assert result.returncode == 2, result
        assert result.stderr.startswith(f"pflask: {manifest}") and words in result.stderr, result
        assert result.stderr.count("\n") == 1, result
        assert time.monotonic() - start < 2 * TIME_LIMIT  # runuser's own start included


def test_manifests_at_the_limits_still_load(tmp_path: Path) -> None:
    """The caps leave room: a file of almost 1 MiB, 9,000 values, nesting 30 deep, 8 bases."""
    big = tmp_path / "big.yaml"
    big.write_text("version: 1\nenv: {set: {A: " + "x" * ((1 << 20) - 100) + "}}\n")
    with pytest.raises(loader.ManifestError, match="longer than 131072"):
        loader.load(str(big), env={})
    wide = tmp_path / "wide.yaml"
    wide.write_text("version: 1\ncommand: [" + ", ".join(["x"] * 9_000) + "]\n")
    assert len(loader.load(str(wide), env={}).data["command"]) == 9_000
    deep = tmp_path / "deep.yaml"
    deep.write_text("version: 1\nx-deep: " + "[" * 30 + "]" * 30 + "\n")
    with pytest.raises(loader.ManifestError, match="unknown field"):
        loader.load(str(deep), env={})
    for n in range(8):
        (tmp_path / f"c{n}.yaml").write_text(f"version: 1\nextends: c{n + 1}.yaml\n")
    (tmp_path / "c8.yaml").write_text("version: 1\nhostname: deepest\n")
    assert loader.load(str(tmp_path / "c0.yaml"), env={}).data["hostname"] == "deepest"


def test_a_set_override_is_bounded_like_a_file(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text("version: 1\n")
    bomb = "[" + ", ".join(["&a0 [x, x, x, x, x, x, x, x, x]"] + ["*a0"] * 2000) + "]"
    outcome = measured("validate", manifest)
    assert outcome.status == 0, outcome
    outcome = measured("plan", manifest, "--set", f"command={bomb}")
    assert_refused(outcome, "command line", "more than 10000 values")


def test_limits_are_documented_in_the_readme() -> None:
    """The README's numbers are the code's: a changed cap fails here until documented."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = " ".join(readme[readme.index("- **Limits**") :].split("\n- ")[0].split())
    for text in (
        f"at most {loader.MAX_FILE_BYTES >> 20} MiB",
        f"at most {loader.MAX_NODES:,} values",
        f"nested at most {loader.MAX_DEPTH} levels",
        f"at most {loader.MAX_EXTENDS_DEPTH} levels of bases",
        f"at most {loader.MAX_FILES} files",
        f"most {loader.MAX_EXPANSION >> 20} MiB",
        f"at most {errors.SHOWN} characters",
        f"At most {loader.MAX_ERRORS} errors",
        f"up to {loader.PATH_MAX:,} characters",
        f"up to {semantics.ID_MAX}",
        f"`nofile` up to {semantics.NOFILE_MAX}",
        f"up to {semantics.BYTES_MAX >> 50} PiB",
    ):
        assert text in section, text


def test_non_utf8_bytes_in_the_original_flags_still_work() -> None:
    """Surrogates are refused in manifest files (Unicode text), not in argv,
    where they stand for bytes that are not UTF-8 (a real directory name)."""
    chroot = os.fsdecode(b"/tmp/caf\xe9")
    outcome = measured("--plan", "--chroot", chroot)
    assert outcome.status == 0 and not outcome.stderr, outcome
