"""Manifest -> Plan: every decision about order and placement, and no syscalls.

The compiler reads nothing from the system.  What it needs to know about the
invoking user (uid, subordinate id ranges, shell) arrives in a `Context` the
command line fills, so the same inputs always give the same plan, which is
what lets the start-up cache store plans.

The order (see docs/architecture.md for who runs what):
namespaces -> [host] uid/gid maps, cgroup, links -> cgroup namespace -> root of
the user namespace -> fork PID 1 -> [host] machined registration -> propagation
-> root -> system mounts -> user mounts -> masked and read-only paths ->
pivot_root -> hostname -> network -> rlimits -> session keyring ->
[seccomp, without no_new_privs] -> user and capabilities -> no_new_privs ->
environment -> workdir -> [seccomp, with no_new_privs] -> reaper -> exec.

Booting an OS (an init such as systemd as PID 1 in a root of its own, see
`boots`) adds what systemd's container interface asks of a container manager
beyond an ordinary root: a cgroup of its own behind the cgroup namespace,
mounted read-write (`_cgroup`, `_system_mounts`), a boot id of its own (the
BootId step), and systemd-nspawn's capability set instead of the default one
(`_capabilities`), hence a devices cgroup (`_devices`).  The rest it needs
every root already gets: `container=` in the environment, read-only /sys and
/proc/sys, a private /dev with a devpts, /run on a tmpfs, and SIGRTMIN+3 as
the stop signal.
"""

from __future__ import annotations

import posixpath

from pflask.compile import plan as p
from pflask.errors import ManifestError
from pflask.load.manifest import (
    AufsMount,
    BindMount,
    FsMount,
    LoopMount,
    OverlayMount,
    TmpMount,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pflask.compile.context import Context
    from pflask.load.manifest import IdRange, Manifest, Mount, Oci

STANDARD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INIT_PATHS = ("/sbin/init", "/lib/systemd/systemd", "/usr/lib/systemd/systemd", "/init")
INIT_NAMES = ("init", "systemd")

# The OCI runtime's defaults (runtime-spec config-linux, runc's spec template):
# kernel interfaces a container has no business reading or writing.
MASKED_PATHS = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
)
READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")

# The devices a container that keeps CAP_SYS_ADMIN may open, as devices
# cgroup rules (v1 syntax: type major:minor access).  Such a container can
# mount a filesystem without nodev, so the mount flags alone cannot keep it
# from a node it makes: the standard character devices, the ptys (the
# Unix98 majors, its own devpts) and /dev/ptmx, /dev/console; mknod of
# anything ("m"), as images expect, but no opening it.
DEVICE_RULES = (
    "c *:* m",
    "b *:* m",
    "c 1:3 rwm",  # null
    "c 1:5 rwm",  # zero
    "c 1:7 rwm",  # full
    "c 1:8 rwm",  # random
    "c 1:9 rwm",  # urandom
    "c 5:0 rwm",  # tty
    "c 5:1 rwm",  # console
    "c 5:2 rwm",  # ptmx
    *(f"c {major}:* rwm" for major in range(136, 144)),  # pts
)

DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")

# Bounds of the tmpfs pflask mounts.  The kernel's defaults are half the
# host's RAM and an inode per two pages for *each* tmpfs, so a container
# could pin most of the host's memory through /run, /dev/shm, its tmp mounts
# and an ephemeral root's upper layer at once.  The sizes are percentages the
# kernel resolves at mount time (tmpfs size=N%), so a cached plan means the
# same on every machine; inodes are capped because each costs kernel memory
# that size= does not count.  /run holds sockets, pid files and a booted
# systemd's runtime journal (journald takes 10% of it); /dev/shm holds POSIX
# shared memory, which databases and browsers size in hundreds of megabytes
# (a fixed 64 MB, podman's, is the default their users most often raise, so
# it scales with the machine as nspawn's does); tmp mounts and an ephemeral
# root's changes are where a container writes files, so they get more.  A
# tmp mount's `size` (or root.size) replaces the size; a tmp mount at /run or
# /dev/shm replaces pflask's own (see _system_tmpfs).  A hard bound on all of
# them together is `cgroup.memory`: tmpfs pages are charged to the memory
# cgroup of the process that writes them.
RUN_TMPFS = (("mode", "755"), ("size", "10%"), ("nr_inodes", "100k"))
SHM_TMPFS = (("mode", "1777"), ("size", "10%"), ("nr_inodes", "100k"))
TMP_TMPFS = (("size", "25%"), ("nr_inodes", "400k"))
SYSTEM_TMPFS = {"/run": RUN_TMPFS, "/dev/shm": SHM_TMPFS}

# The task limit of a cgroup pflask makes, unless the manifest says otherwise:
# far above what a service or a booted OS runs (a Debian boot: ~30 tasks; a
# parallel build: a few hundred), far below the host's pid_max.
DEFAULT_PIDS = 4096
DEFAULT_ID_RANGE = (100000, 65536)  # root's fallback when it has no /etc/subuid range


def container_path(path: str) -> str:
    """Lexically normalised absolute path: `..` cannot climb above `/`."""
    return "/" + posixpath.normpath("/" + path).lstrip("/")


def is_init(argv: tuple[str, ...]) -> bool:
    return bool(argv) and (argv[0] in INIT_PATHS or posixpath.basename(argv[0]) in INIT_NAMES)


