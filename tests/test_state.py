"""Named containers: detach and attach, ps, stop, exec, stale state, name conflicts.

Everything runs real containers on this kernel, as root and as the
unprivileged user pflask-test (whose state lives in /tmp/pflask-UID: the test
environment has no XDG_RUNTIME_DIR, the fallback documented in state.py).
Terminals are real too: tmux sessions (see test_terminal.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import pflask_cmd, run_as, run_pflask, user_env, user_info, wait_for
from test_terminal import PFLASK, manifest
from test_terminal import tmux_factory as tmux_factory  # a fixture shared with that module

pytestmark = pytest.mark.usefixtures("host_clean")

USERS = [None, "pflask-test"]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def unique(prefix: str = "st") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def box(shared_tmp: Path, busybox_root: Path) -> Path:
    return manifest(shared_tmp, name=unique("box"), root={"path": str(busybox_root)})


def ps(user: str | None = None) -> list[dict[str, Any]]:
    result = run_pflask("ps", "--json", user=user)
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def entry(name: str, user: str | None = None) -> dict[str, Any] | None:
    return next((row for row in ps(user) if row["name"] == name), None)


def state_dir(user: str | None) -> Path:
    return Path("/run/pflask") if user is None else Path(f"/tmp/pflask-{user_info(user).uid}")


@pytest.fixture
def detached() -> Iterator[Any]:
    """Start detached containers; whatever a test leaves running is stopped after it."""
    started: list[tuple[str, str | None]] = []

    def start(
        path: Path, name: str, *command: str, user: str | None = None, extra: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        started.append((name, user))
        args = ["run", str(path), "--detach", "--name", name, *extra]
        if command:
            args += ["--", *command]
        return run_pflask(*args, user=user, timeout=30)

    yield start
    for name, user in started:
        if entry(name, user) is not None:
            run_pflask("stop", name, "--timeout", "1", user=user)


# --- detach, ps, attach, exec, stop ------------------------------------------------------------


@pytest.mark.parametrize("user", USERS)
def test_detach_ps_attach_detach_attach_exec_stop(
    box: Path,
    busybox_root: Path,
    tmux_factory: Any,
    detached: Any,
    user: str | None,
    test_user: Any,
) -> None:
    name = unique()
    started = time.monotonic()
    result = detached(box, name, "sh", user=user)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{name}\n"
    assert time.monotonic() - started < 10  # it returned: the container runs on

    row = entry(name, user)
    assert row is not None
    assert row["pid"] > 1 and row["root"] == str(busybox_root)
    assert row["command"] == ["sh"] and row["detached"] and row["terminal"]
    assert (state_dir(user) / f"{name}.state").exists()
    table = run_pflask("ps", user=user).stdout.splitlines()
    assert table[0].split() == ["NAME", "PID", "ROOT", "UPTIME", "COMMAND"]
    assert any(line.split()[0] == name for line in table[1:])

    tmux = tmux_factory(user)
    tmux.type(f"{PFLASK} attach {name}")
    tmux.wait_for_text("/ #")
    assert tmux.run("tty") == ["/dev/pts/0"]
    tmux.run("export MARK=kept")
    tmux.keys("C-@")
    tmux.wait_for_text(f"pflask: detached from {name}")
    tmux.wait_for_prompt()
    assert tmux.run("echo attach=$?") == ["attach=0"]

    # Again, with the original's flag and by pid: the same shell, still running.
    tmux.type(f"{PFLASK} --attach {row['pid']}")
    time.sleep(0.5)
    assert tmux.run("echo $MARK") == ["kept"]
    tmux.keys("C-@")
    tmux.wait_for_prompt()
    tmux.type(f"{PFLASK} attach {name}")
    time.sleep(0.5)
    assert tmux.run("echo third") == ["third"]
    tmux.keys("C-@")
    tmux.wait_for_prompt()

    inside = run_pflask("exec", name, "--", "sh", "-c", "echo $$; hostname; tty; true", user=user)
    assert inside.returncode == 0, inside.stderr
    pid, hostname, tty = inside.stdout.split("\n")[:3]
    assert int(pid) > 1 and hostname == name and tty == "not a tty"

    # An interactive shell ignores SIGTERM: SIGKILL follows after the timeout.
    started = time.monotonic()
    stopped = run_pflask("stop", name, "--timeout", "1", user=user)
    assert stopped.returncode == 0, stopped.stderr
    assert 0.9 < time.monotonic() - started < 5
    assert entry(name, user) is None
    assert not (state_dir(user) / f"{name}.state").exists()
    assert not (state_dir(user) / f"{name}.sock").exists()


def test_output_made_while_detached_is_shown_on_attach(
    box: Path, tmux_factory: Any, detached: Any
) -> None:
    name = unique()
    script = "echo made-while-away; exec sh"
    assert detached(box, name, "sh", "-c", script).returncode == 0
    time.sleep(0.5)
    tmux = tmux_factory()
    tmux.type(f"{PFLASK} attach {name}")
    tmux.wait_for_text("made-while-away")
    tmux.keys("C-@")
    tmux.wait_for_prompt()


def test_attach_returns_the_containers_exit_status(
    box: Path, tmux_factory: Any, detached: Any
) -> None:
    name = unique()
    assert detached(box, name, "sh").returncode == 0
    tmux = tmux_factory()
    tmux.type(f"{PFLASK} attach {name}")
    tmux.wait_for_text("/ #")
    tmux.type("exit 7")
    tmux.wait_for_prompt()
    assert tmux.run("echo attach=$?") == ["attach=7"]
    wait_for(lambda: entry(name) is None, timeout=5)


def test_a_second_attach_takes_over(box: Path, tmux_factory: Any, detached: Any) -> None:
    name = unique()
    assert detached(box, name, "sh").returncode == 0
    first, second = tmux_factory(), tmux_factory()
    first.type(f"{PFLASK} attach {name}")
    first.wait_for_text("/ #")
    second.type(f"{PFLASK} attach {name}")
    time.sleep(0.5)
    first.wait_for_text(f"another terminal attached to {name}")
    first.wait_for_prompt()
    assert second.run("echo here") == ["here"]
    second.keys("C-@")
    second.wait_for_prompt()


def test_attach_without_a_terminal_streams_until_the_end(box: Path, detached: Any) -> None:
    name = unique()
    assert detached(box, name, "sh", "-c", "read line; echo got-$line; exit 4").returncode == 0
    result = run_pflask("attach", name, input=b"hello\n", timeout=20)
    assert result.returncode == 4, result.stderr
    assert "got-hello" in result.stdout


def test_foreground_containers_cannot_be_attached(box: Path) -> None:
    name = unique()
    proc = subprocess.Popen(
        [*pflask_cmd(), "run", str(box), "--name", name, "--", "sleep", "30"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_for(lambda: entry(name) is not None and entry(name)["pid"], timeout=10)
        result = run_pflask("attach", name)
        assert result.returncode == 125
        assert "it is not detached" in result.stderr
    finally:
        assert run_pflask("stop", name, "--timeout", "1").returncode == 0
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM


def test_a_foreground_terminal_is_not_attachable(box: Path, tmux_factory: Any) -> None:
    name = unique()
    tmux = tmux_factory()
    tmux.type(f"{PFLASK} run {box} --name {name}")
    tmux.wait_for_text("/ #")
    row = wait_for(lambda: entry(name), timeout=5)
    assert row["terminal"] and not row["detached"]
    result = run_pflask("attach", name)
    assert result.returncode == 125 and "it is not detached" in result.stderr
    tmux.type("exit")
    tmux.wait_for_prompt()


def test_detached_without_a_terminal_cannot_be_attached(box: Path, detached: Any) -> None:
    name = unique()
    result = detached(box, name, "sleep", "30", extra=("--set", "terminal=false"))
    assert result.returncode == 0, result.stderr
    refused = run_pflask("attach", name)
    assert refused.returncode == 125
    assert "terminal: false" in refused.stderr


@pytest.mark.parametrize("user", USERS)
def test_detached_setup_errors_reach_the_user(
    box: Path, shared_tmp: Path, busybox_root: Path, user: str | None, test_user: Any
) -> None:
    missing = run_pflask("run", box, "--detach", "--", "/nonexistent", user=user)
    assert missing.returncode == 127
    assert missing.stderr.strip() == "pflask: /nonexistent: command not found"
    broken = manifest(
        shared_tmp,
        name=unique("broken"),
        root={"path": str(busybox_root)},
        mounts=[{"type": "bind", "source": str(shared_tmp / "absent"), "target": "/m"}],
    )
    failed = run_pflask("run", broken, "--detach", "--", "sh", user=user)
    assert failed.returncode == 125
    assert "step " in failed.stderr and str(shared_tmp / "absent") in failed.stderr
    assert failed.stdout == ""
    assert ps(user) == [] or all(row["name"] != broken.stem for row in ps(user))


# --- names and stale state ---------------------------------------------------------------------


@pytest.mark.parametrize("user", USERS)
def test_a_running_name_is_refused(box: Path, user: str | None, test_user: Any) -> None:
    name = unique()
    env = user_env(user_info(user)) if user else None
    argv = [*pflask_cmd(), "run", str(box), "--name", name, "--", "sh", "-c", "echo up; sleep 30"]
    if user:
        info = user_info(user)
        argv = ["setpriv", f"--reuid={info.uid}", f"--regid={info.gid}", "--init-groups", *argv]
    first = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd="/",
        start_new_session=True,
    )
    try:
        assert first.stdout is not None and first.stdout.readline() == "up\n"
        second = run_pflask("run", box, "--name", name, "--", "echo", "ran", user=user)
        assert second.returncode == 125
        assert f"a container named {name!r} is already running" in second.stderr
        assert "ran" not in second.stdout  # refused before its command could start
        assert first.poll() is None  # the first one is untouched
    finally:
        run_pflask("stop", name, "--timeout", "1", user=user)
        first.wait(timeout=10)


def test_a_refused_name_leaves_no_mount_point_in_the_root(
    box: Path, shared_tmp: Path, busybox_root: Path
) -> None:
    """The refused container builds its mounts meanwhile (the name is claimed
    while it does), stops before its command when the supervisor closes the
    control pipe, and reports what it made: the supervisor removes it."""
    name = unique()
    argv = [*pflask_cmd(), "run", str(box), "--name", name, "--", "sh", "-c", "echo up; sleep 30"]
    first = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True
    )
    try:
        assert first.stdout is not None and first.stdout.readline() == "up\n"
        mounts = [{"type": "tmp", "target": "/pft-refused/deep"}]
        second = manifest(shared_tmp, name=name, root={"path": str(busybox_root)}, mounts=mounts)
        result = run_pflask("run", second, "--", "echo", "ran")
        assert result.returncode == 125
        assert f"a container named {name!r} is already running" in result.stderr
        assert "ran" not in result.stdout
        assert not (busybox_root / "pft-refused").exists()
    finally:
        run_pflask("stop", name, "--timeout", "1")
        first.wait(timeout=10)


@pytest.mark.parametrize("user", USERS)
def test_stale_state_of_a_killed_pflask_is_cleaned(
    box: Path, detached: Any, user: str | None, test_user: Any
) -> None:
    name = unique()
    assert detached(box, name, "sleep", "60", user=user).returncode == 0
    row = entry(name, user)
    assert row is not None
    record = state_dir(user) / f"{name}.state"
    assert record.exists()
    os.kill(row["supervisor"], signal.SIGKILL)
    # The container dies with its pflask (PDEATHSIG) ...
    wait_for(lambda: not os.path.exists(f"/proc/{row['pid']}"), timeout=5)
    # ... and its record is never shown as running again, and is removed when met.
    assert entry(name, user) is None
    assert not record.exists()
    again = detached(box, name, "sleep", "60", user=user)
    assert again.returncode == 0, again.stderr
    assert run_pflask("stop", name, user=user).returncode == 0


def test_stale_record_with_a_reused_pid_is_not_running(box: Path, detached: Any) -> None:
    """A record whose supervisor pid now belongs to another process (start time differs)."""
    name = unique()
    assert detached(box, name, "sleep", "60").returncode == 0
    record = Path(f"/run/pflask/{name}.state")
    import marshal

    data = marshal.loads(record.read_bytes())
    data["supervisor"] = os.getpid()  # alive, but not the process that wrote the record
    forged = Path(f"/run/pflask/{name}x.state")
    data["name"] = f"{name}x"
    forged.write_bytes(marshal.dumps(data))
    assert entry(f"{name}x") is None
    assert not forged.exists()
    assert run_pflask("stop", name).returncode == 0


def test_names_are_per_user(box: Path, detached: Any, test_user: Any) -> None:
    name = unique()
    assert detached(box, name, "sleep", "60").returncode == 0
    assert detached(box, name, "sleep", "60", user="pflask-test").returncode == 0
    assert entry(name) is not None and entry(name, "pflask-test") is not None
    assert entry(name)["supervisor"] != entry(name, "pflask-test")["supervisor"]


def test_state_dir_follows_xdg_runtime_dir(box: Path, shared_tmp: Path, test_user: Any) -> None:
    runtime = shared_tmp / "xdg"
    runtime.mkdir(mode=0o700)
    os.chown(runtime, test_user.uid, test_user.gid)
    env = {"XDG_RUNTIME_DIR": str(runtime)}
    name = unique()
    result = run_pflask(
        "run", box, "--detach", "--name", name, "--", "sleep", "60", user="pflask-test", env=env
    )
    try:
        assert result.returncode == 0, result.stderr
        assert (runtime / "pflask" / f"{name}.state").exists()
        listed = run_pflask("ps", "--json", user="pflask-test", env=env).stdout
        assert name in {row["name"] for row in json.loads(listed)}
        assert entry(name, "pflask-test") is None  # not where the others look
    finally:
        run_pflask("stop", name, "--timeout", "1", user="pflask-test", env=env)
    assert not (runtime / "pflask").exists()  # removed with its last container


def test_unknown_names(box: Path) -> None:
    for args in (("stop", "nosuch"), ("exec", "nosuch", "--", "true"), ("attach", "nosuch")):
        result = run_pflask(*args)
        assert result.returncode == 2, args
        assert "no running container named 'nosuch'" in result.stderr


# --- stop ------------------------------------------------------------------------------------


def ignoring_sigterm(box: Path, name: str) -> subprocess.Popen[str]:
    """A container `name` whose command ignores SIGTERM, running and recorded."""
    script = "trap '' TERM; echo up; sleep 60 & wait; wait"
    proc = subprocess.Popen(
        [*pflask_cmd(), "run", str(box), "--name", name, "--", "sh", "-c", script],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    wait_for(lambda: (entry(name) or {}).get("pid"), timeout=5)
    return proc


def test_stop_escalates_to_sigkill_after_the_timeout(box: Path) -> None:
    name = unique()
    proc = ignoring_sigterm(box, name)
    started = time.monotonic()
    result = run_pflask("stop", name, "--timeout", "1")
    assert result.returncode == 0, result.stderr
    assert 0.9 < time.monotonic() - started < 5
    assert proc.wait(timeout=5) == 128 + signal.SIGKILL
    assert entry(name) is None


def test_stop_sends_sigrtmin_3_to_an_init(
    writable_busybox_root: Path, shared_tmp: Path, detached: Any
) -> None:
    init = writable_busybox_root / "sbin" / "init"
    init.unlink(missing_ok=True)
    rtmin3 = signal.SIGRTMIN + 3
    init.write_text(
        "#!/bin/sh\n"
        f"trap 'echo halted > /run/halt; cp /run/halt /halted; exit 0' {rtmin3}\n"
        "while :; do sleep 0.1; done\n"
    )
    init.chmod(0o755)
    path = manifest(shared_tmp, name=unique("os"), root={"path": str(writable_busybox_root)})
    name = path.stem
    assert detached(path, name, "/sbin/init").returncode == 0
    row = wait_for(lambda: entry(name), timeout=5)
    assert row["stop_signal"] == "SIGRTMIN+3"
    time.sleep(0.3)
    started = time.monotonic()
    assert run_pflask("stop", name, "--timeout", "5").returncode == 0
    assert time.monotonic() - started < 4  # it halted on the signal, no SIGKILL needed
    assert (writable_busybox_root / "halted").read_text() == "halted\n"


# --- exec -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", USERS)
def test_exec_joins_every_namespace_and_the_root(
    box: Path, detached: Any, user: str | None, test_user: Any
) -> None:
    name = unique()
    assert detached(box, name, "sleep", "60", user=user).returncode == 0
    # Compared with the container's command (PID 1, pflask's reaper, is not
    # dumpable: its /proc/1/ns links are closed to the container's root).
    script = (
        "c=$(pidof sleep); for n in user mnt pid ipc uts net cgroup; do "
        '[ "$(readlink /proc/self/ns/$n)" = "$(readlink /proc/$c/ns/$n)" ] || echo differs-$n; '
        "done; echo $$; cat /etc/hostname; pwd; env | sort"
    )
    result = run_pflask(
        "exec", name, "--", "sh", "-c", script, user=user, env={"SECRET": "x", "TERM": "vt100"}
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert not [line for line in lines if line.startswith("differs-")], lines
    assert int(lines[0]) > 1  # not PID 1
    assert lines[1] == "busybox" and lines[2] == "/"
    env = dict(line.split("=", 1) for line in lines[3:] if "=" in line)
    assert env["container"] == "pflask" and env["TERM"] == "vt100"
    assert "SECRET" not in env  # the container's environment rules: cleared, TERM kept
    assert run_pflask("exec", name, "--", "sh", "-c", "exit 9", user=user).returncode == 9
    missing = run_pflask("exec", name, "--", "/nonexistent", user=user)
    assert missing.returncode == 127 and "command not found" in missing.stderr


def test_exec_waits_until_pid_1_is_in_its_root(tmp_path: Path) -> None:
    """The record names PID 1 as soon as it is forked; until its pivot_root
    `pflask exec` would enter the host's tree, so it says "still starting"."""
    from pflask.run import state

    where = state.Directory(str(tmp_path), 0)
    still_in_hosts_root = {"name": "x", "pid": os.getpid(), "root": str(tmp_path)}
    assert not state.Container(still_in_hosts_root, where).in_its_root()
    assert state.Container({**still_in_hosts_root, "root": None}, where).in_its_root()
    r, w = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - child
        os.chroot(tmp_path)
        os.write(w, b"x")
        time.sleep(30)
        os._exit(0)
    try:
        assert os.read(r, 1) == b"x"
        assert state.Container({**still_in_hosts_root, "pid": child}, where).in_its_root()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        os.close(r)
        os.close(w)


