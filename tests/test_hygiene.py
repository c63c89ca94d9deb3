"""What the container can learn or reach through pflask's own processes.

pflask's PID 1 (the reaper) is a fork of the pflask the user ran, never a
new exec: without care it would keep every fd pflask inherited, show the
invoking environment in /proc/1/environ and pflask's arguments in
/proc/1/cmdline, and let the container reach the host's files through
/proc/1/{fd,root,map_files}.  And a command started without a pty shares
the user's terminal, where TIOCSTI would type into the user's shell.

Each test runs a real container (on the busybox root; the terminal test runs
the host's python3 without a root) and attacks from inside, as root and as
the ordinary user pflask-test.  Opening a host file "for writing" is done
with `cat </dev/null >>FILE`: the open is the attack, nothing is written
even if it succeeded.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import termios
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import (
    SESSION_ENV,
    UserInfo,
    as_user_argv,
    describe,
    in_child,
    ok,
    pflask_cmd,
    run_pflask,
    user_env,
    user_info,
    wait_for,
)
from helpers import shell as sh

from pflask.run import hygiene

pytestmark = pytest.mark.usefixtures("host_clean")

USERS = [None, "pflask-test"]
SECRET = "hunter2-hygiene-secret"
CAP_SYS_PTRACE, CAP_SYS_ADMIN = 19, 21


def manifest(directory: Path, name: str, **fields: Any) -> Path:
    """A manifest for container hyg-`name`-PID (sessions running at once do not collide)."""
    path = directory / f"{name}.yaml"
    data = {"version": 1, "name": f"hyg-{name}-{os.getpid()}", **fields}
    path.write_text(yaml.safe_dump(data))
    return path


def invoke(
    argv: Sequence[str], user: str | None, pass_fds: Sequence[int] = (), **popen: Any
) -> subprocess.CompletedProcess[str]:
    """Run pflask (argv after `pflask`) as root or `user` with a secret in its
    environment and `pass_fds` open, as a shell's `exec 9</home` leaves them."""
    info = user_info(user) if user is not None else None
    env = dict(os.environ) if info is None else user_env(info)
    env["HYGIENE_SECRET"] = SECRET
    full = [*pflask_cmd(), *argv]
    if info is not None:
        full = as_user_argv(info, full)
    return subprocess.run(
        full,
        env=env,
        pass_fds=pass_fds,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
        **popen,
    )


def has_cap(status: str, number: int) -> bool:
    """Whether the CapEff line of a /proc/PID/status text holds capability `number`."""
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> number & 1)
    raise AssertionError(f"no CapEff in {status!r}")


# --- the mechanisms, in a forked child of the test ------------------------------------------


def test_close_inherited_keeps_only_stdio_and_the_given_fds() -> None:
    def body(out: int) -> None:
        opened = [os.open("/", os.O_RDONLY) for _ in range(6)]
        keep = (opened[1], opened[4], out)
        hygiene.close_inherited(keep)
        left = [fd for fd in range(max(opened) + 8) if is_open(fd)]
        expected = sorted({0, 1, 2, *keep})
        os.write(out, f"{left} {expected}".encode())

    left, expected = ok(in_child(body)).split("] ")
    assert left + "]" == expected


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_forget_invoker_leaves_a_name_and_no_environment() -> None:
    def body(out: int) -> None:
        hygiene.forget_invoker(b"pflask-init")
        result = []
        for name in ("cmdline", "environ", "comm"):
            with open(f"/proc/self/{name}", "rb") as f:
                result.append(f.read())
        result.append(os.environ.get("PATH", "").encode())  # Python's copy: still there
        os.write(out, b"|".join(result))

    cmdline, environ, comm, path = ok(in_child(body)).encode().split(b"|")
    assert cmdline == b"pflask-init\0"
    assert environ and environ.count(b"\0") == len(environ)
    assert comm == b"pflask-init\n"
    assert path == os.environ["PATH"].encode()


# --- fds, environment, command line --------------------------------------------------------