def compile_plan(m: Manifest, ctx: Context) -> p.Plan:
    if m.root.image is not None and not m.root.layers and m.root.disk is None:
        # Never the host's root in an image's place: whoever compiles must
        # resolve the image first (pipeline._compile, pflask.image.prepare).
        raise _error(m, "root.image", "not resolved: prepare.apply the manifest before compiling")
    steps: list[p.Step] = []
    command = ctx.command or m.command or (("/bin/sh",) if m.root.path else (ctx.shell,))
    userns = _wants_userns(m, ctx)
    net = m.namespaces.net if m.namespaces.net is not None else bool(m.interfaces)
    if m.interfaces and not net:
        raise _error(m, "network", "interfaces need the network namespace")
    namespaces = [
        name
        for name, on in (
            ("user", userns),
            ("mount", m.namespaces.mount),
            ("pid", m.namespaces.pid),
            ("ipc", m.namespaces.ipc),
            ("uts", m.namespaces.uts),
            ("net", net),
            ("cgroup", m.namespaces.cgroup),
        )
        if on
    ]
    pid1_is_command = m.pid1 == "command" or (m.pid1 == "auto" and is_init(command))
    boot = boots(m, command, pid1_is_command)
    keep = _capabilities(m, boot, net)
    devices = _devices(m, ctx, userns, keep)
    cgroup = _cgroup(m, ctx, boot, devices)
    defer_cgroupns = cgroup is not None and "cgroup" in namespaces
    first = [n for n in namespaces if not (defer_cgroupns and n == "cgroup")]
    # Without a user namespace the supervisor can make the PID namespace
    # itself, so the first process is PID 1 and no Fork step is needed; a PID
    # namespace owned by a new user namespace has to come after it, hence Fork.
    pid1_first = m.namespaces.pid and not userns
    idmapped = _idmap_layers(m, ctx) if userns and m.namespaces.mount and ctx.uid == 0 else []
    steps.extend(idmapped)
    steps.append(p.Unshare(namespaces=tuple(first), pid1=pid1_first))
    if m.oci is not None and m.oci.join:
        steps.append(p.JoinNamespaces(paths=m.oci.join))

    # The host steps come in phases, each released by the go its AwaitHost
    # step waits for.  The name is claimed before anything is made on the
    # host (a second container of a name is told so, not that a link
    # exists); with nothing to make, it is claimed while the container
    # builds its mounts, and only the command waits for it.
    makes: list[p.Step] = [cgroup] if cgroup is not None else []
    makes.extend(_host_links(m, ctx))
    makes.extend(_oci_hooks(m))
    # An OCI runtime keeps its own records (pflask.oci.state): no claim here.
    claim = p.ClaimName(name=m.name) if m.oci is None else None
    host_first: list[p.Step] = _id_maps(m, ctx) if userns else []
    if makes:
        host_first += [*([claim] if claim is not None else []), *makes]
    steps.extend(host_first)
    if host_first:
        steps.append(p.AwaitHost(after=p.AFTER_HOST_STEPS))
    if defer_cgroupns:
        steps.append(p.Unshare(namespaces=("cgroup",)))
    if userns and maps_root(m, ctx):
        steps.append(p.BecomeRoot())
    if m.namespaces.pid and not pid1_first:
        steps.append(p.Fork())  # the supervisor adopts PID 1 here
    # A container with a root of its own is a machine to the host's tools.
    # machined wants its PID 1, and the command does not wait for busctl:
    # after the Fork and after the last go.
    register = None
    if m.root.path is not None and ctx.uid == 0 and m.oci is None:
        register = p.RegisterMachine(name=m.name, root=m.root.path)
    if makes and register is not None:
        steps.append(register)
    if not makes and claim is not None:
        steps.append(claim)

    root = m.root.path
    if m.oci is not None and m.oci.start_fifo is not None:
        steps.append(p.StartFifo(path=m.oci.start_fifo))
    if m.oci is not None and m.oci.oom_score_adj is not None:
        steps.append(p.OomScoreAdj(value=m.oci.oom_score_adj))
    if m.namespaces.mount:
        steps.append(p.Propagation(mode="slave" if m.oci is None else m.oci.propagation))
        if root is not None:
            if userns and m.root.layers:
                _check_layer_owners(m, ctx)
            steps.append(_root_step(m, root, userns))
        over_root = _root_overlays(m)
        for index in over_root:
            over = _user_mount(m, index, m.mounts[index], userns)
            assert isinstance(over, p.Overlay)
            lower = ("/",) if over.lower_inside else over.lower
            steps.append(over.replace(target="/", lower=lower))
        if root is not None and m.root.ephemeral and userns and _home_unmapped(m, ctx):
            # /root belongs to the host's root, unmapped inside: the mapped
            # root could neither read nor write its home (bash's .bashrc,
            # .bash_history).  An ephemeral root's changes are thrown away
            # anyway, so its home is a fresh tmpfs it owns, as bounded as the
            # root's changes.  Mounts the manifest asks for under /root come after.
            data = _tmpfs_data(TMP_TMPFS, size=m.root.size) + ",mode=700"
            steps.append(
                p.MountFs(fstype="tmpfs", target="/root", flags=("nosuid", "nodev"), data=data)
            )
        if m.oci is None:
            steps.extend(_system_mounts(m, userns, net, boot, delegated=boot and defer_cgroupns))
        replacing = _replacing_system_tmpfs(m)
        for index, mount in enumerate(m.mounts):
            if index not in replacing and index not in over_root:
                steps.append(_user_mount(m, index, mount, userns))
        if m.oci is not None:
            steps.extend(_oci_dev(m, userns))
        if root is not None and m.oci is not None:
            masked = m.security.masked_paths or ()
            readonly = m.security.readonly_paths or ()
        elif root is not None:
            masked = MASKED_PATHS if m.security.masked_paths is None else m.security.masked_paths
            readonly = (
                READONLY_PATHS if m.security.readonly_paths is None else m.security.readonly_paths
            )
        else:
            masked = m.security.masked_paths or ()
            readonly = m.security.readonly_paths or ()
        if masked:
            steps.append(p.MaskPaths(paths=tuple(container_path(x) for x in masked)))
        if readonly:
            steps.append(p.ReadonlyPaths(paths=tuple(container_path(x) for x in readonly)))
        if boot:
            # Its own boot id, or its journal takes every boot for one (see boot.py).
            steps.append(p.BootId())
            name = _hostname(m)
            if name:
                # systemd takes the root's /etc/hostname over the kernel's name.
                steps.append(p.EtcHostname(name=name))
        if root is not None:
            if m.root.readonly:
                steps.append(p.RemountRoot(readonly=True))
            steps.extend(_container_hooks(m, "createContainer"))
            steps.append(p.PivotRoot(path=root))

    hostname = _hostname(m)
    if hostname:
        steps.append(p.Hostname(name=hostname))
    if net:
        steps.append(p.Loopback())
        for iface in m.interfaces:
            steps.append(
                p.ConfigureLink(
                    name=iface.name,
                    addresses=iface.addresses,
                    gateways=iface.gateways,
                    mtu=iface.mtu,
                    mac=iface.mac,
                    up=iface.up,
                )
            )
    if m.security.rlimits:
        steps.append(p.Rlimits(limits=m.security.rlimits))
    seccomp = _seccomp(m, keep)
    # Loading a filter takes no_new_privs or CAP_SYS_ADMIN (seccomp(2)):
    # without the first it goes before the steps that drop the second.
    early = seccomp is not None and not m.security.no_new_privileges
    early = early and (m.user is not None or "sys_admin" not in keep or m.oci is not None)
    # Keys in the session keyring pflask was started from are readable by
    # whoever inherits it: the container gets an empty one of its own (before
    # the filter, which refuses keyctl(2)).
    steps.append(p.SessionKeyring())
    if seccomp is not None and early:
        steps.append(seccomp)
    if m.oci is not None:
        steps.extend(_oci_identity(m.oci))
    elif m.user is not None and m.capabilities is None:
        # The profile bounds what a user can regain (setuid binaries), but a
        # user other than root holds nothing after the switch, as anywhere.
        steps.append(p.Capabilities(keep=keep, ambient=False))
        steps.append(p.SwitchUser(user=m.user))
    elif m.user is not None:
        # Capabilities the manifest asks for are kept across the switch
        # (PR_SET_KEEPCAPS, then ambient): its user holds them.
        steps.append(p.SwitchUser(user=m.user, keep_caps=True))
        steps.append(p.Capabilities(keep=keep))
    else:
        # Root: execve(2) gives uid 0 its bounding set back, nothing else is needed.
        steps.append(p.Capabilities(keep=keep, ambient=False))
    if m.security.no_new_privileges:
        steps.append(p.NoNewPrivs())
    steps.append(_environment(m))
    if m.workdir is not None:
        steps.append(p.Chdir(path=container_path(m.workdir)))
    if not makes and claim is not None:
        # The command must not start before the name is the container's.
        steps.append(p.AwaitHost(after=p.AFTER_NAME))
        if register is not None:
            steps.append(register)
    if seccomp is not None and not early:
        steps.append(seccomp)  # the last thing before the command (and PID 1's own rule)
    if m.namespaces.pid and not pid1_is_command:
        steps.append(p.Reaper())
    if m.oci is not None and m.oci.start_fifo is not None:
        steps.append(p.AwaitStart())
    steps.extend(_container_hooks(m, "startContainer"))
    steps.append(p.Exec(argv=command))

    init = pid1_is_command and is_init(command)
    return p.Plan(
        name=m.name,
        steps=tuple(steps),
        terminal=m.terminal,
        detach=m.detach,
        stop_signal=m.stop_signal or ("SIGRTMIN+3" if init else "SIGTERM"),
        stop_timeout=m.stop_timeout,
        root=root,
        command=command,
    )


