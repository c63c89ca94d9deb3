"""The original pflask's documented examples, run as written, through the installed pflask.

Sources (ghedo/pflask): the man page docs/pflask.1.md (December 2013, the
one that goes with /work/shared/ORIGINAL-README.md: it has one `Example:`
per mount type and the --netif form, in the comma syntax of the time) and
the README's EXAMPLES section of the same month (commit 1aaffc4).  Host
paths are replaced by fixtures (a busybox root, test directories), and
`$USER`/`$HOME` by the test user's; nothing else is changed.

Not run here, and why:
- `--mount=loop,ext4,/path/to/disk.img,/dest/path`: the original never
  implemented it ("loop (TODO)") and removed it from the page a day later;
  pflask's loop mounts (loop:IMAGE:DST[:FSTYPE]) are tested in test_loop.py.
- `--netif=ipvlan:...`: this kernel has no ipvlan driver (test_network.py
  checks the clear error instead).
- `pflask-debuild`: a separate tool of the original, not part of pflask.
- `chromium --disable-setuid-sandbox`: not installed; a shell that checks
  what chromium would have seen ($HOME empty, or the bind) stands in.
- `pflask --attach 29076` after `--detach`: re-attaching needs a terminal,
  which test_state.py drives through tmux; here the detached container is
  found with `pflask ps` (pflask names it pflask-PID) and stopped.
- `--root /path/to/container /sbin/init` boots a real OS in test_boot.py
  (the Debian root); here /sbin/init is a script that reports and exits.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from helpers import run_pflask, user_info
from helpers import shell as sh

pytestmark = pytest.mark.usefixtures("host_clean")

USERS = [None, "pflask-test"]


def _owned(path: Path, user: str | None) -> Path:
    if user:
        info = user_info(user)
        os.chown(path, info.uid, info.gid)
    return path


# ---------------------------------------------------------------- man page: MOUNT POINTS


@pytest.mark.parametrize("user", USERS)
def test_man_bind(shared_tmp: Path, test_user: Any, user: str | None) -> None:
    source = _owned(shared_tmp, user)
    (source / "hello").write_text("from the host\n")
    dest = "/mnt"
    result = run_pflask(f"--mount=bind,{source},{dest}", "--", "cat", "/mnt/hello", user=user)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "from the host\n"


@pytest.mark.parametrize("user", USERS)
def test_man_tmp(test_user: Any, user: str | None) -> None:
    result = run_pflask("--mount=tmp,/mnt", "--", *sh("stat -f -c %T /mnt"), user=user)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "tmpfs"


@pytest.mark.parametrize("user", USERS)
def test_man_aufs(
    writable_busybox_root: Path, shared_tmp: Path, test_user: Any, user: str | None
) -> None:
    overlay = shared_tmp / "overlay"
    overlay.mkdir()
    _owned(overlay, user)
    _owned(shared_tmp, user)
    dest = writable_busybox_root / "home"
    (dest / "below").write_text("lower\n")
    result = run_pflask(
        f"--mount=aufs,{overlay},{dest}",
        "--",
        *sh(f"cat {dest}/below && echo upper > {dest}/above"),
        user=user,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "lower\n"
    assert (overlay / "above").read_text() == "upper\n"
    assert not (dest / "above").exists()


# ---------------------------------------------------------------- man page: --netif


def test_man_netif_dev_name() -> None:
    """`--netif <dev>,<name>`: a veth end made for the test is moved and renamed."""
    import subprocess

    subprocess.run(["ip", "link", "add", "rux0", "type", "veth", "peer", "rux1"], check=True)
    try:
        result = run_pflask("--netif=rux1,eth0", "--", *sh("ip -o link show eth0 | wc -l"))
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "1"
    finally:
        subprocess.run(["ip", "link", "del", "rux0"], check=False)


# ---------------------------------------------------------------- README: EXAMPLES


def test_readme_hide_directories_from_an_application(test_user: Any) -> None:
    """`pflask --user $USER --mount tmp,$HOME chromium --disable-setuid-sandbox`"""
    info = user_info("pflask-test")
    home = info.home
    result = run_pflask(
        "--user",
        "pflask-test",
        "--mount",
        f"tmp,{home}",
        *sh(f"id -un; ls -A {home} | wc -l; touch {home}/trace"),
        user="pflask-test",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["pflask-test", "0"]
    assert not (home / "trace").exists()


def test_readme_keep_the_changes_in_a_bind(shared_tmp: Path, test_user: Any) -> None:
    """`pflask --user $USER --mount bind,/tmp/trash,$HOME chromium ...`: the
    changes are in /tmp/trash, and they are the user's own files."""
    info = user_info("pflask-test")
    trash = _owned(shared_tmp, "pflask-test")
    result = run_pflask(
        "--user",
        "pflask-test",
        "--mount",
        f"bind,{trash},{info.home}",
        *sh(f"echo cookie > {info.home}/cookies"),
        user="pflask-test",
    )
    assert result.returncode == 0, result.stderr
    assert (trash / "cookies").read_text() == "cookie\n"
    assert (trash / "cookies").stat().st_uid == info.uid


def test_readme_detach(test_user: Any) -> None:
    """`pflask --user $USER --detach /bin/bash`, then the pflask process's pid."""
    result = run_pflask("--user", "pflask-test", "--detach", "/bin/bash", user="pflask-test")
    assert result.returncode == 0, result.stderr
    name = result.stdout.strip()
    listed = run_pflask("ps", user="pflask-test")
    row = next(line for line in listed.stdout.splitlines() if line.startswith(name + " "))
    assert row.split()[-1] == "/bin/bash"
    stopped = run_pflask("stop", name, "--timeout", "2", user="pflask-test")
    assert stopped.returncode == 0, stopped.stderr


INIT = """#!/bin/sh
echo "pid=$$"
test -e /proc/self/stat && echo proc=yes
echo booted > /booted
"""


@pytest.mark.parametrize("copy_on_write", [False, True])
def test_readme_boot_and_copy_on_write_boot(
    writable_busybox_root: Path, shared_tmp: Path, copy_on_write: bool
) -> None:
    """`pflask --root /path/to/container /sbin/init`, and the same with
    `--no-userns --mount aufs,/tmp/overlay,/path/to/container`: the overlay
    takes the changes, the container directory stays as it was."""
    root = writable_busybox_root
    init = root / "sbin/init"
    init.unlink(missing_ok=True)  # busybox's, if the root has one
    init.write_text(INIT)
    init.chmod(0o755)
    overlay = shared_tmp / "overlay"
    overlay.mkdir()
    args = ["--root", str(root)]
    if copy_on_write:
        args += ["--no-userns", "--mount", f"aufs,{overlay},{root}"]
    result = run_pflask(*args, "/sbin/init")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["pid=1", "proc=yes"]
    changed, kept = (overlay, root) if copy_on_write else (root, overlay)
    assert (changed / "booted").read_text() == "booted\n"
    assert not (kept / "booted").exists()
