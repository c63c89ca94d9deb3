"""The container's terminal, driven like a user would: through a real tmux session.

tmux gives pflask a real terminal on stdin (its own pty), lets the test type
keys (Ctrl-C, Ctrl-@ included), resize the window and read the screen.  Each
test gets a tmux server of its own (-L), killed at the end, so nothing is
shared with anybody else's tmux.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import SESSION_ENV, USER_PATH, pflask_cmd, run_pflask, user_info, wait_for

pytestmark = pytest.mark.usefixtures("host_clean")

USERS = [None, "pflask-test"]
PFLASK = pflask_cmd()[0]


class Tmux:
    """A tmux server with one window running a shell (as root, or as `user`)."""

    def __init__(self, user: str | None = None, width: int = 100, height: int = 30) -> None:
        self.socket = f"pft-{uuid.uuid4().hex[:12]}"
        self.user = user
        self.marks = 0
        shell = ["bash", "--norc", "--noprofile"]
        env = {
            "PS1": "$ ",
            "TERM": "xterm",
            "PATH": USER_PATH,
            "LANG": "C.UTF-8",
            SESSION_ENV: os.environ[SESSION_ENV],
        }
        if user is not None:
            info = user_info(user)
            env.update(HOME=str(info.home), USER=user, LOGNAME=user)
            shell = [
                "setpriv",
                f"--reuid={info.uid}",
                f"--regid={info.gid}",
                "--init-groups",
                "--inh-caps=-all",
                "--",
                *shell,
            ]
        else:
            env["HOME"] = "/root"
        command = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *shell]
        self.tmux(
            "new-session",
            "-d",
            "-x",
            str(width),
            "-y",
            str(height),
            "-c",
            "/",
            shlex.join(command),
        )
        self.tmux("set-option", "-g", "history-limit", "5000")
        self.wait_for_prompt()

    def tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout

    def keys(self, *keys: str) -> None:
        """Keys as tmux names them: "C-c", "C-@", "Enter"."""
        self.tmux("send-keys", "-t", "0", *keys)

    def type(self, text: str, enter: bool = True) -> None:
        self.tmux("send-keys", "-t", "0", "-l", text)
        if enter:
            self.keys("Enter")

    def screen(self) -> str:
        """Everything the window showed, scrollback included, trailing blanks dropped."""
        text = self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "0")
        return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n")

    def lines(self) -> list[str]:
        return self.screen().splitlines()

    def wait_for_prompt(self, timeout: float = 10) -> None:
        """The host shell's prompt ("$ ") is the last thing on the screen."""
        wait_for(
            lambda: self.lines() and self.lines()[-1] == "$",
            timeout=timeout,
            message="the host shell's prompt",
        )

    def wait_for_text(self, text: str, timeout: float = 10) -> None:
        wait_for(lambda: text in self.screen(), timeout=timeout, message=f"{text!r} on screen")

    def run(self, command: str, timeout: float = 15) -> list[str]:
        """Type `command` and an echo of a fresh mark; return the lines it printed."""
        self.marks += 1
        mark = f"::{self.marks}::"
        start = len(self.lines())
        self.type(f"{command}; echo ::{self.marks}::")

        def printed() -> list[str] | None:
            lines = self.lines()
            for index in range(max(0, start - 1), len(lines)):
                if lines[index] == mark:
                    typed = next(
                        (i for i in range(max(0, start - 1), index) if mark in lines[i]), None
                    )
                    begin = (typed + 1) if typed is not None else start
                    return lines[begin:index] or [""]
            return None

        found = wait_for(printed, timeout=timeout, message=f"output of {command!r}")
        return [] if found == [""] else found

    def resize(self, width: int, height: int) -> None:
        self.tmux("resize-window", "-t", "0", "-x", str(width), "-y", str(height))

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def tmux_factory() -> Iterator[Any]:
    made: list[Tmux] = []

    def make(user: str | None = None, **kwargs: Any) -> Tmux:
        session = Tmux(user, **kwargs)
        made.append(session)
        return session

    yield make
    for session in made:
        session.kill()


def manifest(directory: Path, name: str = "box", **fields: Any) -> Path:
    directory.chmod(0o755)
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "name": name, **fields}))
    path.chmod(0o644)
    return path


@pytest.fixture
def box(shared_tmp: Path, busybox_root: Path) -> Path:
    return manifest(
        shared_tmp, name=f"term-{uuid.uuid4().hex[:8]}", root={"path": str(busybox_root)}
    )


def settings(stty: list[str], size: bool = True) -> list[str]:
    """`stty -a` output as a list of settings (its line breaks follow the window's width)."""
    text = " ".join(stty)
    if not size:
        text = re.sub(r"rows \d+; columns \d+;", "", text)
    return re.split(r"[;\s]+", text.strip())


def supervisor(name: str, user: str | None = None) -> int:
    """The pid of the pflask running container `name`, once its command runs."""

    def find() -> int | None:
        result = run_pflask("ps", "--json", user=user)
        found = [
            r["supervisor"] for r in json.loads(result.stdout) if r["name"] == name and r["pid"]
        ]
        return found[0] if found else None

    return wait_for(find, timeout=10, message=f"{name} in pflask ps")


