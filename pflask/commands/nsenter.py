"""`pflask exec NAME -- COMMAND`: a new process inside a running container.

The container's PID 1 is the reference, held by a pidfd (so a pid reused
meanwhile is never entered; its start time is checked once the pidfd pins
it, and another user's record is checked against the kernel: see
state.Container.open_pid1).  One setns(2) on that pidfd (Linux 5.8) joins every namespace the plan
made, at once: the kernel enters the user namespace first and checks the
rest against it, which is what an ordinary owner needs (the other
namespaces belong to that user namespace), and it asks for no ptrace access
to PID 1, which matters once PID 1 runs as a subordinate uid (`user:` with
a reaper PID 1) that /proc/PID/ns would refuse to show its owner.  Joining
the mount namespace puts us at its root as PID 1 sees it, pivot_root
included.  Having joined a user namespace we become its root, as nsenter(1)
does; the plan's `user:` follows later.  A PID namespace is entered by
children only, so the command is forked: it is PID >1 in there, and dies
with the container's PID 1.  The command, and only the command, joins PID 1's
cgroups (see open_cgroups): our own process, outside the PID namespace,
never sits in the container's groups, where systemd would see it as pid 0.

The plan recorded with the container gives the rules the command runs under,
as the container's own command did: rlimits, seccomp filter, user,
capabilities, no_new_privs, environment and working directory.  With a terminal on stdin
(and `terminal:` not false) the command gets a new pty from the
container's devpts, proxied in raw mode like `pflask run`'s.  The exit
status is the command's own (128+N for a signal), 126/127 when it cannot be
executed, 125 when joining fails.
"""

from __future__ import annotations

import os
import sys

from pflask.compile import plan
from pflask.errors import EXIT_SETUP, SetupError
from pflask.kernel import libc
from pflask.kernel.signals import FORWARDED
from pflask.run import eventloop, protocol, steps
from pflask.run.container import Container, exit_status

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal
    from collections.abc import Callable

    from pflask.run.state import Container as Record
    from pflask.run.terminal import Proxy
else:
    import _signal

# The plan's steps that shape the command's process (not the container).
PROCESS_STEPS = (
    "rlimits",
    "seccomp",
    "session_keyring",
    "switch_user",
    "set_ids",
    "capabilities",
    "capability_sets",
    "no_new_privs",
    "environment",
)


def namespaces(the_plan: plan.Plan) -> tuple[str, ...]:
    """Every namespace the plan's Unshare steps made or its JoinNamespaces joined."""
    found: list[str] = []
    for step in the_plan.steps:
        if isinstance(step, plan.Unshare):
            found.extend(n for n in step.namespaces if n not in found)
        elif isinstance(step, plan.JoinNamespaces):  # PID 1's, whoever made them
            found.extend(n for n, _ in step.paths if n not in found)
    return tuple(found)


def enter(pidfd: int, names: tuple[str, ...], what: str) -> None:
    """Join the namespaces `names` of the process behind `pidfd`, as their root."""
    if names:
        libc.setns(pidfd, libc.namespace_flags(names), f"{what} ({','.join(names)})")
    if "user" in names:
        _become_root()


def _become_root() -> None:
    """uid and gid 0 of the joined user namespace (nsenter(1) does the same)."""
    os.setresgid(0, 0, 0)
    try:
        os.setgroups([])
    except PermissionError:
        pass  # setgroups denied in this namespace: the groups cannot change anyway
    os.setresuid(0, 0, 0)


def open_cgroups(pid: int) -> list[tuple[int, str]]:
    """PID 1's `cgroup.procs` in every hierarchy, opened for writing (fd, path).

    Opened here, on the host side, and written by the command's own process
    (`join_cgroups`) once it exists in the container's PID namespace.  So the
    command lives in PID 1's cgroups (their limits apply to it; systemd sees
    it under init.scope, a real pid in its namespace, and `systemctl status`
    lists it) while pflask exec's own process stays where it was started: it
    is outside the PID namespace, and in the container's groups it showed as
    pid 0, which systemd cannot read ("Failed to dump process list:
    Input/output error").  The kernel checks a move through cgroup.procs
    against the credentials and cgroup namespace of the opener (Linux 5.16),
    so writing from inside the container's cgroup namespace is the same as
    writing from here.  PID 1's own group and not the container's top group:
    that is systemd's root, which on cgroup v2 cannot take processes once it
    delegates controllers to its children, and is what runc's exec does.
    """
    from pflask.run import cgroups

    path = f"/proc/{pid}/cgroup"
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise libc.SyscallError("open(2)", e.errno or 0, path) from None
    opened: list[tuple[int, str]] = []
    try:
        for hierarchy in cgroups.detect(proc_cgroup=text).hierarchies():
            procs = os.path.join(hierarchy.cgroup, "cgroup.procs")
            try:
                opened.append((os.open(procs, os.O_WRONLY | os.O_CLOEXEC), procs))
            except OSError as e:
                raise libc.SyscallError("open(2)", e.errno or 0, procs) from None
    except BaseException:
        for fd, _ in opened:
            os.close(fd)
        raise
    return opened


