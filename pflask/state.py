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
"""

from __future__ import annotations

import os

from pflask.errors import EXIT_SETUP, EXIT_USAGE, PflaskError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from pflask.plan import Plan

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


# --- where -----------------------------------------------------------------------------------


class Directory:
    """The state directory of one user; removed again when its last container is gone."""

    __slots__ = ("path", "uid")

    def __init__(self, path: str, uid: int) -> None:
        self.path = path
        self.uid = uid

    def file(self, name: str, suffix: str = SUFFIX) -> str:
        return f"{self.path}/{name}{suffix}"

    def exists(self) -> bool:
        return os.path.isdir(self.path)

    def ensure(self) -> None:
        """Make the directory (0700) or check that the one found is ours."""
        parent = os.path.dirname(self.path)
        if not os.path.isdir(parent):
            raise PflaskError(f"state directory {self.path}: {parent} does not exist")
        try:
            os.mkdir(self.path, 0o700)
            return
        except FileExistsError:
            pass
        except OSError as e:
            raise PflaskError(f"state directory {self.path}: mkdir(2): {e.strerror}") from None
        st = os.lstat(self.path)
        if not _is_dir(st.st_mode) or st.st_uid != self.uid or st.st_mode & 0o077:
            raise PflaskError(
                f"state directory {self.path} is not a private directory owned by uid "
                f"{self.uid} (mode {st.st_mode & 0o7777:o}, owner {st.st_uid}): remove it"
            )

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
        """The directory as it is, locked as `lock` does; -1 when it is not there
        (never made, or removed by the last container of another pflask)."""
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
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


def every_directory() -> list[Directory]:
    """Every user's state directory that exists (root looks up pids in all of them)."""
    found = [Directory("/run/pflask", 0)]
    for base, pattern in (("/run/user", "{}/pflask"), ("/tmp", "")):
        try:
            names = sorted(os.listdir(base))
        except OSError:
            continue
        for name in names:
            if pattern and name.isdigit():
                found.append(Directory(f"{base}/{pattern.format(name)}", int(name)))
            elif not pattern and name.startswith("pflask-") and name[7:].isdigit():
                found.append(Directory(f"{base}/{name}", int(name[7:])))
    return [d for d in found if d.exists()]


# --- liveness ----------------------------------------------------------------------------------


def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (clock ticks after boot); None if there is no such
    process or it has died and waits to be reaped (a zombie runs nothing).

    The command name may hold spaces and parentheses: count from the last ')'.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    try:
        fields = stat[stat.rindex(b")") + 2 :].split()
        return None if fields[0] in (b"Z", b"X") else int(fields[19])
    except (ValueError, IndexError):
        return None


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
        return str(self.data.get("stop_signal") or "SIGTERM")

    @property
    def stop_timeout(self) -> float:
        return float(self.data.get("stop_timeout", 10.0))

    @property
    def socket(self) -> str:
        return self.directory.file(self.name, SOCKET_SUFFIX)

    def plan(self) -> Plan:
        from pflask.plan import Plan

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


def _load(path: str, where: Directory) -> Container | None:
    """A record, or None if it is gone or unreadable (another format, garbage)."""
    import marshal

    try:
        with open(path, "rb") as f:
            data = marshal.loads(f.read())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError, TypeError):
        return Container({"name": "", "corrupt": True}, where)
    if not isinstance(data, dict) or data.get("format") != FORMAT or "name" not in data:
        return Container({"name": "", "corrupt": True}, where)
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
        fd = where.lock_existing()
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
        existing = _load(where.file(name), where)
        if existing is not None:
            if existing.alive():
                raise NameInUse(
                    f"a container named {name!r} is already running (supervisor pid "
                    f"{existing.supervisor}): stop it (pflask stop {name}) or choose "
                    "another name (--name NAME)"
                )
            _remove(where, name)  # stale: its pflask was killed
        _write(where, name, data)
    finally:
        os.close(fd)
    return Claim(where, name, data)


# --- finding records ---------------------------------------------------------------------------


def _records(where: Directory) -> list[Container]:
    """The live records in `where`; stale and corrupt ones are removed on the way."""
    try:
        names = sorted(os.listdir(where.path))
    except OSError:
        return []
    found, stale = [], []
    leftovers = False  # a temporary of a pflask killed while writing its record
    for entry in names:
        if entry.startswith(".") and entry.endswith(".tmp"):
            leftovers = True
        if entry.startswith(".") or not entry.endswith(SUFFIX):
            continue
        record = _load(f"{where.path}/{entry}", where)
        if record is None:
            continue
        if record.data.get("corrupt") or not record.alive():
            stale.append(entry[: -len(SUFFIX)])
        else:
            found.append(record)
    if stale or leftovers:
        _clean(where, stale)
    return found


def _clean(where: Directory, names: list[str]) -> None:
    """Remove stale records, checking again under the lock (a new owner may have come)."""
    try:
        fd = where.lock()
    except (OSError, PflaskError):
        return  # not ours to clean (root reading another user's directory is fine too)
    try:
        _clean_temporaries(where)
        for name in names:
            record = _load(where.file(name), where)
            if record is not None and (record.data.get("corrupt") or not record.alive()):
                _remove(where, name)
        _remove_if_empty(where)
    finally:
        os.close(fd)


def running() -> list[Container]:
    """Our running containers, by name."""
    where = directory()
    return _records(where) if where.exists() else []


def find(spec: str) -> Container:
    """A running container by name, or by pid (its supervisor's or its PID 1's).

    root may name any user's container by pid (`pflask attach PID` as the
    original had it); names are looked up among our own containers only.
    """
    where = directory()
    records = _records(where) if where.exists() else []
    for record in records:
        if record.name == spec:
            return record
    if spec.isascii() and spec.isdigit() and len(spec) <= 10:  # no pid is longer
        pid = int(spec)
        candidates = list(records)
        if os.geteuid() == 0:
            for other in every_directory():
                if other.path != where.path:
                    candidates.extend(_records(other))
        for record in candidates:
            if pid in (record.supervisor, record.pid):
                return record
    raise NotRunning(f"no running container named {spec!r}" + _where_hint(where))


def _where_hint(where: Directory) -> str:
    return f" (looked in {where.path}; see pflask ps)"
