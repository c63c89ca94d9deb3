"""Z, the zygote: a small process that forks a supervisor for each run of the Python API.

pflask.api starts containers from the caller's process, which may be large
(a test runner, a build tool) and may have threads.  Forking such a process
costs time in proportion to its memory (its page tables are copied: about
1 ms for a 25 MB process here, 0.45 ms for a bare interpreter), and a fork of
a threaded process may inherit a lock another thread held.  So the caller
starts Z once, a fresh interpreter that imports only what supervisors and
containers need, and Z forks every supervisor (S, pflask.run.supervisor)
from its small, single-threaded self.

The caller talks to Z over one SOCK_SEQPACKET socket, in one direction:

- ("plan", id) with a memfd holding the plan's wire form (marshal): Z keeps
  it and imports what its steps need, so no fork imports anything;
- ("run", job, plan id, name) with four fds, the new S's fds 0-2 and its
  report pipe: Z forks S, which runs the container with those fds 0-2 and
  writes why it could not start the command, if it could not, to the report
  pipe; once Z has reaped S it writes NUL, S's pid and exit status there and
  closes it.  The caller reads the report until EOF: EOF without a status
  means Z died;
- ("signal", job, number): signal the job's S (a timeout: SIGTERM, which S
  turns into the container's stop, then SIGKILL).  Z is S's parent and reaps
  it, so the pid it signals is always S's own.

After each run Z forks the next run's S ahead (the spare): it renames the
plan for its pid and waits on a socket of its own, holding none of Z's fds,
until Z hands it a job of the same plan (a run of another plan dismisses it
and forks anew).  In a loop of runs, the fork and the spare's first steps
happen while the previous container runs, off the path from `run` to the
command.

The socket's end (the caller exited or closed it) ends Z: every S still
running is sent SIGTERM, so it stops its container and cleans up, as
`pflask stop` would have it.  Z ignores the terminal's SIGINT and SIGQUIT
(the S's in the caller's process group get them and forward them to their
containers, as `pflask run` does).
"""

from __future__ import annotations

import gc
import marshal
import os
import select
import socket
import sys

from pflask.errors import EXIT_SETUP, PflaskError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal  # typeshed describes the same functions there
    from typing import NoReturn

    from pflask.compile.plan import Plan
else:
    import _signal  # signal without enum (a few ms at start)

REPORT = 3
"""S's report pipe, at this fd (fds 0-2 are the container's)."""

MAX_MESSAGE = 4096
"""The largest message on the socket (plans travel in memfds)."""

MAX_PLAN = 64 << 20
"""The largest plan's wire form Z reads (a plan of 100,000 mounts is ~20 MB)."""


def main(fd: int) -> NoReturn:
    """Serve the caller on the socket at `fd` until it closes; then exit."""
    os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))  # the caller's inheritable fds
    for std in range(3):  # open, so that no fd received lands there
        try:
            os.fstat(std)
        except OSError:
            os.dup2(os.open(os.devnull, os.O_RDWR), std)
    for number in (_signal.SIGINT, _signal.SIGQUIT):
        _signal.signal(number, _signal.SIG_IGN)
    Zygote(socket.socket(fileno=fd)).serve()
    os._exit(0)


