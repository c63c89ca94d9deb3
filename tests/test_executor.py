"""Running real containers: namespaces, root, users, environment, signals, exit status.

Every test runs real namespaces on this kernel, as root and (where it says
so) as the unprivileged user pflask-test, and checks the host is left as it
was: mounts, links, loop devices, cgroups, temporary files and processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import pflask_cmd, run_pflask, user_env, user_info, wait_for
from helpers import shell as sh

pytestmark = pytest.mark.usefixtures("host_clean")

USERS = [None, "pflask-test"]
NAMESPACES = ("mnt", "pid", "ipc", "uts", "cgroup")


def manifest(directory: Path, name: str = "box", **fields: Any) -> Path:
    """A manifest file; the container's name is unique to this test session, as
    running containers claim their names machine-wide."""
    path = directory / f"{name}.yaml"
    unique = f"{name}-{os.getpid()}-{directory.name[:20]}"
    path.write_text(yaml.safe_dump({"version": 1, "name": unique, **fields}))
    return path


@pytest.fixture
def box(shared_tmp: Path, busybox_root: Path) -> Path:
    """A manifest for the busybox root; tests pass their command after `--`."""
    return manifest(shared_tmp, root={"path": str(busybox_root)}, hostname="box")


@pytest.mark.parametrize("user", USERS)
def test_every_namespace_differs_from_the_hosts(
    box: Path, user: str | None, test_user: Any
) -> None:
    result = run_pflask(
        "run",
        box,
        "--set",
        "namespaces.net=true",
        "--",
        *sh("for n in mnt pid ipc uts net cgroup user; do readlink /proc/self/ns/$n; done"),
        user=user,
    )
    assert result.returncode == 0, result.stderr
    inside = result.stdout.split()
    host = [os.readlink(f"/proc/self/ns/{n}") for n in (*NAMESPACES[:4], "net", "cgroup", "user")]
    differs = [a != b for a, b in zip(inside, host, strict=True)]
    assert differs[:6] == [True] * 6
    assert differs[6] is (user is not None)  # root gets no user namespace unless asked


@pytest.mark.parametrize("user", USERS)
def test_hostname_pid_and_uid_inside(box: Path, user: str | None, test_user: Any) -> None:
    result = run_pflask(
        "run", box, "--", *sh("hostname; echo $$; id -u; cat /proc/1/comm"), user=user
    )
    assert result.returncode == 0, result.stderr
    hostname, pid, uid, pid1 = result.stdout.split()
    assert (hostname, pid, uid) == ("box", "2", "0")
    assert pid1 != "sh"  # the reaper is PID 1 (see docs/architecture.md)


def test_command_is_pid_1_when_asked(box: Path) -> None:
    result = run_pflask("run", box, "--set", "pid1=command", "--", *sh("echo $$"))
    assert result.stdout.strip() == "1"


@pytest.mark.parametrize("user", USERS)
def test_network_namespace_has_only_lo_and_it_is_up(
    box: Path, user: str | None, test_user: Any
) -> None:
    result = run_pflask(
        "run",
        box,
        "--set",
        "namespaces.net=true",
        "--",
        *sh("ip -o link; ping -c1 -W1 127.0.0.1"),
        user=user,
    )
    assert result.returncode == 0, result.stderr
    links = [line.split(":")[1].strip() for line in result.stdout.splitlines() if ": <" in line]
    assert links == ["lo"]
    assert "UP" in result.stdout.splitlines()[0]


def test_ordinary_user_gets_subordinate_ids_through_newuidmap(box: Path, test_user: Any) -> None:
    result = run_pflask(
        "run",
        box,
        "--set",
        "user=alice",
        "--",
        *sh("id; cat /proc/self/uid_map"),
        user="pflask-test",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "uid=1000(alice) gid=1000(alice) groups=50(staff),1000(alice)"
    info = user_info("pflask-test")
    assert info.subuid is not None
    assert lines[1].split() == ["0", str(info.uid), "1"]
    assert lines[2].split() == ["1", str(info.subuid[0]), str(info.subuid[1])]


def test_user_with_a_root_as_root_just_works(box: Path) -> None:
    # The original needed --no-userns here; pflask makes no user namespace for root.
    result = run_pflask("run", box, "--set", "user=alice", "--", "id")
    assert result.stdout.strip() == "uid=1000(alice) gid=1000(alice) groups=50(staff),1000(alice)"


def test_classic_user_and_chroot(busybox_root: Path) -> None:
    result = run_pflask("--chroot", busybox_root, "--user", "alice:staff", "--", "id")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "uid=1000(alice) gid=50(staff) groups=50(staff)"


def test_user_without_a_root_uses_the_hosts_passwd(shared_tmp: Path) -> None:
    plain = manifest(shared_tmp, user="nobody")
    result = run_pflask("run", plain, "--", "id", "-un")
    assert result.stdout.strip() == "nobody"


def test_unknown_user_is_a_setup_error(box: Path) -> None:
    result = run_pflask("run", box, "--set", "user=mallory", "--", "true")
    assert result.returncode == 125
    assert "no user 'mallory' in the container's /etc/passwd" in result.stderr


# --- environment ----------------------------------------------------------------------------


def test_environment_with_a_root_is_cleared(box: Path) -> None:
    result = run_pflask(
        "run", box, "--", "env", env={"TERM": "xterm", "SECRET": "x", "LANG": "C.UTF-8"}
    )
    env = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert env == {
        "TERM": "xterm",
        "container": "pflask",
        "USER": "root",
        "LOGNAME": "root",
        "HOME": "/root",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    }


def test_environment_keep_set_and_user_vars(shared_tmp: Path, busybox_root: Path) -> None:
    path = manifest(
        shared_tmp,
        root={"path": str(busybox_root)},
        user="alice",
        env={"keep": ["LANG"], "set": {"EDITOR": "vi", "PATH": "/bin"}},
    )
    result = run_pflask("run", path, "--", "env", env={"LANG": "C.UTF-8", "SECRET": "x"})
    env = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert env["LANG"] == "C.UTF-8" and env["EDITOR"] == "vi" and env["PATH"] == "/bin"
    assert (env["USER"], env["HOME"]) == ("alice", "/home/alice")
    assert "SECRET" not in env


def test_classic_keepenv_and_setenv(busybox_root: Path) -> None:
    result = run_pflask(
        "-r", busybox_root, "-k", "-s", "A=1,B=two", "--", "env", env={"SECRET": "kept"}
    )
    env = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert (env["SECRET"], env["A"], env["B"], env["container"]) == ("kept", "1", "two", "pflask")


def test_environment_without_a_root_is_inherited(shared_tmp: Path) -> None:
    result = run_pflask("run", manifest(shared_tmp), "--", "env", env={"SECRET": "x"})
    assert "SECRET=x" in result.stdout.splitlines()
    assert "container=pflask" in result.stdout.splitlines()


def test_workdir(box: Path) -> None:
    result = run_pflask("run", box, "--set", "workdir=/etc", "--", "pwd")
    assert result.stdout.strip() == "/etc"


# --- exit statuses ---------------------------------------------------------------------------


@pytest.mark.parametrize("user", USERS)
def test_exit_statuses(box: Path, busybox_root: Path, user: str | None, test_user: Any) -> None:
    assert run_pflask("run", box, "--", *sh("exit 3"), user=user).returncode == 3
    assert run_pflask("run", box, "--", *sh("kill -USR1 $$"), user=user).returncode == 128 + 10
    missing = run_pflask("run", box, "--", "/nonexistent", user=user)
    assert missing.returncode == 127
    assert missing.stderr.strip() == "pflask: /nonexistent: command not found"
    not_exec = run_pflask("run", box, "--", "/etc/passwd", user=user)
    assert not_exec.returncode == 126
    assert "pflask: /etc/passwd: cannot execute" in not_exec.stderr


def test_setup_failure_names_step_path_and_syscall(shared_tmp: Path, busybox_root: Path) -> None:
    path = manifest(
        shared_tmp,
        root={"path": str(busybox_root)},
        mounts=[{"type": "bind", "source": str(shared_tmp / "missing"), "target": "/m"}],
    )
    result = run_pflask("run", path, "--", "true")
    assert result.returncode == 125
    line = result.stderr.strip()
    assert line.startswith("pflask: step ")
    assert f"(bind {shared_tmp / 'missing'} -> /m (nodev))" in line
    assert line.endswith(
        f"open(2) bind source {shared_tmp / 'missing'}: ENOENT (No such file or directory)"
    )


def test_missing_root_is_a_setup_error(shared_tmp: Path) -> None:
    path = manifest(shared_tmp, root={"path": str(shared_tmp / "nothere")})
    result = run_pflask("run", path, "--", "true")
    assert result.returncode == 125
    assert "mount(2)" in result.stderr and "ENOENT" in result.stderr


def test_manifest_error_exits_2(shared_tmp: Path) -> None:
    path = shared_tmp / "bad.yaml"
    path.write_text("version: 1\nhostname: [x]\n")
    result = run_pflask("run", path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"pflask: {path}:2:11: hostname:")


# --- processes, signals, fds ----------------------------------------------------------------


def start(args: list[str | Path], user: str | None = None, **kwargs: Any) -> subprocess.Popen[str]:
    argv = [*pflask_cmd(), *map(str, args)]
    env = None
    if user is not None:
        info = user_info(user)
        argv = [
            "setpriv",
            f"--reuid={info.uid}",
            f"--regid={info.gid}",
            "--init-groups",
            "--",
            *argv,
        ]
        env = user_env(info)
    return subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
        **kwargs,
    )


def container_processes(pflask_pid: int) -> list[int]:
    """Every descendant of a pflask process (the container's processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pflask_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def wait_started(proc: subprocess.Popen[str], marker: str = "ready") -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == marker, (line, proc.stderr.read() if proc.stderr else "")


@pytest.mark.parametrize(
    ("signum", "status"),
    [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129), (signal.SIGUSR1, 138)],
)
@pytest.mark.parametrize("user", USERS)
def test_signals_reach_the_command(
    box: Path, signum: int, status: int, user: str | None, test_user: Any
) -> None:
    proc = start(["run", box, "--", *sh("echo ready; exec sleep 60")], user=user)
    wait_started(proc)
    proc.send_signal(signum)
    assert proc.wait(timeout=10) == status