def test_exec_runs_as_the_containers_user(
    shared_tmp: Path, busybox_root: Path, detached: Any, test_user: Any
) -> None:
    path = manifest(shared_tmp, name=unique(), root={"path": str(busybox_root)}, user="alice")
    name = path.stem
    assert detached(path, name, "sleep", "60", user="pflask-test").returncode == 0
    result = run_pflask("exec", name, "--", "id", user="pflask-test")
    assert result.stdout.strip() == "uid=1000(alice) gid=1000(alice) groups=50(staff),1000(alice)"
    # PID 1 runs as a subordinate uid: its owner may still stop it.
    assert run_pflask("stop", name, "--timeout", "1", user="pflask-test").returncode == 0
    assert entry(name, "pflask-test") is None


def test_exec_joins_the_containers_cgroup(
    shared_tmp: Path, busybox_root: Path, detached: Any
) -> None:
    path = manifest(
        shared_tmp,
        name=unique(),
        root={"path": str(busybox_root)},
        cgroup={"memory": "64M", "pids": 64},
    )
    name = path.stem
    assert detached(path, name, "sleep", "60").returncode == 0
    result = run_pflask("exec", name, "--", "sh", "-c", "cat /proc/self/cgroup /proc/1/cgroup")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    half = len(lines) // 2
    assert lines[:half] == lines[half:]


