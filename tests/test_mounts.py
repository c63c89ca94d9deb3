"""Mounts: bind, bind-ro, tmp, overlay, aufs, ephemeral root; safe targets; cleanup.

Every container here runs on this kernel with real namespaces and real
mounts, as root and (where the kernel allows it) as the unprivileged user
pflask-test, through manifests and through the original's --mount specs.
Every test checks the host is left as it was (host_clean: mounts, loop
devices, /tmp and /run entries, processes); tests that make overlay work
directories also check those are gone.  Loop images are in test_loop.py.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import (
    HostState,
    as_user_argv,
    describe,
    pflask_cmd,
    run_pflask,
    user_env,
    user_info,
)
from helpers import shell as sh

from pflask.kernel import libc
from pflask.run import mounts

pytestmark = pytest.mark.usefixtures("host_clean")

USERS = [None, "pflask-test"]


def manifest(directory: Path, **fields: Any) -> Path:
    """box.yaml in `directory`; the container's name is unique to this test
    session (other sessions' containers run at the same time)."""
    path = directory / "box.yaml"
    fields.setdefault("name", f"mnt{os.getpid()}-{directory.name[1:5]}")
    path.write_text(yaml.safe_dump({"version": 1, **fields}))
    return path


def run_ok(*args: Any, user: str | None = None) -> subprocess.CompletedProcess[str]:
    result = run_pflask(*args, user=user)
    assert result.returncode == 0, describe(result)
    return result


def owned(path: Path, user: str | None) -> Path:
    """`path` (made if missing) and everything in it, owned by `user` (or root)."""
    path.mkdir(parents=True, exist_ok=True)
    if user is not None:
        info = user_info(user)
        subprocess.run(["chown", "-hR", f"{info.uid}:{info.gid}", str(path)], check=True)
    return path


def tree(path: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every entry below `path`: (mode, size, content or link value) by relative name."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            full = Path(dirpath, name)
            st = full.lstat()
            data = b""
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(full).encode()
            elif stat.S_ISREG(st.st_mode):
                data = full.read_bytes()
            found[str(full.relative_to(path))] = (st.st_mode, st.st_size, data)
    return found


def mountinfo(text: str) -> list[tuple[str, str, str]]:
    """(target, per-mount options, fstype) of each mountinfo line in `text`."""
    result = []
    for line in text.splitlines():
        fields = line.split()
        if " - " in line and len(fields) > 6:
            sep = fields.index("-", 6)
            result.append((fields[4], fields[5], fields[sep + 1]))
    return result


@pytest.fixture
def root_for(writable_busybox_root: Path, test_user: Any) -> Any:
    """A private busybox root for `user`: the unprivileged user gets one it owns,
    as a root it unpacked itself would be (its uid is root in the container)."""

    def make(user: str | None) -> Path:
        return owned(writable_busybox_root, user)

    return make


@pytest.fixture
def source(shared_tmp: Path) -> Path:
    """A host directory with a file in it, readable by everyone."""
    src = shared_tmp / "src"
    src.mkdir()
    (src / "hello").write_text("hello from the host\n")
    return src


# --- targets resolved inside the root (in-process: no mount needed) -------------------------


@pytest.fixture
def plain_root(tmp_path: Path) -> Iterator[tuple[mounts.Root, Path, Path]]:
    """(Root, its directory, a host directory outside it with one file)."""
    directory = tmp_path / "root"
    directory.mkdir()
    host = tmp_path / "host"
    host.mkdir()
    (host / "file").write_text("host's\n")
    root = mounts.Root(str(directory))
    yield root, directory, host
    root.close()


def made(root: mounts.Root, path: str, directory: bool = True) -> str:
    fd = root.make(path, directory=directory)
    try:
        return os.readlink(mounts.fd_path(fd))
    finally:
        os.close(fd)


def test_make_creates_missing_directories_and_a_file_target(
    plain_root: tuple[mounts.Root, Path, Path],
) -> None:
    root, directory, _ = plain_root
    assert made(root, "/a/b/c") == f"{directory}/a/b/c"
    assert made(root, "/a/b/file", directory=False) == f"{directory}/a/b/file"
    assert (directory / "a/b/c").is_dir() and (directory / "a/b/file").is_file()
    assert made(root, "/a/b/c") == f"{directory}/a/b/c"  # existing: opened as is


@pytest.mark.parametrize(
    ("links", "target", "lands"),
    [
        ({"abs": "{host}"}, "/abs/x", "{host}/x"),
        ({"up": "../../../../../../../../.."}, "/up{host}/x", "{host}/x"),
        ({"a": "/b", "b/c": "{host}"}, "/a/c/x", "{host}/x"),
        ({"dangling": "{host}/nothere"}, "/dangling", "{host}/nothere"),
        ({"fin": "{host}/file"}, "/fin", "{host}/file"),
        ({"dots": "../.."}, "/dots/../../x", "x"),
    ],
    ids=["absolute", "relative-escape", "intermediate", "dangling", "final", "dotdot"],
)
def test_make_follows_symlinks_only_inside_the_root(
    plain_root: tuple[mounts.Root, Path, Path], links: dict[str, str], target: str, lands: str
) -> None:
    root, directory, host = plain_root
    before = tree(host)
    for name, value in links.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).symlink_to(value.format(host=host))
    directory_target = not target.startswith("/fin")
    path = made(root, target.format(host=host), directory=directory_target)
    assert path == f"{directory}/{lands.format(host=host).lstrip('/')}"
    assert tree(host) == before  # the host's directory was not touched


def test_make_refuses_a_symlink_loop(plain_root: tuple[mounts.Root, Path, Path]) -> None:
    root, directory, _ = plain_root
    (directory / "a").symlink_to("b")
    (directory / "b").symlink_to("a")
    with pytest.raises(libc.SyscallError) as caught:
        root.make("/a/x")
    assert caught.value.errno == errno.ELOOP
    assert str(directory / "a/x") in str(caught.value)


# --- bind and bind-ro ----------------------------------------------------------------------


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("how", ["manifest", "classic"])
def test_bind_directory_and_file_targets_are_made_to_match(
    shared_tmp: Path, source: Path, root_for: Any, user: str | None, how: str
) -> None:
    owned(source, user)
    root = root_for(user)
    single = shared_tmp / "single.conf"
    single.write_text("one file\n")
    script = sh("cat /srv/data/hello /etc/app/single.conf; echo written > /srv/data/new")
    if how == "manifest":
        path = manifest(
            shared_tmp,
            root={"path": str(root)},
            mounts=[
                {"type": "bind", "source": str(source), "target": "/srv/data"},
                {"type": "bind", "source": str(single), "target": "/etc/app/single.conf"},
            ],
        )
        result = run_ok("run", path, "--", *script, user=user)
    else:
        binds = ["-m", f"bind:{source}:/srv/data", "-m", f"bind:{single}:/etc/app/single.conf"]
        result = run_ok("-r", root, *binds, "--", *script, user=user)
    assert result.stdout == "hello from the host\none file\n"
    assert (source / "new").read_text() == "written\n"  # a read-write bind writes through
    # the mount points pflask made (a directory, a file) are gone after the run
    assert not (root / "srv/data").exists() and not (root / "etc/app").exists()


@pytest.fixture
def source_with_submount(source: Path) -> Iterator[Path]:
    """`source` with a tmpfs mounted on source/sub on the host (removed afterwards)."""
    sub = source / "sub"
    sub.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0777", "pft", str(sub)], check=True)
    try:
        (sub / "inner").write_text("in a submount\n")
        yield source
    finally:
        subprocess.run(["umount", str(sub)], check=True)


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("how", ["manifest", "classic"])
def test_bind_ro_is_read_only_submounts_included(
    shared_tmp: Path,
    source_with_submount: Path,
    busybox_root: Path,
    user: str | None,
    how: str,
    test_user: Any,
) -> None:
    src = source_with_submount
    script = (
        "cat /var/hello /var/sub/inner; "
        "touch /var/x 2>&1; touch /var/sub/x 2>&1; grep ' /var' /proc/self/mountinfo"
    )
    if how == "manifest":
        path = manifest(
            shared_tmp,
            root={"path": str(busybox_root)},
            mounts=[{"type": "bind", "source": str(src), "target": "/var", "readonly": True}],
        )
        result = run_ok("run", path, "--", *sh(script), user=user)
    else:
        result = run_ok(
            "-r", busybox_root, "-m", f"bind-ro:{src}:/var", "--", *sh(script), user=user
        )
    lines = result.stdout.splitlines()
    assert lines[:2] == ["hello from the host", "in a submount"]
    assert "touch: /var/x: Read-only file system" in lines
    assert "touch: /var/sub/x: Read-only file system" in lines
    targets = {t: opts for t, opts, _ in mountinfo(result.stdout)}
    assert set(targets) == {"/var", "/var/sub"}
    assert all(opts.split(",")[0] == "ro" for opts in targets.values())
    assert not (src / "x").exists() and not (src / "sub/x").exists()


@pytest.mark.parametrize("user", USERS)
def test_bind_nosuid_nodev_noexec(
    shared_tmp: Path, source: Path, busybox_root: Path, user: str | None, test_user: Any
) -> None:
    script = source / "run.sh"
    script.write_text("#!/bin/sh\necho ran\n")
    script.chmod(0o755)
    path = manifest(
        shared_tmp,
        root={"path": str(busybox_root)},
        mounts=[
            {
                "type": "bind",
                "source": str(source),
                "target": "/var",
                "noexec": True,
                "nosuid": True,
                "nodev": True,
            },
            {"type": "bind", "source": str(source), "target": "/home"},  # the same source twice
        ],
    )
    result = run_pflask(
        "run",
        path,
        "--",
        *sh("/home/run.sh; /var/run.sh; grep -E ' /(var|home) ' /proc/self/mountinfo"),
        user=user,
    )
    assert result.returncode == 0, describe(result)
    assert result.stdout.splitlines()[0] == "ran"
    assert "/var/run.sh: Permission denied" in result.stdout + result.stderr
    options = {t: set(o.split(",")) for t, o, _ in mountinfo(result.stdout)}
    assert {"nosuid", "nodev", "noexec"} <= options["/var"]
    assert "noexec" not in options["/home"]


def test_optional_bind_of_a_missing_source_is_skipped(shared_tmp: Path, busybox_root: Path) -> None:
    path = manifest(
        shared_tmp,
        root={"path": str(busybox_root)},
        mounts=[
            {"type": "bind", "source": str(shared_tmp / "nope"), "target": "/var", "optional": True}
        ],
    )
    result = run_ok("run", path, "--", *sh("grep -c ' /var ' /proc/self/mountinfo || true"))
    assert result.stdout.strip() == "0"


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"type": "bind", "source": "{tmp}/nosuchpath", "target": "/m"}, "bind source"),
        ({"type": "overlay", "lower": ["{tmp}/nosuchpath"], "target": "/m"}, "overlay lower"),
        (
            {
                "type": "overlay",
                "lower": ["{tmp}"],
                "upper": "{tmp}/nosuchpath",
                "work": "{tmp}/w",
                "target": "/m",
            },
            "overlay upper",
        ),
        (
            {
                "type": "overlay",
                "lower": ["{tmp}"],
                "upper": "{tmp}",
                "work": "{tmp}/nosuchpath",
                "target": "/m",
            },
            "overlay work",
        ),
        ({"type": "aufs", "source": "{tmp}/nosuchpath/up", "target": "/m"}, "overlay upper"),
        ({"type": "loop", "source": "{tmp}/nosuchpath.img", "target": "/m"}, "loop source"),
    ],
    ids=["bind", "overlay-lower", "overlay-upper", "overlay-work", "aufs", "loop"],
)
def test_a_missing_host_path_fails_before_anything_is_mounted(
    shared_tmp: Path, root_for: Any, bad: dict[str, Any], field: str
) -> None:
    root = root_for(None)
    entry = {
        k: v.format(tmp=shared_tmp) if isinstance(v, str) else [x.format(tmp=shared_tmp) for x in v]
        for k, v in bad.items()
    }
    path = manifest(
        shared_tmp,
        root={"path": str(root)},
        mounts=[{"type": "tmp", "target": "/first"}, entry],
    )
    result = run_pflask("run", path, "--", "true")
    assert result.returncode == 125, describe(result)
    missing = next(
        v
        for v in (
            entry.get("source"),
            *entry.get("lower", []),
            entry.get("upper"),
            entry.get("work"),
        )
        if v and "nosuchpath" in v
    )
    message = result.stderr.strip()
    assert message.startswith("pflask: step "), message
    assert f"{field} {missing}: ENOENT (No such file or directory)" in message
    # Nothing ran in the container: not even the earlier mount's target was made.
    assert not (root / "first").exists()