def join_cgroups(opened: list[tuple[int, str]]) -> None:
    """Move this process into the groups `open_cgroups` opened ("0": the writer)."""
    for fd, procs in opened:
        try:
            os.write(fd, b"0")
        except OSError as e:
            raise libc.SyscallError("write(2)", e.errno or 0, procs) from None
        finally:
            os.close(fd)


def _preload(terminal: bool) -> None:
    """Everything the command's side needs, imported while our own root is reachable."""
    steps.preload((*PROCESS_STEPS, "exec"))
    if terminal:
        import fcntl  # noqa: F401
        import termios  # noqa: F401

        from pflask.run import terminal as _terminal  # noqa: F401


def _wants_terminal(the_plan: plan.Plan) -> bool:
    return the_plan.terminal != "false" and os.isatty(0)


def _ptmx(the_plan: plan.Plan) -> str:
    """The container's own devpts when it has one, else the (shared) host's."""
    for step in the_plan.steps:
        if isinstance(step, plan.Console):
            return step.ptmx
    return "/dev/ptmx"


def run(spec: str, argv: list[str], owner: int | None = None) -> int:
    """Run `argv` in the container `spec` (name or pid) of `owner` (default: ours);
    return its exit status.  An empty `argv` is the user's login shell (`login_shell`)."""
    from pflask.run import state

    record = state.find(spec, owner)
    if not record.container_alive() or not record.in_its_root():
        raise state.NotRunning(f"{record.name} has no running PID 1 yet (still starting)")
    the_plan = record.plan()
    terminal = _wants_terminal(the_plan)
    _preload(terminal)
    pidfd = record.open_pid1()
    if pidfd < 0:
        raise state.NotRunning(f"{record.name} has just stopped")
    names = namespaces(the_plan)
    if record.foreign and "user" not in names:
        # Another user's record names the namespaces: whatever it says, root
        # goes in only as the root of that user's user namespace (open_pid1
        # checked it is theirs), never as the host's root.
        names = ("user", *names)
    cgroups = any(isinstance(s, plan.Cgroup) for s in the_plan.steps)
    try:
        groups = join(pidfd, record.pid, record.name, names, cgroups, _workdir(the_plan))
    finally:
        os.close(pidfd)
    if not argv:
        try:
            argv = [login_shell(the_plan)]
        except OSError as e:
            _close(groups)
            raise SetupError(f"exec in {record.name}: {e}") from None
    return Session(the_plan, record, argv, terminal, groups).run()


def join(
    pidfd: int,
    pid: int,
    name: str,
    names: tuple[str, ...],
    cgroups: bool,
    workdir: str | None,
) -> list[tuple[int, str]]:
    """Enter the namespaces `names` of PID 1 (`pidfd`, `pid`) of the container
    `name` and move to `workdir`; with `cgroups`, its cgroups are opened first,
    from the host's view (Session moves the command into them).  Returns them;
    a failure is one SetupError line, with nothing left open."""
    groups: list[tuple[int, str]] = []
    try:
        if cgroups:
            groups = open_cgroups(pid)
        enter(pidfd, names, f"PID 1 of {name} ({pid})")
        if workdir is not None:
            os.chdir(workdir)
    except OSError as e:
        _close(groups)
        raise SetupError(f"exec in {name}: {e}") from None
    return groups


def _close(groups: list[tuple[int, str]]) -> None:
    for fd, _ in groups:
        os.close(fd)


def login_shell(the_plan: plan.Plan) -> str:
    """The shell of the user the command runs as (the plan's `user:`, else
    root), from the container's own /etc/passwd: we are in its mount
    namespace by now, at its root, so "/" is the container's.  The file is
    read with the bounded reader (users._entries); /bin/sh when it says nothing usable."""
    from pflask.run import users

    spec = next((s.user for s in the_plan.steps if isinstance(s, plan.SwitchUser)), "0")
    try:
        return users.login_shell(spec)
    except (LookupError, ValueError):
        return users.DEFAULT_SHELL


