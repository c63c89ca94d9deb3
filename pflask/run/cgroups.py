"""Control groups for a container: find the hierarchies, make a group, set limits, clean up.

Hosts come in three shapes and pflask must work on all of them:

- v1: one `cgroup` mount per hierarchy (each holding one or more controllers,
  e.g. `cpu,cpuacct`, or a named one such as `name=systemd`);
- v2: a single `cgroup2` tree; controllers are switched on for children by
  writing `+memory` to the parent's `cgroup.subtree_control`;
- hybrid: v1 hierarchies plus a cgroup2 tree (often /sys/fs/cgroup/unified).
  A controller bound to a v1 hierarchy is missing from the v2 tree, so for
  it v1 is the only place where a limit works.

New groups go below the invoking process's own cgroup in each hierarchy, not
below the root: a pflask started in a CI job or in another container stays
inside the limits and the delegation it was given.  One exception is forced by
cgroup v2's "no internal processes" rule: a non-root cgroup that has processes
of its own cannot enable controllers for its children (EBUSY), and pflask's
own cgroup always holds pflask.  So a v2 group that needs a controller is made
beside our cgroup instead, below the nearest ancestor without processes (on a
systemd host: the slice holding our session scope), which is still inside
every limit set above it.

A user who may not write to those directories (no delegation) gets an error
that says so before anything is made.

Every group is called `pflask-<name>-<pid>-<starttime>`: the supervisor's pid
and its start time (field 22 of /proc/PID/stat).  Pid plus start time names a
process uniquely for the life of the machine, so `clean_stale()` can tell the
leftovers of a SIGKILLed pflask from the groups of a live one even after the
pid has been reused.

A limit that cannot be applied is an error (`SyscallError` naming the file and
the errno), never a warning: a container that silently runs without its memory
limit is worse than one that does not start.
"""

from __future__ import annotations

import errno
import os
import time

from pflask.kernel.controllers import V1_CONTROLLERS, V2_CONTROLLERS
from pflask.kernel.libc import SyscallError
from pflask.record import Record
from pflask.run.state import start_time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

PREFIX = "pflask-"
CPU_PERIOD = 100000  # microseconds; the kernel's default CFS period
_SIGKILL = 9  # the same number on every Linux architecture; avoids importing signal

# How a v1 name is served by a cgroup2 tree: another controller, or "" when the
# feature is part of every v2 group (cgroup.freeze, BPF device programs,
# cpu.stat usage, perf_event is implicitly enabled).
_V2_EQUIVALENT = {"blkio": "io", "cpuacct": "", "devices": "", "freezer": "", "perf_event": ""}


class Hierarchy(Record):
    """One mounted hierarchy and the directory of this process's own cgroup in it."""

    version: int  # 1 or 2
    mount: str  # mount point
    controllers: tuple[str, ...]  # v1: bound to it; v2: our cgroup.controllers
    cgroup: str  # our own cgroup's directory: where new groups go (see v2_parent)


class Layout(Record):
    """What `detect()` found: the v1 hierarchies and the cgroup2 tree, if any."""

    v1: tuple[Hierarchy, ...] = ()
    v2: Hierarchy | None = None

    @property
    def mode(self) -> str:
        """The host's shape: "v1", "v2", "hybrid" (both) or "none"."""
        if self.v1 and self.v2 is not None:
            return "hybrid"
        return "v1" if self.v1 else "v2" if self.v2 is not None else "none"

    def hierarchies(self) -> tuple[Hierarchy, ...]:
        return self.v1 + ((self.v2,) if self.v2 is not None else ())

    def v1_hierarchy(self, controller: str) -> Hierarchy | None:
        """The v1 hierarchy `controller` is bound to, if it is mounted."""
        for hierarchy in self.v1:
            if controller in hierarchy.controllers:
                return hierarchy
        return None


# --- detection ----------------------------------------------------------------


