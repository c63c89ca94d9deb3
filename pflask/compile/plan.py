"""The plan: the ordered, immutable steps that build and run one container.

The compiler makes every decision and records it here; the supervisor and the
container only carry the steps out.  Each step says where it runs:

- "host": in the supervisor, in the host's namespaces (uid/gid maps, the
  name's claim, cgroups, network links, machined registration);
- "container": in the container's processes, in order (namespaces, mounts,
  pivot_root, hostname, addresses, limits, capabilities, environment, exec).

Both sides walk the same list, so the list is also the exchange between
them: the host steps before an AwaitHost step are one phase, done before the
supervisor sends the "go" that releases it; a Fork step is where the
supervisor adopts the container's PID 1; host steps after the last AwaitHost
run while the command starts (pflask.run.supervisor, pflask.run.protocol).

Field values are plain scalars and tuples, so a plan converts losslessly to
JSON (`pflask plan --json`) and to `marshal` (the start-up cache).
"""

from __future__ import annotations

from pflask.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar

HOST = "host"
CONTAINER = "container"


class Step(Record):
    """One thing the supervisor or the container does; `describe` is what `pflask plan` prints."""

    kind: ClassVar[str] = ""
    where: ClassVar[str] = CONTAINER

    def describe(self) -> str:
        raise NotImplementedError


def _flags(flags: tuple[str, ...]) -> str:
    return f" ({','.join(flags)})" if flags else ""


