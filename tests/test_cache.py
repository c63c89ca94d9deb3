"""The start-up cache: a compiled plan is reused only while everything it came from is unchanged."""

from __future__ import annotations

import marshal
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import UserInfo, pflask_cmd, run_pflask

from pflask.compile import cache

pytestmark = pytest.mark.usefixtures("host_clean")


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def run(
    manifest: Path,
    cache_dir: Path,
    *args: str,
    env: dict[str, str | None] | None = None,
) -> subprocess.CompletedProcess[str]:
    return run_pflask("run", manifest, *args, env={"XDG_CACHE_HOME": str(cache_dir), **(env or {})})


def entries(cache_dir: Path) -> list[Path]:
    folder = cache_dir / "pflask"
    return sorted(folder.iterdir()) if folder.exists() else []


def imports_of_a_run(manifest: Path, cache_dir: Path) -> str:
    """The modules a `pflask run` imports, from -X importtime."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *pflask_cmd(), "run", str(manifest)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "XDG_CACHE_HOME": str(cache_dir)},
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text("version: 1\nhostname: first\ncommand: [hostname]\n")
    return path


def test_second_run_uses_the_cache_and_skips_yaml_schema_and_compiler(
    manifest: Path, cache_dir: Path
) -> None:
    first = imports_of_a_run(manifest, cache_dir)
    assert "yaml" in first and "jsonschema" in first
    assert len(entries(cache_dir)) == 1
    second = imports_of_a_run(manifest, cache_dir)
    # Each of these costs a millisecond or more per start (ctypes: _ctypes is enough;
    # encodings.ascii: a file opened with encoding="ascii"; the terminal's module:
    # stdin is not a terminal here).
    heavy = [
        "yaml",
        "jsonschema",
        "pflask.compile.compiler",
        "pflask.load.loader",
        "pflask.commands.commands",
        "argparse",
        "typing",
        "re",
        "json",
        "dataclasses",
        "subprocess",
        "pathlib",
        "ctypes",
        "struct",
        "encodings.ascii",
        "pflask.run.network",
        "pflask.run.terminal",
    ]
    for module in heavy:
        assert f" {module}\n" not in second, module
    assert (cache_dir / "pflask").stat().st_mode & 0o777 == 0o700


def test_changed_manifest_is_recompiled(manifest: Path, cache_dir: Path) -> None:
    assert run(manifest, cache_dir).stdout == "first\n"
    manifest.write_text("version: 1\nhostname: second\ncommand: [hostname]\n")
    assert run(manifest, cache_dir).stdout == "second\n"


def test_changed_base_is_recompiled(tmp_path: Path, cache_dir: Path) -> None:
    base = tmp_path / "base.toml"
    base.write_text('version = 1\nhostname = "from-base"\n')
    child = tmp_path / "child.yaml"
    child.write_text("version: 1\nextends: base.toml\ncommand: [hostname]\n")
    assert run(child, cache_dir).stdout == "from-base\n"
    base.write_text('version = 1\nhostname = "base-changed"\n')
    assert run(child, cache_dir).stdout == "base-changed\n"


def test_changed_variable_is_recompiled(tmp_path: Path, cache_dir: Path) -> None:
    path = tmp_path / "vars.yaml"
    path.write_text('version: 1\nhostname: "${BOXNAME:-fallback}"\ncommand: [hostname]\n')
    assert run(path, cache_dir, env={"BOXNAME": None}).stdout == "fallback\n"
    assert run(path, cache_dir, env={"BOXNAME": "one"}).stdout == "one\n"
    assert run(path, cache_dir, env={"BOXNAME": "two"}).stdout == "two\n"
    assert run(path, cache_dir, env={"BOXNAME": None}).stdout == "fallback\n"


def test_command_and_set_are_part_of_the_key(manifest: Path, cache_dir: Path) -> None:
    assert run(manifest, cache_dir, "--", "echo", "other").stdout == "other\n"
    assert run(manifest, cache_dir, "--set", "hostname=third").stdout == "third\n"
    assert run(manifest, cache_dir).stdout == "first\n"


def test_pflask_version_is_part_of_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    before = cache.key("/m.yaml", ())
    monkeypatch.setattr(cache, "__version__", "999")
    assert cache.key("/m.yaml", ()) != before


def poison(entry: Path, hostname: str) -> None:
    """Rewrite a valid entry so its plan would print another hostname."""
    data = marshal.loads(entry.read_bytes())
    steps = tuple(
        (kind, {**fields, "name": hostname}) if kind == "hostname" else (kind, fields)
        for kind, fields in data["plan"]["steps"]
    )
    data["plan"] = {**data["plan"], "steps": steps}
    entry.write_bytes(marshal.dumps(data))


def test_a_valid_entry_is_really_used(manifest: Path, cache_dir: Path) -> None:
    run(manifest, cache_dir)
    poison(entries(cache_dir)[0], "from-cache")
    assert run(manifest, cache_dir).stdout == "from-cache\n"  # proves the poison tests below


def test_foreign_owned_entry_is_ignored(
    manifest: Path, cache_dir: Path, test_user: UserInfo
) -> None:
    run(manifest, cache_dir)
    entry = entries(cache_dir)[0]
    poison(entry, "from-cache")
    os.chown(entry, test_user.uid, test_user.gid)
    assert run(manifest, cache_dir).stdout == "first\n"


def test_writable_by_others_entry_is_ignored(manifest: Path, cache_dir: Path) -> None:
    run(manifest, cache_dir)
    entry = entries(cache_dir)[0]
    poison(entry, "from-cache")
    entry.chmod(0o666)
    assert run(manifest, cache_dir).stdout == "first\n"


def test_symlinked_entry_is_ignored(manifest: Path, cache_dir: Path, tmp_path: Path) -> None:
    run(manifest, cache_dir)
    entry = entries(cache_dir)[0]
    poison(entry, "from-cache")
    target = tmp_path / "elsewhere"
    entry.rename(target)
    entry.symlink_to(target)
    assert run(manifest, cache_dir).stdout == "first\n"


@pytest.mark.parametrize(
    "garbage", [b"", b"\x00\x01garbage", marshal.dumps([1, 2, 3]), marshal.dumps({"format": 1})]
)
def test_corrupt_entry_is_ignored_and_replaced(
    manifest: Path, cache_dir: Path, garbage: bytes
) -> None:
    run(manifest, cache_dir)
    entry = entries(cache_dir)[0]
    entry.write_bytes(garbage)
    assert run(manifest, cache_dir).stdout == "first\n"
    assert marshal.loads(entry.read_bytes())["format"] == cache.FORMAT


def test_no_cache_neither_reads_nor_writes(manifest: Path, cache_dir: Path) -> None:
    assert run(manifest, cache_dir, "--no-cache").stdout == "first\n"
    assert entries(cache_dir) == []
    run(manifest, cache_dir)
    poison(entries(cache_dir)[0], "from-cache")
    assert run(manifest, cache_dir, "--no-cache").stdout == "first\n"


def test_unwritable_cache_is_no_error(manifest: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache directory would go")
    result = run(manifest, blocked)
    assert (result.returncode, result.stdout) == (0, "first\n")


def test_each_user_has_its_own_cache(shared_tmp: Path, test_user: UserInfo) -> None:
    path = shared_tmp / "job.yaml"
    path.write_text("version: 1\nhostname: mine\ncommand: [hostname]\n")
    result = run_pflask("run", path, user="pflask-test")
    assert result.stdout == "mine\n", result.stderr
    owned = list((test_user.home / ".cache" / "pflask").iterdir())
    assert owned and all(p.stat().st_uid == test_user.uid for p in owned)


def test_a_changed_compiler_is_part_of_the_key(tmp_path: Path) -> None:
    before = cache.key("/m.yaml", ())
    compiler = Path(cache.__file__).with_name("compiler.py")
    stat = compiler.stat()
    try:
        os.utime(compiler, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        assert cache.key("/m.yaml", ()) != before
    finally:
        os.utime(compiler, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert cache.key("/m.yaml", ()) == before


def test_the_cache_does_not_grow_without_bound(manifest: Path, cache_dir: Path) -> None:
    folder = cache_dir / "pflask"
    folder.mkdir(parents=True, mode=0o700)
    for i in range(cache.MAX_ENTRIES + 5):
        old = folder / f"{i:040x}"
        old.write_bytes(b"stale")
        os.utime(old, ns=(i, i))  # older than anything written now
    assert run(manifest, cache_dir, "--", "echo", "new").stdout == "new\n"
    left = entries(cache_dir)
    assert len(left) <= cache.MAX_ENTRIES // 2 + 1
    assert [p for p in left if p.read_bytes() != b"stale"]  # the new plan stays
    assert not (folder / f"{0:040x}").exists()  # the oldest went first


# --- the original flags ------------------------------------------------------------------------


def classic(
    cache_dir: Path, *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return run_pflask(*args, env={"XDG_CACHE_HOME": str(cache_dir)}, cwd=cwd)


def test_original_flags_run_from_the_cache_the_second_time(
    busybox_root: Path, cache_dir: Path
) -> None:
    """Same flags, same plan, skipped compiler; yet each run has its own pflask-PID name."""
    flags = (f"--chroot={busybox_root}", "--", "sh", "-c", "hostname")
    first = classic(cache_dir, *flags)
    assert first.returncode == 0, first.stderr
    assert len(entries(cache_dir)) == 1
    second = classic(cache_dir, *flags)
    assert second.returncode == 0, second.stderr
    names = {first.stdout.strip(), second.stdout.strip()}
    assert len(names) == 2 and all(n.startswith("pflask-") for n in names), names
    assert "pflask-PID" not in names
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *pflask_cmd(), *flags],
        capture_output=True,
        text=True,
        env={**os.environ, "XDG_CACHE_HOME": str(cache_dir)},
    )
    assert result.returncode == 0, result.stderr
    for module in (
        "argparse",
        "jsonschema",
        "yaml",
        "pflask.compile.compiler",
        "pflask.load.classic",
    ):
        assert f" {module}\n" not in result.stderr, module


def test_original_flags_resolve_relative_paths_per_directory(
    busybox_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """`--chroot=root` means another root in another directory: another entry."""
    for name, marker in (("one", "first"), ("two", "second")):
        where = tmp_path / name
        where.mkdir()
        (where / "root").symlink_to(busybox_root)
        (where / "data").mkdir()
        (where / "data" / "marker").write_text(marker)
    flags = ("--chroot=root", "--mount=bind-ro:data:/mnt", "--", "cat", "/mnt/marker")
    assert classic(cache_dir, *flags, cwd=tmp_path / "one").stdout == "first"
    assert classic(cache_dir, *flags, cwd=tmp_path / "two").stdout == "second"
    assert classic(cache_dir, *flags, cwd=tmp_path / "one").stdout == "first"
    assert len(entries(cache_dir)) == 2


def test_original_flags_that_run_nothing_or_ask_so_are_not_cached(
    busybox_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    root = f"--chroot={busybox_root}"
    assert classic(cache_dir, "--plan", root, "--", "true").returncode == 0
    assert classic(cache_dir, "--save", str(tmp_path / "x.yaml"), root).returncode == 0
    assert classic(cache_dir, "--help").returncode == 0
    assert classic(cache_dir, "--no-cache", root, "--", "true").returncode == 0
    verbose = classic(cache_dir, "-v", root, "--", "true")
    assert verbose.returncode == 0 and "step 1" in verbose.stderr
    assert entries(cache_dir) == []
    again = classic(cache_dir, "-v", root, "--", "true")
    assert "step 1" in again.stderr  # a trace every time: never served from the cache