PROBE = """
echo "fds: $(ls /proc/1/fd | tr '\\n' ' ')"
echo "own: $(ls /proc/self/fd | tr '\\n' ' ')"
echo "cmdline: $(tr '\\0' '@' </proc/1/cmdline)"
echo "comm: $(cat /proc/1/comm)"
echo "environ: $(tr '\\0' '@' </proc/1/environ | tr -d @)"
echo "environ-bytes: $(wc -c </proc/1/environ)"
echo "mine: $(tr '\\0' '\\n' </proc/$$/environ | grep -c PATH=)"
"""


def probe(output: str) -> dict[str, str]:
    return dict(line.partition(": ")[::2] for line in output.splitlines() if ": " in line)


@pytest.mark.parametrize("user", USERS)
def test_pid1_holds_no_inherited_fd_no_environment_and_no_arguments(
    shared_tmp: Path, busybox_root: Path, user: str | None, test_user: UserInfo
) -> None:
    box = manifest(shared_tmp, "fds", root={"path": str(busybox_root)})
    directory = os.open("/home", os.O_RDONLY | os.O_DIRECTORY)  # an `exec 9</home`
    try:
        result = invoke(["run", str(box), "--", *sh(PROBE)], user, pass_fds=(directory,))
    finally:
        os.close(directory)
    assert result.returncode == 0, describe(result)
    seen = probe(result.stdout)
    # Only the standard fds: nothing the invoker passed, no pflask pipe left.
    assert seen["fds"].split() == ["0", "1", "2"], result.stdout
    assert seen["own"].split() == ["0", "1", "2", "3"], result.stdout  # 3: ls's own directory
    # The command line is a short honest name; nothing of pflask's arguments.
    assert seen["cmdline"] == "pflask-init@", result.stdout
    assert seen["comm"] == "pflask-init"
    assert str(box) not in result.stdout
    # The environment area is all NULs: not one byte of the invoker's is left.
    assert seen["environ"] == "", result.stdout
    # The area is there and wiped, or (root's PID 1 is not dumpable, and the
    # default set has no CAP_SYS_PTRACE) not even readable.
    assert seen["environ-bytes"] == "" or int(seen["environ-bytes"]) > 0, result.stdout
    assert SECRET not in result.stdout
    # The command's own environment is its own as usual.
    assert seen["mine"] == "1", result.stdout


# --- PID 1's memory and the host files it has open or mapped ---------------------------------


ATTACK = """
try() { if "$@" >/dev/null 2>&1; then echo "$*: reached"; else echo "$*: refused"; fi; }
grep CapEff /proc/self/status
try readlink /proc/1/fd/0
try readlink /proc/1/root
try readlink /proc/1/cwd
try head -c1 /proc/1/mem
try sh -c 'cat </dev/null >>/proc/1/exe'
for f in /proc/1/map_files/*; do
    if [ -e "$f" ] && sh -c "cat </dev/null >>$f" 2>/dev/null; then
        echo "map_files: $(readlink $f) opened for writing"
    fi
done
echo "own environ: $(tr '\\0' '\\n' </proc/$$/environ | grep -c PATH=)"
echo "own fd: $(readlink /proc/self/fd/1 >/dev/null && echo readable)"
"""


def attack(box: Path, user: str | None) -> tuple[subprocess.CompletedProcess[str], str]:
    result = run_pflask("run", box, "--", *sh(ATTACK), user=user)
    assert result.returncode == 0, describe(result)
    return result, result.stdout


def assert_host_files_out_of_reach(out: str) -> None:
    """No host file PID 1 maps or executes can be opened for writing through /proc/1."""
    assert "sh -c cat </dev/null >>/proc/1/exe: refused" in out, out
    assert "opened for writing" not in out, out


def assert_pid1_memory_out_of_reach(out: str) -> None:
    """PID 1 is not dumpable: its fds, root, cwd and memory are closed to the container."""
    for what in ("readlink /proc/1/fd/0", "readlink /proc/1/root", "readlink /proc/1/cwd"):
        assert f"{what}: refused" in out, out
    assert "head -c1 /proc/1/mem: refused" in out, out


