"""Carry out a plan: start the container's processes, run each step, supervise.

The process model (docs/architecture.md has the picture):

- S, the supervisor, stays in the host's namespaces.  It forks C1, which
  unshares the namespaces and waits; S runs the host steps (id maps, cgroup,
  links) against C1's pid and says "go".
- With a PID namespace C1 forks C2, PID 1 of the new namespace, reports its
  pid and exits.  S is a child subreaper, so C2 becomes S's child; C2 then
  arms PR_SET_PDEATHSIG (it would have fired at C1's exit) and checks S is
  still alive.  Without a PID namespace C1 itself goes on.
- The container process runs the container steps in order and finally execs.
  Failures travel back as one line on a close-on-exec pipe, so EOF without a
  line means the command started.
- S forwards signals, escalates a stop to SIGKILL after the timeout, waits,
  cleans up what the host steps made, and returns the command's status.

No policy lives here: the compiler decided every step and its order.
"""

from __future__ import annotations

import os
import sys
import time

from pflask import libc, plan
from pflask.errors import EXIT_NOEXEC, EXIT_NOTFOUND, EXIT_SETUP, SetupError
from pflask.signals import FORWARDED, signal_number

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal  # typeshed describes the same functions there
    from collections.abc import Callable
    from typing import Any

    from pflask.mounts import Root
    from pflask.users import User
else:
    import _signal


# The modules each step needs.  They are imported before the fork: after
# pivot_root(2) pflask's own files are out of reach.
MODULES = {
    "uid_map": "idmap",
    "gid_map": "idmap",
    "cgroup": "cgroups",
    "veth": "network",
    "move_link": "network",
    "macvlan": "network",
    "loopback": "network",
    "configure_link": "network",
    "propagation": "mounts",
    "bind_root": "mounts",
    "ephemeral_root": "mounts",
    "mount": "mounts",
    "bind": "mounts",
    "overlay": "mounts",
    "loop": "loop",
    "dev_nodes": "mounts",
    "symlink": "mounts",
    "mask_paths": "mounts",
    "readonly_paths": "mounts",
    "remount_root": "mounts",
    "pivot_root": "mounts",
    "rlimits": "rlimits",
    "no_new_privs": "rlimits",
    "switch_user": "users",
    "capabilities": "capabilities",
    "environment": "users",
}


def run(the_plan: plan.Plan, verbose: bool = False) -> int:
    """Run the plan's container in the foreground and return its exit status."""
    preload(the_plan)
    return Supervisor(the_plan, verbose).run()


def preload(the_plan: plan.Plan) -> None:
    """Import what the steps need now, while pflask's files are reachable."""
    import importlib

    for name in sorted({MODULES[s.kind] for s in the_plan.steps if s.kind in MODULES}):
        importlib.import_module(f"pflask.{name}")
    if any(s.kind in ("switch_user", "capabilities") for s in the_plan.steps):
        importlib.import_module("pflask.capabilities")
    if any(s.kind == "configure_link" for s in the_plan.steps):
        from pflask import network

        network.preload()  # pyroute2 itself, inherited by the container's processes
    import select  # noqa: F401  (used by the fork step after pivot_root)


def _trace(verbose: bool, number: int, step: plan.Step) -> None:
    if verbose:
        os.write(2, f"pflask: step {number}: [{step.where}] {step.describe()}\n".encode())


def _step_error(number: int, step: plan.Step, error: BaseException) -> str:
    return f"step {number} ({step.describe()}): {error}"