def _hostname(m: Manifest) -> str | None:
    """The container's hostname: the manifest's, or with a root and a UTS
    namespace of its own, the container's name."""
    if m.oci is not None:
        return m.hostname  # a bundle's container has the hostname it names, if any
    return m.hostname or (m.name if m.root.path is not None and m.namespaces.uts else None)


def boots(m: Manifest, command: tuple[str, ...], pid1_is_command: bool) -> bool:
    """Whether this container boots an OS: an init as PID 1 of its own PID
    namespace, in a root of its own.

    Such a container gets what systemd's container interface asks of a
    container manager on top of the usual root (see `_cgroup`,
    `_system_mounts` and `_capabilities`).
    """
    return (
        m.oci is None  # an OCI bundle lists what its init gets itself
        and pid1_is_command
        and is_init(command)
        and m.namespaces.pid
        and m.namespaces.mount
        and m.root.path is not None
    )


def _cgroup(m: Manifest, ctx: Context, boot: bool, devices: tuple[str, ...]) -> p.Cgroup | None:
    """The container's own cgroup: the manifest's, or for a boot an empty one.

    systemd as PID 1 must be able to create init.scope, system.slice and the
    rest below its root cgroup; it can only do that in a cgroup of its own,
    seen through a cgroup namespace (so that /proc/PID/cgroup and the mounted
    tree agree) and mounted read-write.  A group with no controllers is a
    cgroup2 group (`cgroups.create`), which on a hybrid host is the otherwise
    empty unified tree: it delegates process tracking, not resource control.
    Only root gets one made automatically: an ordinary user's own cgroup is
    normally not writable (not delegated) and an init such as busybox's needs
    none.  A container that needs the devices cgroup (`_devices`) gets a
    group for it.

    Every group pflask makes gets a task limit, DEFAULT_PIDS, unless the
    manifest sets `pids` (a number, or "max" for none): without one, a fork
    bomb in the container takes every pid the host has.
    """
    if m.oci is not None and ctx.uid != 0 and not _limits(m):
        # A rootless runtime's user has no cgroup to make one in (unless
        # delegated): as runc does, the container then stays in the user's.
        return None
    if m.cgroup is not None:
        pids = m.cgroup.pids
        return p.Cgroup(
            name=m.name,
            controllers=m.cgroup.controllers,
            memory=m.cgroup.memory,
            pids=pids if isinstance(pids, int) else None,
            cpu=m.cgroup.cpu,
            default_pids=DEFAULT_PIDS if pids is None else None,
            devices=devices,
            group=None if m.oci is None else f"pflask_oci-{m.name}",  # never parse_owner's
            path=None if m.oci is None else m.oci.cgroups_path,
            shares=None if m.oci is None else m.oci.cpu_shares,
            swap=None if m.oci is None else m.oci.memory_swap,
        )
    if (boot and ctx.uid == 0 and m.namespaces.cgroup) or devices:
        return p.Cgroup(name=m.name, default_pids=DEFAULT_PIDS, devices=devices)
    return None