def test_a_missing_source_error_is_the_same_with_the_classic_flags(
    shared_tmp: Path, busybox_root: Path
) -> None:
    result = run_pflask("-r", busybox_root, "-m", f"bind:{shared_tmp}/nope:/x", "--", "true")
    assert result.returncode == 125
    assert result.stderr.strip().endswith(
        f"open(2) bind source {shared_tmp}/nope: ENOENT (No such file or directory)"
    )


# --- tmp ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("user", USERS)
def test_tmp_with_size_mode_uid_gid(
    shared_tmp: Path, busybox_root: Path, user: str | None, test_user: Any
) -> None:
    # uid/gid must be mapped in the container: as the unprivileged user with
    # `user: alice` its subordinate ids are (newuidmap), so 1000 and 50 are.
    entry = {"type": "tmp", "target": "/var", "size": "2M", "mode": "1770", "uid": 1000, "gid": 50}
    path = manifest(shared_tmp, root={"path": str(busybox_root)}, mounts=[entry], user="alice")
    result = run_ok(
        "run",
        path,
        "--",
        *sh("stat -c '%a %U %G' /var; df -k /var | tail -1; touch /var/f; ls -l /var/f"),
        user=user,
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "1770 alice staff"
    assert lines[1].split()[1] == "2048"
    assert lines[2].split()[2] == "alice"  # alice may write there


def test_classic_tmp_makes_its_target_inside_the_root(root_for: Any) -> None:
    root = root_for("pflask-test")
    result = run_ok(
        "-r",
        root,
        "-m",
        "tmp:/var/scratch/deep",
        "--",
        *sh("touch /var/scratch/deep/x && grep ' /var/scratch/deep ' /proc/self/mountinfo"),
        user="pflask-test",
    )
    assert mountinfo(result.stdout)[0][2] == "tmpfs"
    # the file went to the tmpfs, and the mount point pflask made is gone after
    assert not (root / "var/scratch").exists()


# --- overlay and aufs ----------------------------------------------------------------------


def layer(path: Path, files: dict[str, str], user: str | None) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).write_text(text)
    return owned(path, user)


