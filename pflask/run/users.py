"""Who `user:` is, read from the container's own /etc/passwd and /etc/group.

Looked up after pivot_root(2), so names mean what they mean in the container's
root, not on the host (the host's `alice` may be uid 1001 while the root's is
1000).  Without a root the host's files are read, as `su` would.

The root's files are whatever its author put there, so they are read through
`libc.read_in_root` (resolved inside the root, regular files only, at most
`libc.ROOT_FILE_MAX` bytes: a FIFO, /dev/zero or a 3 GiB passwd is a setup
error naming the file, never a hang), and every id taken from them must be a
real one: 0..4294967294.  -1 and 4294967295 are (uid_t)-1, which setresuid(2)
and setresgid(2) read as "leave unchanged": `user: alice` with such an entry
would otherwise run as root with every capability.
"""

from __future__ import annotations

from pflask.kernel import libc
from pflask.record import Record

ID_MAX = (1 << 32) - 2
"""The highest uid or gid: (1 << 32) - 1 is (uid_t)-1, "no id" to the kernel."""


class User(Record):
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    home: str = "/"


def _entries(root: str, path: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each entry of `path` in `root`; [] when it is missing."""
    data = libc.read_in_root(root, path)
    if data is None:
        return []
    text = data.decode("utf-8", errors="replace")  # read whole, decoded once: cheaper
    return [
        (number, line.split(":"))
        for number, line in enumerate(text.split("\n"), 1)
        if line.strip() and line[0] != "#"
    ]


def parse_id(text: str, what: str) -> int:
    """A uid or gid as written in passwd/group or `user:`: decimal ASCII digits,
    0..ID_MAX.  int() alone would take "-1", " 7", "1_000" and other scripts' digits."""
    if not (text.isascii() and text.isdigit()) or len(text) > 10 or int(text) > ID_MAX:
        shown = text if len(text) <= 20 else f"{text[:20]}..."
        raise ValueError(f"{what}: {shown!r} is not an id (0..{ID_MAX})")
    return int(text)


def lookup(spec: str, root: str = "/") -> User:
    """`name`, `uid`, `name:group` or `uid:gid` -> the user, groups included.

    A numeric uid missing from passwd is still valid (as with docker or
    setpriv): its primary group is then the same number, its home `/`.
    `root`: the container's root, where /etc/passwd and /etc/group are found.
    """
    user_part, _, group_part = spec.partition(":")
    passwd = _entries(root, "/etc/passwd")
    groups = _entries(root, "/etc/group")
    users = [(n, e) for n, e in passwd if len(e) >= 6]
    found = next(((n, e) for n, e in users if e[0] == user_part or e[2] == user_part), None)
    if found is not None and (user_part.isdigit() and found[1][0] != user_part):
        # A numeric spec matches by uid first.
        found = next(((n, e) for n, e in users if e[2] == user_part), found)
    if found is None:
        if not user_part.isdigit():
            raise LookupError(f"no user {user_part!r} in the container's /etc/passwd")
        uid = parse_id(user_part, "user")
        name, gid, home = user_part, uid, "/"
    else:
        number, entry = found
        where = f"/etc/passwd line {number} ({entry[0]})"
        name, home = entry[0], entry[5] or "/"
        uid = parse_id(entry[2], f"{where}: uid")
        gid = parse_id(entry[3], f"{where}: gid")
    if group_part:
        if group_part.isdigit():
            gid = parse_id(group_part, "group")
        else:
            match = next(((n, g) for n, g in groups if len(g) >= 3 and g[0] == group_part), None)
            if match is None:
                raise LookupError(f"no group {group_part!r} in the container's /etc/group")
            gid = parse_id(match[1][2], f"/etc/group line {match[0]} ({group_part}): gid")
    # As initgroups(3): the primary group, then every group listing the user.
    supplementary = [gid]
    for number, g in groups:
        if len(g) >= 4 and name in g[3].split(","):
            supplementary.append(parse_id(g[2], f"/etc/group line {number} ({g[0]}): gid"))
    return User(name=name, uid=uid, gid=gid, groups=tuple(dict.fromkeys(supplementary)), home=home)


def name_and_home(uid: int, root: str = "/") -> tuple[str, str]:
    """USER/LOGNAME and HOME for `uid`, as `lookup` gives them (the number and
    / when passwd lacks it), from passwd alone: this runs on every start
    whose environment is cleared, and the group file is not needed for it."""
    key = str(uid)
    for _, entry in _entries(root, "/etc/passwd"):
        if len(entry) >= 6 and entry[2] == key:
            return entry[0], entry[5] or "/"
    return key, "/"


DEFAULT_SHELL = "/bin/sh"


def login_shell(spec: str, root: str = "/") -> str:
    """The login shell passwd gives `spec`'s user (`name`, `uid`, `name:group`...),
    for `pflask exec NAME` without a command: what people expect from `su` or
    `machinectl shell`, not always /bin/sh.  DEFAULT_SHELL when the user is
    not in passwd, its shell field is empty or not absolute, or the shell
    is not an executable file in `root` (a root without bash whose passwd came
    from elsewhere still gets a shell).  A numeric spec matches by uid first,
    as `lookup` does."""
    user_part = spec.partition(":")[0]
    entries = [e for _, e in _entries(root, "/etc/passwd") if len(e) >= 7]
    found = None
    if user_part.isdigit():
        found = next((e for e in entries if e[2] == user_part), None)
    if found is None:
        found = next((e for e in entries if e[0] == user_part), None)
    shell = found[6].strip() if found is not None else ""
    if not shell.startswith("/"):
        return DEFAULT_SHELL
    import os

    where = os.path.join(root, shell.lstrip("/"))
    if not (os.path.isfile(where) and os.access(where, os.X_OK)):
        return DEFAULT_SHELL
    return shell
