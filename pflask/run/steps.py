"""The container's steps: one handler per step kind, and what each needs imported.

`HANDLERS` is the one table from a container step's kind to the function
that carries it out (`run(step, container)`, the step's record and the
process doing it, pflask.run.container.Container) and to the pflask modules it
uses.  Those modules are imported before the container's first process is
forked (`preload`): after pivot_root(2), pflask's own files are out of reach.
The supervisor's host steps have their own table (pflask.run.supervisor).

Handlers carry out what the compiler decided; they decide nothing.
"""

from __future__ import annotations

import os

from pflask.kernel import libc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import Any

    from pflask.compile import plan
    from pflask.run.container import Container


class Handler:
    """How one step kind is carried out: `run`, after importing `modules`
    (pflask's), then calling `warm` (heavier imports a module does on demand)."""

    __slots__ = ("modules", "run", "warm")

    def __init__(
        self,
        run: Callable[[Any, Container], None],
        modules: tuple[str, ...] = (),
        warm: Callable[[], None] | None = None,
    ) -> None:
        self.run = run
        self.modules = modules
        self.warm = warm


def preload(kinds: Iterable[str]) -> None:
    """Import what the steps of `kinds` need, now, while pflask's files are reachable."""
    handlers = [HANDLERS[kind] for kind in set(kinds) if kind in HANDLERS]
    for name in sorted({name for handler in handlers for name in handler.modules}):
        __import__(f"pflask.{name}")  # importlib itself would cost more than it saves
    for handler in handlers:
        if handler.warm is not None:
            handler.warm()
    import select  # noqa: F401  (used by the fork step after pivot_root)


# --- processes and namespaces ----------------------------------------------------------


def unshare(step: plan.Unshare, c: Container) -> None:
    libc.unshare(libc.namespace_flags(step.namespaces))


def join_namespaces(step: plan.JoinNamespaces, c: Container) -> None:
    for name, path in step.paths:
        # O_NONBLOCK, O_NOCTTY: a FIFO or a terminal named there does nothing;
        # setns(2) then refuses what is not a namespace of that type (EINVAL).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        try:
            libc.setns(fd, libc.namespace_flags((name,)), path)
        finally:
            os.close(fd)


def await_host(step: plan.AwaitHost, c: Container) -> None:
    c.await_go()


def become_root(step: plan.BecomeRoot, c: Container) -> None:
    try:
        os.setgroups([])  # the host's groups mean nothing in here
    except PermissionError:
        pass  # setgroups denied: an ordinary user's own gid_map, no groups held
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)


def idmap_layers(step: plan.IdmapLayers, c: Container) -> None:
    from pflask.run import idmap, mounts

    userns = idmap.userns_fd(step.uid_ranges, step.gid_ranges)
    try:
        mounts.idmap_tree(step.store, userns)
    finally:
        os.close(userns)


def fork(step: plan.Fork, c: Container) -> None:
    c.fork_pid1()


def reaper(step: plan.Reaper, c: Container) -> None:
    c.reap = True  # the Exec step spawns the command and PID 1 stays


def exec_(step: plan.Exec, c: Container) -> None:
    c.start(step.argv)


# --- mounts and the root -----------------------------------------------------------------


def propagation(step: plan.Propagation, c: Container) -> None:
    from pflask.run import mounts

    mounts.make_private(step.mode)


def bind_root(step: plan.BindRoot, c: Container) -> None:
    from pflask.run import mounts

    mounts.bind_root(step.path, step.flags)
    c.root = c.kept_root = mounts.Root(step.path)


def ephemeral_root(step: plan.EphemeralRoot, c: Container) -> None:
    from pflask.run import mounts

    mounts.ephemeral_root(step.path, step.tmpfs, step.flags)
    c.root = mounts.Root(step.path)


def image_root(step: plan.ImageRoot, c: Container) -> None:
    from pflask.run import mounts

    mounts.image_root(step.path, step.layers, step.upper, step.tmpfs, step.userxattr, step.flags)
    c.root = mounts.Root(step.path)