@pytest.mark.parametrize("user", USERS)
def test_overlay_lowers_upper_and_work(
    shared_tmp: Path, busybox_root: Path, user: str | None, test_user: Any
) -> None:
    top = layer(shared_tmp / "top", {"a": "top a\n"}, user)
    bottom = layer(shared_tmp / "bottom", {"a": "bottom a\n", "b": "bottom b\n"}, user)
    upper = layer(shared_tmp / "upper", {}, user)
    work = layer(shared_tmp / "work", {}, user)
    lowers_before = (tree(top), tree(bottom))
    path = manifest(
        shared_tmp,
        root={"path": str(busybox_root)},
        mounts=[
            {
                "type": "overlay",
                "target": "/var",
                "lower": [str(top), str(bottom)],
                "upper": str(upper),
                "work": str(work),
            }
        ],
    )
    result = run_ok(
        "run",
        path,
        "--",
        *sh("cat /var/a /var/b; echo new > /var/c; echo changed > /var/b; rm /var/a; ls /var"),
        user=user,
    )
    assert result.stdout == "top a\nbottom b\nb\nc\n"
    assert (upper / "c").read_text() == "new\n" and (upper / "b").read_text() == "changed\n"
    whiteout = (upper / "a").lstat()
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0  # overlayfs's deletion mark
    assert (tree(top), tree(bottom)) == lowers_before


