"""Issue #20, "real use", the rest of items 8 and 9: what a booted or
ephemeral Debian root left wrong, through the installed CLI.

- item 9: in an ephemeral root an ordinary user's mapped root could not
  write /root (it belongs to the host's root, unmapped inside);
- item 8: mount points pflask made in a root that is not ephemeral stayed
  behind after the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import run_pflask, wait_for
from helpers import shell as sh
from test_boot import debian_root  # noqa: F401  (the session's debootstrapped root)
from test_terminal import tmux_factory as tmux_factory  # a fixture shared with that module

from pflask.compile import plan as p
from pflask.compile.compiler import compile_plan
from pflask.compile.context import Context
from pflask.load.manifest import from_data

pytestmark = pytest.mark.usefixtures("host_clean")

ROOT = Context(uid=0, gid=0)
USER = Context(uid=1000, gid=1000, subuid=((100000, 65536),), subgid=((200000, 65536),))


def _plan(data: dict[str, Any], ctx: Context) -> p.Plan:
    return compile_plan(from_data({"version": 1, "name": "c", **data}), ctx)


def _home_tmpfs(the_plan: p.Plan) -> list[p.MountFs]:
    return [s for s in the_plan.steps if isinstance(s, p.MountFs) and s.target == "/root"]


# ---------------------------------------------------------------- item 9: /root, ephemeral


def test_an_ephemeral_root_in_a_user_namespace_gets_a_home_of_its_own() -> None:
    ephemeral = {"root": {"path": "/os", "ephemeral": True}}
    [home] = _home_tmpfs(_plan(ephemeral, USER))
    assert home.fstype == "tmpfs" and "mode=700" in home.data
    assert {"nosuid", "nodev"} <= set(home.flags)
    sized = _plan({"root": {"path": "/os", "ephemeral": True, "size": "64M"}}, USER)
    assert "size=67108864" in _home_tmpfs(sized)[0].data  # bounded as the root's changes are
    # not when /root is the container's own: changes kept, or no user
    # namespace, or host root mapped as root
    assert not _home_tmpfs(_plan({"root": {"path": "/os"}}, USER))
    assert not _home_tmpfs(_plan(ephemeral, ROOT))
    identity = {**ephemeral, "uid_map": [[0, 0, 65536]], "gid_map": [[0, 0, 65536]]}
    assert not _home_tmpfs(_plan(identity, ROOT))


def test_the_mapped_root_writes_its_home_in_an_ephemeral_debian(
    shared_tmp: Path,
    debian_root: Path,  # noqa: F811
    test_user: Any,
) -> None:
    """`bash: /root/.bashrc: Permission denied` no more: an ordinary user's
    root inside has a writable home, and nothing of it reaches the root."""
    before = sorted(p.name for p in (debian_root / "root").iterdir())
    script = "cd && echo hi > .note && cat .note && stat -c '%U %a' /root && echo $HOME"
    result = run_pflask(
        f"--chroot={debian_root}",
        "--ephemeral",
        "--",
        *sh(script),
        user="pflask-test",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["hi", "root 700", "/root"]
    # an interactive bash reads its .bashrc without complaint
    bash = run_pflask(
        f"--chroot={debian_root}", "--ephemeral", "--", "bash", "-ic", "true", user="pflask-test"
    )
    assert "Permission denied" not in bash.stderr, bash.stderr
    assert sorted(p.name for p in (debian_root / "root").iterdir()) == before


# ---------------------------------------------------------------- item 8: mount points left


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("user", [None, "pflask-test"])
def test_mount_points_pflask_made_in_a_root_are_removed_after(
    shared_tmp: Path, writable_busybox_root: Path, user: str | None, test_user: Any
) -> None:
    """Binds and tmp mounts to paths the root lacks: pflask makes them, and
    removes them after the run, unless the container left something there."""
    root = writable_busybox_root
    for gone in ("proc", "sys", "dev", "run"):  # a minimal root: pflask makes these too
        path = root / gone
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    (root / "etc/app").mkdir()
    source = shared_tmp / "data"
    source.mkdir()
    single = shared_tmp / "single.conf"
    single.write_text("x\n")
    if user is not None:
        import os

        from helpers import user_info

        info = user_info(user)
        for path in (root, *root.rglob("*"), source, single):
            os.lchown(path, info.uid, info.gid)
    before = _tree(root)
    result = run_pflask(
        f"--chroot={root}",
        f"--mount=bind:{source}:/srv/deep/data",
        f"--mount=bind:{single}:/etc/app/single.conf",
        "--mount=tmp:/var/scratch",
        "--mount=tmp:/kept/tmp",
        "--",
        *sh("ls /srv/deep/data /var/scratch && cat /etc/app/single.conf && touch /kept/mine"),
        user=user,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    # /kept held something the container wrote beside the mount point: it stays
    # with what it holds; everything else pflask made is gone
    after = _tree(root)
    assert set(after) - set(before) == {"kept", "kept/mine"}, after
    assert set(before) <= set(after)
    assert (root / "kept").stat().st_uid == (0 if user is None else info.uid)


def test_the_removal_follows_no_symlink_the_container_left(
    shared_tmp: Path, writable_busybox_root: Path
) -> None:
    """A container that moves a mount point's parent away and leaves a symlink
    to a host directory in its place: the removal goes nowhere near it."""
    root = writable_busybox_root
    victim = shared_tmp / "victim"
    (victim / "data").mkdir(parents=True)  # empty: what a followed symlink would remove
    source = shared_tmp / "data"
    source.mkdir()
    result = run_pflask(
        f"--chroot={root}",
        f"--mount=bind:{source}:/srv/deep/data",
        "--",
        *sh(f"mv /srv/deep /srv/moved && ln -s {victim} /srv/deep"),
    )
    assert result.returncode == 0, result.stderr
    assert (victim / "data").is_dir()
    assert (root / "srv/deep").is_symlink()  # what the container made stays, not pflask's


# ---------------------------------------------------------------- item 8: a detached boot's size


@pytest.mark.boot
def test_a_detached_boot_takes_the_attaching_terminals_size(
    shared_tmp: Path,
    debian_root: Path,  # noqa: F811
    tmux_factory: Any,
) -> None:
    """Booted in the background (24x80, nobody's terminal), then attached
    from a 100x30 terminal: the login shell works at 100 columns."""
    from test_boot import init_manifest
    from test_terminal import PFLASK

    name = "deb-detached"
    path = init_manifest(shared_tmp, debian_root, name, command=["/sbin/init"])
    started = run_pflask("run", path, "--detach", timeout=60)
    assert started.returncode == 0, started.stderr
    try:
        bus = ("exec", name, "--", "test", "-S", "/run/systemd/private")
        wait_for(lambda: run_pflask(*bus).returncode == 0, timeout=30, message="systemd's bus")
        wait = ("exec", name, "--", "systemctl", "is-system-running", "--wait")
        booted = run_pflask(*wait, timeout=120)
        assert booted.stdout.strip() == "running", booted.stdout + booted.stderr
        tmux = tmux_factory()
        tmux.type(f"{PFLASK} attach {name}")
        tmux.type("")  # the prompt was drawn before: a new one
        tmux.wait_for_text(f"{name} login:", timeout=30)
        tmux.type("root")
        tmux.wait_for_text(f"root@{name}:~#", timeout=30)
        assert tmux.run("stty size") == ["30 100"]
        tmux.keys("C-@")
        tmux.wait_for_prompt()
    finally:
        stopped = run_pflask("stop", name, timeout=60)
    assert stopped.returncode == 0, stopped.stderr