def _limits(m: Manifest) -> bool:
    """Whether the manifest asks its cgroup for a limit."""
    spec = m.cgroup
    oci = m.oci
    return (
        spec is not None
        and (spec.memory is not None or spec.cpu is not None or isinstance(spec.pids, int))
    ) or (oci is not None and (oci.cpu_shares is not None or oci.memory_swap is not None))


def _devices(m: Manifest, ctx: Context, userns: bool, keep: tuple[str, ...]) -> tuple[str, ...]:
    """The devices cgroup rules, when the mount flags are not enough.

    Every writable mount a container gets is nodev, so a node made with
    CAP_MKNOD cannot be opened, and without CAP_SYS_ADMIN no mount can be
    made or changed to undo that.  A container that keeps CAP_SYS_ADMIN
    (the boot profile, or a manifest that asks) can mount a fresh tmpfs, so
    the devices cgroup refuses the opening instead.  In a user namespace the
    kernel refuses device nodes itself (mknod, and every mount made there is
    nodev); without a root of its own the container shares the host's /dev
    anyway, which no policy here pretends to fix.
    """
    if m.oci is not None:  # a device policy is root's to set
        return m.oci.devices if ctx.uid == 0 else ()
    if ctx.uid != 0 or userns or m.root.path is None or not m.namespaces.mount:
        return ()
    return DEVICE_RULES if "sys_admin" in keep else ()


def _capabilities(m: Manifest, boot: bool, net: bool) -> tuple[str, ...]:
    """The capabilities the container keeps: its profile, changed by the manifest.

    A plain command gets the OCI runtimes' default set
    (`capabilities.DEFAULT`), an init that boots an OS systemd-nspawn's
    (`capabilities.BOOT`), with net_admin when the network namespace is its
    own, as nspawn does with a private network: on the host's network it
    would reconfigure the host's.  `capabilities:` (or `--caps`) adds to and
    drops from the profile; `all` is the full set.
    """
    from pflask.kernel import capabilities

    if m.oci is not None:
        return capabilities.ordered(m.oci.capability_sets[0])  # the bounding set
    base = capabilities.DEFAULT
    if boot:
        base = capabilities.BOOT | ({"net_admin"} if net else set())
    if m.capabilities is not None:
        return capabilities.ordered(capabilities.parse(list(m.capabilities), base))
    return capabilities.ordered(base)


def _seccomp(m: Manifest, keep: tuple[str, ...] | None) -> p.Seccomp | None:
    """The seccomp filter step, built for the capabilities the container keeps.

    Built here, once per compiled plan (libseccomp is not loaded by a cached
    `pflask run`): see pflask.compile.seccomp.
    """
    if m.oci is not None:
        if m.oci.seccomp is None:
            return None
        from pflask.compile import seccomp
        from pflask.kernel import capabilities

        return seccomp.step_from_json(m.oci.seccomp, frozenset(keep or ()), m.source)
    if m.security.seccomp == "unconfined":
        return None
    from pflask.compile import seccomp
    from pflask.kernel import capabilities

    kept = capabilities.ALL if keep is None else frozenset(keep)
    return seccomp.step(m.security.seccomp, kept, m.source)


def _error(m: Manifest, field: str, message: str) -> ManifestError:
    return ManifestError(message, m.source, field=field)


def _wants_userns(m: Manifest, ctx: Context) -> bool:
    wanted = m.namespaces.user
    if wanted is None:
        return ctx.uid != 0 or bool(m.uid_map or m.gid_map)
    if not wanted and ctx.uid != 0:
        raise _error(
            m,
            "namespaces.user",
            f"pflask runs as uid {ctx.uid}, not root: the other namespaces need a user namespace",
        )
    return wanted


def _id_maps(m: Manifest, ctx: Context) -> list[p.Step]:
    uid_ranges = _ranges(m.uid_map, m, ctx, "uid", ctx.uid, ctx.subuid)
    gid_ranges = _ranges(m.gid_map, m, ctx, "gid", ctx.gid, ctx.subgid)
    uid_helper = ctx.uid != 0 and not _only_self(uid_ranges, ctx.uid)
    gid_helper = ctx.uid != 0 and not _only_self(gid_ranges, ctx.gid)
    return [
        p.UidMap(ranges=uid_ranges, helper=uid_helper),
        # An unprivileged process may write its own gid_map only after
        # denying setgroups(2) (user_namespaces(7)); newgidmap needs no such thing.
        p.GidMap(
            ranges=gid_ranges,
            helper=gid_helper,
            setgroups="deny" if ctx.uid != 0 and not gid_helper else "allow",
        ),
    ]


def _only_self(ranges: tuple[tuple[int, int, int], ...], own: int) -> bool:
    """The one line a process may write to its own uid_map or gid_map."""
    return len(ranges) == 1 and ranges[0][1:] == (own, 1)