def assert_command_as_usual(out: str) -> None:
    """The command, a new exec, is dumpable: its own /proc entries are readable."""
    assert "own environ: 1" in out, out
    assert "own fd: readable" in out, out


@pytest.mark.parametrize(
    "drop", [["-sys_ptrace"], ["-sys_admin", "-sys_ptrace"]], ids=["no-ptrace", "no-admin-ptrace"]
)
def test_pid1_of_a_root_pflask_is_out_of_reach_without_cap_sys_ptrace(
    shared_tmp: Path, busybox_root: Path, drop: list[str]
) -> None:
    # Without CAP_SYS_PTRACE, but with CAP_SYS_ADMIN (no-ptrace) the container
    # could open the host's libraries for writing through a dumpable PID 1's
    # /proc/1/map_files; PID 1 is not dumpable, so it cannot.
    box = manifest(shared_tmp, "mem", root={"path": str(busybox_root)}, capabilities=drop)
    _, out = attack(box, None)
    assert_pid1_memory_out_of_reach(out)
    assert_host_files_out_of_reach(out)
    assert_command_as_usual(out)


def test_pid1_of_a_root_pflask_is_out_of_reach_with_the_default_capabilities(
    shared_tmp: Path, busybox_root: Path
) -> None:
    box = manifest(shared_tmp, "mem-default", root={"path": str(busybox_root)})
    _, out = attack(box, None)
    # CAP_SYS_PTRACE would pass every ptrace check (not dumpable included).
    assert not has_cap(out, CAP_SYS_PTRACE), out
    assert_pid1_memory_out_of_reach(out)
    assert_host_files_out_of_reach(out)
    assert_command_as_usual(out)


def test_pid1_of_an_ordinary_users_pflask_gives_no_host_file(
    shared_tmp: Path, busybox_root: Path, test_user: UserInfo
) -> None:
    # PID 1 stays dumpable (the user's `pflask exec` needs it), but
    # /proc/1/map_files asks for CAP_SYS_ADMIN in the host's user namespace
    # and /proc/1/exe is busy being executed.
    box = manifest(shared_tmp, "mem-user", root={"path": str(busybox_root)})
    _, out = attack(box, "pflask-test")
    assert_host_files_out_of_reach(out)
    assert_command_as_usual(out)


@pytest.mark.parametrize("user", USERS)
def test_pflask_exec_enters_a_secluded_pid1(
    shared_tmp: Path, busybox_root: Path, user: str | None, test_user: UserInfo
) -> None:
    """Root's PID 1 is not dumpable, an ordinary user's is: `pflask exec` works for both,
    and its command gets no fd of the pflask that ran it."""
    box = manifest(shared_tmp, "exec", root={"path": str(busybox_root)})
    name = yaml.safe_load(box.read_text())["name"]
    info = user_info(user) if user is not None else None
    env = dict(os.environ) if info is None else user_env(info)
    argv = [*pflask_cmd(), "run", str(box), "--", "sleep", "30"]
    running = subprocess.Popen(
        argv if info is None else as_user_argv(info, argv),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd="/",
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: run_pflask("exec", name, "--", "true", user=user).returncode == 0,
            timeout=10,
            message=f"pflask exec into {name}",
        )
        directory = os.open("/home", os.O_RDONLY | os.O_DIRECTORY)
        try:
            result = invoke(
                ["exec", name, "--", *sh("tr '\\0' '@' </proc/1/cmdline; echo; ls /proc/self/fd")],
                user,
                pass_fds=(directory,),
            )
        finally:
            os.close(directory)
        assert result.returncode == 0, describe(result)
        assert result.stdout.split() == ["pflask-init@", "0", "1", "2", "3"], describe(result)
    finally:
        os.killpg(running.pid, signal.SIGTERM)
        running.communicate(timeout=30)


# --- terminal injection ------------------------------------------------------------------------

