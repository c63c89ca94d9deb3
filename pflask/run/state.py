"""Running containers, by name: one record per container in a per-user directory.

Where records live:

- root: /run/pflask (a tmpfs on every systemd host, emptied at boot);
- anybody else: $XDG_RUNTIME_DIR/pflask.  Without a usable XDG_RUNTIME_DIR
  (su, setpriv, cron, a service without a login session, or one naming a
  directory gone since a logout): /run/user/UID/pflask when the login
  manager made /run/user/UID for this user, else /tmp/pflask-UID, made 0700
  and refused unless it is a real directory owned by the user (tmux and
  podman fall back the same way).  Each is removed again when its last
  container is gone: nothing of pflask stays on the host.

A record, NAME.state, is a `marshal`ed dict (cheap to read and write on the
`pflask run` path, unlike JSON).  It is written to a temporary file and
renamed into place, so a reader sees a whole record or none.  Claiming a name
happens under flock(2) on the directory, so two pflasks starting the same
name cannot both win.  A detached container's attach socket is NAME.sock.

Liveness is the supervisor's pid plus its start time (field 22 of
/proc/PID/stat) plus the boot id: a SIGKILLed pflask leaves a record whose pid
is gone or now belongs to another process, and such a record is removed
whenever it is met (claim, ps, find) and never reported as running.

Trust.  A record is only as good as whoever could write it, so:

- a state directory is opened with O_NOFOLLOW and used only if the opened
  directory belongs to the user whose records it holds and is private (mode
  0700); anything else (a /tmp/pflask-UID another user made first, a
  symlink, a directory open to others) is refused with what to do about it,
  never followed.  Records are regular files of that same user, opened
  without following symlinks.
- each user acts on their own records; root too, unless it names another
  user explicitly (`--owner USER`: their /run/user/UID/pflask and
  /tmp/pflask-UID).  Such a record was written by that user, so before root
  signals or enters anything it names, the kernel must agree with it: the
  supervisor runs as that user, PID 1's parent is the supervisor, and PID 1's
  user namespace belongs to that user (an ordinary user's container always
  has one); `pflask exec` then always enters that user namespace, so root
  gains nothing there that the user could not do.
- a process is named by its pid and start time, pinned by a pidfd before the
  start time is checked: what is checked is what is signalled or entered.
"""

from __future__ import annotations

import os
import sys

from pflask.errors import EXIT_SETUP, EXIT_USAGE, PflaskError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pflask.compile.plan import Plan

FORMAT = 1
SUFFIX = ".state"
SOCKET_SUFFIX = ".sock"
_BOOT_ID = "/proc/sys/kernel/random/boot_id"
_SUN_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1


class NameInUse(PflaskError):
    """Another running container already has this name."""

    status = EXIT_SETUP


class NotRunning(PflaskError):
    """No running container has this name or pid: the user named something absent."""

    status = EXIT_USAGE


class Untrusted(PflaskError):
    """A state directory, record or process that is not what a record of ours must be."""

    status = EXIT_SETUP


RECORD_MAX = 4 << 20  # bytes: a record holds a plan, some kB; more is not pflask's
ID_MAX = (1 << 32) - 2


# --- where -----------------------------------------------------------------------------------


