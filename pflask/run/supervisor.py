"""S, the supervisor: starts the container, runs the host steps, supervises, cleans up.

The process model (docs/architecture.md has the pictures):

- S stays in the host's namespaces.  As root it unshares the PID namespace
  itself and forks the container's first process, which is PID 1 of it at
  once; with a user namespace that process (C1) unshares the user namespace
  first and the PID namespace's PID 1 comes one fork later (a Fork step).
- S walks the same plan as the container (pflask.run.container), in step with it
  through pflask.run.protocol: after the first process says `Unshared`, the host
  steps before each AwaitHost step run here (id maps, the name's claim,
  cgroup, links), then S sends the `Go` that releases that step; at a Fork
  S takes PID 1's pid, reaps C1 (S is a child subreaper, so PID 1 becomes
  its child) and says `Adopted`; host steps after the last AwaitHost
  (machined) run while the command starts.  EOF on the status pipe then
  means the command runs; a `Failed` is printed as it is.
- A host step that fails closes the control pipe: the container, which has
  not started the command, ends at its next AwaitHost (reporting what it
  made); S reports the step, cleans up and exits 125.
- S forwards signals, escalates a stop to SIGKILL after the timeout, waits,
  cleans up what the host steps made (and the mount points the container
  made in a root that stays), and returns the command's status.
- With a terminal, the container's pty master reaches S (pflask.run.terminal),
  which copies it to the user's terminal, or with `detach` serves it to
  `pflask attach` (pflask.run.attach) from a background S while the pflask the
  user started returns as soon as the command runs.

No policy lives here: the compiler decided every step and its order.
"""

from __future__ import annotations

import os
import sys
import time

from pflask.compile import plan
from pflask.errors import EXIT_SETUP, PflaskError, SetupError
from pflask.kernel import libc
from pflask.kernel.signals import FORWARDED, signal_number
from pflask.run import eventloop, mounts, protocol, steps
from pflask.run.container import Container, exit_status, null_stdio, step_error, trace

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal  # typeshed describes the same functions there
    from collections.abc import Callable
    from typing import Any

    from pflask.run.attach import Server
    from pflask.run.state import Claim
    from pflask.run.terminal import Proxy
else:
    import _signal


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
    from pflask.compile.plan import UNNAMED

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
    steps.preload(kinds)


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
    return exit_status(status)