def test_trapped_signal_is_handled_by_the_command(box: Path) -> None:
    proc = start(
        [
            "run",
            box,
            "--",
            *sh("trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done"),
        ]
    )
    wait_started(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 7
    assert proc.stdout is not None and proc.stdout.read().strip() == "got-term"


def test_a_container_ignoring_sigterm_is_killed_after_the_timeout(box: Path) -> None:
    proc = start(
        [
            "run",
            box,
            "--set",
            "stop.timeout=1",
            "--",
            *sh("trap '' TERM; echo ready; exec sleep 60"),
        ]
    )
    wait_started(proc)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 128 + 9
    assert 0.9 < time.monotonic() - started < 5


def test_pid1_command_ignoring_sigterm_is_killed_after_the_timeout(box: Path) -> None:
    # An init-less PID 1 has no handler for SIGTERM: the kernel drops it.
    proc = start(
        [
            "run",
            box,
            "--set",
            "stop.timeout=1",
            "--set",
            "pid1=command",
            "--",
            *sh("echo ready; exec sleep 60"),
        ]
    )
    wait_started(proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 128 + 9


def test_killing_pflask_kills_the_container(box: Path) -> None:
    proc = start(["run", box, "--", *sh("sleep 60 & echo ready; sleep 60")])
    wait_started(proc)

    def all_three() -> list[int]:  # PID 1 and both sleeps (sh execs the last one)
        found = container_processes(proc.pid)
        return found if len(found) >= 3 else []

    inside = wait_for(all_three)
    proc.kill()
    proc.wait()
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in inside), timeout=5)
    # Its state record is stale now: the next pflask to look (here ps) removes it.
    assert run_pflask("ps").returncode == 0


