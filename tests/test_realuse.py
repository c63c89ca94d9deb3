"""Issue #20, "real use": what broke when the original's examples met real hosts.

Each item through the installed CLI, as the user who hit it: an ordinary
user's `--user=$USER` and default id map (items 2 and 9), a copy-on-write
root over `/` (item 3), the original's comma syntax (item 5).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from helpers import run_pflask, user_info
from helpers import shell as sh

from pflask.compile import plan as p
from pflask.compile.compiler import compile_plan
from pflask.compile.context import Context
from pflask.load.manifest import from_data

pytestmark = pytest.mark.usefixtures("host_clean")


def _plan(data: dict[str, Any], ctx: Context) -> p.Plan:
    return compile_plan(from_data({"version": 1, "name": "c", **data}), ctx)


# ---------------------------------------------------------------- items 2 and 9: id maps


def test_user_dollar_user_writes_its_own_files_on_a_bind(shared_tmp: Path, test_user: Any) -> None:
    """The original's `pflask --user=$USER --mount=bind:DIR:$HOME`: the command
    runs as the invoker's own uid, so what it writes is the invoker's."""
    info = user_info("pflask-test")
    work = shared_tmp / "home"
    work.mkdir()
    os.chown(work, info.uid, info.gid)
    result = run_pflask(
        "--user=pflask-test",
        f"--mount=bind:{work}:/mnt",
        "--",
        *sh("id -u; id -g; echo hi > /mnt/file && cat /mnt/file"),
        user="pflask-test",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(info.uid), str(info.gid), "hi"]
    assert (work / "file").stat().st_uid == info.uid
    assert (work / "file").stat().st_gid == info.gid


def test_ordinary_user_is_root_inside_with_its_subordinate_range(test_user: Any) -> None:
    """Without --user the invoker is root inside and its /etc/subuid range is
    mapped from 1 up (as podman does), so chown to a system user works, as
    apt-get's sandbox user (_apt, uid 42) needs."""
    info = user_info("pflask-test")
    assert info.subuid is not None
    result = run_pflask(
        "--mount=tmp:/mnt",
        "--",
        *sh(
            "id -u; cat /proc/self/uid_map; touch /mnt/f && chown 42:42 /mnt/f && stat -c %u /mnt/f"
        ),
        user="pflask-test",
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "0"
    assert lines[1].split() == ["0", str(info.uid), "1"]
    assert lines[2].split() == ["1", str(info.subuid[0]), str(info.subuid[1])]
    assert lines[3] == "42"


def test_user_dollar_user_without_subordinate_ids_maps_only_itself() -> None:
    """Without newuidmap (or a range) the invoker's id is the only one; no
    root inside, so the container never tries to become it."""
    ctx = Context(uid=1000, gid=1000, name="me")
    the_plan = _plan({"user": "me"}, ctx)
    uid_map = next(s for s in the_plan.steps if isinstance(s, p.UidMap))
    assert uid_map == p.UidMap(ranges=((1000, 1000, 1),), helper=False)
    assert not any(isinstance(s, p.BecomeRoot) for s in the_plan.steps)
    # With the helpers and a range: the range fills the ids around the invoker's.
    ctx = ctx.replace(subuid=((100000, 65536),), subgid=((100000, 65536),), id_helpers=True)
    uid_map = next(s for s in _plan({"user": "1000"}, ctx).steps if isinstance(s, p.UidMap))
    assert uid_map.ranges == ((0, 100000, 1000), (1000, 1000, 1), (1001, 101000, 64536))
    assert uid_map.helper
    # Without the helpers, the invoker is root inside and only itself (as before).
    plain = Context(uid=1000, gid=1000, subuid=((100000, 65536),), subgid=((100000, 65536),))
    uid_map = next(s for s in _plan({}, plain).steps if isinstance(s, p.UidMap))
    assert uid_map.ranges == ((0, 1000, 1),)


def test_an_explicit_idmap_still_wins(test_user: Any) -> None:
    info = user_info("pflask-test")
    assert info.subuid is not None
    start = info.subuid[0]
    result = run_pflask(
        f"--user-map=0:{start}:1000",
        "--",
        *sh("cat /proc/self/uid_map"),
        user="pflask-test",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["0", str(start), "1000"]


# ---------------------------------------------------------------- item 3: aufs over /


@pytest.mark.parametrize("user", [None, "pflask-test"])
@pytest.mark.parametrize("form", ["aufs:{overlay}:/", "aufs,{overlay},{root}"])
def test_copy_on_write_root_keeps_proc_sys_dev_and_the_root(
    writable_busybox_root: Path, shared_tmp: Path, test_user: Any, user: str | None, form: str
) -> None:
    """`aufs:DIR:/` and the original README's host-path target both stack DIR
    over the whole root, under /proc, /sys and /dev, and leave the root as it was."""
    overlay = shared_tmp / "overlay"
    overlay.mkdir()
    if user:
        info = user_info(user)
        os.chown(overlay, info.uid, info.gid)
        os.chown(shared_tmp, info.uid, info.gid)  # the work directory goes beside it
    before = sorted(os.listdir(writable_busybox_root))
    spec = form.format(overlay=overlay, root=writable_busybox_root)
    result = run_pflask(
        f"--chroot={writable_busybox_root}",
        f"--mount={spec}",
        "--",
        *sh(
            "test -e /proc/self/stat && test -d /sys/kernel && test -c /dev/null && echo ok;"
            "echo new > /new-file"
        ),
        user=user,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert (overlay / "new-file").read_text() == "new\n"
    assert sorted(os.listdir(writable_busybox_root)) == before
    assert sorted(os.listdir(shared_tmp)) == ["overlay", "root"]  # no work directory left


# ---------------------------------------------------------------- item 5: comma syntax


def test_comma_mount_spec_as_the_original(test_user: Any) -> None:
    """`--mount tmp,$HOME`, from the original's examples, as its own user."""
    home = user_info("pflask-test").home
    result = run_pflask(
        "--mount",
        f"tmp,{home}",
        "--",
        *sh(f"touch {home}/x && ls -A {home} && stat -f -c %T {home}"),
        user="pflask-test",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["x", "tmpfs"]
    assert not (home / "x").exists()


def test_comma_netif_spec_as_the_original() -> None:
    result = run_pflask("--netif=veth,rue0,eth0", "--plan", "--", "true")
    assert result.returncode == 0, result.stderr
    assert "veth rue0 (host) <-> eth0 (container)" in result.stdout
    result = run_pflask("--netif=dev0,eth0", "--plan", "--", "true")
    assert "move host link dev0 into the container as eth0" in result.stdout


@pytest.mark.parametrize("spec", ["a,b,c", "dev/0,eth0", "a-name-far-too-long"])
def test_a_bad_netif_lists_the_shapes(spec: str) -> None:
    result = run_pflask(f"--netif={spec}", "--", "true")
    assert result.returncode == 2
    assert result.stderr.startswith(f"pflask: --netif {spec!r}: ")
    assert "DEV[:NAME], macvlan:MASTER:NAME, ipvlan:MASTER:NAME or veth:OUTSIDE:INSIDE" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


# ---------------------------------------------------------------- item 8: roots

DEBIAN = Path("/var/cache/pflask-test/debian")


@pytest.mark.skipif(not (DEBIAN / "etc/debian_version").exists(), reason="no Debian root built")
def test_debian_root_configures_a_root_it_did_not_build(shared_tmp: Path) -> None:
    """A debootstrapped root from elsewhere is configured in place, not
    refused; its /etc/hostname (the host's, from debootstrap) goes, so the
    booted system keeps the hostname pflask gives it."""
    import subprocess

    root = shared_tmp / "debian"
    subprocess.run(["cp", "-a", str(DEBIAN), str(root)], check=True)
    (root / "etc/.debian-root-done").unlink()
    (root / "etc/hostname").write_text("the-host\n")
    script = Path(__file__).resolve().parent.parent / "scripts/debian-root"
    result = subprocess.run(
        [str(script), str(root)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "configured in place" in result.stdout
    assert not (root / "etc/hostname").exists()
    subprocess.run(["rm", "-rf", "--", str(root)], check=True)
