"""The Manifest: a validated manifest mapping as typed, immutable records.

Built only from data the schema accepted (the loader or the classic command
line made it), so construction here cannot fail on shape.  The records'
defaults are the manifest's defaults, stated once: `from_data` passes only
the fields a mapping gives, and the schema's `default` keywords (what editors
and the reference show) must say the same (tests/test_manifest.py checks
both ways).  Defaults that depend on the running system (the user namespace
for a non-root user, the PID 1 scheme, the stop signal, the pids limit)
belong to the compiler.
"""

from __future__ import annotations

from pflask.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MOUNT_FLAGS = ("nosuid", "nodev", "noexec")


class Root(Record):
    """`image` is the reference as written; the pipeline resolves it before
    compiling (pflask.image.prepare): `path` is then the top layer's
    directory, where the overlay is mounted, `layers` every layer's, top
    first, `store` the store's directory that holds them, and `digest` the
    image's; for a `disk:` image, `disk` its file and `path` an empty
    directory of the store to mount it on."""

    path: str | None = None
    image: str | None = None
    upper: str | None = None
    layers: tuple[str, ...] = ()
    digest: str | None = None
    store: str | None = None  # the image store holding `layers` (see plan.IdmapLayers)
    disk: str | None = None  # a `disk:` image's file; `path` is then its mount point
    ephemeral: bool = False
    readonly: bool = False
    size: int | None = None  # bytes: the ephemeral root's upper layer


class Namespaces(Record):
    """None means "decide for me" (the compiler applies the documented defaults)."""

    mount: bool = True
    pid: bool = True
    ipc: bool = True
    uts: bool = True
    cgroup: bool = True
    net: bool | None = None
    user: bool | None = None


class IdRange(Record):
    inside: int
    outside: int
    count: int


class BindMount(Record):
    source: str
    target: str
    readonly: bool = False
    recursive: bool = True
    optional: bool = False
    flags: tuple[str, ...] = ()


class TmpMount(Record):
    target: str
    size: int | None = None
    mode: str | None = None
    uid: int | None = None
    gid: int | None = None
    readonly: bool = False
    flags: tuple[str, ...] = ()


class OverlayMount(Record):
    target: str
    lower: tuple[str, ...]
    upper: str | None = None
    work: str | None = None
    readonly: bool = False
    flags: tuple[str, ...] = ()


class AufsMount(Record):
    source: str
    target: str
    work: str | None = None
    flags: tuple[str, ...] = ()


class LoopMount(Record):
    source: str
    target: str
    fstype: str = "auto"
    readonly: bool = False
    options: str = ""
    flags: tuple[str, ...] = ()


class FsMount(Record):
    """A filesystem mounted exactly as given: an OCI bundle's mounts (proc,
    sysfs, tmpfs, devpts, mqueue, cgroup2...), which a manifest gets from
    pflask's system mounts instead (no manifest field makes one)."""

    fstype: str
    target: str
    source: str = ""
    data: str = ""
    flags: tuple[str, ...] = ()
    fallback_bind: str | None = None  # the host's instance, where the kernel refuses a new one


Mount = BindMount | TmpMount | OverlayMount | AufsMount | LoopMount | FsMount

LINK_MODES = {"macvlan": "bridge", "ipvlan": "l2"}
"""The default `mode` of the interface types that have one."""


class Interface(Record):
    """A network interface; which fields matter depends on `type` (`mode`'s
    default too: LINK_MODES)."""

    type: str
    name: str
    host: str | None = None
    device: str | None = None
    master: str | None = None
    mode: str | None = None
    addresses: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    mtu: int | None = None
    mac: str | None = None
    up: bool = True
    host_addresses: tuple[str, ...] = ()
    host_up: bool = True


class CgroupSpec(Record):
    controllers: tuple[str, ...] = ()
    memory: int | None = None
    pids: int | str | None = None  # "max": no limit; None: the compiler's default
    cpu: float | None = None


class Security(Record):
    no_new_privileges: bool = False
    rlimits: tuple[tuple[str, int, int], ...] = ()
    masked_paths: tuple[str, ...] | None = None
    readonly_paths: tuple[str, ...] | None = None
    seccomp: str = "default"  # or "unconfined", or a profile file (absolute path)


