"""What the compiler may know about the invoking user, read by the command line.

Kept apart from the compiler so the `run` fast path can build it (it is part
of the cache key) without importing the compiler.
"""

from __future__ import annotations

from pflask.record import Record


class Context(Record):
    """What the compiler may know about the invoking user; read by the CLI."""

    uid: int
    gid: int
    subuid: tuple[tuple[int, int], ...] = ()
    subgid: tuple[tuple[int, int], ...] = ()
    shell: str = "/bin/sh"
    command: tuple[str, ...] | None = None
