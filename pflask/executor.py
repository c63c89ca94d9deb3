"""Carry out a plan: start the container's processes, run each step, supervise.

The process model (docs/architecture.md has the pictures):

- S, the supervisor, stays in the host's namespaces.  As root it unshares
  the PID namespace itself and forks the container's first process, which is
  PID 1 of it at once; with a user namespace that process (C1) unshares the
  user namespace first and the PID namespace's PID 1 comes one fork later.
- The first process unshares the other namespaces and waits while S runs the
  host steps (id maps, cgroup, links) against its pid, then goes on.
- With a user namespace, C1 forks C2 (PID 1), reports its pid and exits.  S
  is a child subreaper, so C2 becomes S's child; C2 then arms
  PR_SET_PDEATHSIG (it would have fired at C1's exit) and checks S is still
  alive.
- The container's first process keeps nothing of the invoker's (seclude):
  only fds 0-2 and pflask's pipes, no argv nor environment in its memory,
  not dumpable when pflask runs as root.
- The container process runs the container steps in order and finally execs,
  or (reaper) spawns the command and stays as PID 1.  Failures travel back as
  one line on a close-on-exec pipe, so EOF without a line means the command
  started.
- S forwards signals, escalates a stop to SIGKILL after the timeout, waits,
  cleans up what the host steps made, and returns the command's status.
- S records the container under its name (pflask.state) before anything is
  made and removes the record after everything is cleaned up.
- With a terminal, the container's pty master reaches S (pflask.terminal),
  which copies it to the user's terminal, or with `detach` serves it to
  `pflask attach` (pflask.attach) from a background S while the pflask the
  user started returns as soon as the command runs.

No policy lives here: the compiler decided every step and its order.
"""

from __future__ import annotations

import os
import sys
import time

from pflask import libc, mounts, plan
from pflask.errors import EXIT_NOEXEC, EXIT_NOTFOUND, EXIT_SETUP, SetupError
from pflask.hygiene import PR_SET_DUMPABLE, seclude
from pflask.signals import FORWARDED, signal_number

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal  # typeshed describes the same functions there
    from collections.abc import Callable
    from typing import Any, NoReturn

    from pflask.attach import Server
    from pflask.mounts import Root
    from pflask.state import Claim
    from pflask.terminal import Proxy
    from pflask.users import User
else:
    import _signal


# The modules each step needs.  They are imported before the fork: after
# pivot_root(2) pflask's own files are out of reach.
MODULES = {
    "uid_map": "idmap",
    "gid_map": "idmap",
    "cgroup": "cgroups",
    "register_machine": "machined",
    "boot_id": "boot",
    "etc_hostname": "boot",
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
    "console": "terminal",
}


def run(the_plan: plan.Plan, verbose: bool = False) -> int:
    """Run the plan's container and return its exit status (detached: 0 once it runs)."""
    preload(the_plan, wants_terminal(the_plan, the_plan.detach))
    mounts.preflight(the_plan.steps)  # host sources checked before anything is mounted
    if the_plan.detach:
        return detach(the_plan, verbose)
    return Supervisor(the_plan, verbose).run()


def detach(the_plan: plan.Plan, verbose: bool) -> int:
    """Start the container under a background supervisor; return once it runs.

    The background S is a child in a session of its own (no controlling
    terminal, so no hangup when the user's terminal goes).  It keeps our
    stderr until the command has been executed, so setup errors still reach
    the user, then tells us the verdict on a pipe: "0" (we print the name and
    exit 0) or the setup failure's status (125, 126, 127; or 125 if it died).
    A container the original flags left unnamed is named after the background
    S, the process that stays: `pflask --attach PID` and `pflask stop PID`
    then find the pid in the name printed (ours is gone the moment we return).
    """
    from pflask.plan import UNNAMED

    verdict_r, verdict_w = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        os.close(verdict_r)
        os.setsid()
        _background(the_plan.renamed(UNNAMED, f"pflask-{os.getpid()}"), verbose, verdict_w)
    the_plan = the_plan.renamed(UNNAMED, f"pflask-{child}")
    os.close(verdict_w)
    chunks = []
    while chunk := os.read(verdict_r, 64):
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    os.close(verdict_r)
    verdict = b"".join(chunks).strip()
    if not verdict.isdigit():
        print("pflask: the background supervisor died during setup", file=sys.stderr)
        return EXIT_SETUP
    if verdict == b"0":
        print(the_plan.name)
    return int(verdict)