def start(tmux: Tmux, args: str) -> None:
    """Start pflask in the tmux window and wait for the container's prompt."""
    tmux.type(f"{PFLASK} {args}")
    tmux.wait_for_text("/ #")


# --- the pty -----------------------------------------------------------------------------------


@pytest.mark.parametrize("user", USERS)
def test_pty_session_size_ctrl_c_and_restored_terminal(
    tmux_factory: Any, box: Path, user: str | None, test_user: Any
) -> None:
    tmux = tmux_factory(user)
    before = tmux.run("stty -a")
    start(tmux, f"run {box}")
    assert tmux.run("tty") == ["/dev/pts/0"]
    assert tmux.run("stty size") == ["30 100"]
    tmux.resize(120, 40)
    assert tmux.run("stty size") == ["40 120"]
    # Ctrl-C reaches the foreground job inside, not pflask: the shell survives.
    tmux.type("sleep 60")
    time.sleep(0.5)
    started = time.monotonic()
    tmux.keys("C-c")
    assert tmux.run("echo status=$?") == ["status=130"]
    assert time.monotonic() - started < 5
    tmux.type("exit 3")
    tmux.wait_for_prompt()
    assert tmux.run("echo pflask=$?") == ["pflask=3"]
    assert settings(tmux.run("stty -a"), size=False) == settings(before, size=False)


def test_console_is_the_pty_and_the_command_owns_it(tmux_factory: Any, box: Path) -> None:
    tmux = tmux_factory()
    start(tmux, f"run {box}")
    # /dev/console is the same device as the command's terminal.
    assert tmux.run("stat -c %t:%T /dev/console /dev/pts/0 | uniq | wc -l") == ["1"]
    tmux.run("echo via-console > /dev/console")
    assert "via-console" in tmux.lines()
    # The shell is the session leader of its terminal: job control works.
    sid, tpgid = tmux.run("cut -d' ' -f6,8 /proc/$$/stat")[0].split()
    assert sid == tmux.run("echo $$")[0]
    assert tpgid != "-1"
    tmux.type("exit")
    tmux.wait_for_prompt()


@pytest.mark.parametrize("user", USERS)
def test_without_a_root_the_pty_comes_from_the_hosts_devpts(
    tmux_factory: Any, shared_tmp: Path, user: str | None, test_user: Any
) -> None:
    plain = manifest(shared_tmp, name=f"plain-{uuid.uuid4().hex[:8]}", command=["/bin/sh"])
    tmux = tmux_factory(user)
    outer = tmux.run("tty")[0]
    tmux.type(f"{PFLASK} run {plain}")
    supervisor(plain.stem, user)  # the container's shell prompt looks like ours: wait for it
    inner = tmux.run("tty")
    assert inner[0].startswith("/dev/pts/") and inner[0] != outer
    tmux.type("sleep 60")
    time.sleep(0.5)
    tmux.keys("C-c")
    assert tmux.run("echo status=$?") == ["status=130"]
    tmux.type("exit 5")
    assert tmux.run("echo pflask=$?")[-1] == "pflask=5"


def test_terminal_false_means_no_pty_even_on_a_terminal(tmux_factory: Any, box: Path) -> None:
    tmux = tmux_factory()
    lines = tmux.run(f"{PFLASK} run {box} --set terminal=false -- tty")
    assert lines == ["not a tty"]


def test_without_a_terminal_output_streams_and_redirects(box: Path) -> None:
    result = run_pflask("run", box, "--", "sh", "-c", "tty; echo out; echo err >&2", input=b"")
    assert result.returncode == 0
    assert result.stdout == "not a tty\nout\n"
    assert result.stderr == "err\n"


def test_terminal_true_without_a_terminal_on_stdin(box: Path) -> None:
    result = run_pflask(
        "run",
        box,
        "--set",
        "terminal=true",
        "--",
        "sh",
        "-c",
        "tty; read x; echo got-$x",
        input=b"line\n",
    )
    assert result.returncode == 0, result.stderr
    # A pty echoes its input (the line discipline's ECHO), and ends lines with CR LF.
    lines = result.stdout.split("\r\n")
    assert "/dev/pts/0" in lines and "got-line" in lines


def test_terminal_restored_after_a_signal_and_a_setup_failure(
    tmux_factory: Any, box: Path, shared_tmp: Path
) -> None:
    tmux = tmux_factory()
    before = tmux.run("stty -a")
    # Killed from outside while the pty is in raw mode: SIGTERM is forwarded.
    tmux.type(f"{PFLASK} run {box} -- sleep 60")
    os.kill(supervisor(box.stem), 15)
    tmux.wait_for_prompt()
    assert tmux.run("echo pflask=$?")[-1] == "pflask=143"
    assert settings(tmux.run("stty -a")) == settings(before)
    # A setup failure: nothing was changed, nothing to restore, the error is readable.
    missing = manifest(
        shared_tmp,
        name="broken",
        root={"path": str(box.parent / "nothere")},
    )
    lines = tmux.run(f"{PFLASK} run {missing} -- true; echo pflask=$?")
    assert lines[-1] == "pflask=125"
    assert any("mount(2)" in line for line in lines)
    assert settings(tmux.run("stty -a")) == settings(before)