def maps_root(m: Manifest, ctx: Context) -> bool:
    """Whether uid 0 exists inside the user namespace (it does not when an
    ordinary user without subordinate ids runs as itself, see `_ranges`):
    only then can the container's first process become root in it."""
    ranges = _ranges(m.uid_map, m, ctx, "uid", ctx.uid, ctx.subuid)
    return any(inside == 0 for inside, _, _ in ranges)


def _home_unmapped(m: Manifest, ctx: Context) -> bool:
    """Whether root exists inside the user namespace but is not the host's
    root: the root directory's /root is then someone else's."""
    ranges = _ranges(m.uid_map, m, ctx, "uid", ctx.uid, ctx.subuid)
    inside_root = any(inside == 0 for inside, _, _ in ranges)
    host_root = any(outside <= 0 < outside + count for _, outside, count in ranges)
    return inside_root and not host_root


def names_invoker(m: Manifest, ctx: Context) -> bool:
    """Whether `user:` (--user) names the invoking ordinary user itself, by
    name or uid: `pflask --user=$USER`, as in the original's examples."""
    if ctx.uid == 0 or m.user is None:
        return False
    who = m.user.partition(":")[0]
    return who == str(ctx.uid) or (ctx.name is not None and who == ctx.name)


def _ranges(
    given: tuple[IdRange, ...],
    m: Manifest,
    ctx: Context,
    kind: str,
    own: int,
    subordinate: tuple[tuple[int, int], ...],
) -> tuple[tuple[int, int, int], ...]:
    """The id map: as given, or the default for who runs pflask.

    - root: the first /etc/subuid range (or DEFAULT_ID_RANGE) from 0 up;
    - an ordinary user running as itself (`user:` names it, the original's
      `--user=$USER`): its own id is the same id inside, so what it writes on
      a bind is its own; its subordinate range, if it has one and the helpers
      are installed, fills the ids below and above (root inside included);
    - otherwise the invoker is root inside, and its subordinate range (when
      the helpers are installed, as podman does) gives 1..N, so package tools
      that chown to system users work; a `user:` other than root or the
      invoker needs that range.
    `idmap:` replaces all of this.
    """
    if given:
        ranges = tuple((r.inside, r.outside, r.count) for r in given)
        if ctx.uid != 0:
            _check_allowed(ranges, m, kind, own, subordinate)
        return ranges
    if ctx.uid == 0:
        start, count = subordinate[0] if subordinate else DEFAULT_ID_RANGE
        return ((0, start, count),)
    usable = subordinate[0] if subordinate and ctx.id_helpers else None
    if names_invoker(m, ctx):
        if usable is None:
            return ((own, own, 1),)
        start, count = usable
        below = min(own, count)
        keep_id = [(0, start, below)] if below else []
        keep_id.append((own, own, 1))
        if count > own:
            keep_id.append((own + 1, start + own, count - own))
        return tuple(keep_id)
    needs_more = m.user is not None and m.user.split(":")[0] not in ("root", "0")
    if needs_more and not subordinate:
        raise _error(
            m,
            "user",
            f"user {m.user!r} needs {kind}s beyond your own, but /etc/sub{kind} has no range "
            f"for you (add one: usermod --add-sub{kind}s 100000-165535 $USER)",
        )
    if needs_more or usable is not None:
        start, count = subordinate[0]
        return ((0, own, 1), (1, start, count))
    return ((0, own, 1),)


def _check_allowed(
    ranges: tuple[tuple[int, int, int], ...],
    m: Manifest,
    kind: str,
    own: int,
    subordinate: tuple[tuple[int, int], ...],
) -> None:
    """An ordinary user may map only itself and its /etc/sub{uid,gid} ranges."""
    for _inside, outside, count in ranges:
        if count == 1 and outside == own:
            continue
        if not any(start <= outside and outside + count <= start + n for start, n in subordinate):
            have = ", ".join(f"{s}-{s + n - 1}" for s, n in subordinate) or "none"
            raise _error(
                m,
                f"idmap.{kind}",
                f"{outside}-{outside + count - 1} is not among your /etc/sub{kind} ranges ({have})",
            )


def _host_links(m: Manifest, ctx: Context) -> list[p.Step]:
    steps: list[p.Step] = []
    if m.interfaces and ctx.uid != 0:
        raise _error(
            m,
            "network.interfaces",
            "creating or moving network links needs root; an ordinary user gets an isolated "
            "network namespace with only lo (namespaces: {net: true})",
        )
    for iface in m.interfaces:
        if iface.type == "veth":
            assert iface.host is not None
            steps.append(
                p.Veth(
                    host=iface.host,
                    name=iface.name,
                    host_addresses=iface.host_addresses,
                    host_up=iface.host_up,
                )
            )
        elif iface.type == "move":
            assert iface.device is not None
            steps.append(p.MoveLink(device=iface.device, name=iface.name))
        else:
            assert iface.master is not None and iface.mode is not None
            steps.append(
                p.MacvlanLink(
                    master=iface.master,
                    name=iface.name,
                    mode=iface.mode,
                    link_kind=iface.type,
                )
            )
    return steps


def check_image_owners(m: Manifest, ctx: Context) -> None:
    """Before an OCI image is fetched or unpacked (pipeline._compile) and when
    compiling: refuse an id map its layers were not unpacked with (see
    `_check_layer_owners`), rather than unpack them for nothing."""
    image = m.root.image
    if image is None or image.startswith("disk:") or m.root.disk is not None:
        return
    if _wants_userns(m, ctx):
        _check_layer_owners(m, ctx)


