"""Helpers shared by the test suite (fixtures wrapping them live in conftest.py).

Import them in a test module with ``from helpers import run_pflask, wait_for``
(pytest puts ``tests/`` on ``sys.path``; ``tests/`` must stay a directory
without ``__init__.py`` so that the checkout is *not* put on ``sys.path`` and
the installed pflask is what gets tested).
"""

from __future__ import annotations

import collections
import contextlib
import os
import pwd
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, TypeVar

T = TypeVar("T")

TEST_USER = "pflask-test"
"""The unprivileged user created by scripts/setup."""

SESSION_ENV = "PFLASK_TEST_SESSION"
"""Environment variable marking the processes started by one pytest session.

conftest.py sets it in ``os.environ`` (so every child inherits it) and
run_as()/run_pflask() pass it on to processes run as the test user.
HostState tracks pflask processes that are no longer descendants of the test
only when they carry this session's marker: other test sessions running on the
same machine do not disturb it.  Keep it when a test builds its own
environment for a command that may outlive it.
"""

USER_PATH = "/usr/local/bin:/usr/bin:/bin"
BUSYBOX = Path("/bin/busybox")


# --------------------------------------------------------------------------- pflask


def pflask_cmd() -> list[str]:
    """The installed ``pflask`` console script of the interpreter running the tests."""
    return [str(Path(sys.executable).with_name("pflask"))]


class UserInfo(NamedTuple):
    name: str
    uid: int
    gid: int
    home: Path
    subuid: tuple[int, int] | None
    """(first, count) of the user's first /etc/subuid range, if any."""
    subgid: tuple[int, int] | None


def _subid_range(path: str, user: str, uid: int) -> tuple[int, int] | None:
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[0] in (user, str(uid)):
                    return int(fields[1]), int(fields[2])
    except (OSError, ValueError):
        pass
    return None


def user_info(name: str = TEST_USER) -> UserInfo:
    """The passwd entry and subordinate ranges of *name* (KeyError if no such user)."""
    pw = pwd.getpwnam(name)
    return UserInfo(
        name=name,
        uid=pw.pw_uid,
        gid=pw.pw_gid,
        home=Path(pw.pw_dir),
        subuid=_subid_range("/etc/subuid", name, pw.pw_uid),
        subgid=_subid_range("/etc/subgid", name, pw.pw_uid),
    )


def user_env(user: UserInfo) -> dict[str, str]:
    """A login-like environment for *user* (no XDG_RUNTIME_DIR)."""
    env = {
        "HOME": str(user.home),
        "USER": user.name,
        "LOGNAME": user.name,
        "SHELL": "/bin/sh",
        "PATH": USER_PATH,
        "LANG": "C.UTF-8",
    }
    for name in ("TERM", SESSION_ENV):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def as_user_argv(user: UserInfo, argv: Sequence[str]) -> list[str]:
    """*argv* wrapped to run as *user*: real and effective uid/gid, its groups,
    no capabilities.  The caller supplies the environment (see user_env)."""
    return [
        "setpriv",
        f"--reuid={user.uid}",
        f"--regid={user.gid}",
        "--init-groups",
        "--inh-caps=-all",
        "--",
        *argv,
    ]


