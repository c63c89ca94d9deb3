"""`pflask export --oci DIR FILE`: a manifest as an OCI bundle that runc runs alike.

What a user notices: runc (and pflask-oci) run the exported bundle with the
same user, groups, hostname, capability lines, environment, mount points,
limits and exit status as `pflask run FILE`, but for the standard /dev
nodes (runc makes them with mknod, pflask binds the host's); what a bundle
cannot say is a one-line error (exit 2); the default seccomp filter, which
config.json cannot hold, is left out with a warning.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import describe, run_pflask

pytestmark = pytest.mark.usefixtures("host_clean")

RUNC = shutil.which("runc")
PROBE = (
    "id; hostname; grep -E '^(Cap|NoNewPrivs)' /proc/self/status; ulimit -n; env | sort; "
    "cut -d' ' -f5 /proc/self/mountinfo | sort; cat /sys/fs/cgroup/pids.max 2>/dev/null; exit 4"
)
DEV_NODES = {f"/dev/{n}" for n in ("null", "zero", "full", "random", "urandom", "tty")}


def manifest(directory: Path, extra: str = "") -> Path:
    path = directory / "box.yaml"
    path.write_text(
        "version: 1\n"
        "root: {path: ./root}\n"
        "hostname: exported\n"
        "user: alice\n"
        f"command: [/bin/sh, -c, {json.dumps(PROBE)}]\n"
        "env: {set: {GREETING: hi}}\n"
        "mounts: [{type: tmp, target: /scratch, size: 8M}]\n"
        "cgroup: {memory: 64M, pids: 100}\n"
        "security: {seccomp: unconfined, no_new_privileges: true, rlimits: {nofile: 512}}\n" + extra
    )
    return path


def test_runc_runs_the_exported_container_alike(writable_busybox_root: Path) -> None:
    if RUNC is None:
        pytest.skip("runc is not installed (apt-get install runc)")
    directory = writable_busybox_root.parent
    file = manifest(directory)
    exported = run_pflask("export", "--oci", directory / "bundle", file)
    assert exported.returncode == 0, describe(exported)
    assert exported.stdout == f"{directory / 'bundle'}/config.json\n"
    env = {"TERM": "xterm", "PATH": "/usr/bin:/bin"}
    ours = run_pflask("run", file, env=env)
    argv = [RUNC, "--root", str(directory / "runc"), "run", "--bundle", str(directory / "bundle")]
    theirs = subprocess.run([*argv, "x1"], capture_output=True, text=True, timeout=30)
    oci = str(Path(sys.executable).with_name("pflask-oci"))
    argv = [oci, "--root", str(directory / "state"), "run", "--bundle", str(directory / "bundle")]
    again = subprocess.run([*argv, "x2"], capture_output=True, text=True, timeout=30)
    for result in (ours, theirs, again):
        assert result.returncode == 4, describe(result)

    def seen(text: str) -> list[str]:
        return [line for line in text.splitlines() if line not in DEV_NODES]

    assert seen(theirs.stdout) == seen(ours.stdout)
    assert seen(again.stdout) == seen(theirs.stdout)
    assert "uid=1000(alice) gid=1000(alice) groups=50(staff),1000(alice)" in theirs.stdout
    assert "NoNewPrivs:\t1" in theirs.stdout and "\n512\n" in theirs.stdout
    assert "/scratch" in theirs.stdout and "GREETING=hi" in theirs.stdout


@pytest.mark.parametrize("expected", ["cannot say an ephemeral root", "cannot say network links"])
def test_what_a_bundle_cannot_say_is_refused(writable_busybox_root: Path, expected: str) -> None:
    directory = writable_busybox_root.parent
    file = manifest(directory)
    text = file.read_text()
    if "ephemeral" in expected:
        text = text.replace("root: {path: ./root}", "root: {path: ./root, ephemeral: true}")
    else:
        text += "network: {interfaces: [{type: veth, name: eth0, host: pfx0}]}\n"
    file.write_text(text)
    result = run_pflask("export", "--oci", directory / "bundle", file)
    assert result.returncode == 2, describe(result)
    assert result.stderr.count("\n") == 1 and expected in result.stderr
    assert not (directory / "bundle" / "config.json").exists()


def test_default_seccomp_filter_is_left_out_with_a_warning(writable_busybox_root: Path) -> None:
    directory = writable_busybox_root.parent
    file = manifest(directory)
    file.write_text(file.read_text().replace("seccomp: unconfined, ", ""))
    result = run_pflask("export", "--oci", directory / "bundle", file)
    assert result.returncode == 0, describe(result)
    assert "warning: the default seccomp filter is compiled BPF" in result.stderr
    config = json.loads((directory / "bundle" / "config.json").read_text())
    assert "seccomp" not in config["linux"]


def test_export_needs_a_root(tmp_path: Path) -> None:
    file = tmp_path / "hostroot.yaml"
    file.write_text("version: 1\ncommand: [/bin/true]\n")
    result = run_pflask("export", "--oci", tmp_path / "b", file)
    assert result.returncode == 2 and "needs a root of its own" in result.stderr