class Directory:
    """The state directory of one user; removed again when its last container is gone."""

    __slots__ = ("path", "uid")

    def __init__(self, path: str, uid: int) -> None:
        self.path = path
        self.uid = uid

    def file(self, name: str, suffix: str = SUFFIX) -> str:
        return f"{self.path}/{name}{suffix}"

    def ensure(self) -> None:
        """Make the directory (0700) unless it is there; `open` checks what is."""
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            raise PflaskError(f"state directory {self.path}: {parent} does not exist")
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise PflaskError(f"state directory {self.path}: mkdir(2): {e.strerror}") from None

    def open(self) -> int:
        """The directory as an fd, if it is a private directory of `uid`; -1 if missing.

        O_NOFOLLOW, then checked on the fd: what is checked is what is read.
        Anything else raises `Untrusted` saying what it is and what to do.
        """
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags)
        except FileNotFoundError:
            return -1
        except OSError as e:
            try:
                st = os.lstat(self.path)
            except OSError:
                raise PflaskError(f"state directory {self.path}: open(2): {e.strerror}") from None
            raise self._refused(st) from None
        st = os.fstat(fd)
        if st.st_uid != self.uid or st.st_mode & 0o077:
            os.close(fd)
            raise self._refused(st)
        return fd

    def _refused(self, st: os.stat_result) -> Untrusted:
        if _is_dir(st.st_mode):
            what = f"a directory of uid {st.st_uid} with mode {st.st_mode & 0o7777:o}"
        elif st.st_mode & 0o170000 == 0o120000:
            what = f"a symlink (of uid {st.st_uid})"
        else:
            what = f"not a directory (of uid {st.st_uid})"
        problem = f"state directory {self.path} is {what}, not uid {self.uid}'s private one"
        if self.uid != os.geteuid():
            return Untrusted(f"{problem}: refused")
        if st.st_uid != self.uid and self.path.startswith("/tmp/"):
            return Untrusted(
                f"{problem}: another user made it first; pflask will not use it. "
                "Set XDG_RUNTIME_DIR to a private directory of yours "
                "(mkdir -m 700 ~/.run; export XDG_RUNTIME_DIR=~/.run)"
            )
        if st.st_uid == self.uid and _is_dir(st.st_mode):
            return Untrusted(f"{problem}: chmod 700 {self.path}")
        return Untrusted(f"{problem}: remove it, or set XDG_RUNTIME_DIR elsewhere")

    def lock(self) -> int:
        """An fd of the directory holding flock(LOCK_EX); close it to unlock.

        The directory may have been removed by the last container of another
        pflask between our mkdir and our lock: then make it again.
        """
        while True:
            self.ensure()
            fd = self.lock_existing()
            if fd >= 0:
                return fd

    def lock_existing(self) -> int:
        """The directory as it is (checked by `open`), locked as `lock` does; -1
        when it is not there (never made, or removed by the last container of
        another pflask)."""
        import fcntl

        fd = self.open()
        if fd < 0:
            return -1
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink > 0:
            return fd
        os.close(fd)
        return -1


def _is_dir(mode: int) -> bool:
    return mode & 0o170000 == 0o040000


def directory(uid: int | None = None, env: dict[str, str] | None = None) -> Directory:
    """Where the records of `uid` (default: us) live (see the module's docstring)."""
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return Directory("/run/pflask", 0)
    runtime = (os.environ if env is None else env).get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        return Directory(os.path.join(runtime, "pflask"), uid)
    login = f"/run/user/{uid}"
    try:
        st = os.lstat(login)
        if _is_dir(st.st_mode) and st.st_uid == uid:
            return Directory(f"{login}/pflask", uid)
    except OSError:
        pass
    return Directory(f"/tmp/pflask-{uid}", uid)


def owner_uid(text: str) -> int:
    """`--owner USER`: a user name or uid -> the uid; only root names another user."""
    from pflask.errors import UsageError

    if text.isascii() and text.isdigit():
        uid = int(text)
        if uid > ID_MAX:
            raise UsageError(f"--owner {text}: not a uid (0..{ID_MAX})")
    else:
        import pwd

        try:
            uid = pwd.getpwnam(text).pw_uid
        except KeyError:
            raise UsageError(f"--owner {text}: no such user") from None
    if uid != os.geteuid() and os.geteuid() != 0:
        raise UsageError(f"--owner {text}: only root may act on another user's containers")
    return uid


def of_user(uid: int) -> list[Directory]:
    """Where another user's records may be, as root looks for them (`--owner`):
    their login directory's, then the /tmp fallback (their XDG_RUNTIME_DIR is
    theirs to know, not ours)."""
    if uid == 0:
        return [Directory("/run/pflask", 0)]
    return [Directory(f"/run/user/{uid}/pflask", uid), Directory(f"/tmp/pflask-{uid}", uid)]


# --- liveness ----------------------------------------------------------------------------------


def _stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (field 3 on), None
    if there is no such process or it is a zombie (it runs nothing).

    The command name may hold spaces and parentheses: count from the last ')'.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return fields


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot): with the pid, it
    names one process for the life of the boot.  None: no such process."""
    fields = _stat(pid)
    return None if fields is None or not fields[19].isdigit() else int(fields[19])


def parent(pid: int) -> int | None:
    """Field 4 of /proc/PID/stat: the parent's pid (as our PID namespace sees it)."""
    fields = _stat(pid)
    return None if fields is None or not fields[1].isdigit() else int(fields[1])


def real_uid(pid: int) -> int | None:
    """The real uid of `pid` (the Uid: line of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def user_namespace_owner(pid: int) -> int | None:
    """The uid that created the user namespace of `pid` (ioctl NS_GET_OWNER_UID);
    0 for the host's.  None if it cannot be told."""
    import fcntl

    try:
        fd = os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = fcntl.ioctl(fd, _NS_GET_OWNER_UID, bytes(4))
    except OSError:
        return None
    finally:
        os.close(fd)
    return int.from_bytes(raw, sys.byteorder)