def disk_root(step: plan.DiskRoot, c: Container) -> None:
    from pflask.run import loop, mounts

    loop.disk_root(step.path, step.source, step.tmpfs, step.flags)
    c.root = mounts.Root(step.path)


def mount(step: plan.MountFs, c: Container) -> None:
    from pflask.run import mounts

    mounts.mount_fs(
        c.the_root(),
        step.fstype,
        step.target,
        step.flags,
        step.data,
        step.fallback_bind,
        source=step.source,
    )


def bind(step: plan.Bind, c: Container) -> None:
    from pflask.run import mounts

    mounts.bind(
        c.the_root(),
        step.source,
        step.target,
        step.readonly,
        step.recursive,
        step.flags,
        step.optional,
        step.inside,
    )


def overlay(step: plan.Overlay, c: Container) -> None:
    from pflask.run import mounts

    mounts.overlay(
        c.the_root(),
        step.target,
        step.lower,
        step.upper,
        step.work,
        step.readonly,
        step.flags,
        step.lower_inside,
        step.temporary_work,
        step.tmpfs,
    )


def loop(step: plan.LoopMount, c: Container) -> None:
    from pflask.run import loop

    loop.mount_image(
        c.the_root(), step.source, step.target, step.fstype, step.readonly, step.options, step.flags
    )


def dev_nodes(step: plan.DevNodes, c: Container) -> None:
    from pflask.run import mounts

    mounts.dev_nodes(c.the_root(), step.target, step.nodes)


def symlink(step: plan.Symlink, c: Container) -> None:
    from pflask.run import mounts

    mounts.symlink(c.the_root(), step.value, step.path)


def console(step: plan.Console, c: Container) -> None:
    """A pty from the container's devpts: the slave onto /dev/console, the master to S."""
    if c.channel < 0:
        return  # pflask runs without a terminal this time
    from pflask.run import mounts, terminal

    root = c.the_root()
    master = root.open(step.ptmx, os.O_RDWR | os.O_NOCTTY)
    try:
        slave = terminal.peer(master)
        mounts.bind_file(root, slave, step.path, mode=0o600)
        terminal.send_fd(c.channel, master)
    finally:
        os.close(master)
    os.close(c.channel)
    c.channel = -1
    c.console = slave
    c.use_console()


def boot_id(step: plan.BootId, c: Container) -> None:
    from pflask.run import boot

    boot.fresh_boot_id(c.the_root(), step.scratch, step.path)


def etc_hostname(step: plan.EtcHostname, c: Container) -> None:
    from pflask.run import boot

    boot.etc_hostname(c.the_root(), step.scratch, step.path, step.name)


def mask_paths(step: plan.MaskPaths, c: Container) -> None:
    from pflask.run import mounts

    mounts.mask(c.the_root(), step.paths)


def readonly_paths(step: plan.ReadonlyPaths, c: Container) -> None:
    from pflask.run import mounts

    mounts.make_readonly(c.the_root(), step.paths)


def remount_root(step: plan.RemountRoot, c: Container) -> None:
    from pflask.run import mounts

    mounts.remount_root_readonly(c.the_root())


def pivot_root(step: plan.PivotRoot, c: Container) -> None:
    from pflask.run import mounts

    root = c.the_root()
    c.report_made()  # every mount point is made by now
    root.close()
    mounts.pivot_root(root.path)
    c.root = c.kept_root = None


# --- identity, network, limits -----------------------------------------------------------


def hostname(step: plan.Hostname, c: Container) -> None:
    libc.sethostname(step.name)


def loopback(step: plan.Loopback, c: Container) -> None:
    from pflask.run import network

    network.loopback_up()


def configure_link(step: plan.ConfigureLink, c: Container) -> None:
    from pflask.run import network

    network.configure(step.name, step.addresses, step.gateways, step.mtu, step.mac, step.up)


def _pyroute2() -> None:
    """pyroute2 itself, inherited by the container's processes (see network.preload)."""
    from pflask.run import network

    network.preload()


