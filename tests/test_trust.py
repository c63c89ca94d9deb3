"""Trust: what pflask reads that someone else may have written.

- files of a container's root (passwd, group): a FIFO, a device, a 3 GiB
  file or an id of -1 end the start at once with one line and exit 125;
- state records and sockets: root acts on its own records only unless told
  whose (`--owner`), then checks them against the kernel; a squatted
  /tmp/pflask-UID is reported, never followed;
- the plan cache: a symlinked cache directory is neither written nor pruned.

Each attack is run for real, as root and as the unprivileged pflask-test
where it applies, and each asserts what the attacker was after did not happen.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import describe, run_pflask

pytestmark = pytest.mark.usefixtures("host_clean")

USERS = [None, "pflask-test"]


def manifest(directory: Path, name: str, **fields: Any) -> Path:
    """A manifest for container trust-`name`-PID (sessions running at once do not collide)."""
    directory.chmod(0o755)
    path = directory / f"{name}.yaml"
    data = {"version": 1, "name": f"trust-{name}-{os.getpid()}", **fields}
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o644)
    return path


def refused_at_once(result: Any, started: float, *wanted: str) -> None:
    """Exit 125 within a second, one line naming what was wrong, no traceback."""
    elapsed = time.monotonic() - started
    assert result.returncode == 125, describe(result)
    assert elapsed < 1, f"{elapsed:.2f} s\n{describe(result)}"
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("pflask: "), describe(result)
    assert "Traceback" not in result.stderr
    for text in wanted:
        assert text in lines[0], describe(result)


# --- files of the root --------------------------------------------------------------------------


def _fifo(path: Path) -> None:
    os.mkfifo(path, 0o644)


def _zero(path: Path) -> None:
    path.symlink_to("/dev/zero")  # the container's own /dev/zero, once inside


def _huge(path: Path) -> None:
    with path.open("wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GiB that take no disk
    path.chmod(0o644)


def _escape(path: Path) -> None:
    path.symlink_to("/proc/1/root/etc/passwd")  # a magic link back to the host's


KINDS = {
    "fifo": (_fifo, "a FIFO, not a regular file"),
    "dev-zero": (_zero, "a character device, not a regular file"),
    "3GiB": (_huge, "3221225472 bytes, more than the 16777216 pflask reads"),
    "magic-link": (_escape, "openat2(2) /etc/passwd: ELOOP"),
}


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("field", ["user", "environment"])
def test_a_hostile_passwd_is_a_setup_error_in_under_a_second(
    writable_busybox_root: Path,
    shared_tmp: Path,
    kind: str,
    field: str,
    user: str | None,
    test_user: Any,
) -> None:
    """passwd is read on every start with a root (USER and HOME), not only for `user:`."""
    make, message = KINDS[kind]
    passwd = writable_busybox_root / "etc" / "passwd"
    passwd.unlink()
    make(passwd)
    fields: dict[str, Any] = {"root": {"path": str(writable_busybox_root)}}
    if field == "user":
        fields["user"] = "alice"
    path = manifest(shared_tmp, f"{kind}-{field}", **fields)
    started = time.monotonic()
    result = run_pflask("run", path, "--", "echo", "ran", user=user, timeout=10)
    refused_at_once(result, started, "/etc/passwd", message)
    assert "ran" not in result.stdout


@pytest.mark.parametrize("user", USERS)
def test_a_hostile_group_file_is_a_setup_error(
    writable_busybox_root: Path, shared_tmp: Path, user: str | None, test_user: Any
) -> None:
    group = writable_busybox_root / "etc" / "group"
    group.unlink()
    os.mkfifo(group, 0o644)
    path = manifest(shared_tmp, "group", root={"path": str(writable_busybox_root)}, user="alice")
    started = time.monotonic()
    result = run_pflask("run", path, "--", "echo", "ran", user=user, timeout=10)
    refused_at_once(result, started, "/etc/group: a FIFO, not a regular file")


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("uid", ["-1", "4294967295"])
def test_passwd_with_uid_minus_1_does_not_run_as_root(
    writable_busybox_root: Path, shared_tmp: Path, uid: str, user: str | None, test_user: Any
) -> None:
    """(uid_t)-1 is "leave unchanged" to setresuid(2): alice would have been root."""
    passwd = writable_busybox_root / "etc" / "passwd"
    passwd.write_text(
        f"root:x:0:0:root:/root:/bin/sh\nalice:x:{uid}:{uid}:Alice:/home/alice:/bin/sh\n"
    )
    path = manifest(shared_tmp, "uid", root={"path": str(writable_busybox_root)}, user="alice")
    started = time.monotonic()
    result = run_pflask("run", path, "--", "id", "-u", user=user, timeout=10)
    refused_at_once(result, started, f"/etc/passwd line 2 (alice): uid: '{uid}' is not an id")
    assert result.stdout == ""


def test_a_hostile_machine_id_is_left_out_with_a_warning(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """machined registration reads the root's /etc/machine-id on the host side:
    a FIFO there would have hung the supervisor before the container ran."""
    from pflask import machined

    etc = tmp_path / "etc"
    etc.mkdir()
    os.mkfifo(etc / "machine-id")
    started = time.monotonic()
    assert machined.root_machine_id(str(tmp_path)) is None
    assert time.monotonic() - started < 1
    assert "etc/machine-id: a FIFO, not a regular file" in capfd.readouterr().err
    (etc / "machine-id").unlink()
    (etc / "machine-id").symlink_to("/proc/1/root/etc/machine-id")  # the host's, through /proc
    assert machined.root_machine_id(str(tmp_path)) is None
    (etc / "machine-id").unlink()
    (etc / "machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    assert machined.root_machine_id(str(tmp_path)) == "0123456789abcdef0123456789abcdef"


# --- the plan cache -----------------------------------------------------------------------------


def listing(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("user", USERS)
def test_a_symlinked_cache_directory_is_neither_written_nor_pruned(
    shared_tmp: Path, user: str | None, test_user: Any
) -> None:
    """The cache directory's owner (the user whose HOME root runs with, say)
    points it at a directory of the runner's: 300 files that look like old
    entries would have been pruned to 128, and a plan written there."""
    owner = test_user.uid if user is None else 0  # someone else sets the trap
    cache_home = shared_tmp / "cache"
    cache_home.mkdir()
    victim = shared_tmp / "victim"
    victim.mkdir(mode=0o700)
    runner = test_user.uid if user else 0
    for i in range(300):
        old = victim / f"{i:040x}"
        old.write_bytes(b"precious")
        os.utime(old, ns=(i, i))
        os.chown(old, runner, runner)
    os.chown(victim, runner, runner)
    (cache_home / "pflask").symlink_to(victim)
    os.lchown(cache_home / "pflask", owner, owner)
    os.chown(cache_home, owner, owner)
    before = listing(victim)
    path = manifest(shared_tmp, "cache", hostname="cached", command=["hostname"])
    env = {"XDG_CACHE_HOME": str(cache_home)}
    for command in ([], ["--", "echo", "two"], []):
        result = run_pflask("run", path, *command, user=user, env=env)
        assert result.returncode == 0, describe(result)
        assert result.stdout in ("cached\n", "two\n")
    assert listing(victim) == before


def test_pruning_removes_only_pflasks_own_entries(shared_tmp: Path) -> None:
    cache_home = shared_tmp / "cache"
    folder = cache_home / "pflask"
    folder.mkdir(parents=True, mode=0o700)
    for i in range(300):
        old = folder / f"{i:040x}"
        old.write_bytes(b"stale")
        os.utime(old, ns=(i, i))
    others = {
        "notes.txt": b"mine",
        f"{'a' * 39}": b"too short for a key",
        f".{'b' * 40}.x": b"not a temporary's name",
    }
    for name, data in others.items():
        (folder / name).write_bytes(data)
        os.utime(folder / name, ns=(0, 0))
    (folder / f"{'c' * 40}").mkdir()  # a key's name, but no file
    os.utime(folder / f"{'c' * 40}", ns=(0, 0))
    path = manifest(shared_tmp, "prune", command=["true"])
    result = run_pflask("run", path, env={"XDG_CACHE_HOME": str(cache_home)})
    assert result.returncode == 0, describe(result)
    for name, data in others.items():
        assert (folder / name).read_bytes() == data
    assert (folder / f"{'c' * 40}").is_dir()
    assert not (folder / f"{0:040x}").exists()  # the old entries did go
    assert len([p for p in folder.iterdir() if len(p.name) == 40]) <= 129
