"""Compiled plans cached by content, so `pflask run` skips YAML, schema and compiler.

An entry is found by a key over everything the command line and the invoking
user contribute (manifest path, `--set`s, command, uid/gid, subordinate id
ranges, shell, pflask's version and its compiler's source files) and trusted
only if every file the manifest read (itself and its `extends`) still has the
same content and every variable it consulted still has the same value.
Entries are `marshal`ed plain data (builtin, no import cost; plans hold only
scalars and tuples), and are ignored unless they are regular files owned by
the invoking user and writable by nobody else, in a directory of the same
kind, opened without following a symlink (see _open_folder); pruning
removes pflask's own entries only.
"""

from __future__ import annotations

import marshal
import os

import pflask
from pflask import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

    from pflask.compile.plan import Plan

try:  # the C module behind hashlib.blake2b, without hashlib's OpenSSL start-up
    from _blake2 import blake2b
except ImportError:  # pragma: no cover - CPython always has it
    from hashlib import blake2b

FORMAT = 2


def directory() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.environ.get("HOME") or os.path.expanduser("~"), ".cache"
    )
    return os.path.join(base, "pflask")


# The modules whose code decides what a plan is, by dotted name below pflask.
# Their modification times join the key, so an edited checkout (an editable
# install keeps its version number) never runs a plan an older compiler made.
_COMPILER = (
    "load.loader",
    "load.semantics",
    "load.manifest",
    "compile.compiler",
    "compile.plan",
    "compile.context",
    "load.classic",
    "doc.options",
    "commands.commands",
    "pipeline",
    "compile.seccomp",
    "compile.seccomp_default",
)


def _code_stamp() -> tuple[int, ...]:
    package = os.path.dirname(pflask.__file__)
    stamps = []
    for name in _COMPILER:
        try:
            stamps.append(os.stat(f"{package}/{name.replace('.', '/')}.py").st_mtime_ns)
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


def _open_folder(folder: str) -> int:
    """The cache directory as an fd, or -1 unless it is ours.

    Opened with O_NOFOLLOW and checked on the fd (a directory, owned by us,
    writable by nobody else): a symlink put in its place (~/.cache/pflask ->
    /usr/bin, say, where root runs with a user's HOME) is never written to
    nor pruned.  Every entry is then reached through this fd, never by path.
    """
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return -1
    if not _trusted(os.fstat(fd), True):
        os.close(fd)
        return -1
    return fd


def load(entry_key: str) -> Plan | None:
    """The cached plan, or None when absent, stale, corrupt or not ours."""
    folder = _open_folder(directory())
    if folder < 0:
        return None
    try:
        fd = os.open(entry_key, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    except OSError:
        return None
    finally:
        os.close(folder)
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
        for path, expected in entry["stamps"]:
            if stamp(path) != expected:
                return None
        from pflask.compile.plan import Plan

        return Plan.from_wire(entry["plan"])
    except (KeyError, TypeError, ValueError):
        return None


def stamp(path: str) -> tuple[int, ...] | None:
    """What tells a changed image file or layer directory from the one a plan
    was made from without reading it (an archive may be gigabytes): its
    inode, size, times, owner and mode; None if it is gone.  A re-tagged
    layout rewrites index.json, a re-saved archive is a new file, a pruned
    and re-unpacked layer a new directory."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_uid, st.st_mode)


def store(
    entry_key: str,
    plan: Plan,
    files: Iterable[str],
    env_used: dict[str, str | None],
    stamps: Iterable[str] = (),
) -> None:
    """Write an entry atomically; a cache that cannot be written is no error."""
    where = directory()
    entry = {
        "format": FORMAT,
        "files": tuple((path, digest(path)) for path in files),
        "stamps": tuple((path, stamp(path)) for path in stamps),
        "env": tuple(sorted(env_used.items())),
        "plan": plan.to_wire(),
    }
    try:
        os.makedirs(where, mode=0o700, exist_ok=True)
    except OSError:
        return
    folder = _open_folder(where)
    if folder < 0:
        return
    try:
        temporary = f".{entry_key}.{os.getpid()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temporary, flags, 0o600, dir_fd=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(marshal.dumps(entry))
        os.rename(temporary, entry_key, src_dir_fd=folder, dst_dir_fd=folder)
        prune(folder)
    except (OSError, ValueError):
        pass
    finally:
        os.close(folder)


MAX_ENTRIES = 256  # a few MB at most; scripts that vary `-- COMMAND` make one per command
_KEY_LENGTH = 40  # hex digits of a key (blake2b, 20 bytes)
_HEX = frozenset("0123456789abcdef")


def ours(name: str) -> bool:
    """Whether `name` is one of pflask's entries (KEY) or temporaries (.KEY.PID):
    pruning removes nothing else, whatever else the directory holds."""
    if name.startswith("."):
        key, _, pid = name[1:].partition(".")
        if not pid.isdigit():
            return False
        name = key
    return len(name) == _KEY_LENGTH and _HEX.issuperset(name)


def prune(folder: int, keep: int = MAX_ENTRIES) -> None:
    """Drop the oldest entries (and stray temporaries) beyond `keep`.

    `folder`: the cache directory's fd (see _open_folder).  Only regular
    files named as pflask names them and owned by us are counted and
    removed.  Runs only after a cache miss, so the cost of listing the
    directory is never paid by a cached start.
    """
    entries = []
    with os.scandir(folder) as it:
        for e in it:
            if not ours(e.name):
                continue
            st = e.stat(follow_symlinks=False)
            if st.st_mode & 0o170000 == 0o100000 and st.st_uid == os.geteuid():
                entries.append((st.st_mtime_ns, e.name))
    if len(entries) <= keep:
        return
    entries.sort()
    for _, name in entries[: len(entries) - keep // 2]:
        try:
            os.unlink(name, dir_fd=folder)
        except OSError:
            pass