INJECT = """
import errno, fcntl, os, termios
try:  # a session of its own, then the terminal as its controlling one
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    print("TIOCSCTTY done", flush=True)
except OSError as e:
    print("TIOCSCTTY", errno.errorcode[e.errno], flush=True)
for name, request, argument in (("TIOCSTI", termios.TIOCSTI, b"#"), ("TIOCLINUX", 0x541C, b"\\3")):
    try:
        fcntl.ioctl(0, request, argument)
        print(name, "done", flush=True)
    except OSError as e:
        print(name, errno.errorcode[e.errno], flush=True)
print(open("/proc/self/status").read(), flush=True)
"""
PYTHON = "/usr/bin/python3"  # the host's, seen from a container without a root


def on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str, int]:
    """Run `argv` as a login shell runs: session leader of a new pty, its
    controlling terminal on fds 0-2.  Returns its exit status, its output and
    how many bytes wait in the terminal's input queue afterwards (what an
    injection would have typed for the shell to read next)."""
    master, slave = os.openpty()
    mode = termios.tcgetattr(slave)
    mode[3] &= ~(termios.ICANON | termios.ECHO)  # injected bytes are readable at once
    termios.tcsetattr(slave, termios.TCSANOW, mode)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(master)
            os.login_tty(slave)
            os.execvpe(argv[0], argv, env)
        finally:
            os._exit(127)
    output = bytearray()
    deadline = time.monotonic() + 60
    status = None
    try:
        while status is None and time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                output += os.read(master, 65536)
            done, wait_status = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(wait_status)
        if status is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"{argv} did not finish: {output.decode(errors='replace')}")
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        waiting = fcntl.ioctl(slave, termios.FIONREAD, b"\0\0\0\0")
        return status, output.decode(errors="replace"), int.from_bytes(waiting, "little")
    finally:
        os.close(master)
        os.close(slave)


def injection(shared_tmp: Path, user: str | None, name: str, **fields: Any) -> tuple[str, int]:
    """Run INJECT in a container without a pty under a real terminal: its output, bytes typed."""
    box = manifest(shared_tmp, name, terminal=False, **fields)
    info = user_info(user) if user is not None else None
    env = dict(os.environ) if info is None else user_env(info)
    env[SESSION_ENV] = os.environ[SESSION_ENV]
    argv = [*pflask_cmd(), "run", str(box), "--", PYTHON, "-c", INJECT]
    status, out, typed = on_a_terminal(argv if info is None else as_user_argv(info, argv), env)
    assert status == 0, out
    return out, typed


@pytest.mark.parametrize("user", USERS)
def test_the_injector_types_into_its_own_controlling_terminal(
    user: str | None, test_user: UserInfo
) -> None:
    """The check below can fail: run straight on the terminal, TIOCSTI types."""
    info = user_info(user) if user is not None else None
    env = dict(os.environ) if info is None else user_env(info)
    argv = [PYTHON, "-c", INJECT]
    status, out, typed = on_a_terminal(argv if info is None else as_user_argv(info, argv), env)
    assert status == 0, out
    assert "TIOCSTI done" in out
    assert typed == 1


@pytest.mark.parametrize("user", USERS)
def test_no_terminal_injection_without_cap_sys_admin(
    shared_tmp: Path, user: str | None, test_user: UserInfo
) -> None:
    # The command runs in PID 1's session, which has no controlling terminal:
    # the user's terminal on fd 0 is not its own, and TIOCSTI there needs
    # CAP_SYS_ADMIN (in the host's user namespace).
    out, typed = injection(shared_tmp, user, "tty", capabilities=["-sys_admin"])
    assert "TIOCSCTTY EPERM" in out, out  # it is the user's shell's: not to be taken
    assert "TIOCSTI EPERM" in out, out
    assert "TIOCLINUX done" not in out, out
    assert typed == 0, out


@pytest.mark.parametrize("user", USERS)
def test_no_terminal_injection_with_the_default_capabilities(
    shared_tmp: Path, user: str | None, test_user: UserInfo
) -> None:
    out, typed = injection(shared_tmp, user, "tty-default")
    assert not has_cap(out, CAP_SYS_ADMIN), out
    assert "TIOCSCTTY done" not in out, out
    assert "TIOCSTI done" not in out, out
    assert "TIOCLINUX done" not in out, out
    assert typed == 0, out
