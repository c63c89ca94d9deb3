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
    """Z's state: the plans it was given, and the supervisors it forked and has
    not reaped yet (by pidfd, and by job)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.plans: dict[int, Plan] = {}
        self.running: dict[int, tuple[int, int, int]] = {}  # pidfd -> (job, pid, report fd)
        self.jobs: dict[int, int] = {}  # job -> pid, until reaped

    def serve(self) -> None:
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        while True:
            for fd, _ in poller.poll():
                if fd != self.sock.fileno():
                    self._reap(fd)
                    poller.unregister(fd)
                elif not self._receive(poller):
                    self._end()
                    return

    def _receive(self, poller: select.poll) -> bool:
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
            pidfd = self._fork(job, self.plans[plan_id], name, fds)
            poller.register(pidfd, select.POLLIN)
        elif kind == "signal":
            _, job, number = message
            pid = self.jobs.get(job)
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

    def _fork(self, job: int, plan: Plan, name: str | None, fds: list[int]) -> int:
        pid = os.fork()
        if pid == 0:
            supervise(plan, name, fds)
        for fd in fds[:3]:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        self.running[pidfd] = (job, pid, fds[3])
        self.jobs[job] = pid
        return pidfd

    def _reap(self, pidfd: int) -> None:
        job, pid, report = self.running.pop(pidfd)
        del self.jobs[job]
        _, wait_status = os.waitpid(pid, 0)
        status = os.waitstatus_to_exitcode(wait_status)
        if status < 0:  # S itself died of a signal
            status = 128 - status
        try:
            os.write(report, f"\0{pid} {status}".encode())
        except OSError:
            pass  # the caller stopped listening (a cancelled run)
        os.close(report)
        os.close(pidfd)

    def _end(self) -> None:
        """The caller is gone: stop every container still running."""
        for pid in self.jobs.values():
            os.kill(pid, _signal.SIGTERM)


def supervise(plan: Plan, name: str | None, fds: list[int]) -> NoReturn:
    """S, forked by Z: take fds 0-2 and the report pipe, run the container,
    report why it could not start the command, if it could not; exit with
    its status.  `name`: the container's; default the plan's with S's pid."""
    gc.disable()  # as `pflask run` (cli.run_command); Supervisor._started turns it back on
    status = EXIT_SETUP
    report = fds[3]
    try:
        from pflask.run import mounts
        from pflask.run.supervisor import Supervisor

        for number in (_signal.SIGINT, _signal.SIGQUIT):
            _signal.signal(number, _signal.default_int_handler)  # S forwards them
        for target, fd in enumerate(fds):
            os.dup2(fd, target, inheritable=target < REPORT)
        os.closerange(REPORT + 1, os.sysconf("SC_OPEN_MAX"))  # the socket, the other jobs'
        report = REPORT
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
        plan = plan.renamed(plan.name, name or f"{plan.name}-{os.getpid()}", hostname=False)
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