def _exit_status(status: int) -> int:
    """A wait status as a shell would report it: the code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


class Supervisor:
    """S: forks the container, runs the host steps, forwards signals, cleans up."""

    def __init__(self, the_plan: plan.Plan, verbose: bool) -> None:
        self.plan = the_plan
        self.verbose = verbose
        self.cleanups: list[Callable[[], None]] = []
        self.pid = 0  # the process signals go to: C1, then the container's PID 1
        self.stop_deadline: float | None = None
        self.stop_signal = signal_number(the_plan.stop_signal)
        self.links: Any = None
        self.group: Any = None
        self.wakeup_r = -1

    # -- signals -------------------------------------------------------------------------

    def _forward(self, signum: int, _frame: object) -> None:
        if not self.pid:
            return
        if signum == _signal.SIGTERM:
            signum = self.stop_signal
            if self.stop_deadline is None:
                self.stop_deadline = time.monotonic() + self.plan.stop_timeout
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def _install_handlers(self) -> None:
        for signum in FORWARDED:
            _signal.signal(signum, self._forward)

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> int:
        steps = self.plan.steps
        forks = any(isinstance(s, plan.Fork) for s in steps)
        if forks:
            libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
        control_r, control_w = os.pipe2(os.O_CLOEXEC)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        # Signals wake the select loop through this pipe, so a stop request's
        # deadline is honoured even while pflask is blocked waiting.
        self.wakeup_r, wakeup_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        _signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
        supervisor = os.getpid()
        self._install_handlers()
        child = os.fork()
        if child == 0:
            _signal.set_wakeup_fd(-1)
            for fd in (control_w, status_r, self.wakeup_r, wakeup_w):
                os.close(fd)
            Container(self.plan, self.verbose, control_r, status_w, supervisor).run()
            os._exit(EXIT_SETUP)  # not reached: run() execs or exits
        os.close(control_r)
        os.close(status_w)
        self.pid = child
        reader = _Lines(status_r, self._select)
        try:
            return self._supervise(child, control_w, reader, forks)
        finally:
            _signal.set_wakeup_fd(-1)
            for fd in (control_w, self.wakeup_r, wakeup_w):
                os.close(fd)
            reader.close()
            self._cleanup()

    def _select(self, fd: int) -> None:
        """Wait until `fd` is readable; meanwhile enforce a stop request's deadline."""
        import select

        while True:
            timeout = None
            if self.stop_deadline is not None:
                timeout = max(0.0, self.stop_deadline - time.monotonic())
            ready, _, _ = select.select([fd, self.wakeup_r], [], [], timeout)
            if self.wakeup_r in ready:
                try:
                    os.read(self.wakeup_r, 256)
                except BlockingIOError:
                    pass
            if fd in ready:
                return
            if self.stop_deadline is not None and time.monotonic() >= self.stop_deadline:
                self.stop_deadline = None
                _kill(self.pid)

    def _supervise(self, child: int, control_w: int, reader: _Lines, forks: bool) -> int:
        message = reader.line()  # "unshared", or an error from the first step
        if message != "unshared":
            return self._failed(child, message)
        try:
            for number, step in enumerate(self.plan.steps, 1):
                if step.where == plan.HOST:
                    _trace(self.verbose, number, step)
                    try:
                        self._host_step(step, child)
                    except (OSError, ValueError, LookupError) as e:
                        raise SetupError(_step_error(number, step, e)) from None
        except SetupError:
            _kill(child)
            self._wait(child)
            raise
        if self.links is not None:
            self.links.release()  # no netlink sockets held while the container runs
        os.write(control_w, b"g")
        container = child
        if forks:
            message = reader.line()
            if not message.startswith("pid "):
                return self._failed(child, message)
            container = int(message[4:])
            self.pid = container
            os.waitpid(child, 0)  # C1 exits once it has forked PID 1
            os.write(control_w, b"a")  # PID 1 has been adopted: it may arm PDEATHSIG
        error = reader.line()  # EOF: the command was executed
        if error:
            self._report(error)
        status = self._wait(container)
        if error:
            return int(error.split(" ", 1)[0])
        if self.group is not None and self.group.oom_killed():
            print(
                f"pflask: the container hit its memory limit and the kernel's OOM killer "
                f"killed a process in it (exit status {_exit_status(status)})",
                file=sys.stderr,
            )
        return _exit_status(status)

    def _failed(self, child: int, message: str) -> int:
        """The container could not be set up: report, reap, exit 125 (126/127)."""
        if message:
            self._report(message)
            code = int(message.split(" ", 1)[0])
        else:
            print("pflask: the container's process died during setup", file=sys.stderr)
            code = EXIT_SETUP
        _kill(child)
        self._wait(child)
        return code

    def _report(self, line: str) -> None:
        print(f"pflask: {line.split(' ', 1)[1]}", file=sys.stderr)

    def _wait(self, pid: int) -> int:
        """Wait for `pid` (a pidfd in the select loop) and return its wait status."""
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            return os.waitpid(pid, 0)[1]
        try:
            self._select(pidfd)
            return os.waitpid(pid, 0)[1]
        finally:
            os.close(pidfd)

    # -- host steps --------------------------------------------------------------------------

    def _host_step(self, step: plan.Step, pid: int) -> None:
        if isinstance(step, plan.UidMap):
            from pflask import idmap

            idmap.write_map(pid, "uid", step.ranges, step.helper)
        elif isinstance(step, plan.GidMap):
            from pflask import idmap

            if step.setgroups == "deny":
                idmap.deny_setgroups(pid)
            idmap.write_map(pid, "gid", step.ranges, step.helper)
        elif isinstance(step, plan.Cgroup):
            from pflask import cgroups

            cgroups.clean_stale()
            self.group = cgroups.create(
                step.name, step.controllers, step.memory, step.pids, step.cpu
            )
            self.cleanups.append(self.group.remove)
            self.group.attach(pid)
        else:
            links = self._links()
            if isinstance(step, plan.Veth):
                links.veth(step.host, step.name, pid, step.host_addresses, step.host_up)
            elif isinstance(step, plan.MoveLink):
                links.move(step.device, step.name, pid)
            elif isinstance(step, plan.MacvlanLink):
                links.macvlan(step.master, step.name, step.mode, pid, kind=step.link_kind)
            else:
                raise SetupError(f"unknown host step {step.kind}")

    def _links(self) -> Any:
        if self.links is None:
            from pflask import network

            self.links = network.HostLinks()
            self.cleanups.append(self.links.cleanup)
        return self.links

    def _cleanup(self) -> None:
        errors = []
        for action in reversed(self.cleanups):
            try:
                action()
            except Exception as e:  # report every failure, finish the rest
                errors.append(str(e))
        for step in self.plan.steps:
            if isinstance(step, plan.Overlay) and step.temporary_work and step.work:
                try:
                    from pflask.mounts import remove_tree

                    remove_tree(step.work)
                except OSError as e:
                    errors.append(f"removing work directory {step.work}: {e}")
        for error in errors:
            print(f"pflask: cleanup: {error}", file=sys.stderr)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, _signal.SIGKILL)
    except ProcessLookupError:
        pass