def _background(the_plan: plan.Plan, verbose: bool, verdict: int) -> None:
    """The background S: supervise, tell the foreground pflask how setup went, exit."""
    from pflask.errors import PflaskError

    supervisor = Supervisor(the_plan, verbose, verdict=verdict)
    status = EXIT_SETUP
    try:
        status = supervisor.run()
    except PflaskError as e:
        for line in str(e).splitlines():
            print(f"pflask: {line}", file=sys.stderr)
        status = e.status
    except BaseException as e:  # a bug: the foreground pflask still gets an answer
        print(f"pflask: {type(e).__name__}: {e}", file=sys.stderr)
    finally:
        supervisor.report(status)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def preload(the_plan: plan.Plan, terminal: bool) -> None:
    """Import what the container's steps need now, while pflask's files are reachable.

    Host steps run in the supervisor, which never leaves the host's root: it
    imports their modules when it gets to them, after the fork, while the
    container builds its mounts on the other CPU.  The terminal's module is
    needed only when there will be a terminal.
    """
    kinds = {s.kind for s in the_plan.steps if s.where != plan.HOST}
    if not terminal:
        kinds.discard("console")
    names = {MODULES[kind] for kind in kinds if kind in MODULES}
    if "switch_user" in kinds:
        names.add("capabilities")
    for name in sorted(names):
        __import__(f"pflask.{name}")  # importlib itself would cost more than it saves
    if "configure_link" in kinds:
        from pflask import network

        network.preload()  # pyroute2 itself, inherited by the container's processes
    import select  # noqa: F401  (used by the fork step after pivot_root)


def wants_terminal(the_plan: plan.Plan, detached: bool) -> bool:
    """terminal: true, or auto with a terminal on stdin, a detached container
    or a booting init (its console, see plan.Console)."""
    wanted = the_plan.terminal
    if wanted == "auto":
        return detached or os.isatty(0) or boot_console(the_plan)
    return wanted == "true"


def boot_console(the_plan: plan.Plan) -> bool:
    """Whether the plan gives a booting init its console whatever stdin is."""
    return any(isinstance(s, plan.Console) and s.boot for s in the_plan.steps)


def _trace(verbose: bool, number: int, step: plan.Step) -> None:
    if verbose:
        os.write(2, f"pflask: step {number}: [{step.where}] {step.describe()}\n".encode())


def _step_error(number: int, step: plan.Step, error: BaseException) -> str:
    return f"step {number} ({step.describe()}): {error}"