def _workdir(the_plan: plan.Plan) -> str | None:
    """The plan's workdir; else the container's root; None (stay) without a root."""
    for step in the_plan.steps:
        if isinstance(step, plan.Chdir):
            return step.path
    return "/" if the_plan.root is not None else None


class Session:
    """E, inside the container's namespaces: forks the command, copies its pty, waits."""

    def __init__(
        self,
        the_plan: plan.Plan,
        record: Record,
        argv: list[str],
        terminal: bool,
        groups: list[tuple[int, str]],
    ) -> None:
        self.groups = groups  # PID 1's cgroup.procs, for the command to join
        self.plan = the_plan
        self.record = record
        self.argv = argv
        self.terminal = terminal
        self.child = 0
        self.io: Proxy | None = None
        # pflask-oci exec --tty: the pty master goes to the engine's console
        # socket (it copies the terminal) instead of being proxied here.
        self.send_master: Callable[[int], None] | None = None

    def _forward(self, signum: int, _frame: object) -> None:
        if self.child:
            try:
                os.kill(self.child, signum)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        master = slave = -1
        if self.terminal:
            from pflask.run import terminal

            try:
                master = os.open(_ptmx(self.plan), terminal.PTY_FLAGS)
                slave = terminal.peer(master)
            except OSError as e:
                raise SetupError(f"exec in {self.record.name}: a pty: {e}") from None
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        for signum in FORWARDED:
            _signal.signal(signum, self._forward)
        child = os.fork()
        if child == 0:
            os.close(status_r)
            if master >= 0:
                os.close(master)
            self._command(status_w, slave)
        for fd, _ in self.groups:
            os.close(fd)  # ours stay where pflask exec started: see open_cgroups
        self.groups = []
        self.child = child
        os.close(status_w)
        if slave >= 0:
            os.close(slave)
        if master >= 0 and self.send_master is not None:
            self.send_master(master)  # closes it
            master = -1
        loop = eventloop.Loop()
        if master >= 0:
            from pflask.run.terminal import Proxy

            self.io = loop.copier = Proxy(master)
            _signal.signal(_signal.SIGWINCH, loop.on_resize)
        try:
            return self._wait(loop, status_r)
        finally:
            loop.close()
            os.close(status_r)
            if self.io is not None:
                self.io.close()

    def _command(self, status: int, slave: int) -> None:
        """X: the plan's process rules, then exec; errors go to E as `Failed` messages
        naming the plan's step (the numbers `pflask plan` shows)."""
        from pflask.run.hygiene import seclude

        for signum in (*FORWARDED, _signal.SIGWINCH, _signal.SIGPIPE, _signal.SIGXFSZ):
            _signal.signal(signum, _signal.SIG_DFL)
        runner = Container(self.plan, status=status, console=slave)
        try:  # first: a command that fails later still never ran outside PID 1's groups
            join_cgroups(self.groups)
        except OSError as e:
            runner.fail(EXIT_SETUP, f"exec in {self.record.name}: {e}")
        try:  # in the container's PID namespace: keep nothing of our invoker's
            seclude((status, slave), b"pflask-exec", dumpable=False)
        except FileNotFoundError:
            pass  # no /proc/self/stat in there: no /proc/X/environ to read either
        except OSError as e:
            runner.fail(EXIT_SETUP, f"exec in {self.record.name}: {e}")
        if slave < 0:
            os.setsid()  # as `pflask run`: signals reach it through pflask, once
        for number, step in enumerate(self.plan.steps, 1):
            if step.kind in PROCESS_STEPS:
                runner.run_step(number, step)
        runner.run_step(len(self.plan.steps), plan.Exec(argv=tuple(self.argv)))

    def _wait(self, loop: eventloop.Loop, status_r: int) -> int:
        pidfd = os.pidfd_open(self.child)
        reader = protocol.Reader(status_r)
        message: protocol.Status | None = None  # until the status pipe has spoken
        try:
            while True:
                ready = loop.poll([pidfd] + ([status_r] if message is None else []))
                if message is None and status_r in ready:
                    message = reader.receive()
                    if message == protocol.END and self.io is not None:
                        self.io.start()  # the command runs: raw mode from now on
                if pidfd in ready:
                    break
            status = os.waitpid(self.child, 0)[1]
            if message is None:
                message = reader.receive()
        finally:
            os.close(pidfd)
        if self.io is not None:
            self.io.finish()
        if isinstance(message, protocol.Failed):
            print(f"pflask: {message.message}", file=sys.stderr)
            return message.code
        if message != protocol.END:
            print(f"pflask: the command's process said {type(message).__name__}", file=sys.stderr)
            return EXIT_SETUP
        return exit_status(status)
