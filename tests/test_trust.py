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

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import as_user_argv, describe, run_as, run_pflask, wait_for

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
    from pflask.run import machined

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


# --- state records ------------------------------------------------------------------------------

FORGE = """
import marshal, os, sys, time
from pflask.compile import context
from pflask import pipeline
from pflask.run import state
name, supervisor, pid, manifest = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
plan, _ = pipeline.compile_file(manifest, (), context.read(None))
where = state.directory()
where.ensure()
data = {
    "format": state.FORMAT, "name": name, "uid": os.geteuid(), "boot": state.boot_id(),
    "supervisor": supervisor, "supervisor_start": state.start_time(supervisor),
    "pid": pid, "pid_start": state.start_time(pid), "started": time.time(),
    "root": plan.root, "command": plan.command, "detached": True, "console": True,
    "stop_signal": "SIGKILL", "stop_timeout": 1.0, "plan": plan.to_wire(),
}
with open(where.file(name), "wb") as f:
    f.write(marshal.dumps(data))
print(where.path)
"""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def forge(user: str, name: str, supervisor: int, pid: int, path: Path) -> Path:
    """As `user`, write a record naming any processes: all a user can do."""
    result = run_as(
        [sys.executable, "-c", FORGE, name, str(supervisor), str(pid), str(path)], user=user
    )
    assert result.returncode == 0, describe(result)
    return Path(result.stdout.strip())


@pytest.fixture
def processes() -> Iterator[Any]:
    """Start processes (as root or as a user) that a forged record can name; killed after."""
    started: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], user: Any = None) -> subprocess.Popen[bytes]:
        if user is not None:
            argv = as_user_argv(user, argv)
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


@pytest.fixture
def user_state(test_user: Any) -> Iterator[Path]:
    """pflask-test's state directory (the /tmp fallback), removed after the test."""
    where = Path(f"/tmp/pflask-{test_user.uid}")
    yield where
    if where.is_symlink() or where.is_file():
        where.unlink()
    elif where.exists():
        shutil.rmtree(where)


def children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def test_root_does_not_act_on_a_record_naming_its_own_processes(
    shared_tmp: Path, test_user: Any, processes: Any, user_state: Path
) -> None:
    """An ordinary user writes a record naming a root process (here a sleep;
    it could be sshd or PID 1) as both supervisor and PID 1: stop, exec and
    attach by root must leave it alone."""
    victim = processes(["sleep", "60"])
    path = manifest(shared_tmp, "forged", command=["true"])
    where = forge("pflask-test", "forged", victim.pid, victim.pid, path)
    assert where == user_state
    marker = shared_tmp / "ran-as-root"
    # By pid, as root's habit was: root's own containers only, now.
    result = run_pflask("stop", str(victim.pid))
    assert result.returncode == 2, describe(result)
    assert "another user's: --owner USER" in result.stderr
    # Named explicitly: the record is checked against the kernel, and refused.
    for args in (
        ("stop", "--owner", "pflask-test", "forged"),
        ("exec", "--owner", "pflask-test", "forged", "--", "touch", str(marker)),
        ("attach", "--owner", "pflask-test", "forged"),
        ("stop", "--owner", str(test_user.uid), str(victim.pid)),
    ):
        result = run_pflask(*args)
        assert result.returncode == 125, describe(result)
        assert f"its supervisor (pid {victim.pid}) is not uid {test_user.uid}'s" in result.stderr
        assert len(result.stderr.splitlines()) == 1
    assert victim.poll() is None  # never signalled
    assert not marker.exists()
    listed = run_pflask("ps", "--json", "--owner", "pflask-test")
    assert json.loads(listed.stdout) == []  # not shown as the user's container either