def rlimits(step: plan.Rlimits, c: Container) -> None:
    from pflask.run import rlimits

    rlimits.apply(step.limits)


def no_new_privs(step: plan.NoNewPrivs, c: Container) -> None:
    from pflask.run import rlimits

    rlimits.set_no_new_privs()


def seccomp(step: plan.Seccomp, c: Container) -> None:
    # Programs the compiler exported with libseccomp: no libseccomp here.
    for program in step.programs:
        libc.seccomp_set_mode_filter(bytes.fromhex(program))


def switch_user(step: plan.SwitchUser, c: Container) -> None:
    from pflask.run import users

    user = users.lookup(step.user)
    if step.keep_caps:
        from pflask.kernel import capabilities

        capabilities.prepare_keep()
    try:
        os.setgroups(list(user.groups))
    except PermissionError:
        # setgroups(2) is denied in a user namespace whose gid_map the
        # unprivileged user wrote itself; then the list cannot change, which
        # is only fine when no group beyond the primary one was wanted.
        if set(user.groups) - {user.gid}:
            raise
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    if c.dumpable:
        from pflask.run.hygiene import PR_SET_DUMPABLE

        # Changing uid made us non-dumpable, and a reaper PID 1 never
        # execs to become dumpable again: without this, `pflask exec`
        # (setns(2) on a pidfd needs ptrace read access) could not enter
        # the container as its ordinary owner (see hygiene.seclude).
        libc.prctl(PR_SET_DUMPABLE, 1)
    c.user = user


def set_ids(step: plan.SetIds, c: Container) -> None:
    """The OCI process's ids, numbers as given: no lookup in the container's files."""
    if step.keep_caps:
        from pflask.kernel import capabilities

        capabilities.prepare_keep()
    try:
        os.setgroups(list(step.groups))
    except PermissionError:
        # setgroups(2) is denied in a user namespace whose gid_map its
        # unprivileged owner wrote: fine only when no group was asked for.
        if step.groups:
            raise
    os.setresgid(step.gid, step.gid, step.gid)
    os.setresuid(step.uid, step.uid, step.uid)
    if step.umask is not None:
        os.umask(step.umask)


def capability_sets(step: plan.CapabilitySets, c: Container) -> None:
    from pflask.kernel import capabilities

    capabilities.apply_sets(
        step.bounding, step.effective, step.permitted, step.inheritable, step.ambient
    )


def sysctl(step: plan.Sysctl, c: Container) -> None:
    """Each key under the root's /proc/sys (resolved in the root, no symlink followed out)."""
    root = c.the_root()
    for key, value in step.settings:
        fd = root.open("/proc/sys/" + key.replace(".", "/"), os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        except OSError as e:
            raise libc.SyscallError("write(2)", e.errno or 0, f"/proc/sys for {key}") from None
        finally:
            os.close(fd)


def oom_score_adj(step: plan.OomScoreAdj, c: Container) -> None:
    """Before the root is entered: /proc is the host's, not one the bundle chose."""
    path = "/proc/self/oom_score_adj"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(step.value).encode())
        finally:
            os.close(fd)
    except OSError as e:
        raise libc.SyscallError("write(2)", e.errno or 0, f"{path} ({step.value})") from None


def device_nodes(step: plan.DeviceNodes, c: Container) -> None:
    from pflask.run import mounts

    root = c.the_root()
    for path, kind, major, minor, mode, uid, gid in step.nodes:
        if step.bind:
            mounts.bind_file(root, path, path, mode=mode)
        else:
            mounts.device_node(root, path, kind, major, minor, mode, uid, gid)


def _hook_modules() -> None:
    """What running a hook imports, loaded while pflask's files are reachable
    (startContainer hooks run after the root is entered)."""
    import json  # noqa: F401
    import subprocess  # noqa: F401


def container_hooks(step: plan.ContainerHooks, c: Container) -> None:
    from pflask.run import ocistate

    status = "creating" if step.stage == "createContainer" else "created"
    state = {"id": step.container, "pid": os.getpid(), "bundle": step.bundle, "status": status}
    for path, args, env, timeout in step.hooks:
        ocistate.run_hook(path, args, env, timeout, state, step.stage)


