"""Issue #20, "real use", items 4, 7 and 10: what `stop`, `exec` and `attach`
did that surprised people, through the installed CLI.

Item 7: `pflask stop` on a command that ignores SIGTERM says what it waits for
and when it escalates. Item 10: `pflask exec NAME` runs the user's login
shell; the classic `--detach` prints a name `--attach` finds; `--detach-keys`.
Item 4: `pflask exec` leaves nothing in the container's cgroups.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from helpers import describe, pflask_cmd, run_pflask
from test_boot import booted, init_manifest, opt_in, wait_running
from test_boot import debian_root as debian_root  # a fixture shared with that module
from test_state import detached as detached  # a fixture shared with that module
from test_state import entry, ignoring_sigterm
from test_terminal import PFLASK, manifest
from test_terminal import tmux_factory as tmux_factory  # a fixture shared with that module

pytestmark = pytest.mark.usefixtures("host_clean")


def unique(prefix: str = "ru") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def box(shared_tmp: Path, busybox_root: Path) -> Path:
    return manifest(shared_tmp, name=unique("box"), root={"path": str(busybox_root)})


# ---------------------------------------------------- item 7: stop says what it waits for


def test_stop_says_what_it_waits_for_and_when_it_escalates(box: Path) -> None:
    name = unique()
    proc = ignoring_sigterm(box, name)
    stopper = subprocess.Popen(
        [*pflask_cmd(), "stop", name, "-t", "2"], stderr=subprocess.PIPE, text=True
    )
    assert stopper.stderr is not None
    started = time.monotonic()
    # The first line comes while it waits, long before the SIGKILL.
    first = stopper.stderr.readline()
    assert time.monotonic() - started < 1.5
    assert first == f"pflask: waiting up to 2 s for {name} to stop (SIGTERM sent); then SIGKILL\n"
    rest = stopper.stderr.read()
    assert stopper.wait(timeout=10) == 0
    assert 1.9 < time.monotonic() - started < 6
    assert rest == f"pflask: {name} did not stop within 2 s; sending SIGKILL\n"
    assert proc.wait(timeout=5) == 137


def test_stop_that_succeeds_at_once_is_quiet(box: Path, detached: Any) -> None:
    name = unique()
    assert detached(box, name, "sleep", "60").returncode == 0
    result = run_pflask("stop", name)
    assert result.returncode == 0
    assert result.stderr == ""
    assert entry(name) is None


# ---------------------------------------------------------------- item 10: exec's default shell


@pytest.mark.parametrize("user", [None, "pflask-test"])
def test_exec_without_a_command_runs_the_login_shell_from_passwd(
    writable_busybox_root: Path, shared_tmp: Path, detached: Any, user: str | None
) -> None:
    """root's shell is /bin/ash in this root's passwd; alice's /bin/bash is
    not there, so she gets /bin/sh (as `pflask exec NAME -- /bin/sh` did)."""
    (writable_busybox_root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/ash\nalice:x:1000:1000:Alice:/home/alice:/bin/bash\n"
    )
    root = {"path": str(writable_busybox_root)}
    as_root = manifest(shared_tmp, name=unique("sh"), root=root)
    as_alice = manifest(shared_tmp, name=unique("sh"), root=root, user="alice")
    for path, shell in ((as_root, "/bin/ash"), (as_alice, "/bin/sh")):
        name = path.stem
        assert detached(path, name, "sleep", "60", user=user).returncode == 0
        result = run_pflask("exec", name, input=b'echo "$0 $(id -u)"\n', user=user)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{shell} {0 if path is as_root else 1000}\n"
        assert run_pflask("stop", name, user=user).returncode == 0


# ---------------------------------------------------------------- item 10: the classic --detach


@pytest.mark.parametrize("user", [None, "pflask-test"])
def test_classic_detach_prints_a_name_whose_pid_attach_finds(user: str | None) -> None:
    """The original's `pflask --detach CMD` then `pflask --attach PID`: the pid
    in the printed name is the background pflask's, the one that stays."""
    script = "echo hello from it; sleep 2"
    result = run_pflask("--detach", "--", "sh", "-c", script, user=user)
    assert result.returncode == 0, result.stderr
    name = result.stdout.strip()
    assert name.startswith("pflask-")
    pid = name.removeprefix("pflask-")
    row = entry(name, user)
    assert row is not None and row["supervisor"] == int(pid)
    attached = run_pflask("--attach", pid, user=user, timeout=15)
    assert attached.returncode == 0, attached.stderr
    assert "hello from it" in attached.stdout
    assert entry(name, user) is None  # it ended while attached


# ---------------------------------------------------------------- item 10: --detach-keys


@pytest.mark.parametrize("user", [None, "pflask-test"])
def test_detach_keys_as_podman_writes_them(
    box: Path, detached: Any, tmux_factory: Any, user: str | None
) -> None:
    name = unique()
    assert detached(box, name, "sh", user=user).returncode == 0
    tmux = tmux_factory(user)
    tmux.type(f"{PFLASK} attach --detach-keys ctrl-p,ctrl-q {name}")
    tmux.wait_for_text("/ #")
    tmux.keys("C-@")  # no longer the detach key: the shell gets it
    assert tmux.run("echo still=attached") == ["still=attached"]
    tmux.keys("C-p", "C-q")
    tmux.wait_for_text(f"pflask: detached from {name}")
    tmux.wait_for_prompt()
    assert tmux.run("echo attach=$?") == ["attach=0"]

    # The original's --attach by pid takes them too; a key that begins the
    # sequence but is not followed by the rest reaches the container intact.
    pid = entry(name, user)["pid"]  # type: ignore[index]
    tmux.type(f"{PFLASK} --attach {pid} --detach-keys x,y")
    time.sleep(0.5)
    assert tmux.run("echo xax") == ["xax"]
    tmux.type("xy", enter=False)
    tmux.wait_for_text(f"pflask: detached from {name}")
    tmux.wait_for_prompt()
    assert entry(name, user) is not None  # it runs on