def test_zombies_are_reaped(box: Path) -> None:
    script = "(sleep 0.2 &); sleep 1; ps -o pid,stat,comm | grep -c ' Z ' || true"
    result = run_pflask("run", box, "--", *sh(script))
    assert result.stdout.strip() == "0", result.stdout


def test_only_standard_fds_reach_the_container(box: Path) -> None:
    extra = os.open("/etc/hostname", os.O_RDONLY)
    try:
        proc = subprocess.run(
            [*pflask_cmd(), "run", str(box), "--", *sh("ls /proc/$$/fd; true")],
            pass_fds=(extra,),
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        os.close(extra)
    assert proc.stdout.split() == ["0", "1", "2"], proc.stdout + proc.stderr


def test_output_streams_and_stdin_pass_through(box: Path) -> None:
    result = run_pflask("run", box, "--", *sh("cat; echo err >&2"), input=b"piped\n")
    assert result.stdout == "piped\n" and result.stderr == "err\n"


def test_host_mount_table_is_unchanged_and_nothing_leaks(box: Path) -> None:
    before = Path("/proc/self/mountinfo").read_text()
    # mounting needs CAP_SYS_ADMIN, which the default set leaves out
    mounts = "mount -t tmpfs none /tmp && touch /tmp/x && cat /proc/mounts"
    result = run_pflask("run", box, "--set", "capabilities=+sys_admin", "--", *sh(mounts))
    assert result.returncode == 0, result.stderr
    assert " /tmp tmpfs" in result.stdout
    assert Path("/proc/self/mountinfo").read_text() == before


def test_root_with_its_own_user_namespace_is_root_inside(box: Path) -> None:
    # 0 inside is 100000 outside: the host's root is not mapped, so pflask
    # must take uid 0 of the namespace before it creates anything.
    result = run_pflask(
        "run",
        box,
        "--set",
        "namespaces.user=true",
        "--",
        *sh("id -u; id -g; cat /proc/self/uid_map; touch /tmp/x && stat -c %u /tmp/x"),
    )
    assert result.returncode == 0, result.stderr
    uid, gid, *uid_map, owner = result.stdout.split()
    assert (uid, gid, owner) == ("0", "0", "0")
    assert uid_map == ["0", "100000", "65536"]


def test_root_with_an_id_map_and_no_root_directory(shared_tmp: Path) -> None:
    path = manifest(
        shared_tmp,
        idmap={
            "uid": [{"inside": 0, "outside": 100000, "count": 65536}],
            "gid": [{"inside": 0, "outside": 100000, "count": 65536}],
        },
    )
    result = run_pflask("run", path, "--", "id", "-u")
    assert (result.returncode, result.stdout) == (0, "0\n"), result.stderr