def test_exec_with_a_terminal(box: Path, tmux_factory: Any, detached: Any) -> None:
    name = unique()
    assert detached(box, name, "sleep", "60").returncode == 0
    tmux = tmux_factory()
    tmux.type(f"{PFLASK} exec {name}")
    tmux.wait_for_text("/ #")
    tty = tmux.run("tty")[0]
    assert tty.startswith("/dev/pts/") and tty != "/dev/pts/0"  # a new pty of its devpts
    tmux.type("sleep 60")
    time.sleep(0.5)
    tmux.keys("C-c")
    assert tmux.run("echo status=$?") == ["status=130"]
    tmux.type("exit 6")
    tmux.wait_for_prompt()
    assert tmux.run("echo exec=$?") == ["exec=6"]


# --- permissions and memory ---------------------------------------------------------------------


def test_only_the_owner_or_root_may_attach(box: Path, detached: Any, test_user: Any) -> None:
    name = unique()
    assert detached(box, name, "sh", user="pflask-test").returncode == 0
    row = entry(name, "pflask-test")
    assert row is not None
    where = state_dir("pflask-test")
    sock = where / f"{name}.sock"
    # The directory (0700) keeps others out; open it up to show the supervisor
    # checks the peer's credentials itself.
    mode = where.stat().st_mode
    where.chmod(0o755)
    sock.chmod(0o777)
    client = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        f"s.connect({str(sock)!r})\n"
        "data = b''\n"
        "while chunk := s.recv(4096): data += chunk\n"
        "sys.stdout.write(repr(data))\n"
    )
    try:
        nobody = run_as([*NOBODY, sys.executable, "-c", client])
    finally:
        where.chmod(mode & 0o7777)
        sock.chmod(0o600)
    assert nobody.returncode == 0, nobody.stderr
    assert "may not attach" in nobody.stdout
    # root may, by pid, naming the owner (root's own containers only, otherwise).
    alone = run_pflask("attach", str(row["pid"]), input=b"exit 4\n")
    assert alone.returncode == 2 and "--owner USER" in alone.stderr
    result = run_pflask(
        "attach", "--owner", "pflask-test", str(row["pid"]), input=b"echo root-was-here; exit 3\n"
    )
    assert result.returncode == 3, result.stderr
    assert "root-was-here" in result.stdout