_NS_GET_OWNER_UID = 0xB704  # _IO(0xb7, 0x4), <linux/nsfs.h>


def pidfd(pid: int, start: object) -> int:
    """A pidfd for `pid` if it is still the process started at `start`; -1 if not.

    The start time is checked after opening: the fd pins the process, so a
    pid reused between the check and the use cannot be the one signalled.
    """
    if pid <= 0:
        return -1
    try:
        fd = os.pidfd_open(pid)
    except OSError:
        return -1
    if start_time(pid) != start:
        os.close(fd)
        return -1
    return fd


_boot_id: list[str] = []


def boot_id() -> str:
    if not _boot_id:
        try:
            with open(_BOOT_ID, "rb") as f:  # bytes: no codec to import for it
                _boot_id.append(f.read().decode().strip())
        except OSError:
            _boot_id.append("")
    return _boot_id[0]


class Container:
    """One record: what `ps`, `stop`, `exec` and `attach` need to know."""

    __slots__ = ("data", "directory")

    def __init__(self, data: dict[str, Any], where: Directory) -> None:
        self.data = data
        self.directory = where

    @property
    def name(self) -> str:
        return str(self.data["name"])

    @property
    def supervisor(self) -> int:
        return int(self.data["supervisor"])

    @property
    def pid(self) -> int:
        """PID 1 of the container as the host sees it; 0 while it starts."""
        return int(self.data.get("pid") or 0)

    @property
    def uid(self) -> int:
        return int(self.data["uid"])

    @property
    def started(self) -> float:
        """time.time() when pflask started."""
        return float(self.data["started"])

    @property
    def root(self) -> str | None:
        value = self.data.get("root")
        return None if value is None else str(value)

    @property
    def command(self) -> tuple[str, ...]:
        return tuple(self.data.get("command") or ())

    @property
    def detached(self) -> bool:
        return bool(self.data.get("detached"))

    @property
    def console(self) -> bool:
        """The container has a pty (detached: one `pflask attach` can connect to)."""
        return bool(self.data.get("console"))

    @property
    def stop_signal(self) -> str:
        return str(self.data["stop_signal"])

    @property
    def stop_timeout(self) -> float:
        return float(self.data["stop_timeout"])

    @property
    def socket(self) -> str:
        return self.directory.file(self.name, SOCKET_SUFFIX)

    def plan(self) -> Plan:
        from pflask.compile.plan import Plan

        return Plan.from_wire(self.data["plan"])

    def alive(self) -> bool:
        """The supervisor that wrote the record is still running (not a reused pid)."""
        data = self.data
        return data.get("boot") == boot_id() and start_time(self.supervisor) == data.get(
            "supervisor_start"
        )

    def container_alive(self) -> bool:
        """PID 1 is still the process that the record names."""
        return self.pid > 0 and start_time(self.pid) == self.data.get("pid_start")

    @property
    def foreign(self) -> bool:
        """Written by another user than us (root acting on `--owner USER`'s)."""
        return self.directory.uid != os.geteuid()

    def open_supervisor(self) -> int:
        """A pidfd of the supervisor that wrote the record; -1 once it is gone.

        Raises `Untrusted` when the process is not one the record's owner
        runs (a record of another user naming root's sshd, say)."""
        fd = pidfd(self.supervisor, self.data.get("supervisor_start"))
        if fd >= 0 and self.foreign and real_uid(self.supervisor) != self.directory.uid:
            os.close(fd)
            raise self._untrusted(f"its supervisor (pid {self.supervisor}) is not uid {self.uid}'s")
        return fd

    def open_pid1(self) -> int:
        """A pidfd of the container's PID 1; -1 while it starts or once it is gone.

        PID 1 must be the supervisor's child; in another user's container it
        must also live in a user namespace that user made, as every ordinary
        user's container does: root then enters and signals only what that
        user could.  Raises `Untrusted` otherwise."""
        fd = pidfd(self.pid, self.data.get("pid_start"))
        if fd < 0:
            return -1
        problem = None
        if parent(self.pid) != self.supervisor:
            problem = f"PID 1 (pid {self.pid}) is not its supervisor's child"
        elif self.foreign and user_namespace_owner(self.pid) != self.directory.uid:
            problem = f"PID 1 (pid {self.pid}) is not in a user namespace of uid {self.uid}"
        if problem is not None:
            os.close(fd)
            raise self._untrusted(problem)
        return fd

    def check(self) -> None:
        """Raise `Untrusted` unless the kernel agrees with the record (see open_*)."""
        for fd in (self.open_supervisor(), self.open_pid1()):
            if fd >= 0:
                os.close(fd)

    def _untrusted(self, problem: str) -> Untrusted:
        return Untrusted(
            f"record {self.directory.file(self.name)} does not match the running "
            f"processes: {problem}; refused"
        )

    def in_its_root(self) -> bool:
        """PID 1 has done its pivot_root(2), if it has a root to do it into.

        The record names PID 1 from the moment it exists, while it still
        builds its mounts; entering it (`pflask exec`) before would find the
        host's tree.  Until the pivot its root is the host's own.
        """
        if self.root is None:
            return True
        try:
            theirs, ours = os.stat(f"/proc/{self.pid}/root"), os.stat("/")
        except OSError:
            return False
        return (theirs.st_dev, theirs.st_ino) != (ours.st_dev, ours.st_ino)


