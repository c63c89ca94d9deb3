"""What the compiler may know about the invoking user, read by the command line.

Kept apart from the compiler so the `run` fast path can build it (it is part
of the cache key) without importing the compiler.
"""

from __future__ import annotations

import os

from pflask.record import Record


class Context(Record):
    """What the compiler may know about the invoking user; read by the CLI."""

    uid: int
    gid: int
    subuid: tuple[tuple[int, int], ...] = ()
    subgid: tuple[tuple[int, int], ...] = ()
    shell: str = "/bin/sh"
    command: tuple[str, ...] | None = None
    name: str | None = None
    """The invoking user's name, so that `user:` naming it keeps its files its own."""
    id_helpers: bool = False
    """Whether newuidmap and newgidmap are installed: an ordinary user's
    subordinate ranges are mapped by default only then (they are the only way
    to map them), so a host without shadow's uidmap keeps working."""

    def key(self) -> tuple[object, ...]:
        """Every field, for a cache key: what the compiler may read of the user
        is all part of it, whatever field is added later."""
        return tuple(getattr(self, field) for field in self._fields)


def _user_name(uid: int) -> str | None:
    """The invoking user's name from /etc/passwd, without NSS (which costs a
    dlopen per start); NSS only for users that file does not know."""
    wanted = str(uid)
    try:
        with open("/etc/passwd", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split(":", 3)
                if len(fields) > 3 and fields[2] == wanted:
                    return fields[0]
    except OSError:
        pass
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return None


def subordinate_ids(path: str, uid: int, name: str | None) -> tuple[tuple[int, int], ...]:
    """Ranges for this user in /etc/subuid or /etc/subgid (newuidmap(1)'s rules)."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return ()
    ranges = []
    for line in lines:
        fields = line.strip().split(":")
        owner_matches = len(fields) == 3 and fields[0] in (name, str(uid))
        if owner_matches and fields[1].isdigit() and fields[2].isdigit():
            ranges.append((int(fields[1]), int(fields[2])))
    return tuple(ranges)


def read(command: tuple[str, ...] | None) -> Context:
    """The invoking user as the compiler needs to know it."""
    uid, gid = os.geteuid(), os.getegid()
    name = _user_name(uid)
    return Context(
        uid=uid,
        gid=gid,
        subuid=subordinate_ids("/etc/subuid", uid, name),
        subgid=subordinate_ids("/etc/subgid", uid, name),
        shell=os.environ.get("SHELL") or "/bin/sh",
        command=command,
        name=name,
        id_helpers=uid != 0 and _installed("newuidmap") and _installed("newgidmap"),
    )


def _installed(tool: str) -> bool:
    """Whether `tool` is where shadow's uidmap package puts it (a stat, not a PATH walk)."""
    return any(os.access(f"{d}/{tool}", os.X_OK) for d in ("/usr/bin", "/bin"))