def _check_layer_owners(m: Manifest, ctx: Context) -> None:
    """Refuse a user namespace whose map differs from the one the store
    unpacked the image's layers with: every file would show the wrong owner
    inside (most of them unmapped, nobody), silently.

    Root's store keeps the layers' own ids (no user namespace); a map that
    moves them is applied to the store by an idmapped mount (_idmap_layers),
    but it could not be to a `root.upper` directory, refused then.  An
    ordinary user's store maps them as image.userns does (0 -> the user, 1..
    -> its first subordinate range, or only 0 -> the user without newuidmap
    or a range); an `idmap:` must map those ids the same way (it may map
    more): an ordinary user cannot idmap a host directory.
    """
    for kind, given, own, subordinate in (
        ("uid", m.uid_map, ctx.uid, ctx.subuid),
        ("gid", m.gid_map, ctx.gid, ctx.subgid),
    ):
        ranges = _ranges(given, m, ctx, kind, own, subordinate)
        shown = ", ".join(f"{i}->{o}" + (f" ({n})" if n != 1 else "") for i, o, n in ranges)
        field = "idmap" if m.uid_map or m.gid_map else "namespaces.user"
        if ctx.uid == 0:
            if m.root.layers and m.root.store is None and _moves(ranges):
                raise _error(
                    m,
                    field,
                    f"root.image: the layers' {kind}s are kept as they are, in no image store "
                    f"pflask can idmap, so the {kind} map {shown} would give their files the "
                    "wrong owners inside; map each id to itself or use no user namespace",
                )
            if m.root.upper is not None and _moves(ranges):
                raise _error(
                    m,
                    "root.upper",
                    f"root.image: as root the store keeps the layers' {kind}s as they are and "
                    f"the layers are idmapped for the {kind} map {shown} ({field}), but the "
                    "upper directory would not be: its files would have the wrong owners; "
                    "drop root.upper (changes on a tmpfs) or map each id to itself",
                )
            continue  # the layers are idmapped (_idmap_layers)
        keeps_own_id = not given and names_invoker(m, ctx)
        if not given and not keeps_own_id:
            continue  # the default map is the store's own
        store = [(0, own, 1)]
        if ctx.id_helpers and ctx.subuid and ctx.subgid:
            store.append((1, *subordinate[0]))
        for inside, outside, count in store:
            if not any(
                i <= inside and inside + count <= i + n and i - o == inside - outside
                for i, o, n in ranges
            ):
                why = (
                    f"`user:` naming you keeps your {kind} inside (the {kind} map {shown})"
                    if keeps_own_id
                    else f"the {kind} map {shown} differs"
                )
                raise _error(
                    m,
                    "user" if keeps_own_id else "idmap",
                    f"root.image: your store holds the layers with {kind}s {inside}-"
                    f"{inside + count - 1} inside as {outside}-{outside + count - 1} on the "
                    f"host; {why}, so their files would have the wrong owners inside"
                    + ("; name a user of the image, or none (root inside)" if keeps_own_id else ""),
                )


def _moves(ranges: tuple[tuple[int, int, int], ...]) -> bool:
    return any(inside != outside for inside, outside, _ in ranges)


def _idmap_layers(m: Manifest, ctx: Context) -> list[p.Step]:
    """Root's store keeps the layers' own ids: under a map that moves them
    they are seen through idmapped mounts of that map (plan.IdmapLayers)."""
    if not m.root.layers or m.root.store is None:
        return []
    uid_ranges = _ranges(m.uid_map, m, ctx, "uid", ctx.uid, ctx.subuid)
    gid_ranges = _ranges(m.gid_map, m, ctx, "gid", ctx.gid, ctx.subgid)
    if not (_moves(uid_ranges) or _moves(gid_ranges)):
        return []  # each id is itself: the layers show their owners as they are
    return [p.IdmapLayers(store=m.root.store, uid_ranges=uid_ranges, gid_ranges=gid_ranges)]


def _root_step(m: Manifest, root: str, userns: bool) -> p.Step:
    if m.root.disk is not None:
        if userns:
            raise _error(m, "root.image", "a disk image needs root and no user namespace")
        if m.root.upper is not None:
            raise _error(m, "root.upper", "keeps an OCI image's changes, not a disk image's")
        return p.DiskRoot(
            path=root,
            source=m.root.disk,
            tmpfs=_tmpfs_data(TMP_TMPFS, size=m.root.size),
            flags=("nodev",),
        )
    if m.root.layers:
        return p.ImageRoot(
            path=root,
            layers=m.root.layers,
            digest=m.root.digest or "",
            upper=m.root.upper,
            tmpfs="" if m.root.upper else _tmpfs_data(TMP_TMPFS, size=m.root.size),
            userxattr=userns,
            flags=("nodev",),
        )
    if m.root.size is not None and not m.root.ephemeral:
        raise _error(
            m, "root.size", "bounds the ephemeral root's changes: it needs ephemeral: true"
        )
    # nodev: a device node made in the root cannot be opened (see _devices).
    if not m.root.ephemeral:
        return p.BindRoot(path=root, flags=("nodev",))
    return p.EphemeralRoot(
        path=root, tmpfs=_tmpfs_data(TMP_TMPFS, size=m.root.size), flags=("nodev",)
    )


def _root_overlays(m: Manifest) -> list[int]:
    """The mounts that stack a directory over the whole root: an aufs (or
    overlay) at `/`, a copy-on-write root as the original's examples make one.

    They come right after the root, before /proc, /sys, /dev and /run: an
    overlay mounted over `/` after those would hide them.  The original man
    page's form names the root by its host path (`--chroot DIR --mount
    aufs:OVERLAY:DIR`); inside the container that path means a directory of
    the same name *in* the root, which pflask would have made there, so an
    aufs target equal to the root's path is the root, `/`.
    """
    found = []
    for index, mount in enumerate(m.mounts):
        target = container_path(mount.target)
        root = m.root.path
        if isinstance(mount, AufsMount) and root is not None and target == container_path(root):
            target = "/"
        if isinstance(mount, (AufsMount, OverlayMount)) and target == "/":
            found.append(index)
    return found


