"""The records of `pflask-oci`: one directory per container under its --root.

runc keeps no daemon and neither does pflask-oci: what `start`, `state`,
`kill`, `exec` and `delete` need to know about a container that `create` set
up is written here, and the container's processes are found again through
the kernel.  Layout (every directory 0700, every file 0600, owned by the
invoking user):

    ROOT/ID/state.json   pid, its start time, bundle, rootfs, created, cgroup dirs
    ROOT/ID/plan.marshal the compiled plan (exec runs its process rules)
    ROOT/ID/exec.fifo    while created: `start` writes one byte to it

A record is trusted only as far as the kernel agrees and only when nobody
else could have written it: ROOT and ROOT/ID must be directories of the
invoking user with no access for others (state.Directory's rule), opened
without following symlinks, and each file a regular file of that user, not
writable by others.  The pid is believed only with the start time recorded
beside it (a reused pid is another process), and signals go through a pidfd.
"""

from __future__ import annotations

import os
import stat

from pflask.errors import PflaskError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

STATE = "state.json"
PLAN = "plan.marshal"
FIFO = "exec.fifo"
MAX_RECORD = 1 << 20


class Missing(PflaskError):
    """No such container (runc: `container does not exist`)."""


def default_root() -> str:
    """runc's default for root is /run/runc; ours sits beside it.  An ordinary
    user's is in their runtime directory."""
    if os.geteuid() == 0:
        return "/run/pflask-oci"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"
    return os.path.join(runtime, "pflask-oci")


def valid_id(container_id: str) -> str:
    """A container id is one file name: letters, digits, `_`, `.`, `-`, `+`."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-+")
    if not container_id or len(container_id) > 1024 or not set(container_id) <= allowed:
        raise PflaskError(f"invalid container id {container_id[:80]!r}")
    if container_id in (".", ".."):
        raise PflaskError(f"invalid container id {container_id!r}")
    return container_id


def _private(st: os.stat_result, what: str) -> None:
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise PflaskError(
            f"{what}: owned by uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}: "
            f"not trusted (must be the invoking user's, not writable by others)"
        )


class Store:
    """The --root directory: made 0700 if missing, refused if not private."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.fd = -1

    def open(self, create: bool = False) -> int:
        if self.fd >= 0:
            return self.fd
        if create:
            parent = os.path.dirname(self.root)
            os.makedirs(parent, mode=0o755, exist_ok=True)
            try:
                os.mkdir(self.root, 0o700)
            except FileExistsError:
                pass
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.root, flags)
        except FileNotFoundError:
            raise Missing(f"state directory {self.root} does not exist") from None
        except OSError as e:
            raise PflaskError(f"state directory {self.root}: open(2): {e.strerror}") from None
        st = os.fstat(fd)
        if st.st_mode & 0o077 or st.st_uid != os.geteuid():
            os.close(fd)
            raise PflaskError(
                f"state directory {self.root}: owned by uid {st.st_uid}, mode "
                f"{stat.S_IMODE(st.st_mode):04o}: not trusted (must be the invoking "
                f"user's, mode 0700)"
            )
        self.fd = fd
        return fd

    def make(self, container_id: str) -> Record:
        """A new container's directory; an id in use is an error."""
        root = self.open(create=True)
        try:
            os.mkdir(container_id, 0o700, dir_fd=root)
        except FileExistsError:
            raise PflaskError(f"container with id {container_id} exists already") from None
        return self.find(container_id)

    def find(self, container_id: str) -> Record:
        root = self.open()
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(valid_id(container_id), flags, dir_fd=root)
        except (FileNotFoundError, NotADirectoryError):
            raise Missing(f"container {container_id} does not exist") from None
        except OSError as e:
            raise PflaskError(f"container {container_id}: open(2): {e.strerror}") from None
        st = os.fstat(fd)
        if st.st_mode & 0o077 or st.st_uid != os.geteuid():
            os.close(fd)
            _private(st, f"{self.root}/{container_id}")
            raise PflaskError(f"{self.root}/{container_id}: mode must be 0700")
        return Record(self, container_id, fd)

    def ids(self) -> list[str]:
        try:
            root = self.open()
        except Missing:
            return []
        return sorted(os.listdir(root))