@pytest.mark.parametrize("user", USERS)
def test_overlay_without_upper_keeps_changes_in_a_tmpfs_that_vanishes(
    shared_tmp: Path, busybox_root: Path, user: str | None, test_user: Any
) -> None:
    lower = layer(shared_tmp / "lower", {"a": "lower a\n"}, user)
    lower.chmod(0o750)
    path = manifest(
        shared_tmp,
        root={"path": str(busybox_root)},
        mounts=[{"type": "overlay", "target": "/home", "lower": str(lower)}],
    )
    before = tree(shared_tmp)
    script = "echo more >> /home/a; echo b > /home/b; cat /home/a /home/b; stat -c '%a %u' /home"
    result = run_ok("run", path, "--", *sh(script), user=user)
    assert result.stdout == "lower a\nmore\nb\n750 0\n"  # the merged root looks like the lower's
    assert tree(shared_tmp) == before  # the lower is unchanged and nothing else appeared


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("how", ["manifest", "classic"])
def test_aufs_puts_a_directory_over_the_targets_content(
    shared_tmp: Path, root_for: Any, user: str | None, how: str
) -> None:
    root = root_for(user)
    work_place = owned(shared_tmp / "layers", user)
    up = layer(work_place / "up", {"added": "from the layer\n"}, user)
    etc_before = tree(root / "etc")
    script = "cat /etc/hostname /etc/added; echo x > /etc/written; ls /etc"
    if how == "manifest":
        path = manifest(
            shared_tmp,
            root={"path": str(root)},
            mounts=[{"type": "aufs", "source": str(up), "target": "/etc"}],
        )
        plan = run_ok("plan", path, user=user).stdout
        assert f"work {work_place}/.up.pflask-work (made and removed by pflask)" in plan
        result = run_ok("run", path, "--", *sh(script), user=user)
    else:
        result = run_ok("-r", root, "-m", f"aufs:{up}:/etc", "--", *sh(script), user=user)
    assert result.stdout.splitlines() == [
        "busybox",
        "from the layer",
        "added",
        "group",
        "hostname",
        "passwd",
        "written",
    ]
    assert (up / "written").read_text() == "x\n"  # writes land in the given directory
    assert tree(root / "etc") == etc_before  # the target's own content is unchanged
    assert sorted(p.name for p in work_place.iterdir()) == ["up"]  # work directory removed