def test_root_enters_another_users_processes_only_in_their_user_namespace(
    shared_tmp: Path, test_user: Any, processes: Any, user_state: Path
) -> None:
    """The user's own processes, in the host's namespaces, named as supervisor
    and PID 1 (its child): entering them as the host's root would run root's
    command in the mount namespace (and with the plan's environment) the user
    chose.  Refused: an ordinary user's PID 1 is always in their user namespace."""
    parent = processes(["sh", "-c", "sleep 60 & wait"], user=test_user)
    child = wait_for(lambda: children(parent.pid), timeout=5)[0]
    path = manifest(
        shared_tmp, "own", command=["true"], env={"set": {"LD_PRELOAD": "/tmp/evil.so"}}
    )
    forge("pflask-test", "own", parent.pid, child, path)
    marker = shared_tmp / "ran-as-root"
    result = run_pflask("exec", "--owner", "pflask-test", "own", "--", "touch", str(marker))
    assert result.returncode == 125, describe(result)
    assert f"is not in a user namespace of uid {test_user.uid}" in result.stderr
    assert not marker.exists()
    result = run_pflask("stop", "--owner", "pflask-test", "own")
    assert result.returncode == 125, describe(result)
    assert parent.poll() is None and Path(f"/proc/{child}").exists()


def test_root_acts_on_another_users_real_container_when_told_whose(
    shared_tmp: Path, busybox_root: Path, test_user: Any
) -> None:
    name = f"trust-real-{os.getpid()}"
    path = manifest(shared_tmp, "real", root={"path": str(busybox_root)})
    started = run_pflask(
        "run", path, "--detach", "--name", name, "--", "sleep", "60", user="pflask-test"
    )
    assert started.returncode == 0, describe(started)
    try:
        assert name not in run_pflask("ps").stdout  # root's own list
        rows = json.loads(run_pflask("ps", "--json", "--owner", "pflask-test").stdout)
        assert [row["name"] for row in rows] == [name]
        # Root goes in as the root of the user's user namespace, not the host's.
        inside = run_pflask(
            "exec", name, "--owner", "pflask-test", "--", "cat", "/proc/self/uid_map"
        )
        assert inside.returncode == 0, describe(inside)
        assert inside.stdout.split()[:3] != ["0", "0", "4294967295"]
        assert inside.stdout.split()[1] in (str(test_user.uid), str(test_user.subuid[0]))
    finally:
        stopped = run_pflask("stop", "--owner", "pflask-test", name, "--timeout", "1")
    assert stopped.returncode == 0, describe(stopped)
    assert json.loads(run_pflask("ps", "--json", "--owner", "pflask-test").stdout) == []


def test_only_root_names_another_owner(test_user: Any) -> None:
    result = run_pflask("ps", "--owner", "root", user="pflask-test")
    assert result.returncode == 2
    assert "only root may act on another user's containers" in result.stderr
    result = run_pflask("ps", "--owner", "4294967295")
    assert result.returncode == 2 and "--owner 4294967295: not a uid" in result.stderr
    result = run_pflask("stop", "--owner", "no-such-user-here", "x")
    assert (result.returncode, result.stderr) == (
        2,
        "pflask: --owner no-such-user-here: no such user\n",
    )


