"""The container's side: its first process, PID 1, and the command's start.

The supervisor forks the container's first process (`Container.run`), which
keeps nothing of the invoker's (hygiene.seclude), makes its namespaces and
then carries out the plan's container steps in order through the table in
pflask.run.steps, talking to the supervisor through pflask.run.protocol: it says
`Unshared` after the first Unshare step, waits for a `Go` at each AwaitHost step,
reports PID 1's pid at the Fork (and waits to be `Adopted`), reports the
mount points it `Made` in a root that stays, and a `Failed` line when a step
fails.  EOF on the status pipe without a `Failed` means the command runs.

PID 1 is either the command (exec, as in the original pflask) or, with a
Reaper step, pflask itself: it spawns the command as PID 2, forwards signals
to it, reaps every zombie and exits with the command's status (`start`).
"""

from __future__ import annotations

import os
from errno import EACCES, EISDIR, ENOENT, ENOEXEC, ENOTDIR

from pflask.compile import plan
from pflask.errors import EXIT_NOEXEC, EXIT_NOTFOUND, EXIT_SETUP, PflaskError
from pflask.kernel import libc
from pflask.kernel.signals import FORWARDED
from pflask.run import protocol, steps
from pflask.run.hygiene import seclude

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal  # typeshed describes the same functions there
    from typing import NoReturn

    from pflask.run.mounts import Root
    from pflask.run.users import User
else:
    import _signal


DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"  # execvp(3)'s, when the environment has none

INIT_NAME = b"pflask-init"  # a reaper PID 1's command line and name (comm)


def exit_status(status: int) -> int:
    """A wait status as a shell would report it: the code, or 128+N for signal N."""
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def step_error(number: int, step: plan.Step, error: BaseException) -> str:
    """A failed step as one line: its number and description in the plan, the error;
    the error's type too when it is not a system or lookup error (a bug)."""
    text = f"step {number} ({step.describe()}): {error}"
    if not isinstance(error, (OSError, LookupError, ValueError, PflaskError)):
        text += f" ({type(error).__name__})"
    return text


def trace(verbose: bool, number: int, step: plan.Step) -> None:
    """-v: each step as it is carried out."""
    if verbose:
        os.write(2, f"pflask: step {number}: [{step.where}] {step.describe()}\n".encode())