class Record:
    """One container's directory, held open."""

    def __init__(self, store: Store, container_id: str, fd: int) -> None:
        self.store = store
        self.id = container_id
        self.fd = fd
        self.path = f"{store.root}/{container_id}"

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def file(self, name: str) -> str:
        return f"{self.path}/{name}"

    def write(self, name: str, data: bytes) -> None:
        """Replace `name` atomically (a new 0600 file renamed over it)."""
        temporary = f".{name}.{os.getpid()}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temporary, flags, 0o600, dir_fd=self.fd)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.rename(temporary, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)

    def read(self, name: str) -> bytes:
        """A file of the record: regular, ours, not writable by others, bounded."""
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, dir_fd=self.fd)
        except FileNotFoundError:
            raise Missing(f"container {self.id}: no {name} (still being created?)") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise PflaskError(f"{self.file(name)}: not a regular file")
            _private(st, self.file(name))
            data = os.read(fd, MAX_RECORD + 1)
        finally:
            os.close(fd)
        if len(data) > MAX_RECORD:
            raise PflaskError(f"{self.file(name)}: larger than {MAX_RECORD} bytes")
        return data

    def state(self) -> dict[str, Any]:
        import json

        try:
            data = json.loads(self.read(STATE))
        except ValueError as e:
            raise PflaskError(f"{self.file(STATE)}: not JSON ({e})") from None
        if not isinstance(data, dict) or not isinstance(data.get("pid"), int):
            raise PflaskError(f"{self.file(STATE)}: not a pflask-oci state record")
        return data

    def save_state(self, data: dict[str, Any]) -> None:
        import json

        self.write(STATE, json.dumps(data, sort_keys=True).encode())

    def make_fifo(self) -> str:
        os.mkfifo(FIFO, 0o600, dir_fd=self.fd)
        return self.file(FIFO)

    def has_fifo(self) -> bool:
        try:
            st = os.stat(FIFO, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return stat.S_ISFIFO(st.st_mode)

    def release(self) -> bool:
        """`start`: write the byte PID 1 waits for (AwaitStart); False if nobody waits."""
        import errno

        flags = os.O_WRONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(FIFO, flags, dir_fd=self.fd)
        except FileNotFoundError:
            return False
        except OSError as e:
            if e.errno == errno.ENXIO:  # no reader: PID 1 is gone
                return False
            raise
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                raise PflaskError(f"{self.file(FIFO)}: not a FIFO")
            os.write(fd, b"s")
        finally:
            os.close(fd)
        os.unlink(FIFO, dir_fd=self.fd)
        return True

    def remove(self) -> None:
        """The whole directory (its files are ours, flat)."""
        for name in os.listdir(self.fd):
            os.unlink(name, dir_fd=self.fd)
        self.close()
        os.rmdir(self.id, dir_fd=self.store.open())


# -- what the kernel says of a recorded container ------------------------------------


def status(data: dict[str, Any], record: Record) -> str:
    from pflask.run.state import start_time

    # No such process, a zombie, or another process with its pid: stopped.
    start = start_time(data["pid"])
    if start is None or start != data.get("pid_start"):
        return "stopped"
    if frozen(data):
        return "paused"
    return "created" if record.has_fifo() else "running"


def v2_dir(data: dict[str, Any]) -> str | None:
    return next((path for path, version in data.get("cgroup", ()) if version == 2), None)


def frozen(data: dict[str, Any]) -> bool:
    path = v2_dir(data)
    if path is None:
        return False
    try:
        with open(os.path.join(path, "cgroup.freeze"), encoding="utf-8") as f:
            return f.read().strip() == "1"
    except OSError:
        return False


def pids(data: dict[str, Any]) -> list[int]:
    pids: list[int] = []
    for path, _version in data.get("cgroup", ()):
        try:
            with open(os.path.join(path, "cgroup.procs"), encoding="utf-8") as f:
                pids.extend(int(line) for line in f if line.strip())
        except OSError:
            continue
    return sorted(set(pids))


def run_hook(
    path: str,
    args: tuple[str, ...] | list[str],
    env: tuple[str, ...] | list[str],
    timeout: int | None,
    state: dict[str, Any],
    stage: str,
) -> None:
    """Run one OCI hook: `path` with `args` (args[0] its name), exactly `env`,
    the container's state JSON on stdin; its failure or timeout is an error
    naming it (the caller decides whether that fails the container)."""
    import json
    import subprocess

    data = {"ociVersion": "1.2.0", "annotations": {}, **state}
    environment = dict(item.partition("=")[::2] for item in env)
    try:
        result = subprocess.run(
            list(args) or [path],
            executable=path,
            input=json.dumps(data).encode(),
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=timeout or None,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PflaskError(f"{stage} hook {path}: still running after {timeout} s") from None
    except OSError as e:
        raise PflaskError(f"{stage} hook {path}: {e.strerror}") from None
    if result.returncode != 0:
        said = result.stderr.decode(errors="replace").strip().splitlines()
        tail = f": {said[-1][:200]}" if said else ""
        raise PflaskError(f"{stage} hook {path}: exit status {result.returncode}{tail}")