def _size(value: int) -> str:
    """67108864 -> 64M, as a user would have written it."""
    for suffix, unit in (("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)


def _argv(argv: tuple[str, ...]) -> str:
    """argv as a shell would read it (shlex.join, without importing shlex and
    re: this also runs after pivot_root, where pflask's imports are out of reach)."""
    safe = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789@%+=:,./-_")
    return " ".join(
        arg if arg and set(arg) <= safe else "'" + arg.replace("'", "'\"'\"'") + "'" for arg in argv
    )


# --- processes and namespaces -------------------------------------------------


def _map(ranges: tuple[tuple[int, int, int], ...]) -> str:
    return ", ".join(f"{i}->{o} x{c}" for i, o, c in ranges)


class IdmapLayers(Step):
    """Root's image store seen through the container's id map, before its
    user namespace exists (only the host's root may idmap a host directory).

    Root's store keeps each layer's own ids; a user namespace that moves them
    (0 -> 100000) would show every file as nobody's, and the container's
    root (a moved id) could not even traverse the store (0700, root's).  So
    the container's first process, still root on the host, takes a mount
    namespace of its own (a slave of the host's: nothing shows there), and
    mounts over the store's directory an idmapped clone of itself
    (mount_setattr(2), MOUNT_ATTR_IDMAP, with a user namespace mapped as the
    container's).  The mount namespace the next Unshare makes inherits it;
    the image root's overlay stacks layers seen through it.
    """

    kind = "idmap_layers"
    store: str
    uid_ranges: tuple[tuple[int, int, int], ...]
    gid_ranges: tuple[tuple[int, int, int], ...]

    def describe(self) -> str:
        return (
            f"idmapped mount of the image store {self.store} over itself "
            f"(uid {_map(self.uid_ranges)}; gid {_map(self.gid_ranges)}), "
            "in a mount namespace of its own"
        )


class Unshare(Step):
    """Create namespaces.  The first Unshare starts the container's process.

    `pid1`: the supervisor unshares the PID namespace itself before it forks,
    so the container's first process is PID 1 of it at once, with no process
    in between (possible when no user namespace must own the PID namespace).
    """

    kind = "unshare"
    namespaces: tuple[str, ...]
    pid1: bool = False

    def describe(self) -> str:
        names = ", ".join(self.namespaces)
        if self.pid1:
            return f"start PID 1 of the new PID namespace; unshare namespaces: {names}"
        return f"unshare namespaces: {names}"


class JoinNamespaces(Step):
    """setns(2) into existing namespaces named by path (an OCI bundle's, e.g. a
    pod's network namespace), right after the container's own are made."""

    kind = "join_namespaces"
    paths: tuple[tuple[str, str], ...]  # (namespace, path)

    def describe(self) -> str:
        return "join namespaces: " + ", ".join(f"{n} {path}" for n, path in self.paths)


class UidMap(Step):
    """Write /proc/PID/uid_map; through newuidmap when ranges need privilege."""

    kind = "uid_map"
    where = HOST
    ranges: tuple[tuple[int, int, int], ...]
    helper: bool

    def describe(self) -> str:
        how = "newuidmap" if self.helper else "uid_map"
        return f"{how}: " + ", ".join(f"{i}->{o} x{c}" for i, o, c in self.ranges)


class GidMap(Step):
    """Write /proc/PID/gid_map (setgroups denied when writing it ourselves)."""

    kind = "gid_map"
    where = HOST
    ranges: tuple[tuple[int, int, int], ...]
    helper: bool
    setgroups: str = "allow"

    def describe(self) -> str:
        how = "newgidmap" if self.helper else "gid_map"
        text = f"{how}: " + ", ".join(f"{i}->{o} x{c}" for i, o, c in self.ranges)
        return text + ("" if self.setgroups == "allow" else ", setgroups deny")


class Cgroup(Step):
    """Make a cgroup (per controller on v1), set its limits, move the container in."""

    kind = "cgroup"
    where = HOST
    name: str
    controllers: tuple[str, ...] = ()
    memory: int | None = None
    pids: int | None = None
    cpu: float | None = None
    # Without `pids`: the limit set where the host offers the pids controller
    # to this group (skipped, not an error, where it does not).
    default_pids: int | None = None
    devices: tuple[str, ...] = ()  # devices cgroup rules to allow; none: no device policy
    group: str | None = None  # a fixed group name (OCI: pflask_oci-ID); else group_name()
    path: str | None = None  # OCI linux.cgroupsPath: "/a/b" from the top, "a/b" from ours
    shares: int | None = None  # v1 cpu.shares (v2: cpu.weight, converted)
    swap: int | None = None  # memory + swap, bytes; -1: unlimited

    def describe(self) -> str:
        limits = [f"at {self.path}"] if self.path is not None else []
        limits += [f"memory={_size(self.memory)}"] if self.memory is not None else []
        if self.swap is not None:
            swap = "unlimited" if self.swap == -1 else _size(self.swap)
            limits.append(f"memory+swap={swap}")
        limits += [f"cpu.shares={self.shares}"] if self.shares is not None else []
        limits += [f"pids={self.pids}"] if self.pids is not None else []
        if self.pids is None and self.default_pids is not None:
            limits.append(f"pids={self.default_pids} (default, where the pids controller is)")
        limits += [f"cpu={self.cpu:g} CPUs"] if self.cpu is not None else []
        limits += [f"devices: all denied but {len(self.devices)} rules"] if self.devices else []
        what = ", ".join([*self.controllers, *limits]) or "no limits"
        return f"cgroup for {self.name}, container moved in: {what}"


class BecomeRoot(Step):
    """Take uid and gid 0 of the new user namespace once its maps are written.

    The process that made the namespace keeps its host ids; when those are not
    in the map (root mapping 0 to 100000, say) it would be "nobody" inside,
    and files it creates would get ids the namespace cannot express.
    """

    kind = "become_root"

    def describe(self) -> str:
        return "become uid/gid 0 of the user namespace"


class Fork(Step):
    """Fork: the following steps run in the child, PID 1 of the new PID namespace."""

    kind = "fork"

    def describe(self) -> str:
        return "fork PID 1 of the new PID namespace"


AFTER_HOST_STEPS = "host steps"
AFTER_NAME = "name claimed"


class ClaimName(Step):
    """Record the container under its name (pflask.run.state), or stop: the name is in use.

    Before any host step that makes something on the host (a second
    container of a name is told so, not that a link exists), and always
    before the AwaitHost step that lets the command start.
    """

    kind = "claim_name"
    where = HOST
    name: str

    def describe(self) -> str:
        return f"claim the name {self.name} (refused if a running container has it)"


class AwaitHost(Step):
    """Wait for the supervisor's "go": the host steps listed since the
    previous AwaitHost (or the start) are done.

    Right after the first Unshare when host steps (id maps, cgroups, links)
    must come before the container's own steps (after="host steps"); just
    before the command when the name is claimed while the container builds
    its mounts (after="name claimed"): then nobody sleeps waiting for the
    other in between, the "go" is in the pipe by the time it is read.
    """

    kind = "await_host"
    after: str = AFTER_NAME  # or AFTER_HOST_STEPS

    def describe(self) -> str:
        return f"wait for the supervisor ({self.after})"


class RegisterMachine(Step):
    """Register the container with systemd-machined where the host runs it.

    A host step that needs the container's PID 1 (machined's "leader"): it
    comes after the Fork, and after the last AwaitHost, so the command does
    not wait for busctl; the registration is withdrawn when the container ends.
    """

    kind = "register_machine"
    where = HOST
    name: str
    root: str | None = None

    def describe(self) -> str:
        return f"register {self.name} with systemd-machined, if the host runs it"


class Reaper(Step):
    """Fork the command; PID 1 stays behind to reap zombies and forward signals."""

    kind = "reaper"

    def describe(self) -> str:
        return "the command runs as PID 2; PID 1 reaps zombies and forwards signals"


# --- network ------------------------------------------------------------------


class Veth(Step):
    """A veth pair: `host` stays on the host, `name` goes into the container."""

    kind = "veth"
    where = HOST
    host: str
    name: str
    host_addresses: tuple[str, ...] = ()
    host_up: bool = True

    def describe(self) -> str:
        addr = f" {', '.join(self.host_addresses)}" if self.host_addresses else ""
        return f"veth {self.host}{addr} (host) <-> {self.name} (container)"


class MoveLink(Step):
    """Move an existing host link into the container and rename it."""

    kind = "move_link"
    where = HOST
    device: str
    name: str

    def describe(self) -> str:
        return f"move host link {self.device} into the container as {self.name}"


class MacvlanLink(Step):
    """A macvlan (or ipvlan) link on a host master, created in the container."""

    kind = "macvlan"
    where = HOST
    master: str
    name: str
    mode: str
    link_kind: str = "macvlan"

    def describe(self) -> str:
        return f"{self.link_kind} {self.name} on {self.master} (mode {self.mode})"


class Loopback(Step):
    """Bring `lo` up inside the new network namespace."""

    kind = "loopback"

    def describe(self) -> str:
        return "bring lo up"


class ConfigureLink(Step):
    """Addresses, MTU, MAC, state and default routes of a container link."""

    kind = "configure_link"
    name: str
    addresses: tuple[str, ...] = ()
    gateways: tuple[str, ...] = ()
    mtu: int | None = None
    mac: str | None = None
    up: bool = True

    def describe(self) -> str:
        parts = [*self.addresses]
        if self.mtu:
            parts.append(f"mtu {self.mtu}")
        if self.mac:
            parts.append(f"mac {self.mac}")
        parts.extend(f"default via {g}" for g in self.gateways)
        parts.append("up" if self.up else "down")
        return f"configure {self.name}: {', '.join(parts)}"


# --- mounts -------------------------------------------------------------------


class Propagation(Step):
    """Stop mount events flowing back to the host (recursive private or slave)."""

    kind = "propagation"
    mode: str = "private"

    def describe(self) -> str:
        return f"make / recursively {self.mode}"


class BindRoot(Step):
    """Bind the root directory onto itself so it is a mount point for pivot_root."""

    kind = "bind_root"
    path: str
    flags: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"bind root {self.path}{_flags(self.flags)}"


class EphemeralRoot(Step):
    """An overlay over the root directory with a tmpfs upper layer at the root's place."""

    kind = "ephemeral_root"
    path: str
    tmpfs: str = ""  # the upper layer's tmpfs options (its size bound)
    flags: tuple[str, ...] = ()

    def describe(self) -> str:
        bound = f" ({self.tmpfs})" if self.tmpfs else ""
        return (
            f"ephemeral root: overlay over {self.path}, changes on a tmpfs{bound}"
            f"{_flags(self.flags)}"
        )


class ImageRoot(Step):
    """An image's root: an overlay of its layer directories (read-only lowers,
    top first) mounted over the top layer's directory `path`, the changes on
    a private tmpfs or, with `upper`, in that directory's upper/ (work/ beside
    it).  `userxattr`: mounted in a user namespace, where overlayfs reads the
    user.overlay.* xattrs the store wrote for it."""

    kind = "image_root"
    path: str
    layers: tuple[str, ...]
    digest: str = ""
    upper: str | None = None
    tmpfs: str = ""
    userxattr: bool = False
    flags: tuple[str, ...] = ()

    def describe(self) -> str:
        changes = (
            f"in {self.upper}"
            if self.upper
            else "on a tmpfs" + (f" ({self.tmpfs})" if self.tmpfs else "")
        )
        return (
            f"image root {self.digest}: overlay of {len(self.layers)} layers at {self.path}, "
            f"changes {changes}{' (userxattr)' if self.userxattr else ''}{_flags(self.flags)}"
        )


class DiskRoot(Step):
    """A raw filesystem image as the root: attached to a loop device
    read-only, mounted on `path`, and an overlay with a tmpfs upper above it."""

    kind = "disk_root"
    path: str
    source: str
    tmpfs: str = ""
    flags: tuple[str, ...] = ()

    def describe(self) -> str:
        bound = f" ({self.tmpfs})" if self.tmpfs else ""
        return (
            f"disk root: loop {self.source} (ro) on {self.path}, changes on a tmpfs{bound}"
            f"{_flags(self.flags)}"
        )


class MountFs(Step):
    """Mount a kernel filesystem (proc, sysfs, tmpfs, devpts, mqueue, cgroup)."""

    kind = "mount"
    fstype: str
    target: str
    flags: tuple[str, ...] = ()
    data: str = ""
    fallback_bind: str | None = None
    source: str = ""  # what mountinfo shows as the source; "": the fstype (an OCI bundle names one)

    def describe(self) -> str:
        data = f" [{self.data}]" if self.data else ""
        source = f" ({self.source})" if self.source and self.source != self.fstype else ""
        return f"mount {self.fstype}{source} on {self.target}{_flags(self.flags)}{data}"


class Bind(Step):
    """Bind a host path (or a path in the container with `inside`) onto a target."""

    kind = "bind"
    source: str
    target: str
    readonly: bool = False
    recursive: bool = True
    flags: tuple[str, ...] = ()
    optional: bool = False
    inside: bool = False

    def describe(self) -> str:
        attrs = [
            *(["ro"] if self.readonly else []),
            *([] if self.recursive else ["non-recursive"]),
            *(["optional"] if self.optional else []),
            *self.flags,
        ]
        where = " (inside)" if self.inside else ""
        return f"bind {self.source}{where} -> {self.target}{_flags(tuple(attrs))}"


class Overlay(Step):
    """An overlayfs.  `upper` None: a private tmpfs holds the changes.

    `lower_inside` means the lower layers are paths inside the container (the
    original's aufs stacks a directory over a target's existing content);
    `temporary_work` means pflask made the work directory and removes it.
    """

    kind = "overlay"
    target: str
    lower: tuple[str, ...]
    upper: str | None = None
    work: str | None = None
    readonly: bool = False
    flags: tuple[str, ...] = ()
    lower_inside: bool = False
    temporary_work: bool = False
    tmpfs: str = ""  # without an upper: the private tmpfs's options (its size bound)

    def describe(self) -> str:
        where = " (inside)" if self.lower_inside else ""
        upper = self.upper or (f"tmpfs ({self.tmpfs})" if self.tmpfs else "tmpfs")
        work = f", work {self.work}" + (
            " (made and removed by pflask)" if self.temporary_work else ""
        )
        if self.upper is None:
            work = ""
        ro = ["ro"] if self.readonly else []
        return (
            f"overlay on {self.target}: lower {':'.join(self.lower)}{where}, upper {upper}{work}"
            f"{_flags((*ro, *self.flags))}"
        )


class LoopMount(Step):
    """Attach an image to a loop device (autoclear) and mount it."""

    kind = "loop"
    source: str
    target: str
    fstype: str = "auto"
    readonly: bool = False
    options: str = ""
    flags: tuple[str, ...] = ()

    def describe(self) -> str:
        ro = ["ro"] if self.readonly else []
        opts = f" [{self.options}]" if self.options else ""
        return (
            f"loop {self.source} -> {self.target} ({self.fstype}){_flags((*ro, *self.flags))}{opts}"
        )


class DevNodes(Step):
    """Populate the container's /dev: device nodes (mknod, or bind from the host)."""

    kind = "dev_nodes"
    target: str
    nodes: tuple[str, ...]

    def describe(self) -> str:
        return f"device nodes in {self.target}: {' '.join(self.nodes)}"


class Symlink(Step):
    """Create a symbolic link inside the container."""

    kind = "symlink"
    value: str
    path: str

    def describe(self) -> str:
        return f"symlink {self.path} -> {self.value}"


class Console(Step):
    """The container's terminal, when pflask runs with one (decided at run time).

    A pty from the container's own devpts instance (`ptmx`), its slave bound
    onto `path` (/dev/console) and made the command's controlling terminal;
    the master goes to the supervisor.  Skipped when there is no terminal,
    unless `boot`: an init writes its boot messages to /dev/console and starts
    a getty there only when it exists, so a booting OS has one whatever
    pflask's stdin is, and pflask copies it to its stdout.
    """

    kind = "console"
    ptmx: str = "/dev/pts/ptmx"
    path: str = "/dev/console"
    boot: bool = False

    def describe(self) -> str:
        when = "always, for the init" if self.boot else "when used"
        return f"terminal ({when}): a pty from {self.ptmx}, bound onto {self.path}"


class BootId(Step):
    """A fresh random boot id bound read-only over the kernel's, for a booting OS.

    The value is made at run time (plans are cached); `scratch` is where the
    file is written before it is bound and unlinked (the container's /run).
    """

    kind = "boot_id"
    path: str = "/proc/sys/kernel/random/boot_id"
    scratch: str = "/run/.boot_id"

    def describe(self) -> str:
        return f"a fresh random boot id over {self.path}"


class EtcHostname(Step):
    """The container's hostname in a file bound read-only over the root's
    /etc/hostname (when the root has one), for a booting OS.

    systemd as PID 1 sets the hostname from /etc/hostname before anything
    else, and hostnamed reports it as the static name: a root made by
    debootstrap holds the host's name there, which would replace the
    container's.  `scratch`: where the file is written before it is bound
    and unlinked (the container's /run).
    """

    kind = "etc_hostname"
    name: str
    path: str = "/etc/hostname"
    scratch: str = "/run/.hostname"

    def describe(self) -> str:
        return f"{self.path} (if the root has one) holds {self.name}, read-only"


class MaskPaths(Step):
    """Make kernel paths inaccessible: /dev/null over files, an empty ro tmpfs over dirs."""

    kind = "mask_paths"
    paths: tuple[str, ...]

    def describe(self) -> str:
        return f"mask {' '.join(self.paths)}"


class ReadonlyPaths(Step):
    """Make paths read-only by binding them onto themselves read-only."""

    kind = "readonly_paths"
    paths: tuple[str, ...]

    def describe(self) -> str:
        return f"read-only {' '.join(self.paths)}"


class PivotRoot(Step):
    """Enter the root with pivot_root(2) and detach the old root."""

    kind = "pivot_root"
    path: str

    def describe(self) -> str:
        return f"pivot_root into {self.path}, detach the old root"


class RemountRoot(Step):
    """Make / read-only once everything is mounted under it."""

    kind = "remount_root"
    readonly: bool = True

    def describe(self) -> str:
        return "remount / read-only"


# --- identity, limits, privileges, process --------------------------------------


class Hostname(Step):
    kind = "hostname"
    name: str

    def describe(self) -> str:
        return f"hostname {self.name}"


class Rlimits(Step):
    """setrlimit(2) for each (resource, soft, hard); -1 is unlimited."""

    kind = "rlimits"
    limits: tuple[tuple[str, int, int], ...]

    def describe(self) -> str:
        def show(v: int) -> str:
            return "unlimited" if v < 0 else str(v)

        return "rlimits " + ", ".join(f"{n}={show(s)}:{show(h)}" for n, s, h in self.limits)


class NoNewPrivs(Step):
    kind = "no_new_privs"

    def describe(self) -> str:
        return "set no_new_privs"


class Seccomp(Step):
    """Load the seccomp filter: BPF programs compiled from `profile` by the compiler.

    The last step before the command where no_new_privs is set; otherwise
    just before capabilities are dropped, while CAP_SYS_ADMIN still allows
    loading a filter (the kernel asks for one or the other).  `programs`
    are hexadecimal struct sock_filter arrays, loaded in order; the kernel
    runs them all and takes the strictest answer.
    """

    kind = "seccomp"
    profile: str
    summary: str
    programs: tuple[str, ...]

    def describe(self) -> str:
        return f"seccomp filter, {self.profile} profile ({self.summary})"


class SwitchUser(Step):
    """Become `user` (name or uid[:gid]) as found in the container's passwd/group."""

    kind = "switch_user"
    user: str
    keep_caps: bool = False

    def describe(self) -> str:
        keep = ", keeping capabilities for the next step" if self.keep_caps else ""
        return f"switch to user {self.user} (supplementary groups set){keep}"


class SessionKeyring(Step):
    """Join a new, empty session keyring: none of the keys pflask's session holds."""

    kind = "session_keyring"

    def describe(self) -> str:
        return "a new session keyring"


class Capabilities(Step):
    """Keep exactly these capabilities in every set (bounding, ..., ambient).

    `ambient` false: in the bounding, permitted and effective sets only (a
    profile that bounds; see capabilities.apply).
    """

    kind = "capabilities"
    keep: tuple[str, ...]
    ambient: bool = True

    def describe(self) -> str:
        sets = "" if self.ambient else " (not inheritable or ambient)"
        return f"capabilities: {' '.join(self.keep) or 'none'}{sets}"


class Environment(Step):
    """The command's environment.

    `clear` starts empty (keeping `keep`); `user_vars` sets USER, LOGNAME and
    HOME from the user found by SwitchUser (or root); `set` wins over all.
    """

    kind = "environment"
    clear: bool
    keep: tuple[str, ...] = ()
    set: tuple[tuple[str, str], ...] = ()
    user_vars: bool = False

    def describe(self) -> str:
        parts = ["cleared" if self.clear else "inherited"]
        if self.keep:
            parts.append("keep " + " ".join(self.keep))
        if self.user_vars:
            parts.append("USER LOGNAME HOME from the user")
        parts.extend(f"{k}={v}" for k, v in self.set)
        return "environment: " + ", ".join(parts)


class SetIds(Step):
    """Become `uid`/`gid` with exactly `groups` as supplementary groups, numbers
    as an OCI bundle gives them (no passwd lookup); `keep_caps` keeps the
    permitted set across the switch for the CapabilitySets step that follows."""

    kind = "set_ids"
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    umask: int | None = None
    keep_caps: bool = False

    def describe(self) -> str:
        groups = ",".join(map(str, self.groups)) or "none"
        umask = "" if self.umask is None else f", umask {self.umask:04o}"
        keep = ", keeping capabilities for the next step" if self.keep_caps else ""
        return f"uid {self.uid}, gid {self.gid}, groups {groups}{umask}{keep}"


class CapabilitySets(Step):
    """Each of the five capability sets as given (an OCI bundle's
    process.capabilities), instead of one profile in all of them."""

    kind = "capability_sets"
    bounding: tuple[str, ...] = ()
    effective: tuple[str, ...] = ()
    permitted: tuple[str, ...] = ()
    inheritable: tuple[str, ...] = ()
    ambient: tuple[str, ...] = ()

    def describe(self) -> str:
        sets = (
            ("bounding", self.bounding),
            ("effective", self.effective),
            ("permitted", self.permitted),
            ("inheritable", self.inheritable),
            ("ambient", self.ambient),
        )
        return "capability sets: " + "; ".join(
            f"{name} {' '.join(caps) or 'none'}" for name, caps in sets
        )


class Sysctl(Step):
    """Write kernel parameters of the container's own namespaces under its /proc/sys."""

    kind = "sysctl"
    settings: tuple[tuple[str, str], ...]

    def describe(self) -> str:
        return "sysctl " + ", ".join(f"{k}={v}" for k, v in self.settings)


class Hooks(Step):
    """OCI createRuntime/prestart hooks: each program run on the host with the
    container's state JSON (id, pid, bundle, "creating") on its stdin, once
    the container's namespaces exist and before it enters its root; one that
    fails or outlasts its timeout fails create.  `hooks` holds (path, args,
    env, timeout or 0) each."""

    kind = "hooks"
    where = HOST
    container: str
    bundle: str
    hooks: tuple[tuple[str, tuple[str, ...], tuple[str, ...], int], ...]

    def describe(self) -> str:
        return "run the createRuntime hooks: " + ", ".join(h[0] for h in self.hooks)


class ContainerHooks(Step):
    """OCI createContainer or startContainer hooks, run by the container's own
    process in its namespaces, as runc's init runs them: createContainer
    before the root is entered (the path is the host's), startContainer after
    `start`, just before the process (the path is the container's); each
    gets the state JSON on stdin (its pid as the container sees it) and one
    that fails or outlasts its timeout stops the container.  `hooks` as
    Hooks's."""

    kind = "container_hooks"
    stage: str
    container: str
    bundle: str
    hooks: tuple[tuple[str, tuple[str, ...], tuple[str, ...], int], ...]

    def describe(self) -> str:
        return f"run the {self.stage} hooks: " + ", ".join(h[0] for h in self.hooks)


class OomScoreAdj(Step):
    """The process's OOM score adjustment (OCI process.oomScoreAdj), written to
    /proc/self/oom_score_adj while /proc is still the host's (before the
    root is entered) and inherited by the command across execve(2)."""

    kind = "oom_score_adj"
    value: int

    def describe(self) -> str:
        return f"oom_score_adj {self.value}"


class DeviceNodes(Step):
    """OCI linux.devices: nodes made in the container's /dev with mknod(2)
    (each as (path, type c|b|p, major, minor, mode, uid, gid)); in a user
    namespace, which may not make them, the host's node at the same path is
    bound instead, as runc does."""

    kind = "device_nodes"
    nodes: tuple[tuple[str, str, int, int, int, int, int], ...]
    bind: bool = False

    def describe(self) -> str:
        how = "bound from the host" if self.bind else "mknod"
        shown = ", ".join(
            f"{n[0]} ({n[1]} {n[2]}:{n[3]} {n[4]:04o} {n[5]}:{n[6]})" for n in self.nodes
        )
        return f"device nodes ({how}): {shown}"


class StartFifo(Step):
    """Open the FIFO `start` writes to (while the host's paths are reachable):
    an OCI runtime's create leaves the container waiting on it (AwaitStart)."""

    kind = "start_fifo"
    path: str

    def describe(self) -> str:
        return f"open {self.path} for the start signal"


class AwaitStart(Step):
    """Tell the supervisor the container is created (the status pipe's EOF),
    let it go, and wait for `start` to write to the FIFO before the command.

    The supervisor of an OCI create exits here: PID 1 drops PDEATHSIG and is
    inherited by the engine's subreaper, as runc's init is.  The command is
    looked up first, so a missing one fails create (127), as with runc."""

    kind = "await_start"

    def describe(self) -> str:
        return "created: wait for start (the FIFO), then run the command"


class Chdir(Step):
    kind = "chdir"
    path: str

    def describe(self) -> str:
        return f"chdir {self.path}"


class Exec(Step):
    kind = "exec"
    argv: tuple[str, ...]

    def describe(self) -> str:
        return "exec " + _argv(self.argv)


STEPS: dict[str, type[Step]] = {
    cls.kind: cls
    for cls in (
        IdmapLayers,
        Unshare,
        OomScoreAdj,
        DeviceNodes,
        ContainerHooks,
        JoinNamespaces,
        UidMap,
        GidMap,
        Cgroup,
        BecomeRoot,
        Fork,
        ClaimName,
        AwaitHost,
        RegisterMachine,
        Reaper,
        Veth,
        MoveLink,
        MacvlanLink,
        Loopback,
        ConfigureLink,
        Propagation,
        BindRoot,
        EphemeralRoot,
        ImageRoot,
        DiskRoot,
        MountFs,
        Bind,
        Overlay,
        LoopMount,
        DevNodes,
        Symlink,
        Console,
        BootId,
        EtcHostname,
        MaskPaths,
        ReadonlyPaths,
        PivotRoot,
        RemountRoot,
        Hostname,
        Rlimits,
        NoNewPrivs,
        Seccomp,
        SwitchUser,
        SetIds,
        SessionKeyring,
        Capabilities,
        CapabilitySets,
        Sysctl,
        Hooks,
        StartFifo,
        AwaitStart,
        Environment,
        Chdir,
        Exec,
    )
}


UNNAMED = "pflask-PID"
"""A container the original flags do not name is called pflask-<pid of its
supervisor>; a cached plan holds this instead, and each run puts the pid in
(Plan.named for a foreground run, whose supervisor is pflask itself;
supervisor.detach for a detached one, whose supervisor is a child: the pid that
stays, so the name printed and `--attach PID` agree)."""


class Plan(Record):
    """What the supervisor needs besides the steps, and the steps themselves.

    The supervision fields have no defaults of their own: the compiler fills
    them from the manifest, whose records hold the defaults."""

    name: str
    steps: tuple[Step, ...]
    terminal: str
    detach: bool
    stop_signal: str
    stop_timeout: float
    root: str | None = None
    command: tuple[str, ...] = ()

    def first_unshare(self) -> int:
        """The index of the Unshare that starts the container's namespaces:
        the first step, or the first after steps that must come before the
        user namespace exists (IdmapLayers)."""
        for index, step in enumerate(self.steps):
            if isinstance(step, Unshare):
                return index
        raise ValueError("a plan without an Unshare step")

    def render(self) -> str:
        """Numbered steps, as `pflask plan` prints them."""
        width = len(str(len(self.steps)))
        lines = [f"container {self.name}"]
        for number, step in enumerate(self.steps, 1):
            lines.append(f"{number:>{width}}. [{step.where}] {step.describe()}")
        lines.append(
            f"supervise: terminal {self.terminal}, stop with {self.stop_signal}, "
            f"SIGKILL after {self.stop_timeout:g}s" + (", detached" if self.detach else "")
        )
        return "\n".join(lines)

    def renamed(self, old: str, new: str, hostname: bool = True) -> Plan:
        """The same plan for a container called `new`: every field that held
        `old` (the plan's name, and the hostname, machine and cgroup names the
        compiler took from it) holds `new`; with `hostname` false, the host
        name seen inside stays as it was (pflask.api names each run apart,
        but its containers all look alike inside)."""
        if old == new or self.name != old:
            return self
        kept = () if hostname else ("hostname", "etc_hostname")
        steps = []
        for step in self.steps:
            changes = {}
            if step.kind not in kept:
                changes = {f: new for f in step._fields if getattr(step, f) == old}
            steps.append(step.replace(**changes) if changes else step)
        renamed: Plan = self.replace(name=new, steps=tuple(steps))
        return renamed

    def named(self, supervisor: int) -> Plan:
        """This plan for a foreground run whose supervisor is `supervisor`: an
        unnamed container (UNNAMED) is called after its pid.  A detached plan
        stays as it is: supervisor.detach names it after its background
        supervisor."""
        if self.detach:
            return self
        return self.renamed(UNNAMED, f"pflask-{supervisor}")

    def to_wire(self) -> dict[str, Any]:
        """Plain data with tuples kept, for JSON output and the marshal cache."""
        data = {f: getattr(self, f) for f in self._fields if f != "steps"}
        data["steps"] = tuple(
            (step.kind, {f: getattr(step, f) for f in step._fields}) for step in self.steps
        )
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Plan:
        steps = tuple(STEPS[kind](**fields) for kind, fields in data["steps"])
        return cls(**{**data, "steps": steps})

    def to_json_data(self) -> dict[str, Any]:
        """Stable JSON shape: each step as {"step", "where", fields...}."""
        data = {f: getattr(self, f) for f in self._fields if f != "steps"}
        data["steps"] = [
            {"step": s.kind, "where": s.where, **{f: getattr(s, f) for f in s._fields}}
            for s in self.steps
        ]
        return data
