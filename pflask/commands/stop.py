"""`pflask stop NAME`: the stop signal to PID 1, SIGKILL after the timeout, wait for the end.

The signal is the plan's `stop_signal`: SIGRTMIN+3 when PID 1 is an init
such as systemd (its "halt" request), SIGTERM otherwise.  PID 1 is signalled
directly through a pidfd (never a pid that might have been reused; the
record is checked against the processes it names, see state.py), so
`stop` works the same for a foreground and a detached container and does
not depend on the supervisor being responsive.  SIGKILL to PID 1 ends the
whole PID namespace.  `stop` returns once the supervisor has exited, which is
after it has cleaned up (cgroups, links, the state record): when it returns,
the name is free again.

A stop that succeeds at once is quiet.  When PID 1 is still there after
NOTICE_AFTER seconds (a command that ignores SIGTERM, an init shutting down
slowly), one line on stderr says what `stop` is waiting for and for how long,
and one more says when it escalates to SIGKILL: a silent ten-second pause
looks like a hang.
"""

from __future__ import annotations

import errno
import os
import time

from pflask.errors import PflaskError, UsageError
from pflask.kernel import libc
from pflask.kernel.signals import signal_number

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal

    from pflask.run.state import Container
else:
    import _signal

CLEANUP_TIMEOUT = 30.0  # seconds the supervisor may take to clean up after PID 1 died
NOTICE_AFTER = 0.5  # seconds of silence before saying what `stop` waits for


def _say(line: str) -> None:
    import sys

    print(f"pflask: {line}", file=sys.stderr, flush=True)


def _wait(fd: int, timeout: float | None) -> bool:
    """Whether the process behind pidfd `fd` exited within `timeout` seconds."""
    import select

    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        if select.select([fd], [], [], left)[0]:
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False


def _signal_pidfd(fd: int, signum: int) -> None:
    try:
        libc.pidfd_send_signal(fd, signum)
    except ProcessLookupError:
        pass  # exited meanwhile
    except libc.SyscallError as e:
        if e.errno != errno.ESRCH:  # exited meanwhile
            raise


def _wait_pid1(record: Container, pid1: int, timeout: float) -> bool:
    """Whether PID 1 exited within `timeout` seconds of its stop signal.

    Quiet for the first NOTICE_AFTER seconds; then one line names the wait.
    """
    started = time.monotonic()
    if timeout <= NOTICE_AFTER:
        return _wait(pid1, timeout)
    if _wait(pid1, NOTICE_AFTER):
        return True
    _say(
        f"waiting up to {timeout:g} s for {record.name} to stop "
        f"({record.stop_signal} sent); then SIGKILL"
    )
    return _wait(pid1, max(0.0, timeout - (time.monotonic() - started)))


def stop(record: Container, timeout: float | None = None) -> None:
    """Stop the container and wait until its supervisor is gone."""
    timeout = record.stop_timeout if timeout is None else timeout
    supervisor = record.open_supervisor()
    if supervisor < 0:
        return  # already gone
    try:
        pid1 = record.open_pid1()
        if pid1 < 0:
            # Still being set up (or PID 1 already gone): the supervisor knows
            # what to signal, and its SIGTERM handling escalates on its own.
            _signal_pidfd(supervisor, _signal.SIGTERM)
        else:
            try:
                _signal_pidfd(pid1, signal_number(record.stop_signal))
                if not _wait_pid1(record, pid1, timeout):
                    _say(f"{record.name} did not stop within {timeout:g} s; sending SIGKILL")
                    _signal_pidfd(pid1, _signal.SIGKILL)
                    _wait(pid1, None)
            finally:
                os.close(pid1)
        if not _wait(supervisor, CLEANUP_TIMEOUT):
            raise PflaskError(
                f"{record.name}: PID 1 is gone but its pflask (pid {record.supervisor}) "
                f"has not finished cleaning up after {CLEANUP_TIMEOUT:g}s"
            )
    finally:
        os.close(supervisor)


def stop_container(name: str, timeout: float | None, owner: str | None = None) -> None:
    """`pflask stop NAME`: the container called `name` (or whose PID 1 is
    `name`), the invoker's own or, for root, `owner`'s."""
    from pflask.run import state

    if timeout is not None and timeout < 0:
        raise UsageError("stop: --timeout must be 0 or more seconds")
    uid = None if owner is None else state.owner_uid(owner)
    stop(state.find(name, uid), timeout)
