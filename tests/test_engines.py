"""pflask-oci driven by the real engines: podman and containerd (Debian's packages).

podman writes /etc/hosts and friends into a --rootfs: each test gives it a
copy of the busybox root.  Each engine runs with state of its own (podman's
storage and run roots, a test-local containerd with its own root, state and
socket, the CRI plugin disabled), so nothing of the host's is used or left.
What their users notice: the command's output and exit status; a detached
container that `exec` reaches and `stop` ends; a terminal (-t, through the
console socket); containerd's run, exec, pause, kill and delete on an image
imported from a locally built OCI archive.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import describe

pytestmark = pytest.mark.usefixtures("host_clean")

PFLASK_OCI = str(Path(sys.executable).with_name("pflask-oci"))
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (scripts/setup installs it with apt-get)")
    return path


# -- podman ------------------------------------------------------------------------------


def _remove_groups(top: Path) -> None:
    """rmdir a cgroup tree, deepest first, allowing conmon a moment to leave."""
    deadline = time.monotonic() + 5
    for group in sorted(top.glob("**/"), key=lambda g: -len(g.parts)):
        while True:
            try:
                group.rmdir()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


class Podman:
    def __init__(self, directory: Path) -> None:
        self.argv = [
            _need("podman"),
            "--root",
            str(directory / "storage"),
            "--runroot",
            str(directory / "run"),
            "--tmpdir",
            str(directory / "tmp"),
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
            "--runtime",
            PFLASK_OCI,
        ]

    @staticmethod
    def run_args(rootfs: Path, *options: str) -> list[str]:
        """`run` with `options` of a --rootfs, as every test runs it: no
        network, the limits this VM allows (ULIMITS)."""
        return ["run", *options, "--network=none", *ULIMITS, "--rootfs", str(rootfs)]

    def __call__(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.argv, *args], capture_output=True, text=True, timeout=timeout, check=False
        )


@pytest.fixture
def podman() -> Iterator[Podman]:
    """podman with storage and state of its own, under a short path (podman
    refuses a run root longer than 50 characters)."""
    import tempfile

    directory = Path(tempfile.mkdtemp(prefix="pfo-"))
    groups = sorted(Path("/sys/fs/cgroup").glob("*/libpod_parent"))
    state = Path("/run/pflask-oci")  # podman passes no --root to delete: the default root
    had_state = state.exists()
    try:
        yield Podman(directory)
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", str(directory)], check=False)
        if not had_state and state.exists():
            # pflask-oci keeps its state root as runc keeps /run/runc; every
            # container podman made must have been deleted from it.
            assert list(state.iterdir()) == [], "pflask-oci records left after podman"
            state.rmdir()
        # podman's cgroupfs manager leaves its (empty) parent group for conmon.
        for made in sorted(Path("/sys/fs/cgroup").glob("*/libpod_parent")):
            if made not in groups:
                _remove_groups(made)


def test_podman_run_rm(podman: Podman, writable_busybox_root: Path) -> None:
    result = podman(
        *Podman.run_args(writable_busybox_root, "--rm"),
        "sh",
        "-c",
        "echo hello from $(hostname); id -u; grep :memory: /proc/self/cgroup; exit 5",
    )
    assert result.returncode == 5, describe(result)
    lines = result.stdout.splitlines()
    assert lines[0].startswith("hello from ") and lines[1] == "0"
    # podman's cgroupfs manager places its containers: linux.cgroupsPath is followed
    assert ":memory:/libpod_parent/libpod-" in lines[2], lines


def test_podman_detach_exec_stop_rm(podman: Podman, writable_busybox_root: Path) -> None:
    started = podman(
        *Podman.run_args(writable_busybox_root, "-d"),
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 0.1; done",
    )
    assert started.returncode == 0, describe(started)
    container = started.stdout.strip()
    try:
        listed = podman("ps", "--format", "{{.ID}} {{.Status}}")
        assert container[:12] in listed.stdout and "Up" in listed.stdout, describe(listed)
        done = podman("exec", container, "sh", "-c", "echo in it; exit 9")
        assert (done.returncode, done.stdout) == (9, "in it\n"), describe(done)
        began = time.monotonic()
        stopped = podman("stop", "-t", "5", container)
        assert stopped.returncode == 0, describe(stopped)
        assert time.monotonic() - began < 4  # SIGTERM ended it; no wait for SIGKILL
        inspected = podman("inspect", "--format", "{{.State.ExitCode}}", container)
        assert inspected.stdout.strip() == "0", describe(inspected)
    finally:
        removed = podman("rm", "-f", container)
    assert removed.returncode == 0, describe(removed)


def test_podman_terminal(podman: Podman, writable_busybox_root: Path) -> None:
    _need("script")
    command = [
        *podman.argv,
        *Podman.run_args(writable_busybox_root, "--rm", "-t"),
        "sh",
        "-c",
        "tty; test -t 0 && echo stdin-is-a-tty",
    ]
    line = " ".join(f"'{a}'" for a in command)
    result = subprocess.run(
        ["script", "-qec", line, "/dev/null"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, describe(result)
    assert "/dev/pts/0" in result.stdout and "stdin-is-a-tty" in result.stdout


# -- containerd ----------------------------------------------------------------------------


def oci_archive(rootfs: Path, dest: Path, tag: str) -> None:
    """An OCI archive (what `ctr image import` reads) of one layer holding
    `rootfs`, tagged `tag`, written by pflask's own image writer."""
    from pflask.image import layout

    directory = dest.with_suffix(".layout")
    config = {"Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"], "Cmd": ["sh"]}
    layout.write_layout(str(directory), [layout.tar_of_directory(str(rootfs))], config, tag)
    layout.archive(str(directory), str(dest))