def test_detach_keys_refuses_what_is_not_a_key(box: Path) -> None:
    result = run_pflask("attach", "--detach-keys", "ctrl-1", "nosuch")
    assert result.returncode == 2
    assert result.stderr.startswith("pflask: --detach-keys: 'ctrl-1' is not a key: ")
    alone = run_pflask("--detach-keys", "ctrl-p,ctrl-q", "--", "true")
    assert alone.returncode == 2
    assert "--detach-keys goes with --attach" in alone.stderr


# ---------------------------------------------------------------- item 4: exec and the cgroups


@pytest.mark.boot
@opt_in
def test_exec_in_a_booted_debian_leaves_nothing_in_its_cgroups(
    shared_tmp: Path, debian_root: Path
) -> None:
    """systemd reads every process of a unit's cgroup: one of pflask exec's,
    outside the container's PID namespace, shows there as pid 0 and
    `systemctl status` failed with "Input/output error"."""
    name = "deb-exec"
    path = init_manifest(shared_tmp, debian_root, name, command=["/sbin/init"], terminal=False)
    with booted(path, name, shared_tmp / "console.log") as c:
        wait_running(c)
        # The command is in PID 1's group, under its own pid; pflask exec's
        # own process (outside the PID namespace) is nowhere in there.
        script = "echo $$; cat /proc/self/cgroup; cat /sys/fs/cgroup/init.scope/cgroup.procs"
        shown = c.check("sh", "-c", script).split("\n")
        own, groups, procs = shown[0], shown[1:11], shown[11:-1]
        assert groups[-1] == "0::/init.scope", groups
        assert "0" not in procs and "1" in procs and own in procs, procs
        status = c.run("systemctl", "status", "--no-pager")
        assert status.returncode == 0, describe(status)
        assert status.stderr == "", describe(status)
        assert "Input/output error" not in status.stdout
        # Once it ended, PID 1's own groups on the host (every hierarchy,
        # the v1 ones as well) hold the container's processes only.
        own_ns = os.readlink(f"/proc/{c.pid1}/ns/pid")
        lines = Path(f"/proc/{c.pid1}/cgroup").read_text().splitlines()
        ours = [line for line in lines if f"/pflask-{name}-" in line]
        assert len(ours) >= 2, lines  # the v2 tree and at least the devices hierarchy
        for line in ours:
            _, controllers, group = line.split(":", 2)
            mount = _mount_of(controllers)
            for pid in (Path(mount + group) / "cgroup.procs").read_text().split():
                with contextlib.suppress(FileNotFoundError):
                    assert os.readlink(f"/proc/{pid}/ns/pid") == own_ns, (line, pid)
        c.stop()


def _mount_of(controllers: str) -> str:
    """Where the host mounts the hierarchy of a /proc/PID/cgroup line's controllers."""
    if not controllers:
        return "/sys/fs/cgroup/unified"
    name = controllers.removeprefix("name=")
    for candidate in (name, *name.split(",")):
        if os.path.isdir(f"/sys/fs/cgroup/{candidate}"):
            return f"/sys/fs/cgroup/{candidate}"
    raise AssertionError(f"no mount for {controllers}")


def test_exec_runs_under_the_containers_limits_and_its_own_process_stays_out(
    box: Path, shared_tmp: Path, busybox_root: Path, detached: Any
) -> None:
    """A container with a pids limit: the exec'd command is in PID 1's pids
    group (a fork loop stops there too), pflask exec's own process is not."""
    name = unique("lim")
    path = manifest(shared_tmp, name=name, root={"path": str(busybox_root)}, cgroup={"pids": 20})
    assert detached(path, name, "sleep", "60").returncode == 0
    pid1 = entry(name)["pid"]  # type: ignore[index]
    group = next(
        line.split(":", 2)[2]
        for line in Path(f"/proc/{pid1}/cgroup").read_text().splitlines()
        if line.split(":")[1] == "pids"
    )
    procs = Path("/sys/fs/cgroup/pids") / group.lstrip("/") / "cgroup.procs"
    execing = subprocess.Popen(
        [*pflask_cmd(), "exec", name, "--", "sh", "-c", "echo $$; sleep 2"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert execing.stdout is not None
    inside = execing.stdout.readline().strip()
    assert inside.isdigit() and inside != "1"
    members = procs.read_text().split()
    assert str(execing.pid) not in members  # pflask exec itself
    own_ns = os.readlink(f"/proc/{pid1}/ns/pid")
    assert all(os.readlink(f"/proc/{pid}/ns/pid") == own_ns for pid in members)
    inner = [_nspid(pid) for pid in members]
    assert inside in inner, (inside, inner)  # the command itself, by its pid in there
    assert execing.wait(timeout=10) == 0
    loop = run_pflask("exec", name, "--", "sh", "-c", "for i in $(seq 40); do sleep 1 & done")
    assert "can't fork" in loop.stderr or loop.returncode != 0, describe(loop)
    assert run_pflask("stop", name, "-t", "1").returncode == 0


def _nspid(pid: str) -> str:
    """`pid`'s number in its own PID namespace (the last of NSpid)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return line.split()[-1]
    return ""