@pytest.mark.parametrize("user", USERS)
def test_classic_overlay_spec_with_its_work_directory(
    shared_tmp: Path, root_for: Any, user: str | None
) -> None:
    root = root_for(user)
    up = layer(shared_tmp / "up", {}, user)
    work = layer(shared_tmp / "work", {}, user)
    result = run_ok(
        "-r",
        root,
        "-m",
        f"overlay:{up}:/home:{work}",
        "--",
        *sh("ls /home; echo hi > /home/hi; grep ' /home ' /proc/self/mountinfo"),
        user=user,
    )
    assert result.stdout.splitlines()[0] == "alice"
    assert mountinfo(result.stdout)[0][2] == "overlay"
    assert (up / "hi").read_text() == "hi\n"
    assert work.is_dir()  # the user's own work directory stays


def test_overlay_refusal_in_a_user_namespace_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    # This machine's kernel (>= 5.11) allows overlayfs in a user namespace, so
    # the refusal of an older kernel is simulated: an EPERM from mount(2) and
    # the release string are given, and the namespace check is patched.
    monkeypatch.setattr(mounts, "in_user_namespace", lambda: True)
    refused = libc.SyscallError("mount(2)", 1, "overlay on /x")
    old = mounts.overlay_refused(refused, "overlay on /x", release="5.10.0-28-amd64")
    assert str(old) == (
        "mount(2) overlay on /x: overlayfs in a user namespace needs Linux 5.11 or later "
        "(this is 5.10.0-28-amd64): EPERM (Operation not permitted)"
    )
    new = mounts.overlay_refused(refused, "overlay on /x", release="6.1.0")
    assert "the kernel refuses overlayfs in this user namespace" in str(new)
    monkeypatch.setattr(mounts, "in_user_namespace", lambda: False)
    assert mounts.overlay_refused(refused, "overlay on /x", release="5.4.0") is refused


def test_upper_and_work_on_different_filesystems_is_a_clear_error(
    shared_tmp: Path, busybox_root: Path
) -> None:
    upper = layer(shared_tmp / "upper", {}, None)
    path = manifest(
        shared_tmp,
        root={"path": str(busybox_root)},
        mounts=[
            {
                "type": "overlay",
                "target": "/var",
                "lower": str(upper),
                "upper": str(upper),
                "work": "/dev/shm",
            }
        ],
    )
    result = run_pflask("run", path, "--", "true")
    assert result.returncode == 125
    assert "are on different filesystems" in result.stderr
    assert "EXDEV" in result.stderr


# --- ephemeral root ------------------------------------------------------------------------


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("how", ["manifest", "classic"])
def test_ephemeral_root_takes_writes_anywhere_and_leaves_the_disk_unchanged(
    shared_tmp: Path, root_for: Any, user: str | None, how: str
) -> None:
    root = root_for(user)
    before = tree(root)
    script = (
        "echo x > /new; echo y >> /etc/passwd; rm /etc/hostname; mkdir -p /usr/lib/deep; "
        "touch /bin/zz; cat /new; tail -1 /etc/passwd; ls /etc"
    )
    if how == "manifest":
        path = manifest(shared_tmp, root={"path": str(root), "ephemeral": True})
        result = run_ok("run", path, "--", *sh(script), user=user)
    else:
        result = run_ok("-r", root, "--ephemeral", "--", *sh(script), user=user)
    assert result.stdout.splitlines() == ["x", "y", "group", "passwd"]
    assert tree(root) == before  # not even the mount points of /proc, /dev... were made


# --- order, nesting -------------------------------------------------------------------------


def test_system_mounts_first_then_the_manifests_in_order_nested(
    shared_tmp: Path, source: Path, root_for: Any
) -> None:
    root = root_for(None)
    path = manifest(
        shared_tmp,
        root={"path": str(root)},
        mounts=[
            {"type": "tmp", "target": "/a"},
            {"type": "bind", "source": str(source), "target": "/a/b"},
            {"type": "tmp", "target": "/a/b/c", "size": "1M"},
            {"type": "bind", "source": str(source), "target": "/d", "readonly": True},
        ],
    )
    result = run_ok("run", path, "--", *sh("cat /a/b/hello /d/hello; cat /proc/self/mountinfo"))
    assert result.stdout.splitlines()[:2] == ["hello from the host"] * 2
    targets = [t for t, _, _ in mountinfo(result.stdout)]
    order = [targets.index(t) for t in ("/proc", "/sys", "/dev", "/run", "/a", "/a/b", "/a/b/c")]
    assert order == sorted(order)
    assert targets.index("/a/b/c") < targets.index("/d")
    assert not (root / "a/b").exists()  # made in the tmpfs at /a, not on disk
    assert (source / "c").is_dir()  # /a/b/c is inside the bind of the source: made there


def test_the_plan_shows_resolved_targets(shared_tmp: Path, busybox_root: Path) -> None:
    path = manifest(
        shared_tmp,
        root={"path": str(busybox_root)},
        mounts=[{"type": "tmp", "target": "/../../etc/./x/../y/"}],
    )
    plan = run_ok("plan", path).stdout
    assert "mount tmpfs on /etc/y" in plan