@pytest.fixture
def containerd(shared_tmp: Path) -> Iterator[list[str]]:
    """A containerd of the test's own; yields the `ctr` argv that talks to it."""
    daemon = _need("containerd")
    ctr = _need("ctr")
    sock = shared_tmp / "c.sock"
    config = shared_tmp / "containerd.toml"
    config.write_text(
        "version = 2\n"
        f'root = "{shared_tmp}/root"\n'
        f'state = "{shared_tmp}/state"\n'
        'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
        f'[grpc]\n  address = "{sock}"\n'
        f'[ttrpc]\n  address = "{sock}.ttrpc"\n'
    )
    with open(shared_tmp / "containerd.log", "w") as log:
        proc = subprocess.Popen([daemon, "--config", str(config)], stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert proc.poll() is None, (shared_tmp / "containerd.log").read_text()
            assert time.monotonic() < deadline, "containerd did not start in 20 s"
            time.sleep(0.05)
        yield [ctr, "--address", str(sock)]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        # Snapshots are overlay directories: unmounted already, removed with the tree.
        subprocess.run(
            ["rm", "-rf", "--one-file-system", str(shared_tmp / "root"), str(shared_tmp / "state")]
        )


def test_containerd_run_exec_pause_kill_delete(
    containerd: list[str], busybox_root: Path, shared_tmp: Path
) -> None:
    def ctr(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*containerd, *args], capture_output=True, text=True, timeout=60, check=False
        )

    ref = "localhost/pflask-test:latest"
    oci_archive(busybox_root, shared_tmp / "image.tar", "latest")
    imported = ctr(
        "image", "import", "--base-name", "localhost/pflask-test", str(shared_tmp / "image.tar")
    )
    assert imported.returncode == 0, describe(imported)
    runtime = ["--runc-binary", PFLASK_OCI]
    probe = "echo from containerd; grep :pids: /proc/self/cgroup; exit 6"
    done = ctr("run", "--rm", *runtime, ref, "once", "sh", "-c", probe)
    assert done.returncode == 6, describe(done)
    # ctr's linux.cgroupsPath, /NAMESPACE/ID, followed; delete removed what it made
    assert done.stdout.endswith(":pids:/default/once\n"), describe(done)
    assert not list(Path("/sys/fs/cgroup").glob("*/default/once"))

    script = "trap 'exit 0' TERM; while true; do sleep 0.1; done"
    started = ctr("run", "-d", *runtime, ref, "svc", "sh", "-c", script)
    assert started.returncode == 0, describe(started)
    try:
        exec_ = ctr("task", "exec", "--exec-id", "e1", "svc", "sh", "-c", "echo exec; exit 3")
        assert (exec_.returncode, exec_.stdout) == (3, "exec\n"), describe(exec_)
        assert ctr("task", "pause", "svc").returncode == 0
        assert "PAUSED" in ctr("task", "ls").stdout
        assert ctr("task", "resume", "svc").returncode == 0
        assert "RUNNING" in ctr("task", "ls").stdout
        assert ctr("task", "kill", "svc").returncode == 0
        deadline = time.monotonic() + 10
        while "STOPPED" not in ctr("task", "ls").stdout:
            assert time.monotonic() < deadline, ctr("task", "ls").stdout
            time.sleep(0.05)
    finally:
        deleted = ctr("task", "delete", "--force", "svc")
        ctr("container", "delete", "svc")
    assert deleted.returncode == 0, describe(deleted)
    assert ctr("container", "ls", "-q").stdout == ""


def test_podman_exec_with_a_terminal(podman: Podman, writable_busybox_root: Path) -> None:
    """`podman exec -t`: pflask-oci exec --tty sends the pty master to conmon."""
    _need("script")
    started = podman(
        *Podman.run_args(writable_busybox_root, "-d"),
        "sleep",
        "30",
    )
    assert started.returncode == 0, describe(started)
    container = started.stdout.strip()
    try:
        command = [*podman.argv, "exec", "-t", container, "sh", "-c", "tty; exit 3"]
        line = " ".join(f"'{a}'" for a in command)
        result = subprocess.run(
            ["script", "-qec", line, "/dev/null"],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 3, describe(result)
        assert "/dev/pts/" in result.stdout
    finally:
        podman("rm", "-f", "-t", "0", container)
