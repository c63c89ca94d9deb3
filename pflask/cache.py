"""Compiled plans cached by content, so `pflask run` skips YAML, schema and compiler.

An entry is found by a key over everything the command line and the invoking
user contribute (manifest path, `--set`s, command, uid/gid, subordinate id
ranges, shell, pflask's version and its compiler's source files) and trusted
only if every file the manifest read (itself and its `extends`) still has the
same content and every variable it consulted still has the same value.
Entries are `marshal`ed plain data (builtin, no import cost; plans hold only
scalars and tuples), and are ignored unless they are regular files owned by
the invoking user and writable by nobody else, in a directory of the same
kind.
"""

from __future__ import annotations

import marshal
import os

from pflask import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from pflask.plan import Plan

try:  # the C module behind hashlib.blake2b, without hashlib's OpenSSL start-up
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - CPython always has it
    from hashlib import blake2b

FORMAT = 1


def directory() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.environ.get("HOME") or os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "pflask")


# The modules whose code decides what a plan is.  Their modification times
# join the key, so an edited checkout (an editable install keeps its version
# number) never runs a plan an older compiler made.
_COMPILER = (
    "loader",
    "semantics",
    "manifest",
    "compiler",
    "plan",
    "context",
    "classic",
    "commands",
    "seccomp",
    "seccomp_default",
)


def _code_stamp() -> tuple[int, ...]:
    here = os.path.dirname(__file__)
    stamps = []
    for name in _COMPILER:
        try:
            stamps.append(os.stat(f"{here}/{name}.py").st_mtime_ns)
        except OSError:
            stamps.append(0)
    return tuple(stamps)


def key(*parts: Any) -> str:
    """A file name for an entry: a hash of the inputs (marshal-able values)."""
    inputs = (FORMAT, __version__, _code_stamp(), parts)
    return blake2b(marshal.dumps(inputs), digest_size=20).hexdigest()


# loader.MAX_FILE_BYTES: a larger file is no manifest, and reading one byte
# past it is enough to tell it from the file the plan was made from.
_READ_CAP = (1 << 20) + 1


def digest(path: str) -> bytes | None:
    """The hash of a file a plan was made from, or None if it is no longer a
    regular file: opened without blocking and read up to the loader's cap, so
    a FIFO or /dev/zero put in a manifest's place cannot hang or swell a
    cached start (the compile it falls back to then reports it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if (os.fstat(fd).st_mode & 0o170000) != 0o100000:
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            return blake2b(f.read(_READ_CAP), digest_size=20).digest()
    except OSError:
        return None
    finally:
        os.close(fd)


def _trusted(st: os.stat_result, is_dir: bool) -> bool:
    kind_ok = (st.st_mode & 0o170000) == (0o040000 if is_dir else 0o100000)
    return kind_ok and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def load(entry_key: str) -> Plan | None:
    """The cached plan, or None when absent, stale, corrupt or not ours."""
    folder = directory()
    try:
        if not _trusted(os.stat(folder), True):
            return None
        fd = os.open(os.path.join(folder, entry_key), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not _trusted(os.fstat(fd), False):
            return None
        with os.fdopen(fd, "rb", closefd=False) as f:
            entry = marshal.loads(f.read())
    except (OSError, EOFError, ValueError, TypeError):
        return None
    finally:
        os.close(fd)
    try:
        if entry["format"] != FORMAT:
            return None
        for path, expected in entry["files"]:
            if digest(path) != expected:
                return None
        for name, value in entry["env"]:
            if os.environ.get(name) != value:
                return None
        from pflask.plan import Plan

        return Plan.from_wire(entry["plan"])
    except (KeyError, TypeError, ValueError):
        return None


def store(
    entry_key: str, plan: Plan, files: Iterable[str], env_used: dict[str, str | None]
) -> None:
    """Write an entry atomically; a cache that cannot be written is no error."""
    folder = directory()
    entry = {
        "format": FORMAT,
        "files": tuple((path, digest(path)) for path in files),
        "env": tuple(sorted(env_used.items())),
        "plan": plan.to_wire(),
    }
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        if not _trusted(os.stat(folder), True):
            return
        temporary = os.path.join(folder, f".{entry_key}.{os.getpid()}")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(marshal.dumps(entry))
        os.rename(temporary, os.path.join(folder, entry_key))
        prune(folder)
    except (OSError, ValueError):
        pass


MAX_ENTRIES = 256  # a few MB at most; scripts that vary `-- COMMAND` make one per command


def prune(folder: str, keep: int = MAX_ENTRIES) -> None:
    """Drop the oldest entries (and stray temporaries) beyond `keep`.

    Runs only after a cache miss, so the cost of listing the directory is
    never paid by a cached start.
    """
    with os.scandir(folder) as it:
        entries = [(e.stat(follow_symlinks=False).st_mtime_ns, e.path) for e in it]
    if len(entries) <= keep:
        return
    entries.sort()
    for _, path in entries[: len(entries) - keep // 2]:
        try:
            os.unlink(path)
        except OSError:
            pass