def test_detached_supervisor_stays_small(box: Path, detached: Any) -> None:
    name = unique()
    assert detached(box, name, "sh").returncode == 0
    row = entry(name)
    assert row is not None
    assert run_pflask("exec", name, "--", "true").returncode == 0
    status = Path(f"/proc/{row['supervisor']}/status").read_text()
    peak = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
    assert peak <= 15 * 1024, f"supervisor peak RSS {peak} KiB"


def test_an_attached_terminal_gives_the_detached_pty_its_size(
    box: Path, tmux_factory: Any, detached: Any
) -> None:
    """Detached, the pty is 24x80 (nobody's terminal); the terminal that
    attaches gives it its own size before the output made meanwhile is shown,
    and a program running is told (SIGWINCH) so it can draw again."""
    name = unique()
    script = "trap 'echo now $(stty size)' WINCH; echo was $(stty size); while :; do sleep 1; done"
    assert detached(box, name, "sh", "-c", script).returncode == 0
    tmux = tmux_factory()
    time.sleep(0.5)
    tmux.type(f"{PFLASK} attach {name}")
    tmux.wait_for_text("now 30 100")
    assert "was 24 80" in tmux.screen()
    tmux.resize(132, 50)
    tmux.wait_for_text("now 50 132")
    tmux.keys("C-@")
    tmux.wait_for_prompt()