def _tmpfs_data(defaults: tuple[tuple[str, str], ...], **given: object) -> str:
    """tmpfs options: `defaults`, each replaced by the value `given` for it, if any."""
    options = dict(defaults)
    options.update((key, str(value)) for key, value in given.items() if value is not None)
    return ",".join(f"{key}={value}" for key, value in options.items())


def _system_tmpfs(m: Manifest) -> dict[str, int]:
    """The tmp mounts that replace pflask's own /run or /dev/shm: {target: index}.

    A tmp mount at /run or /dev/shm is how a manifest changes their bounds
    (`{type: tmp, target: /dev/shm, size: 2G}`): it takes the place of
    pflask's mount instead of stacking a second tmpfs on an empty one, and
    keeps pflask's options for what it does not say (mode, nosuid, nodev,
    the inode cap).  Only with a root of its own: the host's root gets no
    /run or /dev/shm from pflask.
    """
    return {container_path(m.mounts[i].target): i for i in _replacing_system_tmpfs(m)}


def _replacing_system_tmpfs(m: Manifest) -> list[int]:
    """The indexes of the tmp mounts at /run or /dev/shm, in order: the last
    at each target replaces pflask's, the others are not mounted (stacked,
    the last one is all the container would see of them anyway)."""
    if m.root.path is None:
        return []
    return [
        index
        for index, mount in enumerate(m.mounts)
        if isinstance(mount, TmpMount) and container_path(mount.target) in SYSTEM_TMPFS
    ]


def _system_tmpfs_step(m: Manifest, target: str, replaced: dict[str, int]) -> p.MountFs:
    flags: tuple[str, ...] = ("nosuid", "nodev")
    index = replaced.get(target)
    if index is None:
        return p.MountFs(
            fstype="tmpfs", target=target, flags=flags, data=_tmpfs_data(SYSTEM_TMPFS[target])
        )
    mount = m.mounts[index]
    assert isinstance(mount, TmpMount)
    extra = (*(("ro",) if mount.readonly else ()), *mount.flags)
    data = _tmpfs_data(
        SYSTEM_TMPFS[target], mode=mount.mode, size=mount.size, uid=mount.uid, gid=mount.gid
    )
    return p.MountFs(
        fstype="tmpfs", target=target, flags=tuple(dict.fromkeys((*flags, *extra))), data=data
    )


def _system_mounts(
    m: Manifest, userns: bool, net: bool, boot: bool, delegated: bool
) -> list[p.Step]:
    """What a real OS expects under a root; with the host's root, only a new /proc.

    `boot`: an init boots, which gets a console whatever pflask's stdin is.

    `delegated`: the container has a cgroup of its own behind a cgroup
    namespace and boots an init that manages it, so cgroup2 is mounted
    read-write; it can write only below its own group, which is the root of
    what it sees.
    """
    proc_flags = ("nosuid", "nodev", "noexec")
    if m.root.path is None:
        if not m.namespaces.pid:
            return []
        return [p.MountFs(fstype="proc", target="/proc", flags=proc_flags, fallback_bind="/proc")]
    # sysfs can be mounted in a user namespace only together with a network
    # namespace it owns; otherwise the host's /sys is bound read-only.
    sys_fallback = "/sys" if userns and not net else None
    steps: list[p.Step] = [
        p.MountFs(
            fstype="proc",
            target="/proc",
            flags=proc_flags,
            fallback_bind=None if m.namespaces.pid else "/proc",
        ),
        p.MountFs(
            fstype="sysfs",
            target="/sys",
            flags=("ro", "nosuid", "nodev", "noexec"),
            fallback_bind=sys_fallback,
        ),
    ]
    if m.namespaces.cgroup:
        steps.append(
            p.MountFs(
                fstype="cgroup2",
                target="/sys/fs/cgroup",
                flags=(*(() if delegated else ("ro",)), "nosuid", "nodev", "noexec"),
            )
        )
    replaced = _system_tmpfs(m)
    pts_data = "newinstance,ptmxmode=0666,mode=0620" + ("" if userns else ",gid=5")
    steps += [
        # nodev: the standard nodes are bound from the host's /dev
        # (DevNodes), and a node made here cannot be opened.
        p.MountFs(
            fstype="tmpfs",
            target="/dev",
            flags=("nosuid", "nodev", "strictatime"),
            data="mode=755,size=65536k",
        ),
        p.DevNodes(target="/dev", nodes=DEV_NODES),
        p.MountFs(fstype="devpts", target="/dev/pts", flags=("nosuid", "noexec"), data=pts_data),
        p.Symlink(value="pts/ptmx", path="/dev/ptmx"),
        *([p.Console(boot=boot)] if m.terminal != "false" else []),
        _system_tmpfs_step(m, "/dev/shm", replaced),
    ]
    if m.namespaces.ipc:
        steps.append(
            p.MountFs(fstype="mqueue", target="/dev/mqueue", flags=("nosuid", "nodev", "noexec"))
        )
    steps += [
        p.Symlink(value="/proc/self/fd", path="/dev/fd"),
        p.Symlink(value="/proc/self/fd/0", path="/dev/stdin"),
        p.Symlink(value="/proc/self/fd/1", path="/dev/stdout"),
        p.Symlink(value="/proc/self/fd/2", path="/dev/stderr"),
        _system_tmpfs_step(m, "/run", replaced),
    ]
    return steps


def _nodev(flags: tuple[str, ...]) -> tuple[str, ...]:
    """A user mount's flags with nodev: no device node on it can be opened.

    A bind whose source is itself a device node is how a manifest hands a
    device to the container, and keeps it usable (mounts.bind).
    """
    return flags if "nodev" in flags else (*flags, "nodev")