def detect(
    mountinfo: str | None = None,
    proc_cgroup: str | None = None,
    v2_controllers: str | None = None,
) -> Layout:
    """Read the cgroup layout from /proc/self/mountinfo and /proc/self/cgroup.

    The texts can be given instead (tests fabricate layouts the machine does
    not have); `v2_controllers` stands for the cgroup2 `cgroup.controllers`
    file, which is otherwise read from our own v2 cgroup.
    """
    if mountinfo is None:
        mountinfo = _read("/proc/self/mountinfo")
    if proc_cgroup is None:
        proc_cgroup = _read("/proc/self/cgroup")
    own = _parse_proc_cgroup(proc_cgroup)
    names = V1_CONTROLLERS.union(*own)
    chosen: dict[str, Hierarchy] = {}  # by device: one hierarchy may be mounted twice
    resolved: set[str] = set()  # devices whose chosen mount shows our own cgroup
    for fields in _cgroup_mounts(mountinfo):
        dev, root, mount, fstype, superopts = fields
        if fstype == "cgroup":
            controllers = tuple(
                o for o in superopts.split(",") if o in names or o.startswith("name=")
            )
            if not controllers:
                continue
            path = own.get(frozenset(controllers))
        else:
            controllers = ()
            path = own.get(frozenset())
        cgroup = _own_dir(mount, root, path)
        if dev in chosen and (cgroup is None or dev in resolved):
            continue  # keep the first mount that shows our own cgroup
        if cgroup is not None:
            resolved.add(dev)
        version = 1 if fstype == "cgroup" else 2
        chosen[dev] = Hierarchy(
            version=version, mount=mount, controllers=controllers, cgroup=cgroup or mount
        )
    v1 = tuple(h for h in chosen.values() if h.version == 1)
    v2 = next((h for h in chosen.values() if h.version == 2), None)
    if v2 is not None:
        if v2_controllers is None:
            try:
                v2_controllers = _read(os.path.join(v2.cgroup, "cgroup.controllers"))
            except OSError:
                v2_controllers = ""
        v2 = v2.replace(controllers=tuple(v2_controllers.split()))
    return Layout(v1=v1, v2=v2)