# --- hostile roots ---------------------------------------------------------------------------


HOSTILE = [
    # (symlinks in the root, target, where the mount lands: {host} is the host directory)
    ({"abs": "{host}"}, "/abs/x", "{host}/x"),
    ({"up": "../../../../../../../../.."}, "/up{host}/x", "{host}/x"),
    ({"a": "/b", "b/c": "{host}"}, "/a/c/x", "{host}/x"),
    ({"dangling": "{host}/nothere"}, "/dangling", "{host}/nothere"),
    ({"fin": "{host}/file"}, "/fin", "{host}/file"),
    ({}, "/../../..{host}/x", "{host}/x"),
]
HOSTILE_IDS = ["absolute", "relative-escape", "intermediate", "dangling", "final", "dotdot"]


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize(("links", "target", "lands"), HOSTILE, ids=HOSTILE_IDS)
def test_hostile_symlinks_cannot_make_a_mount_land_outside_the_root(
    shared_tmp: Path,
    source: Path,
    root_for: Any,
    user: str | None,
    links: dict[str, str],
    target: str,
    lands: str,
) -> None:
    host = shared_tmp / "host"
    host.mkdir()
    (host / "file").write_text("the host's file\n")
    root = root_for(user)
    for name, value in links.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(value.format(host=host))
    owned(root, user)
    host_before = tree(host)
    is_file = target == "/fin"
    src = source / "hello" if is_file else source
    target = target.format(host=host)
    landing = lands.format(host=host)
    path = manifest(
        shared_tmp,
        root={"path": str(root)},
        mounts=[{"type": "bind", "source": str(src), "target": target}],
    )
    shown = f"{target}" if is_file else f"{target}/hello"
    result = run_ok(
        "run",
        path,
        "--",
        *sh(f"cat {shown}; grep -c ' {landing} ' /proc/self/mountinfo"),
        user=user,
    )
    assert result.stdout == "hello from the host\n1\n"  # the container sees it at the target
    inside = root / landing.lstrip("/")
    if links:
        # the mount point is in the root, and stays: the removal after the
        # run goes through no symlink the root holds
        assert inside.is_file() if is_file else inside.is_dir()
    else:
        assert not inside.exists()  # made in the root by pflask, removed after
    assert tree(host) == host_before  # and the host's directory is untouched


@pytest.mark.parametrize("kind", ["tmp", "overlay", "aufs"])
def test_hostile_symlinks_for_the_other_mount_types(
    shared_tmp: Path, source: Path, root_for: Any, kind: str
) -> None:
    host = shared_tmp / "host"
    host.mkdir()
    root = root_for(None)
    (root / "abs").symlink_to(host)
    entry: dict[str, Any] = {"type": kind, "target": "/abs/x"}
    if kind == "overlay":
        entry["lower"] = str(source)
    elif kind == "aufs":
        entry["source"] = str(source)
    path = manifest(shared_tmp, root={"path": str(root)}, mounts=[entry])
    result = run_ok(
        "run", path, "--", *sh(f"touch /abs/x/made; grep -c ' {host}/x ' /proc/self/mountinfo")
    )
    assert result.stdout == "1\n"
    assert (root / str(host).lstrip("/") / "x").is_dir()
    assert list(host.iterdir()) == []


def test_a_symlink_loop_in_the_root_is_a_setup_error(
    shared_tmp: Path, source: Path, root_for: Any
) -> None:
    root = root_for(None)
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("/a")
    path = manifest(
        shared_tmp,
        root={"path": str(root)},
        mounts=[{"type": "bind", "source": str(source), "target": "/a/x"}],
    )
    result = run_pflask("run", path, "--", "true")
    assert result.returncode == 125
    assert f"{root}/a/x: ELOOP" in result.stderr


# --- cleanup: the command killed, pflask killed during setup ----------------------------------


def start(args: list[Any], user: str | None) -> subprocess.Popen[bytes]:
    argv = [*pflask_cmd(), *map(str, args)]
    env = None
    if user is not None:
        info = user_info(user)
        argv, env = as_user_argv(info, argv), user_env(info)
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )


def descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, command line) of every descendant of `pid`."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            found.append((child, cmdline.decode(errors="replace").strip()))
            todo.append(child)
    return found