class Supervisor:
    """S: forks the container, runs the host steps, forwards signals, cleans up."""

    def __init__(
        self,
        the_plan: plan.Plan,
        verbose: bool,
        verdict: int = -1,
        hand_off: Callable[[Supervisor], bool] | None = None,
    ) -> None:
        self.plan = the_plan
        self.verbose = verbose
        self.cleanups: list[Callable[[], None]] = []
        self.pid = 0  # the process signals go to: C1, then the container's PID 1
        self.stop_signal = signal_number(the_plan.stop_signal)
        self.links: Any = None
        self.group: Any = None
        self.loop: eventloop.Loop | None = None
        self.verdict = verdict  # detached: where the foreground pflask waits for the verdict
        self.detached = verdict >= 0
        self.claim: Claim | None = None
        self.child = 0  # the container's first process
        self.pid1 = 0  # the container's PID 1, once known (at once without a Fork step)
        self.control = -1  # our end of the control pipe
        self.reader: protocol.Reader | None = None
        self.made: list[str] = []  # mount points the container made in a root that stays
        self.channel = -1  # the container sends its pty master here
        self.io: Proxy | Server | None = None
        # An OCI runtime's create (pflask.oci): called once the container waits
        # for `start` (AwaitStart); False: S leaves, the container and what
        # the host steps made (its cgroup) now belong to the OCI state record.
        self.hand_off = hand_off
        # With hand_off: where the pty master goes instead of this terminal
        # (an OCI engine's console socket).
        self.on_master: Callable[[int], None] | None = None
        self.failure: str | None = None  # why the command was not started
        self.print_failure = True

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
            loop = self.loop
            if loop is not None and loop.deadline is None:
                loop.deadline = time.monotonic() + self.plan.stop_timeout
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            pass

    def _install_handlers(self) -> None:
        for signum in FORWARDED:
            _signal.signal(signum, self._forward)

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> int:
        try:
            return self._run()
        finally:
            if self.claim is not None:
                self.claim.release()

    def _run(self) -> int:
        plan_steps = self.plan.steps
        first = plan_steps[self.plan.first_unshare()]
        assert isinstance(first, plan.Unshare)
        forks = any(isinstance(s, plan.Fork) for s in plan_steps)
        if forks:
            libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
        if self.detached:
            null_stdio(0)  # input comes from `pflask attach`, if at all
        channel, slave, master = self._open_terminal()
        inherited = [fd for fd in (self.verdict, self.channel, master) if fd >= 0]
        control_r, self.control = os.pipe2(os.O_CLOEXEC)
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        # Signals wake the loop, so a stop request's deadline is honoured even
        # while pflask is blocked waiting.
        self.loop = loop = eventloop.Loop(on_deadline=lambda: _kill(self.pid))
        self._install_handlers()
        if first.pid1:
            # Only our next child lands in it (pid_namespaces(7)): it is PID 1.
            libc.unshare(libc.CLONE_NEWPID)
        child = os.fork()
        if first.pid1 and child:
            _own_pid_namespace_for_children()
        if child == 0:
            loop.close()
            for fd in (self.control, status_r, *inherited):
                os.close(fd)
            Container(
                self.plan,
                verbose=self.verbose,
                control=control_r,
                status=status_w,
                channel=channel,
                console=slave,
                detached=self.detached,
            ).run()
        os.close(control_r)
        os.close(status_w)
        for fd in (channel, slave):
            if fd >= 0:
                os.close(fd)
        if master >= 0:
            self._use_master(master)
        self.pid = self.child = child
        self.pid1 = 0 if forks else child
        self.reader = protocol.Reader(status_r, self._select)
        try:
            return self._supervise(forks or first.pid1)
        finally:
            if self.io is not None:
                self.io.close()  # the user's terminal as it was, whatever happened
            loop.close()
            if self.control >= 0:
                os.close(self.control)
            if self.channel >= 0:
                os.close(self.channel)
            self.reader.close()
            self._cleanup()

    # -- the exchange with the container --------------------------------------------------

    def _supervise(self, pid_namespace: bool) -> int:
        """Walk the plan with the container: host steps, go's, the Fork's adoption;
        then wait for the command to run and end."""
        message = self._receive()  # Unshared, or why the first step failed
        if message != protocol.UNSHARED:
            return self._failed(message)
        start = self.plan.first_unshare() + 1  # the container's alone before it
        for number, step in enumerate(self.plan.steps[start:], start + 1):
            if step.where == plan.HOST:
                self._host_step(number, step)
            elif isinstance(step, plan.AwaitHost):
                if self.links is not None:
                    self.links.release()  # no netlink sockets held while the container runs
                self._say(protocol.GO)
            elif isinstance(step, plan.Fork):
                message = self._receive()
                if not isinstance(message, protocol.Pid):
                    return self._failed(message)
                self.pid = self.pid1 = message.pid
                os.waitpid(self.child, 0)  # C1 exits once it has forked PID 1
                self._say(protocol.ADOPTED)  # it may arm PDEATHSIG now
        message = self._receive()  # End: the command was executed (or awaits start)
        if message != protocol.END:
            return self._failed(message)
        container = self.pid
        if self.hand_off is not None and not self.hand_off(self):
            self.cleanups.clear()
            return 0
        self._started(container)
        status = self._wait(container)
        code = _container_status(status, pid_namespace)
        if self.io is not None:
            self.io.finish(code)  # last output, terminal restored before we print
        if self.group is not None and self.group.oom_killed():
            print(
                f"pflask: the container hit its memory limit and the kernel's OOM killer "
                f"killed a process in it (exit status {exit_status(status)})",
                file=sys.stderr,
            )
        return code

    def _say(self, message: protocol.Go | protocol.Adopted) -> None:
        try:
            os.write(self.control, protocol.encode_control(message))
        except BrokenPipeError:
            pass  # it failed before getting there: the status pipe says why

    def _receive(self) -> protocol.Status:
        """The container's next message; the mount points it made are noted on the way."""
        assert self.reader is not None
        while True:
            message = self.reader.receive()
            if not isinstance(message, protocol.Made):
                return message
            self._note_made(message.paths)

    def _note_made(self, paths: tuple[str, ...]) -> None:
        """Keep, for removal after the container, the reported paths that are
        mount targets of a root that stays or their parents: the report comes
        from the container's process, so it names nothing else."""
        if self.plan.root is None or not any(isinstance(s, plan.BindRoot) for s in self.plan.steps):
            return
        allowed: set[str] = set()
        for target in mounts.mount_targets(self.plan.steps):
            names = [n for n in target.split("/") if n and n != "."]
            if ".." not in names:
                allowed.update("/" + "/".join(names[:depth]) for depth in range(1, len(names) + 1))
        known = set(self.made)  # a set: a manifest may have thousands of mounts
        self.made += (p for p in dict.fromkeys(paths) if p in allowed and p not in known)

    def _failed(self, message: protocol.Status) -> int:
        """The container could not be set up: report, end it, exit 125 (126/127)."""
        if isinstance(message, protocol.Failed):
            self.complain(message.message)
            code = message.code
        elif message == protocol.END:
            self.complain("the container's process died during setup")
            code = EXIT_SETUP
        else:
            self.complain(f"the container's process said {type(message).__name__} out of turn")
            code = EXIT_SETUP
        _kill(self.pid)
        self._wait(self.pid)
        if self.io is not None:
            self.io.finish(code)  # last output, terminal restored
        return code

    def complain(self, message: str) -> None:
        """Say why the container could not start its command; keep it as
        `failure` too (the Python API raises it: pflask.api)."""
        self.failure = message
        if self.print_failure:
            print(f"pflask: {message}", file=sys.stderr)

    def _stop(self, number: int) -> None:
        """A host step failed: the container must not start its command.  Closing
        the control pipe ends it at its next AwaitHost step, once it has reported
        what it made; after the last one it is killed."""
        os.close(self.control)
        self.control = -1
        if not any(isinstance(s, plan.AwaitHost) for s in self.plan.steps[number:]):
            _kill(self.pid)
        while self._receive() != protocol.END:
            pass
        self._wait(self.pid)

    def _host_step(self, number: int, step: plan.Step) -> None:
        trace(self.verbose, number, step)
        try:
            try:
                HOST_STEPS[step.kind](step, self)
            except PflaskError:
                raise  # says what it is already (a name in use)
            except Exception as e:  # a bug too: still one line, still exit 125
                raise SetupError(step_error(number, step, e)) from None
        except BaseException:
            self._stop(number)
            raise

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
        from pflask.run import terminal

        if any(isinstance(s, plan.Console) for s in self.plan.steps):
            self.channel, theirs = terminal.channel()
            return theirs, -1, -1
        master, slave = terminal.open_host_pty()
        return -1, slave, master

    def _use_master(self, master: int) -> None:
        """The pty master has arrived: copy it to our terminal, or serve it to attach."""
        if self.on_master is not None:
            self.on_master(master)
            return
        from pflask.run import terminal

        # systemd as PID 1 opens /dev/console only while it writes: unless a
        # slave stays open here, the master hangs up (EIO) between its writes
        # and the output after that would be lost.
        held = terminal.peer(master)
        self.cleanups.append(lambda: os.close(held))
        loop = self.loop
        assert loop is not None  # the master comes once the container is forked
        if self.detached:
            from pflask.run.attach import Server

            self.io = Server(master, os.geteuid())
            loop.copier = self.io
        else:
            from pflask.run.terminal import Proxy

            # Input that is not a terminal (a file, /dev/null) is copied until
            # it ends; a Ctrl-D then would end the login prompt of a booted OS
            # (its getty restarts, over and over), so only an ordinary
            # command's input is closed with one.
            self.io = Proxy(master, send_eof=not boot_console(self.plan))
            loop.copier = self.io
            if os.isatty(0):
                _signal.signal(_signal.SIGWINCH, loop.on_resize)
                _signal.signal(_signal.SIGTSTP, self._on_suspend)

    def _on_suspend(self, _signum: int, _frame: object) -> None:
        """Stopped from outside (kill -TSTP; Ctrl-Z itself goes to the container):
        give the terminal back while stopped, take it again when continued."""
        from pflask.run.terminal import Proxy

        io = self.io
        if not isinstance(io, Proxy):
            return
        io.suspend()
        os.kill(os.getpid(), _signal.SIGSTOP)
        io.resume()

    def _receive_master(self) -> None:
        from pflask.run import terminal

        master = terminal.receive_fd(self.channel)
        os.close(self.channel)
        self.channel = -1
        if master is not None:
            self._use_master(master)

    def _started(self, container: int) -> None:
        """The command runs: record its PID 1, start copying, let a detached pflask go."""
        import gc
        import select

        from pflask.run import state

        # Collection was off while starting (cli.run_command); a supervisor may
        # live long, so turn it on, for the objects made from now on: what
        # start-up made is frozen, not traversed (nor copied) by a collection.
        gc.freeze()
        gc.enable()
        if self.channel >= 0 and select.select([self.channel], [], [], 0)[0]:
            self._receive_master()  # sent before exec; not yet picked up
        io = self.io
        if self.claim is None:  # an OCI runtime's run: its own record
            return
        if self.detached and io is not None:
            from pflask.run.attach import Server

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
                null_stdio(fd)  # the user's terminal is not ours to hold any more

    def _select(self, fd: int) -> None:
        """Wait until `fd` is readable; meanwhile the loop enforces a stop request's
        deadline and keeps the terminal's bytes flowing, and the pty master is
        taken when it arrives."""
        assert self.loop is not None
        while True:
            channel = self.channel
            ready = self.loop.poll([fd, channel] if channel >= 0 else [fd])
            if channel >= 0 and channel in ready:
                self._receive_master()
            if fd in ready:
                return

    def host_links(self) -> Any:
        if self.links is None:
            from pflask.run import network

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
        if self.made and self.plan.root is not None:
            refused = mounts.remove_made(self.plan.root, self.made)
            if refused:
                where = ", ".join(refused)
                errors.append(
                    f"mount points made in {self.plan.root} left (permission denied): {where}"
                )
        for step in self.plan.steps:
            if isinstance(step, plan.Overlay) and step.temporary_work and step.work:
                try:
                    mounts.remove_tree(step.work)
                except OSError as e:
                    errors.append(f"removing work directory {step.work}: {e}")
        for error in errors:
            print(f"pflask: cleanup: {error}", file=sys.stderr)