def run_as(
    argv: Sequence[str],
    *,
    user: str | None = None,
    input: bytes | None = None,
    timeout: float = 30,
    env: Mapping[str, str | None] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run *argv* (as root, or as *user*), capturing stdout and stderr as text.

    Standard input is *input*, or /dev/null.  The command runs in a new
    session; on timeout its whole process group is killed and
    subprocess.TimeoutExpired is raised (with the output so far).

    Environment: as root, ``os.environ``; as *user*, user_env().  Entries of
    *env* are added on top; a value of None removes the variable.  With a
    *user* and no *cwd*, the command starts in the user's home directory.
    """
    info = user_info(user) if user is not None else None
    base: dict[str, str] = dict(os.environ) if info is None else user_env(info)
    for key, value in (env or {}).items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    full = list(argv) if info is None else as_user_argv(info, argv)
    if info is not None and cwd is None:
        cwd = info.home
    proc = subprocess.Popen(
        full,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=base,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        out, err = proc.communicate()
        raise subprocess.TimeoutExpired(
            full, timeout, output=_text(out), stderr=_text(err)
        ) from None
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    return subprocess.CompletedProcess(full, proc.returncode, _text(out), _text(err))


def run_pflask(
    *args: str | os.PathLike[str],
    user: str | None = None,
    input: bytes | None = None,
    timeout: float = 30,
    env: Mapping[str, str | None] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    check_clean: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run the installed pflask with *args*; see run_as() for the other arguments.

    Does not check the exit status: look at ``.returncode``, ``.stdout``,
    ``.stderr``.  With ``check_clean=True`` the host state (HostState) is
    captured before and compared after the run (allowing ~2 s for asynchronous
    teardown); any difference fails the test.
    """
    argv = [*pflask_cmd(), *(os.fspath(a) for a in args)]
    before = HostState.capture() if check_clean else None
    result = run_as(argv, user=user, input=input, timeout=timeout, env=env, cwd=cwd)
    if before is not None:
        diff = wait_until_clean(before)
        if diff:
            raise AssertionError(
                f"host state changed by {argv} (exit {result.returncode}):\n{diff}\n"
                f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
            )
    return result


def status_field(text: str, field: str) -> str:
    """The value of `field` (CapEff, Seccomp, NoNewPrivs...) in a /proc/PID/status text."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == field:
            return value.strip()
    raise AssertionError(f"no {field} in:\n{text}")


def load_error(directory: Path, text: str) -> str:
    """The error(s) pflask's loader reports for manifest `text` (YAML), written
    as m.yaml in `directory`; the test fails if the manifest loads."""
    import pytest

    from pflask.errors import ManifestError, ManifestErrors
    from pflask.load import loader

    path = directory / "m.yaml"
    path.write_text(text)
    with pytest.raises((ManifestError, ManifestErrors)) as info:
        loader.load(str(path), env={})
    return str(info.value)


CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
"""The capability sets of /proc/PID/status, under the kernel's field names."""


def parse_status(text: str) -> dict[str, frozenset[str]]:
    """The Cap* lines of a /proc/PID/status text, as capability name sets keyed by
    field (compare with `grep Cap /proc/PID/status`); bits beyond
    capabilities.NAMES (a newer kernel) as "cap_N"."""
    from pflask.kernel.capabilities import NAMES

    sets = {}
    for line in text.splitlines():
        field, _, value = line.partition(":")
        if field in CAP_FIELDS:
            mask = int(value.strip(), 16)
            sets[field] = frozenset(
                NAMES[bit] if bit < len(NAMES) else f"cap_{bit}"
                for bit in range(mask.bit_length())
                if mask >> bit & 1
            )
    return sets


def status_sets(pid: int | str = "self") -> dict[str, frozenset[str]]:
    """The five capability sets of process `pid`, from /proc/PID/status."""
    with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
        return parse_status(f.read())


def describe(result: subprocess.CompletedProcess[str]) -> str:
    """A readable account of a finished command, for assertion messages."""
    return (
        f"command: {result.args}\nexit status: {result.returncode}\n"
        f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
    )


def _text(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", "replace")


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


# --------------------------------------------------------------------------- waiting


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 5.0,
    interval: float = 0.05,
    message: str | None = None,
) -> T:
    """Call *predicate* until it returns a true value, and return that value.

    Raises AssertionError (with *message*, if given) after *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- processes


def shell(script: str) -> list[str]:
    """argv running *script* with the container's /bin/sh."""
    return ["/bin/sh", "-c", script]


def in_child(body: Callable[[int], None]) -> tuple[int, str]:
    """Run `body(write_fd)` in a forked child; return its exit code and what it wrote.

    An exception in the child is written to the pipe as "!Type: message" and
    the exit code is 1; `body` may also execv with stdout on the pipe.  The
    test process itself keeps its privileges and namespaces.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 0
        try:
            os.close(r)
            body(w)
        except BaseException as exc:
            os.write(w, f"!{type(exc).__name__}: {exc}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()


def ok(result: tuple[int, str]) -> str:
    """The output of an in_child() that succeeded."""
    code, out = result
    assert code == 0, out
    return out


# --------------------------------------------------------------------------- busybox


def _is_static_elf(path: Path) -> bool:
    """True for an ELF file without a program interpreter (PT_INTERP)."""
    with path.open("rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF":
            return False
        bits64 = head[4] == 2
        endian = "<" if head[5] == 1 else ">"
        if bits64:
            (phoff,) = struct.unpack_from(endian + "Q", head, 32)
            phentsize, phnum = struct.unpack_from(endian + "HH", head, 54)
        else:
            (phoff,) = struct.unpack_from(endian + "I", head, 28)
            phentsize, phnum = struct.unpack_from(endian + "HH", head, 42)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    for i in range(phnum):
        (p_type,) = struct.unpack_from(endian + "I", table, i * phentsize)
        if p_type == 3:  # PT_INTERP
            return False
    return True


def make_busybox_root(path: str | os.PathLike[str], hostname: str = "busybox") -> Path:
    """Build a tiny root filesystem at *path* with scripts/busybox-root (the
    same one the examples and benchmarks use) and return it as a Path.

    Layout: /bin/busybox with a symlink in /bin for every applet; /etc/passwd
    (root; alice 1000:1000, home /home/alice; nobody), /etc/group (root; staff
    50 with member alice; alice 1000; nogroup), /etc/hostname.  Everything is
    world-readable (/tmp is 1777); /home/alice belongs to 1000:1000.
    """
    root = Path(path)
    if not BUSYBOX.is_file():
        raise RuntimeError(f"{BUSYBOX} missing: install busybox-static (scripts/setup)")
    if not _is_static_elf(BUSYBOX):
        raise RuntimeError(f"{BUSYBOX} is not statically linked: install busybox-static")
    script = Path(__file__).resolve().parent.parent / "scripts" / "busybox-root"
    subprocess.run([str(script), str(root)], check=True, stdout=subprocess.DEVNULL)
    root.chmod(0o755)
    (root / "etc" / "hostname").write_text(hostname + "\n")
    return root


def copy_tree(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Path:
    """``cp -a`` *src* to *dst* (which must not exist): modes, owners, symlinks kept."""
    subprocess.run(["cp", "-a", "--", os.fspath(src), os.fspath(dst)], check=True)
    return Path(dst)


# --------------------------------------------------------------------------- temp dirs


def mounts_under(path: str | os.PathLike[str]) -> list[str]:
    """Mount points at or below *path* in this mount namespace, deepest first."""
    top = os.path.realpath(path)
    found = [
        m.target
        for m in read_mounts()
        if m.target == top or m.target.startswith(top.rstrip("/") + "/")
    ]
    return sorted(found, key=lambda t: t.count("/"), reverse=True)


def remove_tree(path: str | os.PathLike[str]) -> str | None:
    """Remove *path* recursively without ever descending into a mount.

    Mounts below it (leaked by a test) are detached first; if some cannot be,
    nothing is removed.  Returns None, or a message saying what was left.
    """
    p = os.fspath(path)
    if not os.path.lexists(p):
        return None
    for target in mounts_under(p):
        subprocess.run(["umount", "--lazy", "--", target], capture_output=True)
    left = mounts_under(p)
    if left:
        return f"not removing {p}: still mounted: {', '.join(left)}"
    try:
        shutil.rmtree(p)
    except OSError as e:
        return f"could not remove {p}: {e}"
    return None


# --------------------------------------------------------------------------- host state


class Mount(NamedTuple):
    target: str
    fstype: str
    source: str


class Proc(NamedTuple):
    pid: int
    start: int
    """Start time in clock ticks since boot (tells a reused pid apart)."""
    cmdline: str


def _unescape_mountinfo(field: str) -> str:
    # Spaces, tabs, newlines and backslashes are written as \ooo octal escapes.
    if "\\" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def read_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    """The mounts of a mount namespace, in mountinfo order."""
    result = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            try:
                sep = fields.index("-", 6)
            except ValueError:
                continue
            result.append(
                Mount(
                    _unescape_mountinfo(fields[4]),
                    fields[sep + 1],
                    _unescape_mountinfo(fields[sep + 2]) if len(fields) > sep + 2 else "",
                )
            )
    return result


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _loop_devices() -> list[tuple[str, str]]:
    found = []
    for name in _listdir("/sys/block"):
        if not name.startswith("loop"):
            continue
        backing = _read(f"/sys/block/{name}/loop/backing_file")
        if backing is not None:
            found.append((name, backing.decode("utf-8", "replace").strip()))
    return found


def _cgroups(root: str = "/sys/fs/cgroup", depth: int = 4) -> list[str]:
    """Cgroup directories below *root* with "pflask" in their path; a
    "pflask" directory is searched 2 levels deeper than *depth*."""
    found: list[str] = []

    def walk(path: str, level: int, inside: bool) -> None:
        try:
            entries = list(os.scandir(path))
        except OSError:
            return
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
            except OSError:
                continue
            hit = inside or "pflask" in entry.name.lower()
            if hit:
                found.append(entry.path)
            if level < depth or (hit and level < depth + 2):
                walk(entry.path, level + 1, hit)

    walk(root, 1, False)
    return sorted(found)


def _named_entries() -> list[str]:
    """Entries of /tmp, /run and /run/user/* with "pflask" in their name, and
    what a pflask state directory holds (pflask removes the directory itself
    with its last container, so an empty one is a leak too)."""
    found: list[str] = []
    dirs = ["/tmp", "/run", *(f"/run/user/{u}" for u in _listdir("/run/user"))]
    for d in dirs:
        for name in _listdir(d):
            if "pflask" not in name.lower():
                continue
            path = f"{d}/{name}"
            found.append(path)
            if os.path.isdir(path) and not os.path.islink(path):
                found.extend(f"{path}/{sub}" for sub in _listdir(path))
    return found


def _proc_stat(pid: str) -> tuple[int, int, str] | None:
    """(ppid, starttime, state letter) of a process."""
    raw = _read(f"/proc/{pid}/stat")
    if raw is None:
        return None
    rest = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(rest[1]), int(rest[19]), rest[0].decode()
    except (IndexError, ValueError):
        return None


def _session_marker(pid: int) -> str | None:
    raw = _read(f"/proc/{pid}/environ")
    if raw is None:
        return None
    prefix = SESSION_ENV.encode() + b"="
    for item in raw.split(b"\0"):
        if item.startswith(prefix):
            return item[len(prefix) :].decode("utf-8", "replace")
    return None


def _processes(self_pid: int) -> list[Proc]:
    """Processes that descend from *self_pid* (a test's children, grandchildren
    ...), and processes whose command line contains "pflask" and that were
    started with this session's SESSION_ENV marker (a pflask that escaped, e.g.
    re-parented to init).  Never *self_pid* or its ancestors, nor zombies.

    The marker keeps out the processes of other test sessions and of people
    working on this machine (every Python of the venv /opt/pflask has
    "pflask" in its command line).  Note /proc/PID/environ is the environment
    a process was *started* with."""
    stats: dict[int, tuple[int, int, str]] = {}
    for name in _listdir("/proc"):
        if name.isdigit():
            st = _proc_stat(name)
            if st is not None:
                stats[int(name)] = st
    ancestors = set()
    pid = self_pid
    while pid > 0 and pid not in ancestors:
        ancestors.add(pid)
        pid = stats.get(pid, (0, 0, ""))[0]
    children: dict[int, list[int]] = collections.defaultdict(list)
    for pid, (ppid, _, _) in stats.items():
        children[ppid].append(pid)
    descendants = set()
    todo = list(children[self_pid])
    while todo:
        pid = todo.pop()
        if pid not in descendants:
            descendants.add(pid)
            todo.extend(children[pid])
    mine = os.environ.get(SESSION_ENV)
    result = []
    for pid, (_, start, state) in stats.items():
        if pid in ancestors or state in ("Z", "X"):
            continue
        raw = _read(f"/proc/{pid}/cmdline")
        if not raw:  # gone, or a kernel thread
            continue
        cmdline = raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
        if pid not in descendants and (
            "pflask" not in cmdline.lower() or _session_marker(pid) != mine
        ):
            continue
        result.append(Proc(pid, start, cmdline))
    return sorted(result)


class HostState(NamedTuple):
    """What a container could leave behind on the host (see capture())."""

    mounts: tuple[Mount, ...]
    links: tuple[str, ...]
    netns: tuple[str, ...]
    loops: tuple[tuple[str, str], ...]
    cgroups: tuple[str, ...]
    entries: tuple[str, ...]
    processes: tuple[Proc, ...]

    @classmethod
    def capture(cls) -> HostState:
        """Record, as seen by the calling process:

        - mounts: target, fstype and source of every line of /proc/self/mountinfo;
        - links: network interfaces (/sys/class/net);
        - netns: named network namespaces (/run/netns, as `ip netns list`);
        - loops: attached loop devices and their backing files;
        - cgroups: directories with "pflask" in their path under /sys/fs/cgroup
          (depth <= 4);
        - entries: names containing "pflask" in /tmp, /run and /run/user/*;
        - processes: descendants of this process, and processes whose command
          line contains "pflask" started by this test session (see _processes).
        """
        return cls(
            mounts=tuple(read_mounts()),
            links=tuple(_listdir("/sys/class/net")),
            netns=tuple(_listdir("/run/netns")),
            loops=tuple(_loop_devices()),
            cgroups=tuple(_cgroups()),
            entries=tuple(_named_entries()),
            processes=tuple(_processes(os.getpid())),
        )

    def diff(self, other: HostState) -> str:
        """What changed from *self* to *other*, one line per item ("+" new,
        "-" gone); empty when they are the same."""
        lines: list[str] = []
        for field in self._fields:
            old: Iterable[object] = getattr(self, field)
            new: Iterable[object] = getattr(other, field)
            before, after = collections.Counter(old), collections.Counter(new)
            for item in sorted((after - before).elements(), key=repr):
                lines.append(f"+ {field}: {_show(item)}")
            for item in sorted((before - after).elements(), key=repr):
                lines.append(f"- {field}: {_show(item)}")
        return "\n".join(lines)


def _show(item: object) -> str:
    if isinstance(item, Mount):
        return f"{item.target} ({item.fstype} from {item.source})"
    if isinstance(item, Proc):
        return f"pid {item.pid}: {item.cmdline}"
    if isinstance(item, tuple):
        return " -> ".join(str(x) for x in item)
    return str(item)


def wait_until_clean(before: HostState, timeout: float = 2.0) -> str:
    """Compare the host with *before* until they match or *timeout* passes
    (teardown such as veth deletion or a process exit is asynchronous).
    Returns the last difference ("" when clean)."""
    deadline = time.monotonic() + timeout
    while True:
        diff = before.diff(HostState.capture())
        if not diff or time.monotonic() >= deadline:
            return diff
        time.sleep(0.05)