def _user_mount(m: Manifest, index: int, mount: Mount, userns: bool) -> p.Step:
    target = container_path(mount.target)
    flags = _nodev(mount.flags)
    if isinstance(mount, BindMount):
        return p.Bind(
            source=mount.source,
            target=target,
            readonly=mount.readonly,
            recursive=mount.recursive,
            flags=flags,
            optional=mount.optional,
        )
    if isinstance(mount, FsMount):
        return p.MountFs(
            fstype=mount.fstype,
            target=target,
            flags=mount.flags,
            data=mount.data,
            source=mount.source,
            fallback_bind=mount.fallback_bind,
        )
    if isinstance(mount, TmpMount):
        data = _tmpfs_data(
            TMP_TMPFS, size=mount.size, mode=mount.mode, uid=mount.uid, gid=mount.gid
        )
        flags = (*(("ro",) if mount.readonly else ()), *flags)
        return p.MountFs(fstype="tmpfs", target=target, flags=flags, data=data)
    if isinstance(mount, OverlayMount):
        return p.Overlay(
            target=target,
            lower=mount.lower,
            upper=mount.upper,
            work=mount.work,
            readonly=mount.readonly,
            flags=flags,
            tmpfs=_tmpfs_data(TMP_TMPFS) if mount.upper is None else "",
        )
    if isinstance(mount, AufsMount):
        # The original's aufs put a directory over the target's own content.
        # overlayfs also needs a work directory on the upper's filesystem:
        # pflask makes one beside the source and removes it afterwards.
        parent, base = posixpath.split(mount.source.rstrip("/") or "/")
        work = mount.work or posixpath.join(parent, f".{base}.pflask-work")
        return p.Overlay(
            target=target,
            lower=(target,),
            upper=mount.source,
            work=work,
            flags=flags,
            lower_inside=True,
            temporary_work=mount.work is None,
        )
    assert isinstance(mount, LoopMount)
    if userns:
        raise _error(
            m,
            f"mounts[{index}]",
            "loop mounts need root without a user namespace (the kernel refuses to mount "
            "block devices from one)",
        )
    return p.LoopMount(
        source=mount.source,
        target=target,
        fstype=mount.fstype,
        readonly=mount.readonly,
        options=mount.options,
        flags=flags,
    )


def _oci_hooks(m: Manifest) -> list[p.Step]:
    """The bundle's prestart and createRuntime hooks, a host step before the
    container goes on to its root (poststart and poststop are pflask-oci's)."""
    if m.oci is None:
        return []
    early = [h for h in m.oci.hooks if h.stage in ("prestart", "createRuntime")]
    if not early:
        return []
    return [
        p.Hooks(
            container=m.name,
            bundle=posixpath.dirname(m.source),
            hooks=tuple((h.path, h.args, h.env, h.timeout or 0) for h in early),
        )
    ]


def _container_hooks(m: Manifest, stage: str) -> list[p.Step]:
    """The bundle's hooks of `stage` that its container's process runs."""
    hooks = [h for h in m.oci.hooks if h.stage == stage] if m.oci is not None else []
    if not hooks:
        return []
    return [
        p.ContainerHooks(
            stage=stage,
            container=m.name,
            bundle=posixpath.dirname(m.source),
            hooks=tuple((h.path, h.args, h.env, h.timeout or 0) for h in hooks),
        )
    ]


def _oci_dev(m: Manifest, userns: bool) -> list[p.Step]:
    """What runc adds to a bundle's mounts: with /dev a tmpfs of its own, the
    standard nodes and links (and the console, when the process has a
    terminal), then the bundle's linux.devices; the kernel parameters next,
    while /proc/sys is still writable."""
    assert m.oci is not None
    steps: list[p.Step] = []
    if m.oci.dev_defaults:
        steps += [
            p.DevNodes(target="/dev", nodes=DEV_NODES),
            p.Symlink(value="pts/ptmx", path="/dev/ptmx"),
            p.Symlink(value="/proc/self/fd", path="/dev/fd"),
            p.Symlink(value="/proc/self/fd/0", path="/dev/stdin"),
            p.Symlink(value="/proc/self/fd/1", path="/dev/stdout"),
            p.Symlink(value="/proc/self/fd/2", path="/dev/stderr"),
        ]
        if m.terminal == "true":
            steps.append(p.Console())
    if m.oci.device_nodes:
        steps.append(p.DeviceNodes(nodes=m.oci.device_nodes, bind=userns))
    if m.oci.sysctl:
        steps.append(p.Sysctl(settings=m.oci.sysctl))
    return steps


def _oci_identity(oci: Oci) -> list[p.Step]:
    """An OCI process's ids and its five capability sets, as given."""
    bounding, effective, permitted, inheritable, ambient = oci.capability_sets
    return [
        p.SetIds(uid=oci.uid, gid=oci.gid, groups=oci.groups, umask=oci.umask, keep_caps=True),
        p.CapabilitySets(
            bounding=bounding,
            effective=effective,
            permitted=permitted,
            inheritable=inheritable,
            ambient=ambient,
        ),
    ]


def _environment(m: Manifest) -> p.Environment:
    if m.oci is not None:  # exactly the bundle's process.env
        return p.Environment(clear=True, set=m.env_set)
    clear = m.env_clear if m.env_clear is not None else m.root.path is not None
    values: dict[str, str] = {"container": "pflask"}
    if clear:
        values["PATH"] = STANDARD_PATH
    values.update(m.env_set)
    return p.Environment(
        clear=clear,
        keep=tuple(dict.fromkeys(("TERM", *m.env_keep))) if clear else (),
        set=tuple(values.items()),
        user_vars=clear or m.user is not None,
    )