# -- host steps: kind -> handler(step, supervisor) ----------------------------------------
# The container's process the host steps act on is `s.pid`: the first one,
# or PID 1 after a Fork step.


def _uid_map(step: plan.UidMap, s: Supervisor) -> None:
    from pflask.run import idmap

    idmap.write_map(s.pid, "uid", step.ranges, step.helper)


def _gid_map(step: plan.GidMap, s: Supervisor) -> None:
    from pflask.run import idmap

    if step.setgroups == "deny":
        idmap.deny_setgroups(s.pid)
    idmap.write_map(s.pid, "gid", step.ranges, step.helper)


def _claim_name(step: plan.ClaimName, s: Supervisor) -> None:
    """The record names PID 1 if it exists yet (else it is updated once the command runs)."""
    from pflask.run import state

    s.claim = state.claim(s.plan, s.detached, s.pid1)
    if s.detached:
        s.claim.socket  # noqa: B018  (a path too long for bind(2) fails now)


def _cgroup(step: plan.Cgroup, s: Supervisor) -> None:
    from pflask.run import cgroups

    cgroups.clean_stale()
    s.group = group = cgroups.create(
        step.name,
        step.controllers,
        step.memory,
        step.pids,
        step.cpu,
        default_pids=step.default_pids,
        devices=step.devices,
        group=step.group,
        path=step.path,
        shares=step.shares,
        swap=step.swap,
    )
    s.cleanups.append(group.remove)
    group.attach(s.pid)
    if step.devices and not group.devices:
        os.write(
            2,
            b"pflask: warning: this host has neither the cgroup v1 devices controller "
            b"nor a cgroup2 tree for a device program: the container's CAP_SYS_ADMIN "
            b"lets it open any device node it makes\n",
        )