def _load(folder: int, entry: str, where: Directory) -> Container | None:
    """A record, or None if it is gone; marked corrupt if unreadable (another
    format, garbage) or not a regular file of the directory's owner.

    `folder`: the directory's fd from `Directory.open` (nothing found by path).
    """
    import marshal

    corrupt = Container({"name": "", "corrupt": True}, where)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(entry, flags, dir_fd=folder)
    except FileNotFoundError:
        return None
    except OSError:
        return corrupt  # a symlink (ELOOP), or worse
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o170000 != 0o100000 or st.st_uid != where.uid:
            return corrupt
        data = marshal.loads(os.read(fd, RECORD_MAX))
    except (OSError, ValueError, EOFError, TypeError):
        return corrupt
    finally:
        os.close(fd)
    if not isinstance(data, dict) or data.get("format") != FORMAT or "name" not in data:
        return corrupt
    if f"{data['name']}{SUFFIX}" != entry or data.get("uid") != where.uid:
        return corrupt  # the record of another name or user, moved here
    return Container(data, where)


def _write(where: Directory, name: str, data: dict[str, Any]) -> None:
    """Write the record to a temporary file and rename it into place (atomic)."""
    import marshal

    final = where.file(name)
    temporary = f"{where.path}/.{name}.{os.getpid()}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, marshal.dumps(data))
    finally:
        os.close(fd)
    try:
        os.rename(temporary, final)
    except OSError:
        _unlink(temporary)
        raise


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _remove(where: Directory, name: str) -> None:
    _unlink(where.file(name, SOCKET_SUFFIX))
    _unlink(where.file(name))


def _remove_if_empty(where: Directory) -> None:
    """Nothing of pflask stays on the host once no container runs (called locked)."""
    try:
        os.rmdir(where.path)
    except OSError:
        pass  # not empty (another container), or already gone


def _clean_temporaries(where: Directory) -> None:
    """`.NAME.PID.tmp` left by a pflask killed between write and rename."""
    for entry in os.listdir(where.path):
        if entry.startswith(".") and entry.endswith(".tmp"):
            pid = entry[:-4].rpartition(".")[2]
            if pid.isdigit() and start_time(int(pid)) is None:
                _unlink(f"{where.path}/{entry}")


# --- claiming a name ------------------------------------------------------------------------------


class Claim:
    """Our own record: updated as the container starts, removed when it is gone."""

    __slots__ = ("data", "directory", "name")

    def __init__(self, where: Directory, name: str, data: dict[str, Any]) -> None:
        self.directory = where
        self.name = name
        self.data = data

    @property
    def socket(self) -> str:
        path = self.directory.file(self.name, SOCKET_SUFFIX)
        if len(os.fsencode(path)) > _SUN_PATH_MAX:
            raise PflaskError(f"attach socket path {path} is longer than {_SUN_PATH_MAX} bytes")
        return path

    def update(self, **changes: Any) -> None:
        """Rewrite the record with `changes` (atomically; only we write our record)."""
        self.data.update(changes)
        _write(self.directory, self.name, self.data)

    def release(self) -> None:
        """Remove the record and the socket: the container is gone.

        Under the directory's lock, as claims are; the directory holds our
        record, so there is no need to make it first (removed by hand: then
        nothing of ours is left either).
        """
        where = self.directory
        try:
            fd = where.lock_existing()
        except PflaskError:
            return  # not the directory we wrote in any more: nothing of ours to remove
        if fd < 0:
            return
        try:
            _remove(where, self.name)
            _remove_if_empty(where)
        finally:
            os.close(fd)


