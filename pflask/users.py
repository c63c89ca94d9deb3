"""Who `user:` is, read from the container's own /etc/passwd and /etc/group.

Looked up after pivot_root(2), so names mean what they mean in the container's
root, not on the host (the host's `alice` may be uid 1001 while the root's is
1000).  Without a root the host's files are read, as `su` would.
"""

from __future__ import annotations

from pflask.record import Record


class User(Record):
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    home: str = "/"


def _entries(path: str) -> list[list[str]]:
    try:
        with open(path, "rb") as f:  # read whole, decoded once: cheaper than a text file
            text = f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    return [line.split(":") for line in text.split("\n") if line.strip() and line[0] != "#"]


def lookup(spec: str, etc: str = "/etc") -> User:
    """`name`, `uid`, `name:group` or `uid:gid` -> the user, groups included.

    A numeric uid missing from passwd is still valid (as with docker or
    setpriv): its primary group is then the same number, its home `/`.
    """
    user_part, _, group_part = spec.partition(":")
    passwd = _entries(f"{etc}/passwd")
    groups = _entries(f"{etc}/group")
    entry = next(
        (e for e in passwd if len(e) >= 6 and (e[0] == user_part or e[2] == user_part)),
        None,
    )
    if entry is not None and (user_part.isdigit() and entry[0] != user_part):
        # A numeric spec matches by uid first.
        entry = next((e for e in passwd if len(e) >= 6 and e[2] == user_part), entry)
    if entry is None:
        if not user_part.isdigit():
            raise LookupError(f"no user {user_part!r} in the container's {etc}/passwd")
        name, uid, gid, home = user_part, int(user_part), int(user_part), "/"
    else:
        name, uid, gid, home = entry[0], int(entry[2]), int(entry[3]), entry[5] or "/"
    if group_part:
        if group_part.isdigit():
            gid = int(group_part)
        else:
            match = next((g for g in groups if len(g) >= 3 and g[0] == group_part), None)
            if match is None:
                raise LookupError(f"no group {group_part!r} in the container's {etc}/group")
            gid = int(match[2])
    # As initgroups(3): the primary group, then every group listing the user.
    supplementary = tuple(
        dict.fromkeys(
            [gid]
            + [
                int(g[2])
                for g in groups
                if len(g) >= 4 and g[2].isdigit() and name in g[3].split(",")
            ]
        )
    )
    return User(name=name, uid=uid, gid=gid, groups=supplementary, home=home)


def name_and_home(uid: int, etc: str = "/etc") -> tuple[str, str]:
    """USER/LOGNAME and HOME for `uid`, as `lookup` gives them (the number and
    / when passwd lacks it), from passwd alone: this runs on every start
    whose environment is cleared, and the group file is not needed for it."""
    key = str(uid)
    for entry in _entries(f"{etc}/passwd"):
        if len(entry) >= 6 and entry[2] == key:
            return entry[0], entry[5] or "/"
    return key, "/"