def _veth(step: plan.Veth, s: Supervisor) -> None:
    s.host_links().veth(step.host, step.name, s.pid, step.host_addresses, step.host_up)


def _move_link(step: plan.MoveLink, s: Supervisor) -> None:
    s.host_links().move(step.device, step.name, s.pid)


def _macvlan(step: plan.MacvlanLink, s: Supervisor) -> None:
    s.host_links().macvlan(step.master, step.name, step.mode, s.pid, kind=step.link_kind)


def _hooks(step: plan.Hooks, s: Supervisor) -> None:
    from pflask.run import ocistate

    state = {"id": step.container, "pid": s.pid, "bundle": step.bundle, "status": "creating"}
    for path, args, env, timeout in step.hooks:
        ocistate.run_hook(path, args, env, timeout, state, "createRuntime")


def _register_machine(step: plan.RegisterMachine, s: Supervisor) -> None:
    from pflask.run import machined

    if machined.register_or_warn(step.name, s.pid, step.root):
        s.cleanups.append(machined.unregistering(step.name))


HOST_STEPS: dict[str, Callable[[Any, Supervisor], None]] = {
    "uid_map": _uid_map,
    "gid_map": _gid_map,
    "claim_name": _claim_name,
    "cgroup": _cgroup,
    "veth": _veth,
    "move_link": _move_link,
    "macvlan": _macvlan,
    "register_machine": _register_machine,
    "hooks": _hooks,
}


HOST_MODULES: dict[str, tuple[str, ...]] = {
    "uid_map": ("run.idmap",),
    "gid_map": ("run.idmap",),
    "claim_name": ("run.state",),
    "cgroup": ("run.cgroups",),
    "veth": ("run.network",),
    "move_link": ("run.network",),
    "macvlan": ("run.network",),
    "register_machine": ("run.machined",),
    "hooks": ("run.ocistate",),
}
"""What each host step imports.  `pflask run` imports them after the fork,
while the container builds its mounts; a warm process that starts many
containers (pflask.api) imports them once, before the first."""


def preload_host(the_plan: plan.Plan) -> None:
    """Import what the plan's host steps need, now (see HOST_MODULES)."""
    kinds = {s.kind for s in the_plan.steps if s.where == plan.HOST}
    for name in sorted({name for kind in kinds for name in HOST_MODULES.get(kind, ())}):
        __import__(f"pflask.{name}")


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