class Container:
    """The container's process (C1, then PID 1, then with a reaper the command),
    and what its steps share: the root being built, the user, the environment.

    `control` and `status`: the pipes from and to the supervisor (-1: none,
    as for `pflask exec`'s command); `channel`: where the Console step sends
    the pty master; `console`: the pty slave, the command's terminal.
    """

    def __init__(
        self,
        the_plan: plan.Plan,
        *,
        verbose: bool = False,
        control: int = -1,
        status: int = -1,
        channel: int = -1,
        console: int = -1,
        detached: bool = False,
    ) -> None:
        self.plan = the_plan
        self.verbose = verbose
        self.control = control
        self.status = status
        self.root: Root | None = None
        self.kept_root: Root | None = None  # a root that stays: its mount points are reported
        self.user: User | None = None
        self.env: dict[str, str] | None = None
        self.command = 0  # the command's pid, once PID 1 has forked it
        self.channel = channel
        self.console = console
        self.detached = detached
        self.reap = False  # set by the Reaper step: PID 1 stays, the command is PID 2
        self.pending = b""  # what S said before we asked (see exit_unless_supervised)
        self.dumpable = False  # PID 1 dumpable for its owner's `pflask exec` (see seclude)
        self.start_fifo = -1  # an OCI create: where `start` says go (StartFifo)

    # -- talking to the supervisor -----------------------------------------------------------

    def send(self, message: protocol.Status) -> None:
        protocol.send(self.status, message)

    def fail(self, code: int, text: str) -> NoReturn:
        """Tell the supervisor why setup stopped (what was made first), and exit.

        After an OCI create's hand-off (AwaitStart) nobody reads the status
        pipe any more: the line goes to the process's stderr, the engine's log."""
        if self.status < 0:
            os.write(2, f"pflask: {text}\n".encode(errors="replace"))
            os._exit(code)
        self.report_made()
        self.send(protocol.Failed(code=code, message=text))
        os._exit(code)

    def report_made(self) -> None:
        """The mount points made so far in a root that stays, for S to remove later."""
        root = self.kept_root
        if root is not None and root.made:
            self.send(protocol.Made(paths=tuple(root.made)))
            root.made.clear()

    def _await(self, expected: protocol.Go | protocol.Adopted) -> None:
        """Block until the supervisor says `expected`; end quietly if it is gone
        or wants us to stop (EOF): a host step failed, or its name was refused."""
        if self.pending:
            said, self.pending = self.pending[:1], self.pending[1:]
        else:
            said = os.read(self.control, 1)
        if protocol.decode_control(said) != expected:
            self.report_made()
            os._exit(EXIT_SETUP)

    def await_go(self) -> None:
        self._await(protocol.GO)

    def exit_unless_supervised(self) -> None:
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

    # -- the steps ------------------------------------------------------------------------

    def the_root(self) -> Root:
        """The root the mount steps work in: the container's own, or "/" without one."""
        from pflask.run.mounts import Root

        if self.root is None:
            self.root = Root("/")
        return self.root

    def use_console(self) -> None:
        """The pty is stdin, stdout and stderr from now on, for every process to come;
        no process keeps the user's terminal (a detached one would hold it open)."""
        for fd in (0, 1, 2):
            os.dup2(self.console, fd)

    def run_step(self, number: int, step: plan.Step) -> None:
        """Carry out the plan's step `number`; a failure ends the process, reported."""
        trace(self.verbose, number, step)
        try:
            steps.HANDLERS[step.kind].run(step, self)
        except Exception as e:  # a bug too: still one line, still exit 125
            self.fail(EXIT_SETUP, step_error(number, step, e))

    def run(self) -> NoReturn:
        """The container's first process, just forked by the supervisor."""
        # Python's handlers and ignored signals must not leak into the container.
        for signum in (*FORWARDED, _signal.SIGPIPE, _signal.SIGXFSZ):
            _signal.signal(signum, _signal.SIG_DFL)
        libc.prctl(libc.PR_SET_PDEATHSIG, _signal.SIGKILL)
        self.exit_unless_supervised()
        # Before anything else: nothing of the invoker's reaches the container.
        self.dumpable = os.geteuid() != 0
        keep = (self.control, self.status, self.channel, self.console)
        try:
            seclude(keep, INIT_NAME, self.dumpable)
        except OSError as e:
            self.fail(EXIT_SETUP, f"before step 1: {e}")
        if self.console >= 0:
            self.use_console()
        elif self.detached:
            # Not the user's terminal nor pflask's stdout: a container that
            # outlives the pflask the user started holds none of its files
            # (an ssh logout or a $(...) would wait for it).  Its terminal, if
            # any, comes with the Console step.
            for fd in (0, 1, 2):
                null_stdio(fd)
        plan_steps = self.plan.steps
        start = self.plan.first_unshare()
        for number, step in enumerate(plan_steps[:start], 1):
            assert step.where == plan.CONTAINER
            self.run_step(number, step)  # a failure is reported instead of Unshared
        first = plan_steps[start]
        trace(self.verbose, start + 1, first)
        assert isinstance(first, plan.Unshare)
        try:
            flags = libc.namespace_flags(first.namespaces)
            if first.pid1:  # the supervisor made it: we are its PID 1 already
                flags &= ~libc.CLONE_NEWPID
                self.handle_signals_as_pid1()
            libc.unshare(flags)
        except OSError as e:
            self.fail(EXIT_SETUP, step_error(start + 1, first, e))
        self.send(protocol.UNSHARED)
        os.setsid()  # Ctrl-C at the user's terminal reaches pflask only, which forwards it
        for number, step in enumerate(plan_steps[start + 1 :], start + 2):
            if step.where == plan.CONTAINER:
                self.run_step(number, step)
        os._exit(EXIT_SETUP)  # not reached: the Exec step execs or exits

    # -- an OCI runtime's create and start ------------------------------------------------

    def open_start_fifo(self, path: str) -> None:
        """Open the FIFO read-write: it never blocks, and, holding a writer
        ourselves, a read waits for `start`'s byte instead of seeing EOF."""
        self.start_fifo = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)

    def await_start(self) -> None:
        """Created: check the command exists (a missing one fails create, 127),
        let the supervisor go (EOF on the status pipe) and wait for `start`.

        The supervisor of a `create` exits now, so PDEATHSIG must go: PID 1
        is inherited by the engine's subreaper, as runc's init is."""
        env = self.env if self.env is not None else os.environ
        name = self.plan.command[0]
        try:
            program = which(name, env.get("PATH", DEFAULT_PATH))
            if not os.access(program, os.X_OK) or os.path.isdir(program):
                os.stat(program)  # FileNotFoundError if missing
                raise PermissionError(EACCES, "Permission denied")
        except OSError as e:
            self._cannot_start(name, e)
        self.report_made()
        libc.prctl(libc.PR_SET_PDEATHSIG, 0)
        os.close(self.status)
        self.status = -1
        while True:
            try:
                said = os.read(self.start_fifo, 1)
            except InterruptedError:
                continue
            break
        os.close(self.start_fifo)
        self.start_fifo = -1
        if said != b"s":
            os._exit(EXIT_SETUP)

    # -- PID 1 ----------------------------------------------------------------------------

    def fork_pid1(self) -> None:
        """The Fork step: C1 reports PID 1's pid and exits; PID 1 goes on once adopted."""
        pid = os.fork()
        if pid:
            self.send(protocol.Pid(pid=pid))
            os._exit(0)
        # PID 1 of the new namespace.  Its parent C1 exits now, so PDEATHSIG is
        # armed only after S has adopted us, then S's liveness is checked again.
        self._await(protocol.ADOPTED)
        libc.prctl(libc.PR_SET_PDEATHSIG, _signal.SIGKILL)
        self.exit_unless_supervised()
        os.setsid()  # a session of its own, as its parent had
        self.handle_signals_as_pid1()

    def handle_signals_as_pid1(self) -> None:
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

    def start(self, argv: tuple[str, ...]) -> NoReturn:
        """The Exec step: exec the command, or (Reaper) spawn it and stay as PID 1."""
        self.report_made()
        env = self.env if self.env is not None else dict(os.environ)
        if self.reap:
            self._spawn_and_reap(argv, env)
        if self.console >= 0:
            # A session of its own with the pty as controlling terminal: Ctrl-C
            # typed there is SIGINT for the foreground job inside.
            os.login_tty(self.console)
            self.console = -1
        libc.close_range_cloexec(3)  # only 0, 1 and 2 reach the command
        try:
            # which, not execvpe: os.get_exec_path imports warnings, out of reach here.
            os.execve(which(argv[0], env.get("PATH", DEFAULT_PATH)), list(argv), env)
        except OSError as e:
            self._cannot_start(argv[0], e)

    def _spawn_and_reap(self, argv: tuple[str, ...], env: dict[str, str]) -> None:
        """Start the command as PID 2 and stay as PID 1: reap, forward, exit with it.

        posix_spawn(3) (a vfork) rather than fork: no copy of this
        interpreter's page tables, and an exec failure comes back here
        directly.  Everything set up so far (root, user, capabilities, limits,
        cwd) is inherited; signal dispositions go back to their defaults.
        With a pty the command must make it its controlling terminal from the
        descriptor it has (reopening it by name can be refused to the
        container's user), which only a forked child can do: it returns here
        and execs like a command that is PID 1.
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
                program = which(argv[0], env.get("PATH", DEFAULT_PATH))
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

    def _cannot_start(self, name: str, error: OSError) -> NoReturn:
        """The command could not be executed: 127 not found, 126 not executable."""
        if isinstance(error, FileNotFoundError):
            self.fail(EXIT_NOTFOUND, f"{name}: command not found")
        # A file is there, it cannot run.
        code = EXIT_NOEXEC if error.errno in (EACCES, ENOEXEC, ENOTDIR, EISDIR) else EXIT_SETUP
        self.fail(code, f"{name}: cannot execute: {error.strerror}")


def which(name: str, path: str) -> str:
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
        raise PermissionError(EACCES, "Permission denied")
    raise FileNotFoundError(ENOENT, "No such file or directory")


def _reap(child: int) -> NoReturn:
    """PID 1's loop: reap every zombie, exit with the command's status."""
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(EXIT_SETUP)
        if pid == child:
            os._exit(exit_status(status))


def null_stdio(fd: int) -> None:
    """Point `fd` at /dev/null (a detached container or supervisor holds no terminal)."""
    null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    os.dup2(null, fd)
    os.close(null)
