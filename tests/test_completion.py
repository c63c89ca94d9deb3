"""Tab completion, in the real shells as a user meets it after scripts/setup.

Each shell runs under a tmux server of its own (a real pty), loads pflask's
script from where scripts/setup installed it (bash through bash-completion in
a login shell, zsh through compinit's fpath, fish from its vendor directory),
and the test types a partial command line and Tab, then reads the screen.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers import SESSION_ENV, USER_PATH, describe, pflask_cmd, run_pflask, wait_for

from pflask.doc import completion

pytestmark = pytest.mark.usefixtures("host_clean")

PFLASK = pflask_cmd()[0]
SHELLS = {
    # bash: bash-completion (sourced as /etc/profile.d does for login shells)
    # loads completions/pflask on demand from /usr/local/share/bash-completion.
    "bash": ["bash", "--norc", "--noprofile"],
    "zsh": ["zsh", "-f"],
    "fish": ["fish"],  # HOME is the test's directory: no user configuration
}
SETUP = {
    "bash": "source /usr/share/bash-completion/bash_completion",
    "zsh": "autoload -Uz compinit && compinit -u",
    "fish": "true",
}


class Shell:
    """One interactive shell in its own tmux server, in directory `cwd`."""

    def __init__(self, shell: str, cwd: Path) -> None:
        self.socket = f"pft-{uuid.uuid4().hex[:12]}"
        env = {
            "HOME": str(cwd),
            "TERM": "xterm",
            "LANG": "C.UTF-8",
            "PATH": f"{Path(PFLASK).parent}:{USER_PATH}",
            "XDG_DATA_DIRS": "/usr/local/share:/usr/share",
            SESSION_ENV: os.environ[SESSION_ENV],
        }
        argv = ["env", "-i", *(f"{k}={v}" for k, v in env.items()), *SHELLS[shell]]
        self.tmux("new-session", "-d", "-x", "200", "-y", "30", "-c", str(cwd), shlex.join(argv))
        self.marker = 0
        self.run(SETUP[shell])

    def tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=10
        )
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-t", "0")

    def run(self, command: str) -> None:
        """Type a command and wait until it has finished."""
        self.marker += 1
        mark = f"done{self.marker}"
        self.tmux("send-keys", "-t", "0", "-l", f"{command}; echo {mark[:4]}''{mark[4:]}")
        self.tmux("send-keys", "-t", "0", "Enter")
        wait_for(lambda: mark in self.screen(), timeout=15, message=f"{command!r} to finish")

    def complete(self, typed: str, wait: float = 5) -> str:
        """Type `typed`, press Tab; return the command line once Tab changed it
        (`typed` itself if it did not within `wait` seconds)."""
        self.run("clear")

        def line() -> str:
            lines = [x for x in self.screen().splitlines() if "pflask " in x and "done" not in x]
            last = lines[-1] if lines else ""
            return last[last.index("pflask ") :].rstrip() if last else ""

        self.tmux("send-keys", "-t", "0", "-l", typed)
        # Tab only once the shell has echoed all of it (fish may show more:
        # an autosuggestion from its history, after the typed text).
        wait_for(lambda: line().startswith(typed.rstrip()), timeout=5, message=f"echo of {typed}")
        before = line()
        self.tmux("send-keys", "-t", "0", "Tab")
        try:
            return wait_for(
                lambda: (text := line()) != before and text, timeout=wait, message=typed
            )
        except AssertionError:
            return line()
        finally:
            self.tmux("send-keys", "-t", "0", "C-u")
            self.tmux("send-keys", "-t", "0", "C-c")

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def workdir(shared_tmp: Path) -> Path:
    (shared_tmp / "box.yaml").write_text("version: 1\n")
    (shared_tmp / "notes.txt").write_text("not a manifest\n")
    return shared_tmp


@pytest.fixture(params=list(SHELLS))
def shell(request: pytest.FixtureRequest, workdir: Path) -> Iterator[Shell]:
    session = Shell(request.param, workdir)
    yield session
    session.kill()


def test_a_subcommand_completes(shell: Shell) -> None:
    assert shell.complete("pflask ru") == "pflask run"


def test_an_option_of_a_subcommand_completes(shell: Shell) -> None:
    assert shell.complete("pflask run --no-ca") == "pflask run --no-cache"


def test_an_original_option_completes(shell: Shell) -> None:
    assert shell.complete("pflask --ephem") == "pflask --ephemeral"


def test_a_manifest_completes_and_other_files_do_not(shell: Shell) -> None:
    assert shell.complete("pflask run b") == "pflask run box.yaml"
    assert shell.complete("pflask validate n", wait=1.5) == "pflask validate n"


def test_a_mount_type_completes(shell: Shell) -> None:
    assert shell.complete("pflask --mount=lo").startswith("pflask --mount=loop")


def test_a_running_containers_name_completes(
    shell: Shell, shared_tmp: Path, busybox_root: Path
) -> None:
    name = f"complete-{uuid.uuid4().hex[:8]}"
    path = shared_tmp / "sleeper.yaml"
    data = {"version": 1, "name": name, "root": {"path": str(busybox_root)}}
    path.write_text(yaml.safe_dump({**data, "command": ["sleep", "60"], "detach": True}))
    started = run_pflask("run", path)
    assert started.returncode == 0, describe(started)
    try:
        assert shell.complete(f"pflask stop {name[:10]}") == f"pflask stop {name}"
    finally:
        stopped = run_pflask("stop", name, "-t", "1")
        assert stopped.returncode in (0, 143), describe(stopped)


def test_every_option_says_what_its_value_completes_to() -> None:
    assert completion.unclassified() == []


@pytest.mark.parametrize("name", sorted(completion.FILES.values()))
def test_the_committed_scripts_are_generated_from_the_parsers(name: str) -> None:
    shell = next(s for s, n in completion.FILES.items() if n == name)
    committed = (Path(__file__).resolve().parent.parent / "completions" / name).read_text()
    assert committed == completion.script(shell), "run scripts/update-readme"


@pytest.mark.parametrize("shell_name", list(SHELLS))
def test_pflask_completion_prints_a_script_the_shell_accepts(shell_name: str) -> None:
    result = run_pflask("completion", shell_name)
    assert result.returncode == 0, describe(result)
    check = subprocess.run([shell_name, "-n"], input=result.stdout, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