@pytest.fixture
def every_mount(shared_tmp: Path, source: Path, root_for: Any, test_user: Any) -> Any:
    """A manifest with every mount type (loop as root; an ephemeral root for the
    unprivileged user), whose command says `ready` in a host directory and sleeps.
    Returns (manifest, ready marker, the directory holding the aufs layer, name)."""

    def make(user: str | None) -> tuple[Path, Path, Path, str]:
        root = root_for(user)
        out = owned(shared_tmp / "out", user)
        layers = owned(shared_tmp / "layers", user)
        for name in ("up", "upper", "work", "aufs"):
            owned(layers / name, user)
        mounts_ = [
            {"type": "bind", "source": str(out), "target": "/srv/out"},
            {"type": "bind", "source": str(source), "target": "/srv/ro", "readonly": True},
            {"type": "tmp", "target": "/srv/tmp", "size": "1M"},
            {
                "type": "overlay",
                "target": "/srv/ov",
                "lower": str(source),
                "upper": str(layers / "upper"),
                "work": str(layers / "work"),
            },
            {"type": "overlay", "target": "/srv/scratch", "lower": str(source)},
            {"type": "aufs", "source": str(layers / "aufs"), "target": "/etc"},
        ]
        if user is None:
            content = owned(shared_tmp / "content", None)
            (content / "hello").write_text("image\n")
            image = shared_tmp / "disk.img"
            subprocess.run(["truncate", "-s", "8M", str(image)], check=True)
            subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(content), str(image)], check=True)
            mounts_.append({"type": "loop", "source": str(image), "target": "/srv/img"})
        name = f"mnt{os.getpid()}-{shared_tmp.name[1:5]}"
        path = manifest(
            shared_tmp,
            name=name,
            root={"path": str(root), "ephemeral": user is not None},
            mounts=mounts_,
            command=sh("touch /srv/out/ready; exec sleep 30"),
        )
        return path, out / "ready", layers, name

    return make


WATCHED = ("mounts", "loops", "processes", "entries")


def has_children(pid: int) -> bool:
    try:
        return bool(Path(f"/proc/{pid}/task/{pid}/children").read_text().strip())
    except OSError:
        return False


def pflask_left_nothing(before: HostState, layers: Path, name: str) -> None:
    """No mount, loop device, process, work directory or entry of container
    `name` is left on the host.

    Only what is new, and only those kinds: other test sessions on this
    machine make and remove their own cgroups, links and mounts meanwhile
    (host_clean checks everything at the end).  A
    SIGKILLed pflask cannot remove its record of the running container
    (pflask.run.state, NAME.state, or .NAME.PID.tmp when killed while writing
    it); by design the next pflask that meets it removes it, so that entry is
    allowed here and swept by the caller.
    """
    deadline = time.monotonic() + 5
    while True:
        diff = [
            line
            for line in before.diff(HostState.capture()).splitlines()
            if line.startswith("+ ")
            and line.split(":")[0][2:] in WATCHED
            and not (line.split(":")[0].endswith("entries") and name not in line)
            and not line.endswith(f"/{name}.state")
            and f"/.{name}." not in line  # its temporary, if killed between write and rename
        ]
        if not diff or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not diff, "the host changed:\n" + "\n".join(diff)
    made = [p.name for p in layers.iterdir()]
    assert sorted(made) == ["aufs", "up", "upper", "work"], made  # no .aufs.pflask-work


@pytest.mark.parametrize("user", USERS)
def test_cleanup_when_the_command_is_killed(every_mount: Any, user: str | None) -> None:
    path, ready, layers, name = every_mount(user)
    before = HostState.capture()
    proc = start(["run", path], user)
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.02)
        while not (sleeper := [p for p, cmd in descendants(proc.pid) if cmd == "sleep 30"]):
            assert time.monotonic() < deadline  # `exec sleep` follows `touch` at once
            time.sleep(0.01)
        os.kill(sleeper[0], signal.SIGKILL)
        assert proc.wait(timeout=20) == 128 + signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait()
    pflask_left_nothing(before, layers, name)


@pytest.mark.parametrize("user", USERS)
def test_cleanup_when_pflask_is_killed_during_setup(every_mount: Any, user: str | None) -> None:
    path, ready, layers, name = every_mount(user)
    # Two runs to learn this machine's timing, the second with the plan
    # cached as every later run has it: when the container's first process
    # appears, when the command starts.
    for _ in range(2):
        before = HostState.capture()
        t0 = time.monotonic()
        proc = start(["run", path], user)
        first_child = None
        while not ready.exists():
            if first_child is None and descendants(proc.pid):
                first_child = time.monotonic() - t0
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.002)
        started = time.monotonic() - t0
        proc.kill()
        proc.wait()
        pflask_left_nothing(before, layers, name)
        ready.unlink()
        assert first_child is not None

    # Kill pflask at random moments: mostly between its first child (the
    # janitor or the container's first process) and the command's start,
    # that is during setup; every fourth time during its own start-up.
    rng = random.Random(4)  # the same sequence every time
    during_setup = aimed = 0
    for i in range(16):
        before = HostState.capture()
        proc = start(["run", path], user)
        if i % 4 == 3:
            time.sleep(rng.uniform(0, first_child))
        else:
            aimed += 1
            while not has_children(proc.pid) and proc.poll() is None:
                time.sleep(0.001)
            time.sleep(rng.uniform(0, started - first_child))
        setting_up = has_children(proc.pid) and not ready.exists()
        proc.kill()
        proc.wait()
        during_setup += setting_up
        pflask_left_nothing(before, layers, name)
        ready.unlink(missing_ok=True)
    assert during_setup >= aimed // 2, (
        f"only {during_setup} of 16 kills landed during setup "
        f"(first child after {first_child:.3f} s, command after {started:.3f} s)"
    )
    # A complete run meets the killed runs' records and sweeps them (see
    # pflask_left_nothing); host_clean then checks the host as a whole.
    assert run_pflask("run", path, "--", "true", user=user).returncode == 0