class Squatter:
    """Another user's socket where ours would be: counts who connects."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.connections = 0
        self.done = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.done:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self.done = True
        self.thread.join()
        self.sock.close()


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_a_squatted_tmp_fallback_is_reported_never_followed(
    shared_tmp: Path, busybox_root: Path, test_user: Any, user_state: Path, kind: str
) -> None:
    """nobody makes /tmp/pflask-UID before pflask-test's first container."""
    lair = shared_tmp / "lair"
    lair.mkdir(mode=0o777)
    lair.chmod(0o777)
    if kind == "symlink":
        user_state.symlink_to(lair)
        os.lchown(user_state, 65534, 65534)
        store = lair
    else:
        user_state.mkdir(mode=0o777)
        user_state.chmod(0o777)
        os.chown(user_state, 65534, 65534)
        store = user_state
    os.chown(lair, 65534, 65534)
    path = manifest(shared_tmp, "victim", root={"path": str(busybox_root)})
    name = f"trust-victim-{os.getpid()}"
    forged = forge_as_root(store, name, test_user.uid)
    squatter = Squatter(user_state / f"{name}.sock")  # through the symlink: a short path
    try:
        for args in (
            ("run", str(path), "--", "true"),
            ("ps",),
            ("exec", name, "--", "true"),
            ("attach", name),
            ("stop", name),
        ):
            result = run_pflask(*args, user="pflask-test", timeout=10)
            assert result.returncode == 125, describe(result)
            line = result.stderr.strip()
            assert line.count("\n") == 0, describe(result)
            assert f"state directory {user_state} is" in line
            assert "another user made it first" in line and "XDG_RUNTIME_DIR" in line
        time.sleep(0.3)
        assert squatter.connections == 0
        assert forged.exists() and not (store / "forged-by-pflask").exists()
        # The fix the message gives works.
        runtime = shared_tmp / "runtime"
        runtime.mkdir(mode=0o700)
        os.chown(runtime, test_user.uid, test_user.gid)
        ok = run_pflask(
            "run", path, "--", "true", user="pflask-test", env={"XDG_RUNTIME_DIR": str(runtime)}
        )
        assert ok.returncode == 0, describe(ok)
    finally:
        squatter.close()


def forge_as_root(store: Path, name: str, uid: int) -> Path:
    """A plausible record of `uid` in the squatter's directory (any content will do:
    it must never be read)."""
    import marshal

    record = store / f"{name}.state"
    record.write_bytes(marshal.dumps({"format": 1, "name": name, "uid": uid}))
    return record


def test_a_state_directory_open_to_others_is_refused(
    shared_tmp: Path, busybox_root: Path, test_user: Any
) -> None:
    runtime = shared_tmp / "runtime"
    (runtime / "pflask").mkdir(parents=True)
    os.chown(runtime, test_user.uid, test_user.gid)
    os.chown(runtime / "pflask", test_user.uid, test_user.gid)
    (runtime / "pflask").chmod(0o755)
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    path = manifest(shared_tmp, "open", root={"path": str(busybox_root)})
    for args in (("run", str(path), "--", "true"), ("ps",)):
        result = run_pflask(*args, user="pflask-test", env=env)
        assert result.returncode == 125, describe(result)
        assert result.stderr == (
            f"pflask: state directory {runtime}/pflask is a directory of uid {test_user.uid} "
            f"with mode 755, not uid {test_user.uid}'s private one: chmod 700 {runtime}/pflask\n"
        )


@pytest.mark.parametrize("user", USERS)
def test_attach_talks_only_to_the_supervisors_socket(
    shared_tmp: Path, busybox_root: Path, test_user: Any, user: str | None
) -> None:
    """Another process's socket in the container's place (here root's, made
    reachable to all) is refused before a byte is sent: the kernel names the
    process serving it (SO_PEERCRED), and it is not the supervisor."""
    name = f"trust-sock-{os.getpid()}"
    path = manifest(shared_tmp, "sock", root={"path": str(busybox_root)})
    owner = "pflask-test" if user is None else None  # root attaches to the user's
    who = ("--owner", "pflask-test") if owner else ()
    started = run_pflask("run", path, "--detach", "--name", name, "--", "sh", user="pflask-test")
    assert started.returncode == 0, describe(started)
    sock = Path(f"/tmp/pflask-{test_user.uid}/{name}.sock")
    squatter = None
    try:
        sock.unlink()
        squatter = Squatter(sock)
        sock.chmod(0o777)
        result = run_pflask("attach", *who, name, user=user, input=b"echo hi\n", timeout=10)
        assert result.returncode == 125, describe(result)
        assert f"is served by pid {os.getpid()} (uid 0), not by its supervisor" in result.stderr
        assert "hi" not in result.stdout
    finally:
        if squatter is not None:
            squatter.close()
        stopped = run_pflask("stop", name, "--timeout", "1", user="pflask-test")
    assert stopped.returncode == 0, describe(stopped)