def start_fifo(step: plan.StartFifo, c: Container) -> None:
    c.open_start_fifo(step.path)


def await_start(step: plan.AwaitStart, c: Container) -> None:
    c.await_start()


def session_keyring(step: plan.SessionKeyring, c: Container) -> None:
    libc.join_session_keyring()


def capabilities(step: plan.Capabilities, c: Container) -> None:
    from pflask.kernel import capabilities

    capabilities.apply(step.keep, step.ambient)


def environment(step: plan.Environment, c: Container) -> None:
    env = (
        {k: os.environ[k] for k in step.keep if k in os.environ} if step.clear else dict(os.environ)
    )
    if step.user_vars:
        if c.user is not None:
            name, home = c.user.name, c.user.home
        else:
            from pflask.run import users

            name, home = users.name_and_home(os.getuid())
        env.update(USER=name, LOGNAME=name, HOME=home)
    env.update(step.set)
    c.env = env


def chdir(step: plan.Chdir, c: Container) -> None:
    os.chdir(step.path)


HANDLERS: dict[str, Handler] = {
    "idmap_layers": Handler(idmap_layers, ("run.idmap", "run.mounts")),
    "unshare": Handler(unshare),
    "join_namespaces": Handler(join_namespaces),
    "await_host": Handler(await_host),
    "become_root": Handler(become_root),
    "fork": Handler(fork),
    "reaper": Handler(reaper),
    "exec": Handler(exec_),
    "propagation": Handler(propagation, ("run.mounts",)),
    "bind_root": Handler(bind_root, ("run.mounts",)),
    "ephemeral_root": Handler(ephemeral_root, ("run.mounts",)),
    "image_root": Handler(image_root, ("run.mounts",)),
    "disk_root": Handler(disk_root, ("run.loop", "run.mounts")),
    "mount": Handler(mount, ("run.mounts",)),
    "bind": Handler(bind, ("run.mounts",)),
    "overlay": Handler(overlay, ("run.mounts",)),
    "loop": Handler(loop, ("run.loop", "run.mounts")),
    "dev_nodes": Handler(dev_nodes, ("run.mounts",)),
    "symlink": Handler(symlink, ("run.mounts",)),
    "console": Handler(console, ("run.mounts", "run.terminal")),
    "boot_id": Handler(boot_id, ("run.boot",)),
    "etc_hostname": Handler(etc_hostname, ("run.boot",)),
    "mask_paths": Handler(mask_paths, ("run.mounts",)),
    "readonly_paths": Handler(readonly_paths, ("run.mounts",)),
    "remount_root": Handler(remount_root, ("run.mounts",)),
    "pivot_root": Handler(pivot_root, ("run.mounts",)),
    "hostname": Handler(hostname),
    "loopback": Handler(loopback, ("run.network",)),
    "configure_link": Handler(configure_link, ("run.network",), _pyroute2),
    "rlimits": Handler(rlimits, ("run.rlimits",)),
    "no_new_privs": Handler(no_new_privs, ("run.rlimits",)),
    "seccomp": Handler(seccomp),
    "switch_user": Handler(switch_user, ("run.users", "kernel.capabilities")),
    "set_ids": Handler(set_ids, ("kernel.capabilities",)),
    "capability_sets": Handler(capability_sets, ("kernel.capabilities",)),
    "sysctl": Handler(sysctl, ("run.mounts",)),
    "oom_score_adj": Handler(oom_score_adj),
    "device_nodes": Handler(device_nodes, ("run.mounts",)),
    "container_hooks": Handler(container_hooks, ("run.ocistate",), _hook_modules),
    "start_fifo": Handler(start_fifo),
    "await_start": Handler(await_start),
    "session_keyring": Handler(session_keyring),
    "capabilities": Handler(capabilities, ("kernel.capabilities",)),
    "environment": Handler(environment, ("run.users",)),
    "chdir": Handler(chdir),
}