def _exit_status(status: int) -> int:
    """A wait status as a shell would report it: the code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def _container_status(status: int, pid_namespace: bool) -> int:
    """The container's exit status: its PID 1's, except that a halted OS exits 0.

    reboot(2) inside a PID namespace ends the namespace's init with SIGINT for
    a halt or power-off (SIGHUP for a reboot).  That is the only way it can
    die of SIGINT: the kernel drops signals an init has no handler for
    (pid_namespaces(7)).  So SIGINT there means "shut down cleanly", as
    `systemctl poweroff` or SIGRTMIN+3 to systemd ends, and not 130.
    """
    if pid_namespace and os.WIFSIGNALED(status) and os.WTERMSIG(status) == _signal.SIGINT:
        return 0
    return _exit_status(status)


class Supervisor:
    """S: forks the container, runs the host steps, forwards signals, cleans up."""

    def __init__(self, the_plan: plan.Plan, verbose: bool, verdict: int = -1) -> None:
        self.plan = the_plan
        self.verbose = verbose
        self.cleanups: list[Callable[[], None]] = []
        self.pid = 0  # the process signals go to: C1, then the container's PID 1
        self.stop_deadline: float | None = None
        self.stop_signal = signal_number(the_plan.stop_signal)
        self.links: Any = None
        self.group: Any = None
        self.wakeup_r = -1
        self.verdict = verdict  # detached: where the foreground pflask waits for the verdict
        self.detached = verdict >= 0
        self.claim: Claim | None = None
        self.channel = -1  # the container sends its pty master here
        self.io: Proxy | Server | None = None
        self.resized = False

    def report(self, status: int) -> None:
        """Detached: tell the foreground pflask how setup went (once)."""
        if self.verdict >= 0:
            try:
                os.write(self.verdict, f"{status}\n".encode())
            except OSError:
                pass  # it was killed: nobody to tell
            os.close(self.verdict)
            self.verdict = -1

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

    def _on_resize(self, _signum: int, _frame: object) -> None:
        self.resized = True  # acted on in the select loop, woken by the wakeup fd

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> int:
        try:
            return self._run()
        finally:
            if self.claim is not None:
                self.claim.release()

    def _claim_or_kill(self, child: int, pid1: int) -> None:
        """Record the container under its name, or refuse a name in use (and
        end `child`, which has not run the command: it waits for our "go").

        Done once the container's first process exists, while it sets itself
        up; `pid1`: the container's PID 1 if known by now (else 0).
        """
        from pflask import state

        try:
            self.claim = state.claim(self.plan, self.detached, pid1)
            if self.detached:
                self.claim.socket  # noqa: B018  (a path too long for bind(2) fails now)
        except BaseException:
            _kill(child)
            self._wait(child)
            raise

    def _go(self, control_w: int) -> None:
        """Let the container past its next AwaitHost step."""
        try:
            os.write(control_w, b"g")
        except BrokenPipeError:
            pass  # it failed before getting there: the status pipe says why

    def _run(self) -> int:
        steps = self.plan.steps
        first = steps[0]
        assert isinstance(first, plan.Unshare)
        forks = any(isinstance(s, plan.Fork) for s in steps)
        if forks:
            libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
        if self.detached:
            _null_stdio(0)  # input comes from `pflask attach`, if at all
        channel, slave, master = self._open_terminal()
        inherited = [fd for fd in (self.verdict, self.channel, master) if fd >= 0]
        control_r, control_w = os.pipe2(os.O_CLOEXEC)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        # Signals wake the select loop through this pipe, so a stop request's
        # deadline is honoured even while pflask is blocked waiting.
        self.wakeup_r, wakeup_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        _signal.set_wakeup_fd(wakeup_w, warn_on_full_buffer=False)
        self._install_handlers()
        self._remove_made_later()
        if first.pid1:
            # Only our next child lands in it (pid_namespaces(7)): it is PID 1.
            libc.unshare(libc.CLONE_NEWPID)
        child = os.fork()
        if first.pid1 and child:
            _own_pid_namespace_for_children()
        if child == 0:
            _signal.set_wakeup_fd(-1)
            for fd in (control_w, status_r, self.wakeup_r, wakeup_w, *inherited):
                os.close(fd)
            Container(
                self.plan,
                self.verbose,
                control_r,
                status_w,
                channel,
                slave,
                self.detached,
            ).run()
            os._exit(EXIT_SETUP)  # not reached: run() execs or exits
        os.close(control_r)
        os.close(status_w)
        for fd in (channel, slave):
            if fd >= 0:
                os.close(fd)
        if master >= 0:
            self._use_master(master)
        self.pid = child
        reader = _Lines(status_r, self._select)
        try:
            return self._supervise(child, control_w, reader, forks, forks or first.pid1)
        finally:
            if self.io is not None:
                self.io.close()  # the user's terminal as it was, whatever happened
            _signal.set_wakeup_fd(-1)
            for fd in (control_w, self.wakeup_r, wakeup_w):
                os.close(fd)
            if self.channel >= 0:
                os.close(self.channel)
            reader.close()
            self._cleanup()

    def _remove_made_later(self) -> None:
        """A root that stays (not ephemeral) keeps nothing pflask made for its
        mounts: the mount points missing now are removed after the container,
        if still empty (mounts.remove_made)."""
        root = next((s.path for s in self.plan.steps if isinstance(s, plan.BindRoot)), None)
        if root is None:
            return
        made = mounts.missing_targets(root, mounts.mount_targets(self.plan.steps))
        if not made:
            return

        def remove() -> None:
            refused = mounts.remove_made(root, made)
            if refused:
                where = ", ".join(refused)
                raise OSError(f"mount points made in {root} left (permission denied): {where}")

        self.cleanups.append(remove)

    # -- the terminal -------------------------------------------------------------------------

    def _open_terminal(self) -> tuple[int, int, int]:
        """(the container's end of the master's channel, a host pty's slave and master).

        With a Console step the container makes the pty in its own devpts and
        sends the master back over a socket pair (our end: self.channel);
        without one (no root) the pty comes from the host's /dev/ptmx now and
        the container inherits the slave.
        """
        if not wants_terminal(self.plan, self.detached):
            return -1, -1, -1
        from pflask import terminal

        if any(isinstance(s, plan.Console) for s in self.plan.steps):
            self.channel, theirs = terminal.channel()
            return theirs, -1, -1
        master, slave = terminal.open_host_pty()
        return -1, slave, master

    def _use_master(self, master: int) -> None:
        """The pty master has arrived: copy it to our terminal, or serve it to attach."""
        from pflask import terminal

        # systemd as PID 1 opens /dev/console only while it writes: unless a
        # slave stays open here, the master hangs up (EIO) between its writes
        # and the output after that would be lost.
        held = terminal.peer(master)
        self.cleanups.append(lambda: os.close(held))
        if self.detached:
            from pflask.attach import Server

            self.io = Server(master, os.geteuid())
        else:
            from pflask.terminal import Proxy

            # Input that is not a terminal (a file, /dev/null) is copied until
            # it ends; a Ctrl-D then would end the login prompt of a booted OS
            # (its getty restarts, over and over), so only an ordinary
            # command's input is closed with one.
            self.io = Proxy(master, send_eof=not boot_console(self.plan))
            if os.isatty(0):
                _signal.signal(_signal.SIGWINCH, self._on_resize)
                _signal.signal(_signal.SIGTSTP, self._on_suspend)

    def _on_suspend(self, _signum: int, _frame: object) -> None:
        """Stopped from outside (kill -TSTP; Ctrl-Z itself goes to the container):
        give the terminal back while stopped, take it again when continued."""
        from pflask.terminal import Proxy

        io = self.io
        if not isinstance(io, Proxy):
            return
        io.suspend()
        os.kill(os.getpid(), _signal.SIGSTOP)
        io.resume()

    def _receive_master(self) -> None:
        from pflask import terminal

        master = terminal.receive_fd(self.channel)
        os.close(self.channel)
        self.channel = -1
        if master is not None:
            self._use_master(master)

    def _started(self, container: int) -> None:
        """The command runs: record its PID 1, start copying, let a detached pflask go."""
        import gc
        import select

        from pflask import state

        # Collection was off while starting (cli.run_command); a supervisor may
        # live long, so turn it on, for the objects made from now on: what
        # start-up made is frozen, not traversed (nor copied) by a collection.
        gc.freeze()
        gc.enable()
        if self.channel >= 0 and select.select([self.channel], [], [], 0)[0]:
            self._receive_master()  # sent before exec; not yet picked up
        io = self.io
        assert self.claim is not None
        if self.detached and io is not None:
            from pflask.attach import Server

            assert isinstance(io, Server)
            io.listen(self.claim.socket)
        if container != self.claim.data["pid"] or io is not None:
            self.claim.update(
                pid=container, pid_start=state.start_time(container), console=io is not None
            )
        if io is not None:
            io.start()
        if self.detached:
            self.report(0)
            for fd in (0, 1, 2):
                _null_stdio(fd)  # the user's terminal is not ours to hold any more

    def _select(self, fd: int) -> None:
        """Wait until `fd` is readable; meanwhile enforce a stop request's deadline
        and keep the terminal's bytes flowing."""
        import select

        while True:
            timeout = None
            if self.stop_deadline is not None:
                timeout = max(0.0, self.stop_deadline - time.monotonic())
            readers, writers = [fd, self.wakeup_r], []
            if self.channel >= 0:
                readers.append(self.channel)
            io = self.io
            if io is not None:
                readers += io.readers()
                writers = io.writers()
            ready, writable, _ = select.select(readers, writers, [], timeout)
            if self.wakeup_r in ready:
                try:
                    os.read(self.wakeup_r, 256)
                except BlockingIOError:
                    pass
                if self.resized and io is not None:
                    self.resized = False
                    io.resize()
            if self.channel >= 0 and self.channel in ready:
                self._receive_master()
            if io is not None:
                io.handle(ready, writable)
            if fd in ready:
                return
            if self.stop_deadline is not None and time.monotonic() >= self.stop_deadline:
                self.stop_deadline = None
                _kill(self.pid)

    def _supervise(
        self, child: int, control_w: int, reader: _Lines, forks: bool, pid_namespace: bool
    ) -> int:
        # With host steps that must come first the container waits twice: for
        # a "go" after them, and for one once the name is claimed.
        early = any(
            isinstance(s, plan.AwaitHost) and s.after == plan.AFTER_HOST_STEPS
            for s in self.plan.steps
        )
        if not early:
            self._claim_or_kill(child, 0 if forks else child)
        message = reader.line()  # "unshared", or an error from the first step
        if message != "unshared":
            return self._failed(child, message)
        try:
            for number, step in enumerate(self.plan.steps, 1):
                if step.where == plan.HOST and not isinstance(step, plan.RegisterMachine):
                    if self.claim is None and not isinstance(step, (plan.UidMap, plan.GidMap)):
                        # The name first: a second container of it must be told
                        # so, not fail on a host link its namesake holds.
                        self._claim_or_kill(child, 0 if forks else child)
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
        self._go(control_w)
        container = child
        if forks:
            message = reader.line()
            if not message.startswith("pid "):
                return self._failed(child, message)
            container = int(message[4:])
            self.pid = container
            os.waitpid(child, 0)  # C1 exits once it has forked PID 1
            os.write(control_w, b"a")  # PID 1 has been adopted: it may arm PDEATHSIG
        if early:
            if self.claim is None:  # only id maps came first: claimed while PID 1 mounts
                self._claim_or_kill(container, container)
            self._go(control_w)
        self._register_machine(container)
        error = reader.line()  # EOF: the command was executed
        if error:
            self._report(error)
        else:
            self._started(container)
        status = self._wait(container)
        code = int(error.split(" ", 1)[0]) if error else _container_status(status, pid_namespace)
        if self.io is not None:
            self.io.finish(code)  # last output, terminal restored before we print
        if error:
            return code
        if self.group is not None and self.group.oom_killed():
            print(
                f"pflask: the container hit its memory limit and the kernel's OOM killer "
                f"killed a process in it (exit status {_exit_status(status)})",
                file=sys.stderr,
            )
        return code

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
                step.name,
                step.controllers,
                step.memory,
                step.pids,
                step.cpu,
                default_pids=step.default_pids,
                devices=step.devices,
            )
            self.cleanups.append(self.group.remove)
            self.group.attach(pid)
            if step.devices and not self.group.devices:
                os.write(
                    2,
                    b"pflask: warning: this host has neither the cgroup v1 devices controller "
                    b"nor a cgroup2 tree for a device program: the container's CAP_SYS_ADMIN "
                    b"lets it open any device node it makes\n",
                )
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

    def _register_machine(self, leader: int) -> None:
        """machined needs the container's PID 1, so this host step runs last."""
        for step in self.plan.steps:
            if isinstance(step, plan.RegisterMachine):
                from pflask import machined

                if machined.register_or_warn(step.name, leader, step.root):
                    self.cleanups.append(machined.unregistering(step.name))

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


DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"  # execvp(3)'s, when the environment has none


INIT_NAME = b"pflask-init"  # a reaper PID 1's command line and name (comm)


def _own_pid_namespace_for_children() -> None:
    """Our later children (the janitor's tools, busctl) belong to the host's
    PID namespace again, not to the container's."""
    fd = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc.setns(fd, libc.CLONE_NEWPID, "/proc/self/ns/pid")
    finally:
        os.close(fd)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, _signal.SIGKILL)
    except ProcessLookupError:
        pass


def _null_stdio(fd: int) -> None:
    """Point `fd` at /dev/null (a detached supervisor holds no terminal)."""
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    os.dup2(null, fd)
    os.close(null)


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
        self,
        the_plan: plan.Plan,
        verbose: bool,
        control: int,
        status: int,
        channel: int = -1,
        console: int = -1,
        detached: bool = False,
    ) -> None:
        self.plan = the_plan
        self.verbose = verbose
        self.control = control
        self.status = status
        self.root: Root | None = None
        self.user: User | None = None
        self.env: dict[str, str] | None = None
        self.command = 0  # the command's pid, once PID 1 has forked it
        self.channel = channel  # the Console step sends the pty master to S over this
        self.console = console  # the pty slave: the command's terminal at exec
        self.detached = detached
        self.reap = False  # set by the Reaper step: PID 1 stays, the command is PID 2
        self.pending = b""  # what S said before we asked (see _exit_unless_supervised)
        self.dumpable = False  # PID 1 dumpable for its owner's `pflask exec` (see seclude)

    def _use_console(self) -> None:
        """The pty is stdin, stdout and stderr from now on, for every process to come;
        no process keeps the user's terminal (a detached one would hold it open)."""
        for fd in (0, 1, 2):
            os.dup2(self.console, fd)

    def _exit_unless_supervised(self) -> None:
        """Called with PDEATHSIG armed: if S died before, its pipe is at EOF
        (getppid() cannot tell: it is 0 for a parent outside our PID namespace).
        S may also have written already (the "go" for a later AwaitHost step):
        that byte is kept for it."""
        import select

        if select.select([self.control], [], [], 0)[0]:
            data = os.read(self.control, 1)
            if not data:
                os._exit(EXIT_SETUP)
            self.pending += data

    def _send(self, text: str) -> None:
        os.write(self.status, (text + "\n").encode())

    def _fail(self, code: int, text: str) -> NoReturn:
        self._send(f"{code} {text}")
        os._exit(code)

    def _await(self, expected: bytes) -> None:
        """Block until the supervisor says `expected`; exit quietly if it is gone."""
        if self.pending:
            said, self.pending = self.pending[:1], self.pending[1:]
        else:
            said = os.read(self.control, 1)
        if said != expected:
            os._exit(EXIT_SETUP)

    def run(self) -> None:
        # Python's handlers and ignored signals must not leak into the container.
        for signum in (*FORWARDED, _signal.SIGPIPE, _signal.SIGXFSZ):
            _signal.signal(signum, _signal.SIG_DFL)
        libc.prctl(libc.PR_SET_PDEATHSIG, _signal.SIGKILL)
        self._exit_unless_supervised()
        # Before anything else: nothing of the invoker's reaches the container.
        self.dumpable = os.geteuid() != 0
        keep = (self.control, self.status, self.channel, self.console)
        try:
            seclude(keep, INIT_NAME, self.dumpable)
        except OSError as e:
            self._fail(EXIT_SETUP, f"before step 1: {e}")
        if self.console >= 0:
            self._use_console()
        elif self.detached:
            # Not the user's terminal nor pflask's stdout: a container that
            # outlives the pflask the user started holds none of its files
            # (an ssh logout or a $(...) would wait for it).  Its terminal, if
            # any, comes with the Console step.
            for fd in (0, 1, 2):
                _null_stdio(fd)
        steps = self.plan.steps
        number, first = 1, steps[0]
        try:
            assert isinstance(first, plan.Unshare)
            _trace(self.verbose, number, first)
            flags = libc.namespace_flags(first.namespaces)
            if first.pid1:  # the supervisor made it: we are its PID 1 already
                flags &= ~libc.CLONE_NEWPID
                self._handle_signals_as_pid1()
            libc.unshare(flags)
        except OSError as e:
            self._fail(EXIT_SETUP, _step_error(number, first, e))
        self._send("unshared")
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

    def _await_host(self, step: plan.AwaitHost) -> None:
        self._await(b"g")

    def _unshare(self, step: plan.Unshare) -> None:
        libc.unshare(libc.namespace_flags(step.namespaces))

    def _become_root(self, step: plan.BecomeRoot) -> None:
        try:
            os.setgroups([])  # the host's groups mean nothing in here
        except PermissionError:
            pass  # setgroups denied: an ordinary user's own gid_map, no groups held
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)

    def _fork(self, step: plan.Fork) -> None:
        pid = os.fork()
        if pid:
            self._send(f"pid {pid}")
            os._exit(0)
        # PID 1 of the new namespace.  Its parent C1 exits now, so PDEATHSIG is
        # armed only after S has adopted us, then S's liveness is checked again.
        self._await(b"a")
        libc.prctl(libc.PR_SET_PDEATHSIG, _signal.SIGKILL)
        self._exit_unless_supervised()
        os.setsid()  # a session of its own, as its parent had
        self._handle_signals_as_pid1()

    def _handle_signals_as_pid1(self) -> None:
        """PID 1 gets no signal it has no handler for, so handle them: before the
        command exists a signal ends setup as it would have ended the command;
        afterwards PID 1 passes it on (see _spawn_and_reap)."""
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

        mounts.bind_root(step.path, step.flags)
        self.root = mounts.Root(step.path)

    def _ephemeral_root(self, step: plan.EphemeralRoot) -> None:
        from pflask import mounts

        mounts.ephemeral_root(step.path, step.tmpfs, step.flags)
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
            step.tmpfs,
        )

    def _loop(self, step: plan.LoopMount) -> None:
        from pflask import loop

        loop.mount_image(
            self._root(),
            step.source,
            step.target,
            step.fstype,
            step.readonly,
            step.options,
            step.flags,
        )

    def _dev_nodes(self, step: plan.DevNodes) -> None:
        from pflask import mounts

        mounts.dev_nodes(self._root(), step.target, step.nodes)

    def _symlink(self, step: plan.Symlink) -> None:
        from pflask import mounts

        mounts.symlink(self._root(), step.value, step.path)

    def _console(self, step: plan.Console) -> None:
        """A pty from the container's devpts: the slave onto /dev/console, the master to S."""
        if self.channel < 0:
            return  # pflask runs without a terminal this time
        from pflask import mounts, terminal

        root = self._root()
        master = root.open(step.ptmx, os.O_RDWR | os.O_NOCTTY)
        try:
            slave = terminal.peer(master)
            mounts.bind_file(root, slave, step.path, mode=0o600)
            terminal.send_fd(self.channel, master)
        finally:
            os.close(master)
        os.close(self.channel)
        self.channel = -1
        self.console = slave
        self._use_console()

    def _boot_id(self, step: plan.BootId) -> None:
        from pflask import boot

        boot.fresh_boot_id(self._root(), step.scratch, step.path)

    def _etc_hostname(self, step: plan.EtcHostname) -> None:
        from pflask import boot

        boot.etc_hostname(self._root(), step.scratch, step.path, step.name)

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

    def _seccomp(self, step: plan.Seccomp) -> None:
        # Programs the compiler exported with libseccomp: no libseccomp here.
        for program in step.programs:
            libc.seccomp_set_mode_filter(bytes.fromhex(program))

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
            # unprivileged user wrote itself; then the list cannot change, which
            # is only fine when no group beyond the primary one was wanted.
            if set(user.groups) - {user.gid}:
                raise
        os.setresgid(user.gid, user.gid, user.gid)
        os.setresuid(user.uid, user.uid, user.uid)
        if self.dumpable:
            # Changing uid made us non-dumpable, and a reaper PID 1 never
            # execs to become dumpable again: without this, `pflask exec`
            # (setns(2) on a pidfd needs ptrace read access) could not enter
            # the container as its ordinary owner (see seclude).
            libc.prctl(PR_SET_DUMPABLE, 1)
        self.user = user

    def _session_keyring(self, step: plan.SessionKeyring) -> None:
        libc.join_session_keyring()

    def _capabilities(self, step: plan.Capabilities) -> None:
        from pflask import capabilities

        capabilities.apply(step.keep, step.ambient)

    def _environment(self, step: plan.Environment) -> None:
        env = (
            {k: os.environ[k] for k in step.keep if k in os.environ}
            if step.clear
            else dict(os.environ)
        )
        if step.user_vars:
            if self.user is not None:
                name, home = self.user.name, self.user.home
            else:
                from pflask import users

                name, home = users.name_and_home(os.getuid())
            env.update(USER=name, LOGNAME=name, HOME=home)
        env.update(step.set)
        self.env = env

    def _spawn_and_reap(self, argv: tuple[str, ...], env: dict[str, str]) -> None:
        """Start the command as PID 2 and stay as PID 1: reap, forward, exit with it.

        posix_spawn(3) (a vfork) rather than fork: no copy of this
        interpreter's page tables, and an exec failure comes back here
        directly.  Everything set up so far (root, user, capabilities, limits,
        cwd) is inherited; signal dispositions go back to their defaults.
        With a pty the command must make it its controlling terminal from the
        descriptor it has (reopening it by name can be refused to the
        container's user), which only a forked child can do: it returns here
        and execs through the Exec step like a command that is PID 1.
        """
        passed_on = (*FORWARDED, _signal.SIGWINCH)
        _signal.signal(_signal.SIGWINCH, self._on_signal)
        # Held until self.command is set: a signal in between (the command
        # may be running already) would end PID 1 as if setup were still
        # going on, and never reach the command (see _on_signal).
        mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, passed_on)
        if self.console >= 0:
            child = os.fork()
            if child == 0:
                for signum in passed_on:
                    _signal.signal(signum, _signal.SIG_DFL)
                _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
                return
            self.command = child
        else:
            libc.close_range_cloexec(3)  # only 0, 1 and 2 reach the command
            defaults = (*passed_on, _signal.SIGPIPE, _signal.SIGXFSZ)
            try:
                program = _which(argv[0], env.get("PATH", DEFAULT_PATH))
                self.command = os.posix_spawn(
                    program, list(argv), env, setsigdef=defaults, setsigmask=mask
                )
            except OSError as e:
                self._cannot_start(argv[0], e)
        _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
        # The command has its environment: PID 1 keeps none, the invoker's least.
        env.clear()
        os.environ.clear()
        self.env = None
        os.close(self.status)  # EOF once the command runs: S knows it started
        os.close(self.control)
        if self.console >= 0:
            os.close(self.console)  # the command's session owns the pty
        _reap(self.command)

    def _chdir(self, step: plan.Chdir) -> None:
        os.chdir(step.path)

    def _reaper(self, step: plan.Reaper) -> None:
        self.reap = True  # the Exec step spawns the command and PID 1 stays

    def _exec(self, step: plan.Exec) -> None:
        env = self.env if self.env is not None else dict(os.environ)
        if self.reap:
            self._spawn_and_reap(step.argv, env)
        if self.console >= 0:
            # A session of its own with the pty as controlling terminal: Ctrl-C
            # typed there is SIGINT for the foreground job inside.
            os.login_tty(self.console)
            self.console = -1
        libc.close_range_cloexec(3)  # only 0, 1 and 2 reach the command
        argv = list(step.argv)
        try:
            # _which, not execvpe: os.get_exec_path imports warnings, out of reach here.
            os.execve(_which(argv[0], env.get("PATH", DEFAULT_PATH)), argv, env)
        except OSError as e:
            self._cannot_start(argv[0], e)

    def _cannot_start(self, name: str, error: OSError) -> NoReturn:
        """The command could not be executed: 127 not found, 126 not executable."""
        if isinstance(error, FileNotFoundError):
            self._fail(EXIT_NOTFOUND, f"{name}: command not found")
        # EACCES, ENOEXEC, ENOTDIR, EISDIR: there is a file, it cannot run.
        code = EXIT_NOEXEC if error.errno in (13, 8, 20, 21) else EXIT_SETUP
        self._fail(code, f"{name}: cannot execute: {error.strerror}")


def _which(name: str, path: str) -> str:
    """The program execvp(3) would run; PermissionError if only unexecutable ones exist."""
    if "/" in name:
        return name
    denied = False
    for directory in path.split(":"):
        candidate = f"{directory or '.'}/{name}"
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
        denied = denied or os.path.exists(candidate)
    if denied:
        raise PermissionError(13, "Permission denied")
    raise FileNotFoundError(2, "No such file or directory")


def _reap(child: int) -> None:
    """PID 1's loop: reap every zombie, exit with the command's status."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(EXIT_SETUP)
        if pid == child:
            os._exit(_exit_status(status))