class _Lines:
    """Lines from the container's status pipe; "" at EOF."""

    def __init__(self, fd: int, wait: Callable[[int], None]) -> None:
        self.fd = fd
        self.wait = wait
        self.buffer = b""

    def line(self) -> str:
        while b"\n" not in self.buffer:
            self.wait(self.fd)
            chunk = os.read(self.fd, 4096)
            if not chunk:
                rest, self.buffer = self.buffer, b""
                return rest.decode(errors="replace")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace")

    def close(self) -> None:
        os.close(self.fd)


class Container:
    """The container side: C1, then PID 1, then (with a reaper) the command."""

    def __init__(
        self, the_plan: plan.Plan, verbose: bool, control: int, status: int, supervisor: int
    ) -> None:
        self.plan = the_plan
        self.verbose = verbose
        self.control = control
        self.status = status
        self.supervisor = supervisor
        self.root: Root | None = None
        self.user: User | None = None
        self.env: dict[str, str] | None = None
        self.command = 0  # the command's pid, once PID 1 has forked it

    def _send(self, text: str) -> None:
        os.write(self.status, (text + "\n").encode())

    def _fail(self, code: int, text: str) -> None:
        self._send(f"{code} {text}")
        os._exit(code)

    def _await(self, expected: bytes) -> None:
        """Block until the supervisor says `expected`; exit quietly if it is gone."""
        if os.read(self.control, 1) != expected:
            os._exit(EXIT_SETUP)

    def run(self) -> None:
        # Python's handlers and ignored signals must not leak into the container.
        for signum in (*FORWARDED, _signal.SIGPIPE, _signal.SIGXFSZ):
            _signal.signal(signum, _signal.SIG_DFL)
        libc.prctl(libc.PR_SET_PDEATHSIG, _signal.SIGKILL)
        if os.getppid() != self.supervisor:
            os._exit(EXIT_SETUP)
        steps = self.plan.steps
        number, first = 1, steps[0]
        try:
            assert isinstance(first, plan.Unshare)
            _trace(self.verbose, number, first)
            libc.unshare(libc.namespace_flags(first.namespaces))
        except OSError as e:
            self._fail(EXIT_SETUP, _step_error(number, first, e))
        self._send("unshared")
        self._await(b"g")
        os.setsid()  # Ctrl-C at the user's terminal reaches pflask only, which forwards it
        for number, step in enumerate(steps[1:], 2):
            if step.where == plan.HOST:
                continue
            _trace(self.verbose, number, step)
            try:
                self._step(step)
            except (OSError, LookupError, ValueError) as e:
                self._fail(EXIT_SETUP, _step_error(number, step, e))
            except Exception as e:  # a bug: still one line, still exit 125
                self._fail(EXIT_SETUP, _step_error(number, step, e) + f" ({type(e).__name__})")

    # -- the container steps --------------------------------------------------------------------

    def _step(self, step: plan.Step) -> None:
        handler = getattr(self, "_" + step.kind)
        handler(step)

    def _unshare(self, step: plan.Unshare) -> None:
        libc.unshare(libc.namespace_flags(step.namespaces))

    def _fork(self, step: plan.Fork) -> None:
        pid = os.fork()
        if pid:
            self._send(f"pid {pid}")
            os._exit(0)
        # PID 1 of the new namespace.  Its parent C1 exits now, so PDEATHSIG is
        # armed only after S has adopted us, then S's liveness is checked again.
        self._await(b"a")
        libc.prctl(libc.PR_SET_PDEATHSIG, _signal.SIGKILL)
        import select

        if select.select([self.control], [], [], 0)[0]:  # EOF: S died meanwhile
            os._exit(EXIT_SETUP)
        os.setsid()  # a session of its own, as its parent had
        # PID 1 gets no signal it has no handler for, so handle them from now
        # on: before the command exists a signal ends setup as it would have
        # ended the command; afterwards PID 1 passes it on (see _reaper).
        for signum in FORWARDED:
            _signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self.command:
            os._exit(128 + signum)
        try:
            os.kill(self.command, signum)
        except ProcessLookupError:
            pass

    def _root(self) -> Root:
        from pflask.mounts import Root

        if self.root is None:
            self.root = Root("/")
        return self.root

    def _propagation(self, step: plan.Propagation) -> None:
        from pflask import mounts

        mounts.make_private(step.mode)

    def _bind_root(self, step: plan.BindRoot) -> None:
        from pflask import mounts

        mounts.bind_root(step.path)
        self.root = mounts.Root(step.path)

    def _ephemeral_root(self, step: plan.EphemeralRoot) -> None:
        from pflask import mounts

        mounts.ephemeral_root(step.path)
        self.root = mounts.Root(step.path)

    def _mount(self, step: plan.MountFs) -> None:
        from pflask import mounts

        mounts.mount_fs(
            self._root(), step.fstype, step.target, step.flags, step.data, step.fallback_bind
        )

    def _bind(self, step: plan.Bind) -> None:
        from pflask import mounts

        mounts.bind(
            self._root(),
            step.source,
            step.target,
            step.readonly,
            step.recursive,
            step.flags,
            step.optional,
            step.inside,
        )

    def _overlay(self, step: plan.Overlay) -> None:
        from pflask import mounts

        mounts.overlay(
            self._root(),
            step.target,
            step.lower,
            step.upper,
            step.work,
            step.readonly,
            step.flags,
            step.lower_inside,
            step.temporary_work,
        )

    def _loop(self, step: plan.LoopMount) -> None:
        from pflask import loop, mounts

        root = self._root()
        fstype = loop.probe(step.source) if step.fstype == "auto" else step.fstype
        fd, device = loop.attach(step.source, step.readonly)
        try:
            target = root.make(step.target)
            try:
                flags = mounts.ms_flags(step.flags) | (libc.MS_RDONLY if step.readonly else 0)
                libc.mount(
                    device,
                    mounts.fd_path(target),
                    fstype,
                    flags,
                    step.options or None,
                    what=f"{step.source} ({device}, {fstype}) on {root.host_path(step.target)}",
                )
            finally:
                os.close(target)
        finally:
            os.close(fd)  # autoclear: the device goes when the mount goes

    def _dev_nodes(self, step: plan.DevNodes) -> None:
        from pflask import mounts

        mounts.dev_nodes(self._root(), step.target, step.nodes)

    def _symlink(self, step: plan.Symlink) -> None:
        from pflask import mounts

        mounts.symlink(self._root(), step.value, step.path)

    def _mask_paths(self, step: plan.MaskPaths) -> None:
        from pflask import mounts

        mounts.mask(self._root(), step.paths)

    def _readonly_paths(self, step: plan.ReadonlyPaths) -> None:
        from pflask import mounts

        mounts.make_readonly(self._root(), step.paths)

    def _remount_root(self, step: plan.RemountRoot) -> None:
        from pflask import mounts

        mounts.remount_root_readonly(self._root())

    def _pivot_root(self, step: plan.PivotRoot) -> None:
        from pflask import mounts

        path = self._root().path
        self._root().close()
        mounts.pivot_root(path)
        self.root = None

    def _hostname(self, step: plan.Hostname) -> None:
        libc.sethostname(step.name)

    def _loopback(self, step: plan.Loopback) -> None:
        from pflask import network

        network.loopback_up()

    def _configure_link(self, step: plan.ConfigureLink) -> None:
        from pflask import network

        network.configure(step.name, step.addresses, step.gateways, step.mtu, step.mac, step.up)

    def _rlimits(self, step: plan.Rlimits) -> None:
        from pflask import rlimits

        rlimits.apply(step.limits)

    def _no_new_privs(self, step: plan.NoNewPrivs) -> None:
        from pflask import rlimits

        rlimits.set_no_new_privs()

    def _switch_user(self, step: plan.SwitchUser) -> None:
        from pflask import users

        user = users.lookup(step.user)
        if step.keep_caps:
            from pflask import capabilities

            capabilities.prepare_keep()
        try:
            os.setgroups(list(user.groups))
        except PermissionError:
            # setgroups(2) is denied in a user namespace whose gid_map the
            # unprivileged user wrote itself; then only "no groups" is possible.
            if user.groups:
                raise
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
        self.user = user

    def _capabilities(self, step: plan.Capabilities) -> None:
        from pflask import capabilities

        capabilities.apply(step.keep)

    def _environment(self, step: plan.Environment) -> None:
        env = (
            {k: os.environ[k] for k in step.keep if k in os.environ}
            if step.clear
            else dict(os.environ)
        )
        if step.user_vars:
            user = self.user
            if user is None:
                from pflask import users

                try:
                    user = users.lookup(str(os.getuid()))
                except LookupError:
                    user = None
            if user is not None:
                env.update(USER=user.name, LOGNAME=user.name, HOME=user.home)
        env.update(step.set)
        self.env = env

    def _chdir(self, step: plan.Chdir) -> None:
        os.chdir(step.path)

    def _reaper(self, step: plan.Reaper) -> None:
        _signal.signal(_signal.SIGWINCH, self._on_signal)
        child = os.fork()
        if child == 0:
            for signum in (*FORWARDED, _signal.SIGWINCH):
                _signal.signal(signum, _signal.SIG_DFL)
            return
        self.command = child
        os.close(self.status)  # the command's copy alone tells S whether exec worked
        os.close(self.control)
        _reap(child)

    def _exec(self, step: plan.Exec) -> None:
        env = self.env if self.env is not None else dict(os.environ)
        libc.close_range_cloexec(3)  # only 0, 1 and 2 reach the command
        argv = list(step.argv)
        try:
            os.execvpe(argv[0], argv, env)
        except FileNotFoundError:
            self._fail(EXIT_NOTFOUND, f"{argv[0]}: command not found")
        except (PermissionError, IsADirectoryError, NotADirectoryError) as e:
            self._fail(EXIT_NOEXEC, f"{argv[0]}: cannot execute: {e.strerror}")
        except OSError as e:
            code = EXIT_NOEXEC if e.errno == 8 else EXIT_SETUP  # ENOEXEC
            self._fail(code, f"{argv[0]}: cannot execute: {e.strerror}")


def _reap(child: int) -> None:
    """PID 1's loop: reap every zombie, exit with the command's status."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(EXIT_SETUP)
        if pid == child:
            os._exit(_exit_status(status))