class Zygote:
    """Z's state: the plans it was given, the supervisors it forked and has not
    reaped yet (by pidfd), and the spare: a supervisor forked
    ahead for the plan of the last run, waiting for its job."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.plans: dict[int, Plan] = {}
        # pidfd -> (job, pid, report fd); a spare's job is 0 and report -1
        self.running: dict[int, tuple[int, int, int]] = {}
        self.spare: Spare | None = None
        self.poller = select.poll()

    def serve(self) -> None:
        self.poller.register(self.sock.fileno(), select.POLLIN)
        while True:
            for fd, _ in self.poller.poll():
                if fd != self.sock.fileno():
                    self._reap(fd)
                elif not self._receive():
                    self._end()
                    return

    def _receive(self) -> bool:
        """One message from the caller; False once it is gone."""
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 4)
        except ConnectionError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        message = marshal.loads(data)
        kind = message[0]
        if kind == "plan":
            self._plan(message[1], fds[0])
        elif kind == "run":
            _, job, plan_id, name = message
            self._run(job, plan_id, name, fds)
            self._prepare(plan_id)  # the next run's S, while this one starts
        elif kind == "signal":
            _, job, number = message
            pid = next((pid for j, pid, _ in self.running.values() if j == job), None)
            if pid is not None:
                os.kill(pid, number)  # not reaped yet: still S's pid
        return True

    def _plan(self, plan_id: int, memfd: int) -> None:
        from pflask.compile.plan import Plan
        from pflask.run import supervisor

        try:
            with os.fdopen(memfd, "rb") as f:
                data = f.read(MAX_PLAN + 1)
        except OSError:
            return
        plan = self.plans[plan_id] = Plan.from_wire(marshal.loads(data[:MAX_PLAN]))
        supervisor.preload(plan, plan.terminal != "false")
        supervisor.preload_host(plan)
        gc.collect()
        gc.freeze()  # what is here now is shared with every fork, untouched

    def _run(self, job: int, plan_id: int, name: str | None, fds: list[int]) -> None:
        """Hand the job to the spare, if it is the plan's; else fork its S now."""
        spare, self.spare = self.spare, None
        if spare is not None and spare.plan_id == plan_id and spare.take(job, name, fds):
            pidfd, pid = spare.pidfd, spare.pid
        else:
            if spare is not None:
                spare.dismiss()
            pid = os.fork()
            if pid == 0:
                _prepare()
                serve(_named(self.plans[plan_id], name), fds)
            pidfd = os.pidfd_open(pid)
            self.poller.register(pidfd, select.POLLIN)
        for fd in fds[:3]:
            os.close(fd)
        self.running[pidfd] = (job, pid, fds[3])

    def _prepare(self, plan_id: int) -> None:
        """Fork the spare S for `plan_id`'s next run."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            _prepare()
            _wait_for_job(self.plans[plan_id], theirs.detach())
        theirs.close()
        pidfd = os.pidfd_open(pid)
        self.poller.register(pidfd, select.POLLIN)
        self.running[pidfd] = (0, pid, -1)
        self.spare = Spare(plan_id, pid, pidfd, ours)

    def _reap(self, pidfd: int) -> None:
        self.poller.unregister(pidfd)
        job, pid, report = self.running.pop(pidfd)
        _, wait_status = os.waitpid(pid, 0)
        os.close(pidfd)
        if self.spare is not None and self.spare.pid == pid:
            self.spare.sock.close()  # it died waiting: the next run forks anew
            self.spare = None
        if not job:
            return
        status = os.waitstatus_to_exitcode(wait_status)
        if status < 0:  # S itself died of a signal
            status = 128 - status
        try:
            os.write(report, f"\0{pid} {status}".encode())
        except OSError:
            pass  # the caller stopped listening (a cancelled run)
        os.close(report)

    def _end(self) -> None:
        """The caller is gone: stop every container still running."""
        if self.spare is not None:
            self.spare.dismiss()
        for job, pid, _ in self.running.values():
            if job:  # not the spare
                os.kill(pid, _signal.SIGTERM)


class Spare:
    """Z's end of a spare S: its pid, pidfd and socket."""

    def __init__(self, plan_id: int, pid: int, pidfd: int, sock: socket.socket) -> None:
        self.plan_id = plan_id
        self.pid = pid
        self.pidfd = pidfd
        self.sock = sock

    def take(self, job: int, name: str | None, fds: list[int]) -> bool:
        """Give it the job and its fds; False if it is gone."""
        try:
            socket.send_fds(self.sock, [marshal.dumps((job, name))], fds)
        except OSError:
            return False
        finally:
            self.sock.close()
        return True

    def dismiss(self) -> None:
        """Not needed: its socket's end makes it exit (Z reaps it)."""
        self.sock.close()


def _prepare() -> None:
    """In a fresh fork of Z, before it becomes S."""
    gc.disable()  # as `pflask run` (cli.run_command); Supervisor._started turns it back on
    for number in (_signal.SIGINT, _signal.SIGQUIT):
        _signal.signal(number, _signal.default_int_handler)  # S forwards them


def _named(plan: Plan, name: str | None) -> Plan:
    """The plan for a container called `name`, by default the plan's with S's pid."""
    return plan.renamed(plan.name, name or f"{plan.name}-{os.getpid()}", hostname=False)


def _wait_for_job(plan: Plan, sock: int) -> NoReturn:
    """A spare S: hold nothing of Z's but `sock`, wait there for a job, serve it."""
    os.dup2(sock, REPORT)  # where the report pipe will be; fds 0-2 stay Z's until then
    os.closerange(REPORT + 1, os.sysconf("SC_OPEN_MAX"))  # other jobs' report pipes
    named = _named(plan, None)
    try:
        data, fds, _, _ = socket.recv_fds(socket.socket(fileno=REPORT), MAX_MESSAGE, 4)
    except OSError:
        os._exit(0)
    if len(fds) != 4:
        os._exit(0)  # dismissed
    _, name = marshal.loads(data)
    serve(named if name is None else _named(plan, name), fds)


def serve(plan: Plan, fds: list[int]) -> NoReturn:
    """S: take fds 0-2 and the report pipe, run the container, report why it
    could not start the command, if it could not; exit with its status."""
    status = EXIT_SETUP
    report = fds[3]
    try:
        from pflask.run import mounts
        from pflask.run.supervisor import Supervisor

        for target, fd in enumerate(fds):
            os.dup2(fd, target, inheritable=target < REPORT)
        os.closerange(REPORT + 1, os.sysconf("SC_OPEN_MAX"))  # the socket, the other jobs'
        report = REPORT
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        mounts.preflight(plan.steps)
        s = Supervisor(plan, verbose=False)
        s.print_failure = False
        status = s.run()
        if s.failure is not None:
            os.write(report, s.failure.encode())
    except PflaskError as e:
        os.write(report, str(e).encode())
        status = e.status
    except BaseException as e:  # a bug: still an error for the caller, not a hang
        os.write(report, f"{type(e).__name__}: {e}".encode())
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(status)