def _parse_proc_cgroup(text: str) -> dict[frozenset[str], str]:
    """`4:memory:/a/b` lines as {controllers: path}; the v2 line `0::/x` has no controllers."""
    own: dict[frozenset[str], str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            own[frozenset(c for c in parts[1].split(",") if c)] = parts[2]
    return own


def _cgroup_mounts(mountinfo: str) -> Iterator[tuple[str, str, str, str, str]]:
    """(device, root, mount point, fstype, super options) of each cgroup mount.

    mountinfo(5): `id parent major:minor root mountpoint opts [optional...] -
    fstype source superopts`.
    """
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 4 or fields[sep + 1] not in ("cgroup", "cgroup2"):
            continue
        root, mount = _unescape(fields[3]), _unescape(fields[4])
        yield fields[2], root, mount, fields[sep + 1], fields[sep + 3]


def _unescape(field: str) -> str:
    r"""mountinfo writes space, tab, newline and backslash as \040, \011, \012, \134."""
    if "\\" not in field:
        return field
    raw = field.encode()
    out = bytearray()
    i = 0
    while i < len(raw):
        code = raw[i + 1 : i + 4]
        if raw[i] == 0x5C and len(code) == 3 and all(0x30 <= c <= 0x37 for c in code):
            out.append(int(code, 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return os.fsdecode(bytes(out))


def _own_dir(mount: str, root: str, path: str | None) -> str | None:
    """Our cgroup's directory under `mount`, which shows the hierarchy from `root` down.

    None when this mount does not show it (another subtree bind-mounted, or a
    mount made outside our cgroup namespace).
    """
    if path is None:
        return None
    if root == "/":
        rel = path
    elif path == root or path.startswith(root + "/"):
        rel = path[len(root) :]
    else:
        return None
    return mount.rstrip("/") + rel.rstrip("/") if rel.strip("/") else mount


# --- creation -----------------------------------------------------------------


class Group:
    """A container's cgroup: one directory per hierarchy it lives in."""

    __slots__ = ("_dirs", "_made", "_memory", "devices", "name")

    def __init__(
        self,
        name: str,
        dirs: tuple[tuple[str, int], ...],
        memory: str | None,
        devices: bool = False,
        made: tuple[tuple[str, int], ...] | None = None,
    ) -> None:
        self.name = name
        self._dirs = dirs  # (path, version), in the order they were made
        self._memory = memory  # the directory holding the memory controller's files
        self.devices = devices  # whether a device policy is enforced (see create)
        # The directories this group's creation made (a cgroup path's missing
        # ancestors too), in the order made; None: all of `dirs` and nothing else.
        self._made = made

    @property
    def made(self) -> tuple[tuple[str, int], ...]:
        """(path, version) of each directory made for the group, for a record."""
        return self._dirs if self._made is None else self._made

    @property
    def dirs(self) -> tuple[tuple[str, int], ...]:
        """(path, cgroup version) of each directory, for a record to rebuild the group."""
        return self._dirs

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(path for path, _ in self._dirs)

    def __repr__(self) -> str:
        return f"Group({self.name!r}, paths={self.paths!r})"

    def attach(self, pid: int) -> None:
        """Move `pid` (and with it, its future children) into every hierarchy's group."""
        for path, _ in self._dirs:
            _write(os.path.join(path, "cgroup.procs"), str(pid))

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a task of this group.

        Read from v2 `memory.events` or v1 `memory.oom_control` (Linux 4.13),
        the `oom_kill` counter in both; False without a memory controller.
        """
        if self._memory is None:
            return False
        for name in ("memory.events", "memory.oom_control"):
            try:
                text = _read(os.path.join(self._memory, name))
            except FileNotFoundError:
                continue
            return _counter(text, "oom_kill") > 0
        return False

    def remove(self, timeout: float = 2.0) -> None:
        """Remove every directory, killing tasks that are still inside.  Idempotent.

        The v2 group goes first: `cgroup.kill` there ends the whole container
        at once, forks in flight included, and the v1 groups are then empty.
        """
        deadline = time.monotonic() + timeout
        made = self.made
        for path, version in sorted(self._dirs, key=lambda d: -d[1]):
            if (path, version) in made:  # a group joined, not made, is left as it was
                _remove_tree(path, version, deadline)
        leaves = set(self._dirs)
        for path, _ in reversed(made):
            if (path, _) not in leaves:
                _remove_parent(path)


def _remove_parent(path: str) -> None:
    """rmdir an ancestor a cgroup path made, unless another group lives in it now."""
    try:
        os.rmdir(path)
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
            raise SyscallError("rmdir", e.errno or errno.EIO, path) from None


def create(
    name: str,
    controllers: tuple[str, ...],
    memory: int | None,
    pids: int | None,
    cpu: float | None,
    layout: Layout | None = None,
    default_pids: int | None = None,
    devices: tuple[str, ...] = (),
    group: str | None = None,
    path: str | None = None,
    shares: int | None = None,
    swap: int | None = None,
) -> Group:
    """Make the group `pflask-<name>-<pid>-<start>` wherever the controllers and limits need it.

    `memory` is bytes, `pids` a task count, `cpu` a number of CPUs (0.5 is half
    of one).  With nothing asked for, the group only tracks the container's
    processes: in the cgroup2 tree, or on a v1-only host in the named (no
    controller) hierarchies such as name=systemd.  On any failure, the
    directories already made are removed again.

    `default_pids` is the task limit when `pids` is None, applied where this
    user can have the pids controller (a v1 pids hierarchy it may write to,
    or a cgroup2 tree offering pids): a fork bomb should not take the host's
    pids by default, but a host or a delegation without the controller
    should not stop containers that never asked for a limit.
    `devices`: rules in the v1 devices controller's syntax ("c 1:3 rwm");
    every device is denied but these.  They go to the v1 devices controller
    where it is mounted (v1 and hybrid hosts), else into a BPF device program
    attached to the v2 group (pflask.run.devices).  The returned group's
    `devices` says whether either was possible; a v1 host without the
    controller has neither, and the caller warns.

    `path` places the group as an OCI bundle's `linux.cgroupsPath` does with
    runc: "/a/b" below the top of each hierarchy, "a/b" below this process's
    own cgroup (v2: `v2_parent`'s), in every mounted hierarchy (engines read
    a container's statistics from each).  Missing ancestors are made, and a
    group that exists already is joined; `Group.remove` takes away only what
    was made here.  `shares` is v1 cpu.shares (v2: cpu.weight, converted as
    runc does); `swap` the memory+swap limit in bytes, -1 for none.
    """
    # `group`: a fixed name (an OCI container's, which outlives the process
    # that made it; clean_stale never takes it for a dead pflask's).
    dirname = group if group is not None else group_name(name)
    if layout is None:
        layout = detect()
    if pids is None and default_pids is not None and _offers(layout, "pids"):
        pids = default_pids
    # swap needs the memory controller, shares the cpu one
    wanted = _wanted(controllers, memory if swap is None else 0, pids, cpu if shares is None else 0)
    devices_hierarchy = layout.v1_hierarchy("devices") if devices else None
    if devices_hierarchy is not None and "devices" not in wanted:
        wanted.append("devices")
    v1, use_v2, enable = _placement(wanted, layout)
    if path is not None:
        return _create_at(path, dirname, layout, enable, (memory, pids, cpu, shares, swap), devices)
    if layout.v2 is not None and not use_v2 and (not wanted or _writable(layout.v2.cgroup)):
        # The v2 group is a free extra on hybrid hosts: cgroup.kill and
        # cgroup.events work there for the whole container.
        use_v2 = True
    if not wanted and not use_v2:
        v1 = [h for h in layout.v1 if all(c.startswith("name=") for c in h.controllers)]
    if not v1 and not use_v2:
        raise _nowhere(layout)
    parents = [(hierarchy, hierarchy.cgroup) for hierarchy in v1]
    if use_v2 and layout.v2 is not None:
        parents.append((layout.v2, v2_parent(layout.v2, bool(enable))))
    _check_access(parents)
    made: list[tuple[str, int]] = []
    dirs: dict[str, tuple[str, int]] = {}  # mount -> (the group's directory, version)
    try:
        for hierarchy, parent in parents:
            if hierarchy.version == 2:
                for controller in enable:
                    _enable(parent, controller, _top(hierarchy))
            path = _mkdir(hierarchy, parent, dirname)
            made.append((path, hierarchy.version))
            dirs[hierarchy.mount] = (path, hierarchy.version)
        enforced = _configure(layout, dirs, (memory, pids, cpu, shares, swap), devices)
    except BaseException as err:
        _undo(Group(dirname, tuple(made), None), err)
        raise
    memory_dir = _serving(layout, dirs)("memory") if "memory" in wanted else None
    memory_path = None if memory_dir is None else memory_dir[0]
    return Group(dirname, tuple(made), memory_path, devices=enforced)


Limits = tuple[int | None, int | None, float | None, int | None, int | None]
"""memory, pids, cpu, shares, swap: as `create` takes them."""


def _configure(
    layout: Layout, dirs: dict[str, tuple[str, int]], limits: Limits, devices: tuple[str, ...]
) -> bool:
    """Write the limits and the device policy; whether a device policy is enforced."""
    _set_limits(_serving(layout, dirs), *limits)
    devices_hierarchy = layout.v1_hierarchy("devices") if devices else None
    if devices_hierarchy is not None:
        _set_devices(dirs[devices_hierarchy.mount][0], devices)
        return True
    if devices and layout.v2 is not None and layout.v2.mount in dirs:
        from pflask.run import devices as device_program

        device_program.attach(dirs[layout.v2.mount][0], devices)
        return True
    return False


def _undo(group: Group, err: BaseException) -> None:
    try:
        group.remove()
    except OSError as cleanup:
        err.add_note(f"while undoing: {cleanup}")


def _create_at(
    path: str,
    name: str,
    layout: Layout,
    enable: list[str],
    limits: Limits,
    devices: tuple[str, ...],
) -> Group:
    """The group at a cgroup path (see `create`), in every mounted hierarchy."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        raise SyscallError("mkdir", errno.EINVAL, f"cgroup path {path!r}: not below its parent")
    bases: list[tuple[Hierarchy, str]] = []
    for hierarchy in layout.hierarchies():
        if path.startswith("/"):
            base = _top(hierarchy)
        elif hierarchy.version == 2:
            base = v2_parent(hierarchy, bool(enable))
        else:
            base = hierarchy.cgroup
        bases.append((hierarchy, base))
    if not bases:
        raise _nowhere(layout)
    made: list[tuple[str, int]] = []
    leaves: list[tuple[str, int]] = []
    dirs: dict[str, tuple[str, int]] = {}
    try:
        for hierarchy, base in bases:
            here = base
            for index, part in enumerate(parts):
                if hierarchy.version == 2 and index == len(parts) - 1:
                    for controller in enable:
                        _enable(here, controller, _top(hierarchy))
                parent, here = here, os.path.join(here, part)
                if os.path.isdir(here):
                    continue  # joined: another's (an engine's parent, a pod's group)
                _check_access([(hierarchy, parent)])
                try:
                    _mkdir(hierarchy, parent, part)
                except SyscallError as e:
                    if e.errno != errno.EEXIST:
                        raise
                    continue  # made meanwhile by another
                made.append((here, hierarchy.version))
            leaves.append((here, hierarchy.version))
            dirs[hierarchy.mount] = (here, hierarchy.version)
        enforced = _configure(layout, dirs, limits, devices)
    except BaseException as err:
        _undo(Group(name, tuple(leaves), None, made=tuple(made)), err)
        raise
    wants_memory = limits[0] is not None or limits[4] is not None
    memory_dir = _serving(layout, dirs)("memory") if wants_memory else None
    memory_path = None if memory_dir is None else memory_dir[0]
    return Group(name, tuple(leaves), memory_path, devices=enforced, made=tuple(made))


def _set_devices(path: str, rules: tuple[str, ...]) -> None:
    """Deny every device in a v1 devices group, then allow `rules`, one write each.

    A new group inherits its parent's list; "a" in devices.deny empties it,
    and nothing can be allowed that the parent does not allow.
    """
    _write(os.path.join(path, "devices.deny"), "a")
    for rule in rules:
        _write(os.path.join(path, "devices.allow"), rule)


def _nowhere(layout: Layout) -> SyscallError:
    """The error when no hierarchy can hold the group."""
    if layout.mode == "none":
        return SyscallError("cgroup", errno.ENOENT, "no cgroup hierarchy is mounted")
    return SyscallError(
        "cgroup",
        errno.ENOENT,
        "no controller or limit was asked for, and this host has neither a cgroup2 tree "
        "nor a named v1 hierarchy (name=systemd) to track the container's processes in; "
        "name a controller (e.g. pids)",
    )


def group_name(name: str) -> str:
    """`pflask-<name>-<pid>-<starttime>` for this process; `clean_stale` parses it back.

    `name` is a container's name, which the schema allows only short and of
    letters, digits, `_`, `.` and `-`: a file name of its own."""
    if name.startswith(PREFIX) and len(name) > len(PREFIX):
        name = name[len(PREFIX) :]  # the classic default name: no pflask-pflask-...
    pid = os.getpid()
    return f"{PREFIX}{name}-{pid}-{start_time(pid) or 0}"


def _wanted(
    controllers: Iterable[str],
    memory: int | None,
    pids: int | None,
    cpu: float | None,
) -> list[str]:
    """The requested controllers plus those the limits need, in order, each once."""
    wanted: list[str] = []
    limits = (("memory", memory), ("pids", pids), ("cpu", cpu))
    for controller in [*controllers, *(c for c, value in limits if value is not None)]:
        if controller not in wanted:
            wanted.append(controller)
    return wanted


def _placement(wanted: list[str], layout: Layout) -> tuple[list[Hierarchy], bool, list[str]]:
    """Where each controller is served: (v1 hierarchies, whether v2, v2 controllers to enable).

    A controller bound to a v1 hierarchy goes there: on a hybrid host the v2
    tree does not have it.
    """
    v1: list[Hierarchy] = []
    use_v2 = False
    enable: list[str] = []
    for controller in wanted:
        hierarchy = layout.v1_hierarchy(controller)
        if hierarchy is not None:
            if hierarchy not in v1:
                v1.append(hierarchy)
            continue
        v2_name = _V2_EQUIVALENT.get(controller, controller)
        if layout.v2 is None or (v2_name and v2_name not in V2_CONTROLLERS):
            raise _absent(controller, layout)
        use_v2 = True
        if v2_name and v2_name not in enable:
            enable.append(v2_name)
    return v1, use_v2, enable


def _absent(controller: str, layout: Layout) -> SyscallError:
    """The error for a known controller no mounted hierarchy provides."""
    mounted = ", ".join(c for h in layout.v1 for c in h.controllers) or "none"
    where = f"mounted v1 controllers: {mounted}"
    if layout.v2 is not None:
        where += f"; cgroup2 at {layout.v2.mount} has no {controller!r} (it is v1 only)"
    detail = f"controller {controller!r} is not mounted ({where})"
    return SyscallError("cgroup", errno.ENOENT, detail)


def _offers(layout: Layout, controller: str) -> bool:
    """Whether a group made by this process could have `controller`."""
    hierarchy = layout.v1_hierarchy(controller)
    if hierarchy is not None:
        return _writable(hierarchy.cgroup)
    v2 = layout.v2
    return v2 is not None and controller in v2.controllers and _writable(v2_parent(v2, True))


def _writable(path: str) -> bool:
    return os.access(path, os.W_OK)


def _top(hierarchy: Hierarchy) -> str:
    """The top of what this mount shows: no group is made or changed above it."""
    return hierarchy.mount.rstrip("/") or "/"


def _has_processes(path: str) -> bool:
    """Whether processes live in this cgroup itself (not counting its descendants)."""
    return bool(_read_or(os.path.join(path, "cgroup.procs"), "").split())


def v2_parent(hierarchy: Hierarchy, controllers: bool) -> str:
    """Where a v2 group is made: our own cgroup, or beside it when it needs `controllers`.

    A cgroup other than the root cannot enable controllers for its children
    while it has processes of its own (EBUSY), and pflask itself is in its own
    cgroup; so a group that needs controllers goes below the nearest ancestor
    without processes (the top of the mount at the latest: the real root is
    exempt, and for anything else the kernel's EBUSY is explained then).
    """
    path = hierarchy.cgroup
    if not controllers:
        return path
    top = _top(hierarchy)
    while len(path) > len(top) and _has_processes(path):
        path = os.path.dirname(path)
    return path


def _check_access(parents: list[tuple[Hierarchy, str]]) -> None:
    """Refuse before anything is made when a parent directory is not ours to write.

    Unprivileged users get cgroups only by delegation (a directory chowned to
    them, systemd's Delegate=); without it mkdir's bare EACCES would not say
    what is missing.
    """
    for _, parent in parents:
        if _writable(parent):
            continue
        try:
            st = os.stat(parent)
            read_only = bool(os.statvfs(parent).f_flag & os.ST_RDONLY)
        except OSError as e:
            raise SyscallError("stat", e.errno or errno.EIO, parent) from None
        if read_only:
            raise SyscallError(
                "mkdir",
                errno.EROFS,
                f"{parent}: the cgroup filesystem is mounted read-only here, so pflask "
                "cannot make the container's group",
            )
        raise SyscallError(
            "mkdir",
            errno.EACCES,
            f"{parent}: not writable by uid {os.geteuid()} (owned by uid {st.st_uid}, "
            f"mode {st.st_mode & 0o7777:04o}): no cgroup is delegated to this user for "
            "the container's group; run pflask as root, or in a cgroup delegated to you "
            "(cgroup v2: systemd-run --user --scope -p Delegate=yes pflask ...)",
        )


def _enable(parent: str, controller: str, top: str) -> None:
    """Switch `controller` on for the children of v2 cgroup `parent`, unless it already is.

    A controller can only be enabled where the parent's parent offers it, so
    it is switched on from the nearest ancestor that offers it downwards (as
    systemd does for a unit that asks for accounting).  Left on afterwards:
    other groups may be using it by then.
    """
    control = os.path.join(parent, "cgroup.subtree_control")
    try:
        if controller in _read(control).split():
            return
    except OSError as e:
        raise SyscallError("read", e.errno or errno.EIO, control) from None
    offered = _read_or(os.path.join(parent, "cgroup.controllers"), "").split()
    if controller not in offered and len(parent) > len(top):
        _enable(os.path.dirname(parent), controller, top)
    try:
        _write(control, f"+{controller}")
    except SyscallError as e:
        err = e.errno or errno.EIO
        raise SyscallError(e.call, err, _enable_hint(e, parent, controller)) from None


def _enable_hint(error: SyscallError, parent: str, controller: str) -> str:
    """Why the kernel refused `+controller`: the raw ENOENT/EBUSY says too little."""
    detail = error.detail or parent
    if error.errno == errno.EBUSY:
        return (
            f"{detail}: {parent} has processes, and cgroup v2 only enables controllers"
            " for the children of a cgroup without processes (except the root);"
            " no ancestor without processes is visible from here"
        )
    if error.errno != errno.ENOENT:
        return detail
    available = _read_or(os.path.join(parent, "cgroup.controllers"), "").split()
    why = f"{controller!r} is not in {parent}/cgroup.controllers ({' '.join(available) or 'empty'})"
    for line in _read_or("/proc/cgroups", "").splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 4 and fields[0] == controller:
            if fields[1] != "0":
                why += f": it is bound to cgroup v1 hierarchy {fields[1]}, use that one"
            elif fields[3] == "0":
                why += ": it is disabled on the kernel command line (cgroup_disable=)"
            else:
                why += ": it is not enabled in the parent's cgroup.subtree_control"
            break
    return f"{detail}: {why}"


def _mkdir(hierarchy: Hierarchy, parent: str, dirname: str) -> str:
    path = os.path.join(parent, dirname)
    try:
        os.mkdir(path, 0o755)
    except OSError as e:
        raise SyscallError("mkdir", e.errno or errno.EIO, path) from None
    if hierarchy.version == 1 and "cpuset" in hierarchy.controllers:
        _inherit_cpuset(parent, path)
    return path


def _inherit_cpuset(parent: str, path: str) -> None:
    """A new v1 cpuset group has no CPUs and no memory nodes (attach fails with
    ENOSPC) unless cgroup.clone_children is set: copy the parent's."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        if not _read(os.path.join(path, name)).strip():
            _write(os.path.join(path, name), _read(os.path.join(parent, name)).strip())


def _serving(
    layout: Layout, dirs: dict[str, tuple[str, int]]
) -> Callable[[str], tuple[str, int] | None]:
    """A lookup: the group's (directory, version) in the hierarchy serving a controller.

    A controller bound to a v1 hierarchy is served there, any other by the v2 tree.
    """

    def where(controller: str) -> tuple[str, int] | None:
        hierarchy = layout.v1_hierarchy(controller) or layout.v2
        return None if hierarchy is None else dirs.get(hierarchy.mount)

    return where


def _set_limits(
    where: Callable[[str], tuple[str, int] | None],
    memory: int | None,
    pids: int | None,
    cpu: float | None,
    shares: int | None = None,
    swap: int | None = None,
) -> None:
    """Write the limits in the hierarchy serving each one, v1 or v2 file names."""

    def served(controller: str) -> tuple[str, int]:
        found = where(controller)
        assert found is not None  # _placement made a group there
        return found

    if memory is not None or swap is not None:
        _set_memory(*served("memory"), memory, swap)
    if shares is not None:
        path, version = served("cpu")
        if version == 1:
            _write(os.path.join(path, "cpu.shares"), str(shares))
        else:
            _write(os.path.join(path, "cpu.weight"), str(shares_to_weight(shares)))
    if pids is not None:
        path, _ = served("pids")
        _write(os.path.join(path, "pids.max"), str(pids))
    if cpu is not None:
        path, version = served("cpu")
        quota = round(cpu * CPU_PERIOD)
        if version == 1:
            _write(os.path.join(path, "cpu.cfs_period_us"), str(CPU_PERIOD))
            _write(os.path.join(path, "cpu.cfs_quota_us"), str(quota))
        else:
            _write(os.path.join(path, "cpu.max"), f"{quota} {CPU_PERIOD}")


def _set_memory(path: str, version: int, memory: int | None, swap: int | None) -> None:
    """The memory limit and the memory+swap one (`swap`: OCI's memory.swap, -1
    for none; None: no swap beyond the limit, where swap is accounted).

    v1's memory.memsw.limit_in_bytes is memory plus swap, as OCI's value is;
    v2's memory.swap.max is the swap alone, so the limit is taken off it (runc's
    conversion, which needs a memory limit and a total at least as large).
    """
    if version == 1:
        if memory is not None:
            _write(os.path.join(path, "memory.limit_in_bytes"), str(memory))
        memsw = os.path.join(path, "memory.memsw.limit_in_bytes")
        if swap is not None:
            _write(memsw, str(swap))  # ENOENT: this kernel does not account swap
        elif memory is not None:
            # memsw only exists with swap accounting; without a total the group
            # could page out past its limit.
            _write_if_present(memsw, str(memory))
        return
    if memory is not None:
        _write(os.path.join(path, "memory.max"), str(memory))
    if swap is None:
        if memory is not None:
            _write_if_present(os.path.join(path, "memory.swap.max"), "0")
        return
    swap_max = os.path.join(path, "memory.swap.max")
    if swap == -1:
        _write(swap_max, "max")
    elif memory is None or swap < memory:
        why = "needs a memory limit" if memory is None else "is below the memory limit"
        raise SyscallError("write", errno.EINVAL, f"{swap_max}: memory+swap {swap} {why}")
    else:
        _write(swap_max, str(swap - memory))


def shares_to_weight(shares: int) -> int:
    """v1 cpu.shares (2..262144) as v2 cpu.weight (1..10000), as runc maps them."""
    return 1 + ((shares - 2) * 9999) // 262142


# --- removal ------------------------------------------------------------------


def clean_stale(layout: Layout | None = None) -> list[str]:
    """Remove the groups of pflask processes that are gone; return their paths.

    Looks where `create` makes groups: our own cgroup in each hierarchy, and
    in the v2 tree also the ancestor that takes groups needing controllers.  A
    group whose owner pid is alive with the same start time is kept, and so is
    one this user may not remove (another user's, who will clean it up).
    Groups that cannot be removed otherwise are all tried first, then reported
    together.
    """
    if layout is None:
        layout = detect()
    removed: list[str] = []
    errors: list[SyscallError] = []
    for hierarchy in sorted(layout.hierarchies(), key=lambda h: -h.version):
        parents = [hierarchy.cgroup]
        if hierarchy.version == 2:
            parents.append(v2_parent(hierarchy, controllers=True))
        for parent in dict.fromkeys(parents):
            for path in _stale(parent):
                try:
                    if _remove_tree(path, hierarchy.version, time.monotonic() + 2.0):
                        removed.append(path)
                except SyscallError as e:
                    if e.errno not in (errno.EACCES, errno.EPERM):
                        errors.append(e)
    if errors:
        for other in errors[1:]:
            errors[0].add_note(str(other))
        raise errors[0]
    return removed


def _stale(parent: str) -> list[str]:
    """pflask groups directly below `parent` whose owner is no longer running."""
    try:
        entries = list(os.scandir(parent))
    except FileNotFoundError:
        return []
    stale = []
    for entry in entries:
        owner = parse_owner(entry.name)
        if owner is not None and entry.is_dir(follow_symlinks=False):
            pid, start = owner
            if start_time(pid) != start:
                stale.append(entry.path)
    return sorted(stale)


def parse_owner(dirname: str) -> tuple[int, int] | None:
    """(pid, start time) from `pflask-<name>-<pid>-<start>`, None if not such a name."""
    if not dirname.startswith(PREFIX):
        return None
    parts = dirname[len(PREFIX) :].rsplit("-", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    return int(parts[1]), int(parts[2])


def _remove_tree(top: str, version: int, deadline: float) -> bool:
    """rmdir `top` and any groups made inside it; False if it was already gone.

    EBUSY means tasks are left: kill them (all at once with v2 cgroup.kill,
    else SIGKILL each) and retry until `deadline`.
    """
    if not os.path.isdir(top):
        return False
    while True:
        busy = _rmdir_bottom_up(top)
        if busy is None:
            return True
        tasks = _tasks(top)
        if os.getpid() in tasks:
            raise SyscallError("rmdir", errno.EBUSY, f"{busy} (the calling process is in it)")
        if time.monotonic() > deadline:
            left = " ".join(map(str, tasks)) or "none listed"
            raise SyscallError("rmdir", errno.EBUSY, f"{busy} (tasks left: {left})")
        if tasks:
            _kill(top, version, tasks)
        time.sleep(0.005)


def _rmdir_bottom_up(top: str) -> str | None:
    """Remove the directories below `top` and `top` itself; the first busy one, or None."""
    for path, _, _ in os.walk(top, topdown=False):
        try:
            os.rmdir(path)
        except FileNotFoundError:
            continue
        except OSError as e:
            if e.errno == errno.EBUSY:
                return path
            raise SyscallError("rmdir", e.errno or errno.EIO, path) from None
    return None


def _tasks(top: str) -> list[int]:
    """Pids in the group and its descendants; 0 stands for a pid outside our namespace."""
    pids: list[int] = []
    for path, _, _ in os.walk(top):
        text = _read_or(os.path.join(path, "cgroup.procs"), "")
        pids.extend(int(p) for p in text.split())
    return pids


def _kill(top: str, version: int, tasks: list[int]) -> None:
    kill_file = os.path.join(top, "cgroup.kill")  # v2, Linux 5.14
    if version == 2 and os.path.exists(kill_file):
        _write(kill_file, "1")
        return
    for pid in tasks:
        if pid <= 0:
            continue  # never 0: kill(0) would signal our own process group
        try:
            os.kill(pid, _SIGKILL)
        except ProcessLookupError:
            continue  # exited meanwhile
        except PermissionError:
            raise SyscallError("kill", errno.EPERM, f"pid {pid} in {top}") from None


# --- files --------------------------------------------------------------------


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _read_or(path: str, default: str) -> str:
    try:
        return _read(path)
    except OSError:
        return default


def _counter(text: str, key: str) -> int:
    """The value of `key N` in a flat-keyed file such as memory.events."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[0] == key:
            return int(fields[1])
    return 0


def _write(path: str, value: str) -> None:
    """One write(2) per value: cgroup files take each write as one command."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SyscallError("open", e.errno or errno.EIO, f"{path} ({value})") from None
    try:
        os.write(fd, value.encode())
    except OSError as e:
        raise SyscallError("write", e.errno or errno.EIO, f"{path} ({value})") from None
    finally:
        os.close(fd)


def _write_if_present(path: str, value: str) -> None:
    if os.path.exists(path):
        _write(path, value)