class Hook(Record):
    """An OCI hook: a program the runtime runs on the host with the container's
    state JSON on its stdin, at `stage` (prestart, createRuntime, poststart,
    poststop)."""

    stage: str
    path: str
    args: tuple[str, ...]
    env: tuple[str, ...] = ()
    timeout: int | None = None


class Oci(Record):
    """What an OCI bundle's config.json says that a manifest cannot
    (pflask.load.oci builds it; the compiler reads it where runc's behaviour
    differs from a manifest's defaults).

    With it the container gets exactly the mounts, environment, capability
    sets and ids the bundle lists: no system mounts, no `container=`
    variable, no name claimed under pflask's state (the OCI runtime keeps
    its own), PID 1 the process itself.
    """

    # bounding, effective, permitted, inheritable, ambient (lowercase, no cap_)
    capability_sets: tuple[tuple[str, ...], ...] = ((), (), (), (), ())
    uid: int = 0
    gid: int = 0
    groups: tuple[int, ...] = ()
    umask: int | None = None
    propagation: str = "slave"
    sysctl: tuple[tuple[str, str], ...] = ()
    seccomp: str | None = None  # the linux.seccomp object, as JSON text (None: no filter)
    devices: tuple[str, ...] = ()  # devices cgroup rules allowed (none: no device policy)
    dev_defaults: bool = False  # /dev is a tmpfs: runc's standard nodes and links in it
    start_fifo: str | None = None  # create/start: PID 1 waits here before the command
    hooks: tuple[Hook, ...] = ()
    console_size: tuple[int, int] | None = None  # rows, columns of the pty (console socket)
    join: tuple[tuple[str, str], ...] = ()  # (namespace, path) joined instead of made
    cgroups_path: str | None = None  # linux.cgroupsPath as a cgroupfs path (cgroups.create)
    cpu_shares: int | None = None  # linux.resources.cpu.shares
    memory_swap: int | None = None  # linux.resources.memory.swap: memory + swap; -1 none
    oom_score_adj: int | None = None  # process.oomScoreAdj
    # linux.devices: (path, type c|b|p, major, minor, mode, uid, gid)
    device_nodes: tuple[tuple[str, str, int, int, int, int, int], ...] = ()


