"""What the supervisor and the container's processes say to each other.

Two close-on-exec pipes join them (docs/architecture.md, "Process model"):

- control, supervisor -> container: one byte per message, read by a process
  that blocks on it (`Go` releases the container's next AwaitHost step;
  `Adopted` tells the forked PID 1 that the supervisor is now its parent).
  EOF means the supervisor is gone, or wants the container to stop before
  its command: the container ends quietly where it waits.
- status, container -> supervisor: `Unshared`, `Pid`, `Made`, `Failed`,
  each framed as a tag byte, the payload's length in decimal, ":" and the
  payload, so a path or a message may hold any byte.  EOF (`End`) with no
  `Failed` before it means the command runs: the pipe closed when it was
  executed (close-on-exec) or spawned.

The supervisor's side reads the status pipe through `Reader`, which turns a
truncated or garbled frame into a `Failed` of its own (exit 125): the bytes
come from a process that may be running the container's code by then, so
they are checked, never trusted.  Records, not dataclasses, and no json: this
is on every `pflask run`'s start-up path.
"""

from __future__ import annotations

import os

from pflask.errors import EXIT_SETUP
from pflask.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


# --- supervisor -> container (control pipe) ---------------------------------------------


class Go(Record):
    """The host steps before the container's next AwaitHost step are done."""


class Adopted(Record):
    """The supervisor reaped C1: the forked PID 1 is its child now (arm PDEATHSIG)."""


GO = Go()
ADOPTED = Adopted()
_CONTROL: dict[bytes, Go | Adopted] = {b"g": GO, b"a": ADOPTED}
_CONTROL_BYTES = {Go: b"g", Adopted: b"a"}


def encode_control(message: Go | Adopted) -> bytes:
    return _CONTROL_BYTES[type(message)]


def decode_control(byte: bytes) -> Go | Adopted | None:
    """The message one byte carries; None at EOF (b"") or for an unknown byte."""
    return _CONTROL.get(byte)


# --- container -> supervisor (status pipe) ----------------------------------------------


class Unshared(Record):
    """The first process made its namespaces (host steps can act on them now)."""


class Pid(Record):
    """C1 forked the container's PID 1: its pid, as the supervisor sees it."""

    pid: int


class Made(Record):
    """Mount points the container created in a root that stays (paths inside
    it), for the supervisor to remove after the container if still empty."""

    paths: tuple[str, ...]


class Failed(Record):
    """Setup failed (`code`: 125, or 126/127 for the command): one line to print."""

    code: int
    message: str


class End(Record):
    """The status pipe's EOF: the command runs (unless a Failed came before)."""


UNSHARED = Unshared()
END = End()

Status = Unshared | Pid | Made | Failed | End

MAX_PAYLOAD = 1 << 20  # a longer frame is garbage, not a message
_PATHS_SEP = b"\0"  # the one byte a path cannot hold


def encode(message: Status) -> bytes:
    """The frame for `message` on the status pipe (End has none: it is the EOF)."""
    if isinstance(message, Unshared):
        tag, payload = b"u", b""
    elif isinstance(message, Pid):
        tag, payload = b"p", str(message.pid).encode()
    elif isinstance(message, Made):
        tag, payload = b"m", _PATHS_SEP.join(os.fsencode(p) for p in message.paths)
    elif isinstance(message, Failed):
        tag, payload = b"f", f"{message.code} {message.message}".encode(errors="replace")
    else:
        raise ValueError(f"{type(message).__name__} is not sent on the status pipe")
    return tag + str(len(payload)).encode() + b":" + payload


def decode(buffer: bytes) -> tuple[Status, int] | None:
    """The first message in `buffer` and the bytes it took; None if it is not
    all there yet.  ValueError (saying what is wrong) for a garbled frame."""
    colon = buffer.find(b":", 1, 8)
    if colon < 0:
        if len(buffer) >= 8:
            raise ValueError(f"no frame length in {buffer[:8]!r}")
        return None
    tag, length = buffer[:1], buffer[1:colon]
    if not length.isdigit() or int(length) > MAX_PAYLOAD:
        raise ValueError(f"bad frame length {length[:8]!r}")
    end = colon + 1 + int(length)
    if len(buffer) < end:
        return None
    payload = buffer[colon + 1 : end]
    if tag == b"u" and not payload:
        return UNSHARED, end
    if tag == b"p" and payload.isdigit() and 0 < int(payload) < 1 << 22:
        return Pid(pid=int(payload)), end
    if tag == b"m":
        paths = tuple(os.fsdecode(p) for p in payload.split(_PATHS_SEP)) if payload else ()
        return Made(paths=paths), end
    if tag == b"f":
        code, _, text = payload.decode(errors="replace").partition(" ")
        if code.isdigit() and 0 < int(code) < 256:
            return Failed(code=int(code), message=text), end
    raise ValueError(f"bad {tag!r} frame: {payload[:40]!r}")


def send(fd: int, message: Status) -> None:
    """Write one message whole (a pipe may take a long one in parts)."""
    data = encode(message)
    while data:
        data = data[os.write(fd, data) :]


class Reader:
    """The supervisor's end of the status pipe, one message at a time.

    `wait(fd)` returns once `fd` is readable (the supervisor keeps its
    terminal and signals going meanwhile); without it, reads block.
    """

    def __init__(self, fd: int, wait: Callable[[int], None] | None = None) -> None:
        self.fd = fd
        self.wait = wait
        self.buffer = b""
        self.ended = False

    def receive(self) -> Status:
        """The next message; `End` at EOF; a `Failed` (125) for a garbled or cut frame."""
        while True:
            try:
                decoded = decode(self.buffer) if self.buffer else None
            except ValueError as e:
                return self._garbled(str(e))
            if decoded is not None:
                message, used = decoded
                self.buffer = self.buffer[used:]
                return message
            if self.ended:
                return END
            if self.wait is not None:
                self.wait(self.fd)
            chunk = os.read(self.fd, 4096)
            if not chunk:
                self.ended = True
                if self.buffer:
                    return self._garbled(f"cut short: {self.buffer[:40]!r}")
                return END
            self.buffer += chunk

    def _garbled(self, what: str) -> Failed:
        self.buffer = b""
        self.ended = True  # nothing after a bad frame can be framed again
        return Failed(code=EXIT_SETUP, message=f"garbled message from the container: {what}")

    def close(self) -> None:
        os.close(self.fd)
