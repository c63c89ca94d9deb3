"""pflask.users: `user:` and the environment's USER/HOME, read from a root's /etc.

These are the container root's files, not the host's: each test writes its own.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pflask import users


@pytest.fixture
def etc(tmp_path: Path) -> str:
    (tmp_path / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\n"
        "# a comment\n"
        "alice:x:1000:1000:Alice:/home/alice:/bin/sh\n"
        "nohome:x:1001:1001::::\n"
    )
    (tmp_path / "group").write_text(
        "root:x:0:\nalice:x:1000:\nwheel:x:10:bob,alice\naudio:x:29:alice\nstaff:x:50:\n"
    )
    return str(tmp_path)


def test_by_name_with_supplementary_groups_as_initgroups(etc: str) -> None:
    assert users.lookup("alice", etc) == users.User(
        name="alice", uid=1000, gid=1000, groups=(1000, 10, 29), home="/home/alice"
    )


def test_by_uid_and_with_a_group(etc: str) -> None:
    assert users.lookup("1000", etc).name == "alice"
    assert users.lookup("alice:staff", etc).gid == 50
    assert users.lookup("0:29", etc).gid == 29


def test_a_numeric_uid_missing_from_passwd_is_valid(etc: str) -> None:
    assert users.lookup("4242", etc) == users.User(
        name="4242", uid=4242, gid=4242, groups=(4242,), home="/"
    )


def test_unknown_names_are_errors_naming_the_file(etc: str) -> None:
    with pytest.raises(LookupError, match=r"no user 'bob' in the container's .*/passwd"):
        users.lookup("bob", etc)
    with pytest.raises(LookupError, match=r"no group 'nogroup' in the container's .*/group"):
        users.lookup("alice:nogroup", etc)


def test_name_and_home_agree_with_lookup(etc: str, tmp_path: Path) -> None:
    for uid in (0, 1000, 1001, 4242):
        found = users.lookup(str(uid), etc)
        assert users.name_and_home(uid, etc) == (found.name, found.home)
    assert users.name_and_home(1001, etc) == ("nohome", "/")
    assert users.name_and_home(0, str(tmp_path / "missing")) == ("0", "/")