class Manifest(Record):
    name: str
    source: str = "<manifest>"
    root: Root = Root()
    hostname: str | None = None
    command: tuple[str, ...] | None = None
    workdir: str | None = None
    user: str | None = None
    env_clear: bool | None = None
    env_keep: tuple[str, ...] = ()
    env_set: tuple[tuple[str, str], ...] = ()
    namespaces: Namespaces = Namespaces()
    uid_map: tuple[IdRange, ...] = ()
    gid_map: tuple[IdRange, ...] = ()
    mounts: tuple[Mount, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    cgroup: CgroupSpec | None = None
    capabilities: tuple[str, ...] | None = None
    security: Security = Security()
    terminal: str = "auto"
    detach: bool = False
    pid1: str = "auto"
    stop_signal: str | None = None
    stop_timeout: float = 10.0
    oci: Oci | None = None


def parse_size(value: int | str) -> int:
    """64M -> 67108864; suffixes are powers of 1024, as tmpfs(5) reads them."""
    if isinstance(value, int):
        return value
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    suffix = value[-1:].lower()
    if suffix in units:
        return int(value[:-1]) * units[suffix]
    return int(value)


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(value)


def _given(data: dict[str, Any], *keys: str) -> dict[str, Any]:
    """The fields among `keys` that `data` gives (the record's defaults fill the rest)."""
    return {key: data[key] for key in keys if key in data}


def _flags(data: dict[str, Any]) -> tuple[str, ...]:
    return tuple(flag for flag in MOUNT_FLAGS if data.get(flag))


def _mount(data: dict[str, Any]) -> Mount:
    kind = data["type"]
    flags = _flags(data)
    if kind == "bind":
        given = _given(data, "source", "target", "readonly", "recursive", "optional")
        return BindMount(**given, flags=flags)
    if kind == "tmp":
        size = data.get("size")
        given = _given(data, "target", "mode", "uid", "gid", "readonly")
        return TmpMount(**given, size=None if size is None else parse_size(size), flags=flags)
    if kind == "overlay":
        given = _given(data, "target", "upper", "work", "readonly")
        return OverlayMount(**given, lower=_strings(data["lower"]), flags=flags)
    if kind == "aufs":
        return AufsMount(**_given(data, "source", "target", "work"), flags=flags)
    given = _given(data, "source", "target", "fstype", "readonly", "options")
    return LoopMount(**given, flags=flags)


def _interface(data: dict[str, Any]) -> Interface:
    kind = data["type"]
    return Interface(
        type=kind,
        name=data.get("name") or data.get("device") or "",
        mode=data.get("mode", LINK_MODES.get(kind)),
        addresses=_strings(data.get("address")),
        gateways=_strings(data.get("gateway")),
        host_addresses=_strings(data.get("host_address")),
        **_given(data, "host", "device", "master", "mtu", "mac", "up", "host_up"),
    )


def _rlimit(name: str, value: Any) -> tuple[str, int, int]:
    def number(v: Any) -> int:
        return -1 if v == "unlimited" else int(v)

    if isinstance(value, dict):
        return (name, number(value["soft"]), number(value["hard"]))
    return (name, number(value), number(value))


def from_data(data: dict[str, Any], source: str = "<manifest>") -> Manifest:
    """The typed Manifest of a mapping the schema has accepted."""
    root = data.get("root", {})
    env = data.get("env", {})
    ns = data.get("namespaces", {})
    idmap = data.get("idmap", {})
    cgroup = data.get("cgroup")
    security = data.get("security", {})
    stop = data.get("stop", {})
    command = data.get("command")
    caps = data.get("capabilities")
    user = data.get("user")
    masked = security.get("masked_paths")
    readonly = security.get("readonly_paths")
    given = _given(data, "hostname", "workdir", "detach", "pid1")
    if "terminal" in data:
        given["terminal"] = {True: "true", False: "false"}.get(data["terminal"], "auto")
    if "timeout" in stop:
        given["stop_timeout"] = float(stop["timeout"])
    return Manifest(
        name=data["name"],
        source=source,
        root=Root(
            **_given(root, "path", "image", "upper", "ephemeral", "readonly"),
            size=None if root.get("size") is None else parse_size(root["size"]),
        ),
        command=(
            ("/bin/sh", "-c", command)
            if isinstance(command, str)
            else None
            if command is None
            else tuple(command)
        ),
        user=None if user is None else str(user),
        env_clear=env.get("clear"),
        env_keep=tuple(env.get("keep", ())),
        env_set=tuple(env.get("set", {}).items()),
        namespaces=Namespaces(
            **_given(ns, "mount", "pid", "ipc", "uts", "cgroup", "net"),
            user=None if ns.get("user") == "auto" else ns.get("user"),  # None: decide
        ),
        uid_map=tuple(IdRange(**r) for r in idmap.get("uid", ())),
        gid_map=tuple(IdRange(**r) for r in idmap.get("gid", ())),
        mounts=tuple(_mount(m) for m in data.get("mounts", ())),
        interfaces=tuple(_interface(i) for i in data.get("network", {}).get("interfaces", ())),
        cgroup=None
        if cgroup is None
        else CgroupSpec(
            controllers=tuple(cgroup.get("controllers", ())),
            memory=None if cgroup.get("memory") is None else parse_size(cgroup["memory"]),
            pids=cgroup.get("pids"),
            cpu=cgroup.get("cpu"),
        ),
        capabilities=None if caps is None else _strings(caps),
        security=Security(
            **_given(security, "no_new_privileges", "seccomp"),
            rlimits=tuple(_rlimit(n, v) for n, v in security.get("rlimits", {}).items()),
            masked_paths=None if masked is None else tuple(masked),
            readonly_paths=None if readonly is None else tuple(readonly),
        ),
        stop_signal=stop.get("signal"),
        **given,
    )
