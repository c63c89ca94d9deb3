"""pflask.run.eventloop: the select loop shared by the supervisor, exec and attach.

Real pipes, real child processes and real signals: each test would hang (and
the timeout fail it) if the loop missed what it waits for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from pflask.run.eventloop import Loop

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def loop() -> Iterator[Loop]:
    the_loop = Loop()
    try:
        yield the_loop
    finally:
        the_loop.close()


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        yield r, w
    finally:
        os.close(r)
        os.close(w)


def later(shell: str, *fds: int) -> subprocess.Popen[bytes]:
    """A child process that runs `shell` a tenth of a second from now, with `fds`."""
    return subprocess.Popen(["bash", "-c", f"sleep 0.1; {shell}"], pass_fds=fds)


def test_wait_returns_once_a_child_writes_to_the_fd(loop: Loop, pipe: tuple[int, int]) -> None:
    r, w = pipe
    child = os.fork()
    if child == 0:
        time.sleep(0.1)
        os.write(w, b"x")
        os._exit(0)
    start = time.monotonic()
    loop.wait(r)
    assert time.monotonic() - start >= 0.09
    assert os.read(r, 1) == b"x"
    os.waitpid(child, 0)


def test_wait_on_a_pidfd_returns_when_the_process_exits(loop: Loop) -> None:
    proc = subprocess.Popen(["sleep", "0.2"])
    pidfd = os.pidfd_open(proc.pid)
    try:
        start = time.monotonic()
        loop.wait(pidfd)
        assert time.monotonic() - start >= 0.15
        pid, status = os.waitpid(proc.pid, os.WNOHANG)  # a zombie by now: no waiting
        assert pid == proc.pid and os.WIFEXITED(status)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        os.close(pidfd)


def test_the_deadline_fires_once_and_is_cleared(pipe: tuple[int, int]) -> None:
    r, w = pipe
    fired: list[float] = []
    loop = Loop(on_deadline=lambda: fired.append(time.monotonic()))
    try:
        start = time.monotonic()
        loop.deadline = start + 0.1
        while not fired:
            assert r not in loop.poll([r])
        assert fired[0] - start >= 0.1
        assert loop.deadline is None
        os.write(w, b"x")
        loop.wait(r)  # no deadline now: nothing fires again
        assert len(fired) == 1
    finally:
        loop.close()


def test_the_deadline_waits_while_the_fd_is_ready(pipe: tuple[int, int]) -> None:
    """A ready fd is returned first; the deadline fires on a later round."""
    r, w = pipe
    fired: list[bool] = []
    loop = Loop(on_deadline=lambda: fired.append(True))
    try:
        loop.deadline = time.monotonic() - 1
        os.write(w, b"x")
        assert r in loop.poll([r])
        assert not fired and loop.deadline is not None
        os.read(r, 1)
        loop.poll([r])
        assert fired == [True]
    finally:
        loop.close()


def test_a_signal_wakes_the_loop(loop: Loop, pipe: tuple[int, int]) -> None:
    """Python retries select(2) after a handler (PEP 475): only the wakeup fd
    brings the loop back to look at what the handler did."""
    r, _ = pipe
    caught: list[int] = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, _frame: caught.append(signum))
    try:
        proc = later(f"kill -USR1 {os.getpid()}")
        ready = loop.poll([r])
        assert caught == [signal.SIGUSR1]
        assert r not in ready and loop.wakeup in ready
        proc.wait()
    finally:
        signal.signal(signal.SIGUSR1, previous)


class PipeCopier:
    """A copier as terminal.Proxy is one: reads `source`, writes what it read to `sink`."""

    def __init__(self, source: int, sink: int) -> None:
        self.source = source
        self.sink = sink
        self.pending = b""
        self.resizes = 0

    def readers(self) -> list[int]:
        return [self.source] if self.source >= 0 else []

    def writers(self) -> list[int]:
        return [self.sink] if self.pending else []

    def handle(self, readable: list[int], writable: list[int]) -> None:
        if self.source >= 0 and self.source in readable:
            data = os.read(self.source, 4096)
            if not data:
                self.source = -1  # ended
            self.pending += data
        if self.sink in writable:
            self.pending = self.pending[os.write(self.sink, self.pending) :]

    def resize(self) -> None:
        self.resizes += 1


def test_the_copier_is_served_while_the_loop_waits(loop: Loop, pipe: tuple[int, int]) -> None:
    r, w = pipe
    source_r, source_w = os.pipe2(os.O_CLOEXEC)
    sink_r, sink_w = os.pipe2(os.O_CLOEXEC)
    copier = PipeCopier(source_r, sink_w)
    loop.copier = copier
    previous = signal.signal(signal.SIGWINCH, loop.on_resize)
    try:
        proc = later(
            f"kill -WINCH {os.getpid()}; printf hello >&{source_w}; sleep 0.1; echo >&{w}",
            source_w,
            w,
        )
        os.close(source_w)
        source_w = -1
        loop.wait(r)
        proc.wait()
        assert os.read(sink_r, 100) == b"hello"
        assert copier.resizes == 1 and not loop.resized
    finally:
        signal.signal(signal.SIGWINCH, previous)
        for fd in (source_r, source_w, sink_r, sink_w):
            if fd >= 0:
                os.close(fd)


def test_close_gives_back_the_previous_wakeup_fd(pipe: tuple[int, int]) -> None:
    _, w = pipe
    os.set_blocking(w, False)
    before = signal.set_wakeup_fd(w)
    try:
        loop = Loop()
        assert signal.set_wakeup_fd(loop._wakeup_w) == loop._wakeup_w
        loop.close()
        assert signal.set_wakeup_fd(w) == w
    finally:
        signal.set_wakeup_fd(before)
