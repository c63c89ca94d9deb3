"""pflask.run.users: `user:` and the environment's USER/HOME, read from a root's /etc.

These are the container root's files, not the host's: each test writes its own.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from pflask.kernel import libc
from pflask.run import users


@pytest.fixture
def root(tmp_path: Path) -> str:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "# a comment\n"
        "alice:x:1000:1000:Alice:/home/alice:/bin/sh\n"
        "nohome:x:1001:1001::::\n"
        "broken:x:-1:-1::/:/bin/sh\n"
    )
    (etc / "group").write_text(
        "root:x:0:\nalice:x:1000:\nwheel:x:10:bob,alice\naudio:x:29:alice\nstaff:x:50:\n"
    )
    return str(tmp_path)


def test_by_name_with_supplementary_groups_as_initgroups(root: str) -> None:
    assert users.lookup("alice", root) == users.User(
        name="alice", uid=1000, gid=1000, groups=(1000, 10, 29), home="/home/alice"
    )


def test_by_uid_and_with_a_group(root: str) -> None:
    assert users.lookup("1000", root).name == "alice"
    assert users.lookup("alice:staff", root).gid == 50
    assert users.lookup("0:29", root).gid == 29


def test_a_numeric_uid_missing_from_passwd_is_valid(root: str) -> None:
    assert users.lookup("4242", root) == users.User(
        name="4242", uid=4242, gid=4242, groups=(4242,), home="/"
    )


def test_unknown_names_are_errors_naming_the_file(root: str) -> None:
    with pytest.raises(LookupError, match=r"no user 'bob' in the container's /etc/passwd"):
        users.lookup("bob", root)
    with pytest.raises(LookupError, match=r"no group 'nogroup' in the container's /etc/group"):
        users.lookup("alice:nogroup", root)


def test_name_and_home_agree_with_lookup(root: str, tmp_path: Path) -> None:
    for uid in (0, 1000, 1001, 4242):
        found = users.lookup(str(uid), root)
        assert users.name_and_home(uid, root) == (found.name, found.home)
    assert users.name_and_home(1001, root) == ("nohome", "/")
    (tmp_path / "missing").mkdir()
    assert users.name_and_home(0, str(tmp_path / "missing")) == ("0", "/")


@pytest.mark.parametrize("bad", ["-1", "4294967295", "4294967296", "+5", " 7", "1_000", "١٢"])
def test_ids_outside_0_to_2_32_minus_2_are_refused(root: str, bad: str) -> None:
    """(uid_t)-1 means "unchanged" to setresuid(2): such an entry would leave us root."""
    passwd = Path(root, "etc", "passwd")
    passwd.write_text(
        f"alice:x:{bad}:1000::/home/alice:/bin/sh\nbob:x:1002:{bad}::/:/bin/sh\n"
        "carol:x:1003:1003::/:/bin/sh\n"
    )
    with pytest.raises(ValueError, match=r"/etc/passwd line 1 \(alice\): uid: .* is not an id"):
        users.lookup("alice", root)
    with pytest.raises(ValueError, match=r"/etc/passwd line 2 \(bob\): gid: .* is not an id"):
        users.lookup("bob", root)
    Path(root, "etc", "group").write_text(f"evil:x:{bad}:carol\n")
    with pytest.raises(ValueError, match=r"/etc/group line 1 \(evil\): gid"):
        users.lookup("carol", root)  # a supplementary group, too
    with pytest.raises(ValueError, match=r"/etc/group line 1 \(evil\): gid"):
        users.lookup("1003:evil", root)
    if bad.isascii() and bad.isdigit():
        passwd.write_text("root:x:0:0::/:/bin/sh\n")
        with pytest.raises(ValueError, match=r"user: .* is not an id"):
            users.lookup(bad, root)  # `user: 4294967295` in the manifest
    assert users.lookup("4294967294", root).uid == users.ID_MAX  # the highest real one


def test_an_unrelated_bad_entry_is_no_error(root: str) -> None:
    assert users.lookup("alice", root).uid == 1000  # `broken` (uid -1) is never used


def test_a_fifo_passwd_is_refused_at_once(root: str) -> None:
    passwd = Path(root, "etc", "passwd")
    passwd.unlink()
    os.mkfifo(passwd)
    started = time.monotonic()
    with pytest.raises(libc.RefusedFile, match=r"^/etc/passwd: a FIFO, not a regular file"):
        users.name_and_home(0, root)
    assert time.monotonic() - started < 1


def test_a_huge_passwd_is_refused_without_reading_it(root: str) -> None:
    passwd = Path(root, "etc", "passwd")
    with passwd.open("r+b") as f:
        f.truncate(3 << 30)  # sparse: 3 GiB that take no disk
    started = time.monotonic()
    with pytest.raises(libc.RefusedFile, match=r"3221225472 bytes, more than the 16777216"):
        users.lookup("alice", root)
    assert time.monotonic() - started < 1


def test_symlinks_resolve_inside_the_root(root: str, tmp_path: Path) -> None:
    """`/etc/passwd -> /srv/passwd` means the root's /srv, and `..` stops at the root."""
    host = tmp_path.parent / f"{tmp_path.name}-host-passwd"
    host.write_text("alice:x:0:0::/:/bin/sh\n")  # what the root's author would like us to read
    try:
        passwd = Path(root, "etc", "passwd")
        passwd.unlink()
        passwd.symlink_to(f"../../../../../../{host}")
        assert users.name_and_home(0, root) == ("0", "/")  # nothing there inside the root
        Path(root, "srv").mkdir()
        Path(root, "srv", "passwd").write_text("inside:x:0:0::/in:/bin/sh\n")
        passwd.unlink()
        passwd.symlink_to("/srv/passwd")
        assert users.name_and_home(0, root) == ("inside", "/in")
    finally:
        host.unlink()


def test_a_device_is_refused(tmp_path: Path) -> None:
    with pytest.raises(libc.RefusedFile, match="a character device, not a regular file"):
        libc.read_in_root("/", "/dev/zero")
    with pytest.raises(libc.RefusedFile, match="a directory, not a regular file"):
        libc.read_in_root("/", "/etc")
    assert libc.read_in_root(str(tmp_path), "/nothing") is None