def claim(the_plan: Plan, detached: bool, pid: int = 0) -> Claim:
    """Record `the_plan`'s container under its name, or refuse a name already running.

    `pid`: the container's PID 1 when it is already known (the supervisor
    forked it itself), so the record need not be rewritten once it runs.
    """
    name = the_plan.name
    supervisor = os.getpid()
    import time

    data: dict[str, Any] = {
        "format": FORMAT,
        "name": name,
        "supervisor": supervisor,
        "supervisor_start": start_time(supervisor),
        "boot": boot_id(),
        "uid": os.geteuid(),
        "started": time.time(),
        "root": the_plan.root,
        "command": the_plan.command,
        "detached": detached,
        "console": False,
        "pid": pid,
        "pid_start": start_time(pid) if pid else None,
        "stop_signal": the_plan.stop_signal,
        "stop_timeout": the_plan.stop_timeout,
        "plan": the_plan.to_wire(),
    }
    where = directory()
    fd = where.lock()
    try:
        _clean_temporaries(where)
        existing = _load(fd, f"{name}{SUFFIX}", where)
        if existing is not None and not existing.data.get("corrupt") and existing.alive():
            raise NameInUse(
                f"a container named {name!r} is already running (supervisor pid "
                f"{existing.supervisor}): stop it (pflask stop {name}) or choose "
                "another name (--name NAME)"
            )
        if existing is not None:
            _remove(where, name)  # stale (its pflask was killed) or corrupt
        _write(where, name, data)
    finally:
        os.close(fd)
    return Claim(where, name, data)


# --- finding records ---------------------------------------------------------------------------


def _records(where: Directory, shown: bool = True) -> list[Container]:
    """The live records in `where`; stale and corrupt ones are removed on the way
    (from our own directory only: another user's is theirs to tidy).

    `shown`: leave out another user's records that name a supervisor not
    theirs (`ps` does not list them; `find` keeps them, to say why it refuses).
    """
    folder = where.open()
    if folder < 0:
        return []
    try:
        names = sorted(os.listdir(folder))
        found, stale = [], []
        leftovers = False  # a temporary of a pflask killed while writing its record
        for entry in names:
            if entry.startswith(".") and entry.endswith(".tmp"):
                leftovers = True
            if entry.startswith(".") or not entry.endswith(SUFFIX):
                continue
            record = _load(folder, entry, where)
            if record is None:
                continue
            if record.data.get("corrupt") or not record.alive():
                stale.append(entry[: -len(SUFFIX)])
            elif not shown or not record.foreign or real_uid(record.supervisor) == where.uid:
                found.append(record)
    finally:
        os.close(folder)
    if (stale or leftovers) and where.uid == os.geteuid():
        _clean(where, stale)
    return found


def _clean(where: Directory, names: list[str]) -> None:
    """Remove stale records, checking again under the lock (a new owner may have come)."""
    try:
        fd = where.lock_existing()
    except (OSError, PflaskError):
        return
    if fd < 0:
        return
    try:
        _clean_temporaries(where)
        for name in names:
            record = _load(fd, f"{name}{SUFFIX}", where)
            if record is not None and (record.data.get("corrupt") or not record.alive()):
                _remove(where, name)
        _remove_if_empty(where)
    finally:
        os.close(fd)


def running(owner: int | None = None, shown: bool = True) -> list[Container]:
    """The running containers of `owner` (default: ours), by name."""
    places = [directory()] if owner is None or owner == os.geteuid() else of_user(owner)
    found: list[Container] = []
    for where in places:
        found.extend(_records(where, shown))
    return sorted(found, key=lambda record: record.name)


def find(spec: str, owner: int | None = None) -> Container:
    """A running container by name, or by pid (its supervisor's or its PID 1's).

    Among our own containers, or `owner`'s when root names another user: the
    record is then checked against the processes it names (`Container.check`)
    before anything is done to them.
    """
    records = running(owner, shown=False)
    match = next((r for r in records if r.name == spec), None)
    if match is None and spec.isascii() and spec.isdigit() and len(spec) <= 10:  # no pid is longer
        pid = int(spec)
        match = next((r for r in records if pid in (r.supervisor, r.pid)), None)
    if match is None:
        raise NotRunning(f"no running container named {spec!r}" + _where_hint(owner))
    if match.foreign:
        match.check()
    return match


def _where_hint(owner: int | None) -> str:
    if owner is not None and owner != os.geteuid():
        places = " or ".join(d.path for d in of_user(owner))
        return f" of uid {owner} (looked in {places})"
    hint = f" (looked in {directory().path}; see pflask ps)"
    if os.geteuid() == 0:
        hint = hint[:-1] + "; another user's: --owner USER)"
    return hint