def test_the_janitor_removes_only_the_directory_it_made(tmp_path: Path) -> None:
    upper = tmp_path / "up"
    upper.mkdir()
    work = tmp_path / ".up.pflask-work"
    held = mounts.make_work_dir(str(work), str(upper))
    (work / "work").mkdir(mode=0)  # as overlayfs leaves it
    mounts.sweep(str(work), held)
    assert not work.exists()
    held = mounts.make_work_dir(str(work), str(upper))
    mounts.remove_tree(str(work))  # the supervisor removed it after a normal run ...
    work.mkdir()  # ... and a later run made its own
    mounts.sweep(str(work), held)
    assert work.exists()


def test_a_work_directory_in_use_is_refused_and_a_stale_one_replaced(tmp_path: Path) -> None:
    upper = tmp_path / "up"
    upper.mkdir()
    work = tmp_path / ".up.pflask-work"
    held = mounts.make_work_dir(str(work), str(upper))
    (work / "work").mkdir(mode=0)
    with pytest.raises(libc.SyscallError) as caught:
        mounts.make_work_dir(str(work), str(upper))  # its janitor still holds it
    assert "in use by another running container" in str(caught.value)
    assert (work / "work").exists()
    os.close(held)  # the janitor is gone: what is left is stale
    held = mounts.make_work_dir(str(work), str(upper))
    assert list(work.iterdir()) == []
    mounts.sweep(str(work), held)


def test_aufs_work_directory_that_cannot_be_made_is_a_clear_error(
    shared_tmp: Path, busybox_root: Path, test_user: Any
) -> None:
    up = owned(shared_tmp / "up", "pflask-test")  # in a directory only root may write to
    result = run_pflask(
        "-r", busybox_root, "-m", f"aufs:{up}:/etc", "--", "true", user="pflask-test"
    )
    assert result.returncode == 125
    assert f"mkdir(2) overlay work directory {shared_tmp}/.up.pflask-work: EACCES" in result.stderr
    assert result.stderr.startswith("pflask: step ")


def test_a_work_directory_in_use_by_a_running_container_is_left_alone(
    shared_tmp: Path, busybox_root: Path
) -> None:
    up = layer(shared_tmp / "layers" / "up", {}, None)
    work = shared_tmp / "layers" / ".up.pflask-work"
    path = manifest(
        shared_tmp,
        root={"path": str(busybox_root)},
        mounts=[{"type": "aufs", "source": str(up), "target": "/etc"}],
    )
    first = start(["run", path, "--", *sh("echo ready > /etc/ready; exec sleep 30")], None)
    try:
        deadline = time.monotonic() + 20
        while not (up / "ready").exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        second = run_pflask("-r", busybox_root, "-m", f"aufs:{up}:/var", "--", "true")
        assert second.returncode == 125
        assert f"overlay work directory {work}: in use by another running container" in (
            second.stderr
        )
        assert (work / "work").is_dir()  # still there for the first container
    finally:
        first.terminate()
        assert first.wait(timeout=20) == 128 + signal.SIGTERM
    assert not work.exists()  # the first pflask removed it


def test_the_janitor_keeps_trying_to_remove_a_work_directory(tmp_path: Path) -> None:
    """A killed supervisor's janitor sweeps while the container may still be
    ending: a removal that fails for a moment (here an immutable file, made
    mutable again 0.2 s later) is tried again, not given up."""
    import threading

    work = tmp_path / ".x.pflask-work"
    (work / "work").mkdir(parents=True)
    stuck = work / "work" / "file"
    stuck.write_text("")
    subprocess.run(["chattr", "+i", str(stuck)], check=True)
    release = threading.Timer(0.2, subprocess.run, (["chattr", "-i", str(stuck)],))
    release.start()
    started = time.monotonic()
    try:
        mounts.sweep(str(work), os.open(work, os.O_RDONLY | os.O_DIRECTORY))
    finally:
        release.join()
        subprocess.run(["chattr", "-i", str(stuck)], check=False)
    assert not work.exists()
    assert 0.2 <= time.monotonic() - started < mounts.SWEEP_PATIENCE
