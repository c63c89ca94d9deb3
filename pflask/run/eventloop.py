"""One select loop for the waiting processes: the supervisor, `pflask exec`, `pflask attach`.

Each of them waits for something (a status pipe, a pidfd that turns readable
when its process exits, a socket) while it must also serve signals (forward
them, resize the pty, stop), a deadline (a stop request escalates to
SIGKILL) and the copying of a terminal.  Python runs a signal handler only
between bytecodes, so a process blocked in select(2) would not see the
handler's effect until something else woke it: `signal.set_wakeup_fd`
writes every signal's number into a pipe that the loop watches, and the
loop wakes at once.

The terminal's copier (terminal.Proxy, attach.Server, attach's client
session) plugs in with four methods: the fds it wants to read and write now,
what to do with the ready ones, and what to do when our window changed.

Only `os`, `select` and `time`: every `pflask run` imports this module.
"""

from __future__ import annotations

import os
import select
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal  # typeshed describes the same functions there
    from collections.abc import Callable
    from typing import Protocol

    class Copier(Protocol):
        def readers(self) -> list[int]: ...
        def writers(self) -> list[int]: ...
        def handle(self, readable: list[int], writable: list[int]) -> None: ...
        def resize(self) -> None: ...

else:
    import _signal


class Loop:
    """The wakeup fd (set up here, the previous one restored by `close`), an
    optional deadline, and a copier served on every round."""

    def __init__(self, on_deadline: Callable[[], None] | None = None) -> None:
        self.wakeup, self._wakeup_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._previous = _signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        self.deadline: float | None = None  # time.monotonic() at which on_deadline runs, once
        self.on_deadline = on_deadline
        self.copier: Copier | None = None
        self.resized = False

    def on_resize(self, _signum: int, _frame: object) -> None:
        """A SIGWINCH handler: the copier resizes on the loop's next round."""
        self.resized = True

    def close(self) -> None:
        """Give the wakeup fd back (the one before ours); also in a forked child."""
        _signal.set_wakeup_fd(self._previous)
        os.close(self.wakeup)
        os.close(self._wakeup_w)

    def wait(self, fd: int) -> None:
        """Return once `fd` is readable (a pidfd: once its process has exited)."""
        while fd not in self.poll([fd]):
            pass

    def poll(self, readers: list[int]) -> list[int]:
        """One round: wait until one of `readers` is readable, a signal came, the
        copier has work or the deadline passed; serve the signal, the copier
        and the deadline; return the ready fds."""
        timeout = None
        if self.deadline is not None:
            timeout = max(0.0, self.deadline - time.monotonic())
        watched = [*readers, self.wakeup]
        writers: list[int] = []
        copier = self.copier
        if copier is not None:
            watched += copier.readers()
            writers = copier.writers()
        ready, writable, _ = select.select(watched, writers, [], timeout)
        if self.wakeup in ready:
            _drain(self.wakeup)
            if self.resized and copier is not None:
                self.resized = False
                copier.resize()
        if copier is not None:
            copier.handle(ready, writable)
        if (
            self.deadline is not None
            and time.monotonic() >= self.deadline
            and not any(fd in ready for fd in readers)
        ):
            self.deadline = None
            if self.on_deadline is not None:
                self.on_deadline()
        return ready


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 256):
            pass
    except BlockingIOError:
        pass
