"""An OCI bundle's config.json (runtime-spec 1.0 to 1.2) -> the same Manifest a file gives.

The third front end, beside the manifest loader and the original flags: the
engines (podman, containerd, CRI-O) hand a runtime a bundle, a directory
holding config.json and usually the root filesystem.  Each field is either
translated into the Manifest (and so compiled by the same compiler into the
same kind of Plan) or refused with an error that names it:
`pflask: BUNDLE/config.json: linux.intelRdt: not supported`, exit 2.  A
field that asks for nothing (an empty list, string or object, false, 0) is
accepted whatever it is: engines write many such defaults.

What a manifest cannot say lives in `manifest.Oci` (exact capability sets,
numeric ids and groups, runc's /dev, sysctl, the seccomp object, the device
rules, the start FIFO); the compiler reads it where runc's behaviour is not
a manifest's default (no system mounts, the bundle's environment only).

config.json is read as a seccomp profile is: a regular file of at most
1 MiB, nested at most 32 levels, at most 10,000 values (loader.read_json).
"""

from __future__ import annotations

import os

from pflask.errors import ManifestError, shown
from pflask.load.manifest import (
    BindMount,
    CgroupSpec,
    FsMount,
    Hook,
    IdRange,
    Manifest,
    Mount,
    Namespaces,
    Oci,
    Root,
    Security,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

VERSIONS = ("1.0.", "1.1.", "1.2.")
"""The runtime-spec releases whose config.json this front end reads."""

NAMESPACES = {
    "pid": "pid",
    "network": "net",
    "mount": "mount",
    "ipc": "ipc",
    "uts": "uts",
    "user": "user",
    "cgroup": "cgroup",
}
HOOK_STAGES = (
    *("prestart", "createRuntime", "createContainer", "startContainer"),
    *("poststart", "poststop"),
)
"""The hooks pflask-oci runs: every stage of runtime-spec 1.2."""
JOINABLE = ("net", "ipc", "uts", "cgroup")
"""Namespaces a bundle may name by path.  Joining a PID namespace affects
only later children, a mount namespace replaces the root being built, and a
user namespace changes who may do the rest: those are refused."""
CAPABILITY_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")
# The resources setrlimit(2) knows (pflask.run.rlimits has their numbers).
RLIMITS = (
    *("cpu", "fsize", "data", "stack", "core", "rss", "nproc", "nofile", "memlock", "as"),
    *("locks", "sigpending", "msgqueue", "nice", "rtprio", "rttime"),
)

# Mount options: those that are mount flags, those that say what already holds
# (read-write, the flags' defaults), and the propagation a mount may ask for
# that the container's recursive slave or private root already gives (nothing
# mounted in the container reaches the host).
MOUNT_FLAGS = ("ro", "nosuid", "nodev", "noexec", "relatime", "strictatime", "noatime")
DEFAULT_OPTIONS = ("rw", "suid", "dev", "exec", "async", "atime", "diratime")
HELD_PROPAGATION = ("private", "rprivate", "slave", "rslave")
REFUSED_OPTIONS = ("shared", "rshared", "unbindable", "runbindable", "idmap", "ridmap", "remount")

# Devices runc allows every container, whatever its resources.devices say
# (the same list the compiler gives a manifest's container: compiler.DEVICE_RULES).
DEFAULT_DEVICE_RULES = (
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",
    "c 1:5 rwm",
    "c 1:7 rwm",
    "c 1:8 rwm",
    "c 1:9 rwm",
    "c 5:0 rwm",
    "c 5:1 rwm",
    "c 5:2 rwm",
    *(f"c {major}:* rwm" for major in range(136, 144)),
)

FALLBACK_BINDS = {"sysfs": "/sys", "cgroup2": "/sys/fs/cgroup"}

UINT64_MAX = 2**64 - 1
MAX_ID = 2**32 - 2


def config_path(bundle: str) -> str:
    return os.path.join(bundle, "config.json")


def load(
    bundle: str, name: str | None = None, start_fifo: str | None = None, systemd: bool = False
) -> Manifest:
    """The Manifest of the bundle at `bundle` (a directory), for a container
    called `name` (default: the bundle directory's name); `start_fifo`: the
    FIFO a create leaves the container waiting on; `systemd`: runc's global
    --systemd-cgroup, under which linux.cgroupsPath is "slice:prefix:name"."""
    from pflask.load import loader

    path = config_path(bundle)
    try:
        raw = loader.read_json(path)
    except loader.Unreadable as e:
        raise ManifestError(e.message, path) from None
    return from_data(raw, path, bundle, name, start_fifo, systemd)


def from_data(
    raw: Any,
    path: str,
    bundle: str,
    name: str | None = None,
    start_fifo: str | None = None,
    systemd: bool = False,
) -> Manifest:
    """The Manifest of a parsed config.json (`path`: where it came from, for errors)."""
    bundle = os.path.abspath(bundle)
    container = name or os.path.basename(bundle.rstrip("/")) or "oci"
    return Translator(path, bundle, systemd).manifest(raw, container, start_fifo)


def _empty(value: Any) -> bool:
    """Whether a value asks for nothing: absent, empty, false or zero."""
    return value is None or value is False or value == 0 or value in ("", [], {})


class Translator:
    """Reading one config.json: every error names the file and the field."""

    def __init__(self, path: str, bundle: str, systemd: bool = False) -> None:
        self.path = path
        self.bundle = bundle
        self.systemd = systemd

    # -- checking shapes -------------------------------------------------------------

    def error(self, field: str, message: str) -> ManifestError:
        return ManifestError(message, self.path, field=field)

    def unsupported(self, field: str, why: str = "") -> ManifestError:
        return self.error(field, "not supported" + (f" ({why})" if why else ""))

    def fields(
        self, value: Any, field: str, known: tuple[str, ...], accepted: tuple[str, ...] = ()
    ) -> dict[str, Any]:
        """`value` as an object whose keys are `known` (translated) or
        `accepted` (metadata with no effect on the container); any other key
        is refused unless it asks for nothing."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.error(field, f"must be an object, not {type(value).__name__}")
        for key, item in value.items():
            if key not in known and key not in accepted and not _empty(item):
                raise self.unsupported(f"{field}.{key}" if field else key)
        return value

    def string(self, value: Any, field: str, absolute: bool = False) -> str:
        if not isinstance(value, str) or "\0" in value:
            raise self.error(field, f"must be a string, not {shown(value)}")
        if absolute and not value.startswith("/"):
            raise self.error(field, f"must be an absolute path, not {shown(value)}")
        if len(value) > 4096:
            raise self.error(field, "longer than 4096 characters")
        return value

    def strings(self, value: Any, field: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(field, "must be a list of strings")
        return [self.string(item, f"{field}[{i}]") for i, item in enumerate(value)]

    def integer(self, value: Any, field: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(field, f"must be an integer from {low} to {high}, not {shown(value)}")
        return value

    def items(self, value: Any, field: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(field, "must be a list")
        return value

    # -- the translation ---------------------------------------------------------------

    def manifest(self, raw: Any, name: str, start_fifo: str | None) -> Manifest:
        top = self.fields(
            raw,
            "",
            ("ociVersion", "root", "mounts", "process", "hostname", "linux", "hooks"),
            accepted=("annotations",),
        )
        version = top.get("ociVersion")
        if not isinstance(version, str) or not version.startswith(VERSIONS):
            raise self.error(
                "ociVersion", f"{shown(version)}: pflask reads runtime-spec 1.0, 1.1 and 1.2"
            )
        hooks = self.hooks(top.get("hooks"))
        process = self.fields(
            top.get("process"),
            "process",
            (
                "terminal",
                "consoleSize",
                "user",
                "args",
                "env",
                "cwd",
                "capabilities",
                "rlimits",
                "noNewPrivileges",
                "oomScoreAdj",
            ),
        )
        if not process:
            raise self.error("process", "required: pflask-oci runs a process")
        linux = self.fields(
            top.get("linux"),
            "linux",
            (
                "namespaces",
                "uidMappings",
                "gidMappings",
                "resources",
                "cgroupsPath",
                "maskedPaths",
                "readonlyPaths",
                "seccomp",
                "sysctl",
                "rootfsPropagation",
                "devices",
            ),
        )
        namespaces, wanted_user, joined = self.namespaces(linux.get("namespaces"))
        mounts, dev_tmpfs = self.mounts(top.get("mounts"))
        args = self.strings(process.get("args"), "process.args")
        if not args:
            raise self.error("process.args", "required: at least the program")
        cwd = self.string(process.get("cwd", "/"), "process.cwd", absolute=True)
        terminal = process.get("terminal", False)
        if not isinstance(terminal, bool):
            raise self.error("process.terminal", "must be true or false")
        console_size = None
        if process.get("consoleSize") is not None:
            if not terminal:
                raise self.error("process.consoleSize", "only with process.terminal: true")
            size = self.fields(process["consoleSize"], "process.consoleSize", ("height", "width"))
            console_size = (
                self.integer(size.get("height", 0), "process.consoleSize.height", 0, 65535),
                self.integer(size.get("width", 0), "process.consoleSize.width", 0, 65535),
            )
        hostname = top.get("hostname")
        if hostname is not None and hostname != "":
            hostname = self.string(hostname, "hostname")
            if len(hostname) > 64:
                raise self.error("hostname", "longer than 64 characters")
            if "uts" not in namespaces and "uts" not in dict(joined):
                raise self.error("hostname", "needs a uts namespace of its own (linux.namespaces)")
        else:
            hostname = None
        root = self.fields(top.get("root"), "root", ("path", "readonly"))
        if "path" not in root:
            raise self.error("root.path", "required: the container's root directory")
        root_path = os.path.join(self.bundle, self.string(root["path"], "root.path"))
        nnp = process.get("noNewPrivileges", False)
        if not isinstance(nnp, bool):
            raise self.error("process.noNewPrivileges", "must be true or false")
        uid_map = self.id_map(linux.get("uidMappings"), "linux.uidMappings")
        gid_map = self.id_map(linux.get("gidMappings"), "linux.gidMappings")
        if (uid_map or gid_map) and not wanted_user:
            raise self.error("linux.uidMappings", "needs a user namespace (linux.namespaces)")
        resources = linux.get("resources")
        cpu_shares, memory_swap = self.shares_and_swap(resources)
        oom = process.get("oomScoreAdj")
        return Manifest(
            name=name,
            source=self.path,
            root=Root(path=os.path.normpath(root_path), readonly=self.flag(root, "readonly")),
            hostname=hostname,
            command=tuple(args),
            workdir=cwd,
            env_clear=True,
            env_set=self.env(process.get("env")),
            namespaces=Namespaces(
                mount="mount" in namespaces,
                pid="pid" in namespaces,
                ipc="ipc" in namespaces,
                uts="uts" in namespaces,
                cgroup="cgroup" in namespaces,
                net="net" in namespaces,
                user=wanted_user,
            ),
            uid_map=uid_map,
            gid_map=gid_map,
            mounts=mounts,
            cgroup=self.resources(resources),
            security=Security(
                no_new_privileges=nnp,
                rlimits=self.rlimits(process.get("rlimits")),
                masked_paths=tuple(self.paths(linux.get("maskedPaths"), "linux.maskedPaths")),
                readonly_paths=tuple(self.paths(linux.get("readonlyPaths"), "linux.readonlyPaths")),
            ),
            terminal="true" if terminal else "false",
            pid1="command",
            oci=Oci(
                capability_sets=self.capabilities(process.get("capabilities")),
                **self.user(process.get("user")),
                propagation=self.propagation(linux.get("rootfsPropagation")),
                sysctl=self.sysctl(linux.get("sysctl"), namespaces | set(dict(joined))),
                join=joined,
                seccomp=self.seccomp(linux.get("seccomp")),
                devices=self.devices(linux.get("resources"), linux.get("devices")),
                dev_defaults=dev_tmpfs,
                start_fifo=start_fifo,
                hooks=hooks,
                console_size=console_size,
                cgroups_path=self.cgroups_path(linux.get("cgroupsPath")),
                cpu_shares=cpu_shares,
                memory_swap=memory_swap,
                oom_score_adj=None
                if oom is None
                else self.integer(oom, "process.oomScoreAdj", -1000, 1000),
                device_nodes=self.device_nodes(linux.get("devices")),
            ),
        )

    def flag(self, data: dict[str, Any], key: str) -> bool:
        value = data.get(key, False)
        if not isinstance(value, bool):
            raise self.error(key, "must be true or false")
        return value

    def hooks(self, value: Any) -> tuple[Hook, ...]:
        """The hooks: createRuntime and prestart on the host during create
        (the container's namespaces made, before its root is entered),
        createContainer in the container just before its root is entered,
        startContainer in the container after start, just before the
        process; poststart (after start) and poststop (at delete) on the host."""
        data = self.fields(value, "hooks", HOOK_STAGES)
        found = []
        for stage in HOOK_STAGES:
            for index, item in enumerate(self.items(data.get(stage), f"hooks.{stage}")):
                where = f"hooks.{stage}[{index}]"
                hook = self.fields(item, where, ("path", "args", "env", "timeout"))
                path = self.string(hook.get("path"), f"{where}.path", absolute=True)
                args = self.strings(hook.get("args"), f"{where}.args") or [path]
                env = self.strings(hook.get("env"), f"{where}.env")
                timeout = hook.get("timeout")
                if timeout is not None:
                    timeout = self.integer(timeout, f"{where}.timeout", 1, 86400)
                found.append(
                    Hook(stage=stage, path=path, args=tuple(args), env=tuple(env), timeout=timeout)
                )
        return tuple(found)

    def namespaces(self, value: Any) -> tuple[set[str], bool, tuple[tuple[str, str], ...]]:
        """The namespaces the container gets: new ones (their names), whether a
        user namespace is among them, and those it joins by path (a pod's
        network, IPC and UTS namespaces, as a CRI runtime is asked)."""
        names: set[str] = set()
        joined: list[tuple[str, str]] = []
        for index, item in enumerate(self.items(value, "linux.namespaces")):
            where = f"linux.namespaces[{index}]"
            data = self.fields(item, where, ("type", "path"))
            kind = data.get("type")
            if kind not in NAMESPACES:
                if kind == "time":
                    raise self.unsupported(f"{where}.type", "time namespaces")
                raise self.error(f"{where}.type", f"unknown namespace {shown(kind)}")
            if data.get("path"):
                path = self.string(data["path"], f"{where}.path", absolute=True)
                if NAMESPACES[kind] not in JOINABLE:
                    raise self.unsupported(
                        f"{where}.path",
                        f"joining a {kind} namespace; pflask joins "
                        + ", ".join(k for k, v in NAMESPACES.items() if v in JOINABLE),
                    )
                joined.append((NAMESPACES[kind], path))
                continue
            names.add(NAMESPACES[kind])
        return names, "user" in names, tuple(joined)

    def id_map(self, value: Any, field: str) -> tuple[IdRange, ...]:
        ranges = []
        for index, item in enumerate(self.items(value, field)):
            where = f"{field}[{index}]"
            data = self.fields(item, where, ("containerID", "hostID", "size"))
            ranges.append(
                IdRange(
                    inside=self.integer(data.get("containerID"), f"{where}.containerID", 0, MAX_ID),
                    outside=self.integer(data.get("hostID"), f"{where}.hostID", 0, MAX_ID),
                    count=self.integer(data.get("size"), f"{where}.size", 1, MAX_ID + 1),
                )
            )
        return tuple(ranges)

    def mounts(self, value: Any) -> tuple[tuple[Mount, ...], bool]:
        """The bundle's mounts, in order; and whether /dev is a tmpfs of its own
        (runc then puts the standard nodes and links in it)."""
        result: list[Mount] = []
        dev_tmpfs = False
        for index, item in enumerate(self.items(value, "mounts")):
            where = f"mounts[{index}]"
            data = self.fields(item, where, ("destination", "type", "source", "options"))
            target = self.string(data.get("destination"), f"{where}.destination")
            target = target if target.startswith("/") else "/" + target
            kind = self.string(data.get("type", ""), f"{where}.type")
            source = self.string(data.get("source", ""), f"{where}.source")
            options = self.strings(data.get("options"), f"{where}.options")
            flags: list[str] = []
            extra: list[str] = []
            bind = kind == "bind" or "bind" in options or "rbind" in options
            for position, option in enumerate(options):
                if option in MOUNT_FLAGS:
                    flags.append(option)
                elif option in (*DEFAULT_OPTIONS, *HELD_PROPAGATION, "bind", "rbind"):
                    continue
                elif option in REFUSED_OPTIONS or bind:
                    raise self.unsupported(f"{where}.options[{position}]", option)
                else:
                    extra.append(option)
            if bind:
                if not source:
                    raise self.error(f"{where}.source", "required for a bind mount")
                result.append(
                    BindMount(
                        source=os.path.normpath(os.path.join(self.bundle, source)),
                        target=target,
                        readonly="ro" in flags,
                        recursive="rbind" in options,
                        flags=tuple(f for f in flags if f in ("nosuid", "nodev", "noexec")),
                    )
                )
                continue
            if not kind:
                raise self.error(f"{where}.type", "required (proc, tmpfs, sysfs, ... or bind)")
            if kind == "cgroup":
                # cgroup v1 hierarchies are the host's to share; the container
                # gets the cgroup2 tree (its own, with a cgroup namespace).
                kind = "cgroup2"
            if kind == "tmpfs" and os.path.normpath(target) == "/dev":
                dev_tmpfs = True
            result.append(
                FsMount(
                    fstype=kind,
                    target=target,
                    source=source,
                    data=",".join(extra),
                    flags=tuple(dict.fromkeys(flags)),
                    # In a user namespace the kernel refuses sysfs without a
                    # network namespace and cgroup2 without a cgroup one of
                    # the container's own; runc then binds the host's, and so
                    # does pflask (read-only when asked).
                    fallback_bind=FALLBACK_BINDS.get(kind),
                )
            )
        return tuple(result), dev_tmpfs

    def env(self, value: Any) -> tuple[tuple[str, str], ...]:
        pairs: dict[str, str] = {}
        for index, item in enumerate(self.strings(value, "process.env")):
            key, equals, text = item.partition("=")
            if not equals or not key:
                raise self.error(f"process.env[{index}]", f"{shown(item)} is not NAME=VALUE")
            pairs[key] = text
        return tuple(pairs.items())

    def user(self, value: Any) -> dict[str, Any]:
        data = self.fields(value, "process.user", ("uid", "gid", "additionalGids", "umask"))
        groups = self.items(data.get("additionalGids"), "process.user.additionalGids")
        umask = data.get("umask")
        return {
            "uid": self.integer(data.get("uid", 0), "process.user.uid", 0, MAX_ID),
            "gid": self.integer(data.get("gid", 0), "process.user.gid", 0, MAX_ID),
            "groups": tuple(
                self.integer(g, f"process.user.additionalGids[{i}]", 0, MAX_ID)
                for i, g in enumerate(groups)
            ),
            "umask": None if umask is None else self.integer(umask, "process.user.umask", 0, 0o777),
        }

    def capabilities(self, value: Any) -> tuple[tuple[str, ...], ...]:
        from pflask.kernel import capabilities

        data = self.fields(value, "process.capabilities", CAPABILITY_SETS)
        sets = []
        for name in CAPABILITY_SETS:
            field = f"process.capabilities.{name}"
            kept = []
            for index, cap in enumerate(self.strings(data.get(name), field)):
                short = cap.lower().removeprefix("cap_")
                if short not in capabilities.ALL:
                    raise self.error(f"{field}[{index}]", f"unknown capability {shown(cap)}")
                kept.append(short)
            sets.append(capabilities.ordered(kept))
        return tuple(sets)

    def rlimits(self, value: Any) -> tuple[tuple[str, int, int], ...]:
        limits = []
        for index, item in enumerate(self.items(value, "process.rlimits")):
            where = f"process.rlimits[{index}]"
            data = self.fields(item, where, ("type", "soft", "hard"))
            kind = data.get("type")
            name = kind.lower().removeprefix("rlimit_") if isinstance(kind, str) else ""
            if name not in RLIMITS:
                raise self.error(f"{where}.type", f"unknown resource {shown(kind)}")
            soft, hard = (
                self.integer(data.get(key), f"{where}.{key}", 0, UINT64_MAX)
                for key in ("soft", "hard")
            )
            limits.append((name, -1 if soft >= 2**63 else soft, -1 if hard >= 2**63 else hard))
        return tuple(limits)

    def paths(self, value: Any, field: str) -> list[str]:
        return [
            self.string(item, f"{field}[{i}]", absolute=True)
            for i, item in enumerate(self.strings(value, field))
        ]

    def propagation(self, value: Any) -> str:
        if value in (None, "", "slave", "rslave"):
            return "slave"
        if value in ("private", "rprivate"):
            return "private"
        raise self.unsupported("linux.rootfsPropagation", shown(value))

    def sysctl(self, value: Any, namespaces: set[str]) -> tuple[tuple[str, str], ...]:
        data = self.fields(value, "linux.sysctl", tuple(value or ()))
        settings = []
        for key, item in data.items():
            field = f"linux.sysctl.{key}"
            text = self.string(item, field)
            parts = key.replace("/", ".").split(".")
            if not all(parts) or ".." in key:
                raise self.error(field, "not a kernel parameter's name")
            # Only the parameters of namespaces the container owns: any other
            # would change the host's kernel.
            owned = (
                (key.startswith("net.") and "net" in namespaces)
                or (key in ("kernel.hostname", "kernel.domainname") and "uts" in namespaces)
                or (
                    (
                        key.startswith("fs.mqueue.")
                        or key.startswith("kernel.msg")
                        or key.startswith("kernel.sem")
                        or key.startswith("kernel.shm")
                    )
                    and "ipc" in namespaces
                )
            )
            if not owned:
                raise self.error(field, "not a parameter of a namespace the container owns")
            settings.append((".".join(parts), text))
        return tuple(settings)

    def seccomp(self, value: Any) -> str | None:
        import json

        if value is None:
            return None
        data = self.fields(
            value,
            "linux.seccomp",
            ("defaultAction", "defaultErrnoRet", "architectures", "syscalls"),
        )
        profile = {key: data[key] for key in data if not _empty(data[key]) or key == "syscalls"}
        if "defaultAction" not in profile:
            raise self.error("linux.seccomp.defaultAction", "required")
        return json.dumps(profile, sort_keys=True)

    def resources(self, value: Any) -> CgroupSpec:
        """The container's cgroup: runc makes one for every container."""
        data = self.fields(value, "linux.resources", ("memory", "cpu", "pids", "devices"))
        memory = self.fields(data.get("memory"), "linux.resources.memory", ("limit", "swap"))
        cpu = self.fields(data.get("cpu"), "linux.resources.cpu", ("quota", "period", "shares"))
        pids = self.fields(data.get("pids"), "linux.resources.pids", ("limit",))
        limit = memory.get("limit")
        memory_bytes = None
        if limit is not None and limit != -1:
            memory_bytes = self.integer(limit, "linux.resources.memory.limit", 1, 2**63 - 1)
        cpus = None
        quota = cpu.get("quota")
        if quota is not None and quota > 0:
            quota = self.integer(quota, "linux.resources.cpu.quota", 1, 2**63 - 1)
            period = self.integer(
                cpu.get("period", 100000), "linux.resources.cpu.period", 1000, 1000000
            )
            cpus = quota / period
        pid_limit: int | str = "max"
        if pids.get("limit") is not None and pids["limit"] > 0:
            pid_limit = self.integer(pids["limit"], "linux.resources.pids.limit", 1, 4194304)
        return CgroupSpec(memory=memory_bytes, cpu=cpus, pids=pid_limit)

    def devices(self, resources: Any, nodes: Any) -> tuple[str, ...]:
        """The devices cgroup rules: runc's defaults and what resources.devices
        allows after denying all (the form the engines write)."""
        data = resources if isinstance(resources, dict) else {}
        rules = list(DEFAULT_DEVICE_RULES)
        # A node the bundle lists is one its process may use (as runc allows it).
        rules += [f"{n[1]} {n[2]}:{n[3]} rwm" for n in self.device_nodes(nodes) if n[1] != "p"]
        for index, item in enumerate(self.items(data.get("devices"), "linux.resources.devices")):
            where = f"linux.resources.devices[{index}]"
            rule = self.fields(item, where, ("allow", "type", "major", "minor", "access"))
            allow = rule.get("allow")
            kind = rule.get("type") or "a"
            access = rule.get("access") or "rwm"
            if (
                not isinstance(allow, bool)
                or kind not in ("a", "b", "c")
                or set(access) - set("rwm")
            ):
                raise self.error(where, "allow (true/false), type a|b|c, access of r, w, m")
            whole = kind == "a" and rule.get("major") is None and rule.get("minor") is None
            if not allow:
                if index == 0 and whole and set(access) == set("rwm"):
                    continue  # deny all: the policy's own start
                raise self.unsupported(where, "a deny rule other than the first, deny-all one")
            major, minor = (
                "*"
                if rule.get(key) in (None, -1)
                else str(self.integer(rule[key], f"{where}.{key}", 0, 2**32))
                for key in ("major", "minor")
            )
            rules.append(f"{kind} {major}:{minor} {access}")
        return tuple(dict.fromkeys(rules))

    def shares_and_swap(self, value: Any) -> tuple[int | None, int | None]:
        """linux.resources.cpu.shares and memory.swap (checked by `resources`)."""
        data: dict[str, Any] = value if isinstance(value, dict) else {}
        cpu: dict[str, Any] = data["cpu"] if isinstance(data.get("cpu"), dict) else {}
        memory: dict[str, Any] = data["memory"] if isinstance(data.get("memory"), dict) else {}
        shares: int | None = cpu.get("shares")
        if shares is not None and shares != 0:
            shares = self.integer(shares, "linux.resources.cpu.shares", 2, 262144)
        else:
            shares = None
        swap: int | None = memory.get("swap")
        if swap is not None and swap != 0:
            if swap != -1:
                swap = self.integer(swap, "linux.resources.memory.swap", 1, 2**63 - 1)
                limit = memory.get("limit")
                if isinstance(limit, int) and limit > 0 and swap < limit:
                    raise self.error(
                        "linux.resources.memory.swap",
                        f"{swap} is memory plus swap: at least memory.limit ({limit})",
                    )
        else:
            swap = None
        return shares, swap

    def cgroups_path(self, value: Any) -> str | None:
        """linux.cgroupsPath as a cgroupfs path: "/a/b" from the top of each
        hierarchy, "a/b" below the runtime's own cgroup (`..` cannot climb out,
        as runc cleans it).  With --systemd-cgroup it is "slice:prefix:name",
        the unit prefix-name.scope in its slice, each slice nested in its
        parents as systemd lays them out (a-b.slice in a.slice); pflask makes
        these directories itself (it asks no systemd for a unit)."""
        field = "linux.cgroupsPath"
        if value is None or value == "":
            return None
        text = self.string(value, field)
        if self.systemd:
            parts = text.split(":")
            if len(parts) != 3 or not parts[2]:
                raise self.error(field, f"{shown(text)}: --systemd-cgroup wants slice:prefix:name")
            slice_, prefix, name = parts
            unit = name if name.endswith(".slice") else (f"{prefix}-" if prefix else "") + name
            unit += "" if name.endswith(".slice") else ".scope"
            text = self.slice_path(slice_ or "system.slice") + "/" + unit
            if "/" in name or "/" in prefix:
                raise self.error(field, f"{shown(text)}: a unit name has no /")
        absolute = text.startswith("/")
        clean = os.path.normpath("/" + text.lstrip("/"))
        if clean == "/":
            raise self.error(field, f"{shown(text)}: names no group below its parent")
        return clean if absolute else clean[1:]

    def slice_path(self, name: str) -> str:
        """A systemd slice's directory: a-b.slice -> /a.slice/a-b.slice."""
        field = "linux.cgroupsPath"
        if name == "-.slice":
            return ""
        stem = name.removesuffix(".slice")
        if (
            stem == name
            or not stem
            or "/" in stem
            or "--" in stem
            or stem.startswith("-")
            or stem.endswith("-")
        ):
            raise self.error(field, f"{shown(name)}: not a systemd slice's name")
        words = stem.split("-")
        return "".join("/" + "-".join(words[: i + 1]) + ".slice" for i in range(len(words)))

    def device_nodes(self, value: Any) -> tuple[tuple[str, str, int, int, int, int, int], ...]:
        """linux.devices: the nodes made in the container (path, type, major,
        minor, mode, uid, gid); a mode or owner left out is runc's 0666 root:root."""
        nodes = []
        for index, item in enumerate(self.items(value, "linux.devices")):
            where = f"linux.devices[{index}]"
            data = self.fields(
                item, where, ("path", "type", "major", "minor", "fileMode", "uid", "gid")
            )
            path = os.path.normpath(self.string(data.get("path"), f"{where}.path", absolute=True))
            if not path.startswith("/dev/") or path.startswith("/dev/pts/"):
                raise self.error(f"{where}.path", f"{shown(path)}: a node in /dev (not /dev/pts)")
            kind = data.get("type")
            if kind == "u":
                kind = "c"  # unbuffered character device: a character device
            if kind not in ("c", "b", "p"):
                raise self.error(f"{where}.type", f"{shown(kind)}: c, u, b or p")
            major, minor = (0, 0)
            if kind != "p":
                major = self.integer(data.get("major"), f"{where}.major", 0, 4095)
                minor = self.integer(data.get("minor"), f"{where}.minor", 0, 2**20 - 1)
            mode = data.get("fileMode")
            mode = 0o666 if mode is None else self.integer(mode, f"{where}.fileMode", 0, 0o7777)
            uid = self.integer(data.get("uid", 0), f"{where}.uid", 0, MAX_ID)
            gid = self.integer(data.get("gid", 0), f"{where}.gid", 0, MAX_ID)
            nodes.append((path, kind, major, minor, mode & 0o777, uid, gid))
        return tuple(nodes)
