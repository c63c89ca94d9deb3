"""Detached containers' terminals: the supervisor's socket and `pflask attach`.

A detached container keeps its pty in the background supervisor, which
serves it on a unix socket (NAME.sock in the state directory, mode 0600 in a
0700 directory).  `pflask attach` connects any terminal to it; Ctrl-@ (a NUL
byte, as in the original pflask) detaches again and the container runs on.
`--detach-keys` changes that key, in podman's and docker's syntax: a comma
separated sequence such as `ctrl-p,ctrl-q`; "" never detaches.
Attaching again from elsewhere takes the pty over (the earlier client is told
and leaves), so a terminal lost with its ssh session never locks anyone out.

Only the container's owner or root may attach: the supervisor checks the
peer's credentials (SO_PEERCRED) on every connection, whatever the socket's
permissions say.

While nobody is attached the supervisor keeps reading the pty, so the
container never blocks on a full terminal, and keeps the last 64 KiB of
output for the next attach to show first.

The wire format, both ways, is frames: 1 type byte, a 4-byte big-endian
length, the payload.  To the supervisor: `i` input, `w` window size
(rows, columns: 2 bytes each).  To the client: `o` output, `x` the
container's exit status (decimal), `e` a refusal, `d` taken over elsewhere.
"""

from __future__ import annotations

import os
import sys

from pflask.errors import PflaskError
from pflask.run.terminal import (
    DEFAULT_SIZE,
    RawMode,
    read_master,
    set_window_size,
    window_size,
    write_all,
    write_pending,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket

    from pflask.run.state import Container
else:
    import _socket

DETACH_KEY = b"\0"  # Ctrl-@
_CTRL_PUNCTUATION = "@[\\]^_"  # ctrl-@ is 0, ctrl-[ 27 ... ctrl-_ 31
BACKLOG = 1 << 16  # output kept while nobody is attached
CLIENT_LIMIT = 1 << 20  # output queued for a client that does not read: then it is dropped
_HEADER = 5


def frame(kind: bytes, payload: bytes = b"") -> bytes:
    return kind + len(payload).to_bytes(4, "big") + payload


def _frames(buffer: bytearray) -> list[tuple[bytes, bytes]]:
    """Take every complete frame off the front of `buffer`."""
    found = []
    while len(buffer) >= _HEADER:
        size = int.from_bytes(buffer[1:_HEADER], "big")
        if len(buffer) < _HEADER + size:
            break
        found.append((bytes(buffer[:1]), bytes(buffer[_HEADER : _HEADER + size])))
        del buffer[: _HEADER + size]
    return found


def _size_payload(size: tuple[int, int]) -> bytes:
    return size[0].to_bytes(2, "big") + size[1].to_bytes(2, "big")


def peer(sock: _socket.socket) -> tuple[int, int]:
    """The pid and uid of the process at the other end, from the kernel
    (SO_PEERCRED: pid, uid, gid as of its connect(2) or listen(2))."""
    cred = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, 12)
    return int.from_bytes(cred[0:4], sys.byteorder), int.from_bytes(cred[4:8], sys.byteorder)


def peer_uid(sock: _socket.socket) -> int:
    """The connecting process's uid (see `peer`)."""
    return peer(sock)[1]


# --- the supervisor's side -------------------------------------------------------------------


class _Client:
    __slots__ = ("inbox", "outbox", "sock")

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = bytearray()

    def fileno(self) -> int:
        return self.sock.fileno()

    def flush(self) -> bool:
        """Send what is queued; False if the client is gone."""
        try:
            sent = self.sock.send(self.outbox)
        except BlockingIOError:
            return True
        except OSError:
            return False
        del self.outbox[:sent]
        return True

    def close(self, last: bytes = b"") -> None:
        """Send a last frame as best we can (one second at most), then hang up."""
        if last or self.outbox:
            self.outbox += last
            try:
                self.sock.settimeout(1.0)
                self.sock.sendall(self.outbox)
            except OSError:
                pass
        self.sock.close()


class Server:
    """The detached supervisor's pty: served to one attached client at a time.

    Plugs into the supervisor's select loop like terminal.Proxy does.
    """

    def __init__(self, master: int, owner: int) -> None:
        os.set_blocking(master, False)
        self.master = master
        self.owner = owner
        self.listener: _socket.socket | None = None
        self.client: _Client | None = None
        self.backlog = bytearray()
        self.sized = False  # the attached client's first frame (its size) has come
        self.pending = bytearray()  # input for the pty
        self.open = True
        set_window_size(master, DEFAULT_SIZE)

    def listen(self, path: str) -> None:
        sock = _socket.socket(
            _socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC | _socket.SOCK_NONBLOCK
        )
        try:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            sock.bind(path)
            os.chmod(path, 0o600)
            sock.listen(8)
        except OSError as e:
            sock.close()
            raise PflaskError(f"attach socket {path}: {e.strerror}") from None
        self.listener = sock

    def start(self) -> None:
        """Nothing to do: the pty is read from the start, attached or not."""

    def readers(self) -> list[int]:
        fds = [self.master] if self.open else []
        if self.listener is not None:
            fds.append(self.listener.fileno())
        if self.client is not None:
            fds.append(self.client.fileno())
        return fds

    def writers(self) -> list[int]:
        fds = [self.master] if self.pending and self.open else []
        if self.client is not None and self.client.outbox:
            fds.append(self.client.fileno())
        return fds

    def handle(self, readable: list[int], writable: list[int]) -> None:
        if self.master in readable:
            self._output()
        if self.listener is not None and self.listener.fileno() in readable:
            self._accept()
        client = self.client
        if client is not None and client.fileno() in readable:
            self._receive(client)
        client = self.client
        if client is not None and client.fileno() in writable and not client.flush():
            self._drop()
        if self.master in writable and self.pending:
            write_pending(self.master, self.pending)

    def resize(self) -> None:
        """SIGWINCH of the supervisor means nothing: clients send their own size."""

    def _output(self) -> None:
        data = read_master(self.master)
        if data is None:
            self.open = False
        elif data:
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        client = self.client
        if client is None or not self.sized:
            self.backlog += data
            del self.backlog[:-BACKLOG]
            return
        client.outbox += frame(b"o", data)
        if len(client.outbox) > CLIENT_LIMIT:
            self._drop()  # not reading: let it go rather than stall the container

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            # socket.accept() lives in the socket module, which costs ~10 ms to import.
            fd, _ = self.listener._accept()  # type: ignore[attr-defined]
        except OSError:
            return
        sock = _socket.socket(fileno=fd)
        sock.setblocking(False)
        os.set_inheritable(fd, False)
        client = _Client(sock)
        uid = peer_uid(sock)
        if uid not in (self.owner, 0):
            client.close(frame(b"e", f"uid {uid} may not attach to uid {self.owner}'s".encode()))
            return
        if self.client is not None:
            self.client.close(frame(b"d"))
        self.client = client
        # The backlog waits for the client's first frame, its window size: the
        # pty takes that size (SIGWINCH inside) before anything is shown.
        self.sized = False

    def _receive(self, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop()  # detached
            return
        client.inbox += data
        for kind, payload in _frames(client.inbox):
            if kind == b"i":
                self.pending += payload
            elif kind == b"w" and len(payload) == 4:
                size = (int.from_bytes(payload[:2], "big"), int.from_bytes(payload[2:], "big"))
                if size[0] and size[1]:
                    set_window_size(self.master, size)
            if not self.sized:
                self.sized = True
                if self.backlog:
                    client.outbox += frame(b"o", bytes(self.backlog))
                    self.backlog.clear()

    def _drop(self) -> None:
        if self.client is not None:
            self.client.sock.close()
            self.client = None

    def finish(self, status: int | None = None) -> None:
        """The container is gone: its last output and its status to the attached client."""
        while self.open:
            data = read_master(self.master)
            if not data:
                break
            self._deliver(data)
        if self.client is not None:
            if not self.sized and self.backlog:
                self.client.outbox += frame(b"o", bytes(self.backlog))  # never sized: show it
            last = frame(b"x", str(status).encode()) if status is not None else b""
            self.client.close(last)
            self.client = None

    def close(self) -> None:
        self.finish()
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


def parse_detach_keys(text: str) -> bytes:
    """`ctrl-p,ctrl-q` -> b"\\x10\\x11": each comma separated item is `ctrl-X`
    (X a letter or one of @ [ \\ ] ^ _) or one printable ASCII character; ""
    is no key at all (attach never detaches)."""
    from pflask.errors import UsageError

    if text == "":
        return b""
    keys = bytearray()
    for item in text.split(","):
        name = item.lower()
        if name.startswith("ctrl-") and len(name) == 6:
            x = name[5]
            if "a" <= x <= "z":
                keys.append(ord(x) - ord("a") + 1)
                continue
            if x in _CTRL_PUNCTUATION:
                keys.append(_CTRL_PUNCTUATION.index(x) + (0 if x == "@" else 26))
                continue
        elif len(item) == 1 and item.isascii() and item.isprintable():
            keys.append(ord(item))
            continue
        raise UsageError(
            f"--detach-keys: {item!r} is not a key: ctrl-a..ctrl-z, ctrl-@, ctrl-[, "
            "ctrl-\\, ctrl-], ctrl-^, ctrl-_ or one character, comma separated (e.g. ctrl-p,ctrl-q)"
        )
    return bytes(keys)


class DetachKeys:
    """Finds the detach sequence in typed input, across reads.

    The bytes that may start the sequence are held back until the next one
    shows whether they do: typed as a whole the sequence never reaches the
    container, and anything else is passed on unchanged and in order.
    """

    def __init__(self, keys: bytes) -> None:
        self.keys = keys
        self.held = b""

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        """What to send on, and whether the sequence was typed (then nothing
        after it is sent: the user detached)."""
        keys = self.keys
        if not keys:
            return data, False
        if not self.held and keys[0] not in data:
            return data, False  # the common case: nothing to look at byte by byte
        out = bytearray()
        held = self.held
        for i in range(len(data)):
            held += data[i : i + 1]
            if held == keys:
                self.held = b""
                return bytes(out), True
            # Keep the longest end of `held` that still begins the sequence.
            k = len(held)
            while k and not keys.startswith(held[len(held) - k :]):
                k -= 1
            out += held[: len(held) - k]
            held = held[len(held) - k :]
        self.held = held
        return bytes(out), False


# --- pflask attach ------------------------------------------------------------------------------


class _Detach(Exception):
    """The user typed the detach keys, or pflask attach was told to stop."""


def attach(spec: str, owner: int | None = None, keys: bytes = DETACH_KEY) -> int:
    """Connect this terminal to a detached container until the detach `keys`
    (Ctrl-@ by default) or its end.

    Returns 0 after detaching, the container's exit status if it ended while
    attached.  The socket must be served by the record's supervisor (its
    pid and uid, from the kernel): a socket someone else put in its place
    is never talked to.
    """
    from pflask.run import state

    record = state.find(spec, owner)
    if not record.detached or not record.console:
        why = (
            "it was started without a terminal (terminal: false)"
            if record.detached
            else "it is not detached: its terminal is the one `pflask run` was started from"
        )
        raise PflaskError(f"cannot attach to {record.name}: {why}")
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.connect(record.socket)
    except OSError as e:
        sock.close()
        raise PflaskError(
            f"cannot attach to {record.name}: {record.socket}: {e.strerror}"
        ) from None
    served_by = peer(sock)
    if served_by != (record.supervisor, record.directory.uid):
        sock.close()
        raise state.Untrusted(
            f"cannot attach to {record.name}: {record.socket} is served by pid "
            f"{served_by[0]} (uid {served_by[1]}), not by its supervisor (pid "
            f"{record.supervisor}, uid {record.directory.uid}): refused"
        )
    session = _Session(sock, record, keys)
    try:
        return session.run()
    finally:
        sock.close()


class _Session:
    """One attach: the user's terminal in raw mode, copied both ways through the socket."""

    def __init__(self, sock: _socket.socket, record: Container, keys: bytes) -> None:
        self.sock = sock
        self.keys = DetachKeys(keys)
        self.record = record
        self.raw = RawMode(0)
        self.inbox = bytearray()
        self.reading = True
        self.stop = False
        self.message = ""
        self.status: int | None = None  # the container's, once it has ended

    def _on_stop(self, _signum: int, _frame: object) -> None:
        self.stop = True

    def readers(self) -> list[int]:
        return [self.sock.fileno()] + ([0] if self.reading else [])

    def writers(self) -> list[int]:
        return []  # the socket blocks: input is sent whole (sendall)

    def handle(self, readable: list[int], writable: list[int]) -> None:
        if 0 in readable:
            self._input()
        if self.sock.fileno() in readable:
            self.status = self._output()

    def resize(self) -> None:
        self._send_size()

    def _send_size(self, first: bool = False) -> None:
        """Our terminal's size; the first time always, 0x0 without a terminal
        (the supervisor shows the backlog once it has this frame)."""
        size = window_size(0)
        if size is not None or first:
            self.sock.sendall(frame(b"w", _size_payload(size or (0, 0))))

    def run(self) -> int:
        from pflask.run.eventloop import Loop

        if TYPE_CHECKING:
            import signal as _signal
        else:
            import _signal

        loop = Loop()
        loop.copier = self
        handlers = {
            _signal.SIGWINCH: loop.on_resize,
            _signal.SIGTERM: self._on_stop,
            _signal.SIGHUP: self._on_stop,
            _signal.SIGINT: self._on_stop,
        }
        previous = {signum: _signal.signal(signum, h) for signum, h in handlers.items()}
        detached = False
        try:
            self._send_size(first=True)
            self.raw.enter()
            while self.status is None and not self.stop:
                try:
                    loop.poll([])
                except _Detach:
                    detached = True
                    break
            if self.stop:
                detached = True
        finally:
            self.raw.restore()
            for signum, handler in previous.items():
                _signal.signal(signum, handler)
            loop.close()
        if detached:
            name = self.record.name
            why = self.message or "detached from"
            print(f"\npflask: {why} {name} (pflask attach {name} to return)", file=sys.stderr)
            return 0
        return self.status if self.status is not None else 0

    def _input(self) -> None:
        data = os.read(0, 4096)
        if not data:
            self.reading = False  # input ended: keep showing output until the end
            return
        data, detach = self.keys.feed(data)
        if data:
            self.sock.sendall(frame(b"i", data))
        if detach:
            raise _Detach

    def _output(self) -> int | None:
        """Copy output; the container's status once it has ended."""
        try:
            data = self.sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            raise PflaskError(f"{self.record.name}: the supervisor closed the connection")
        self.inbox += data
        for kind, payload in _frames(self.inbox):
            if kind == b"o":
                write_all(1, payload)
            elif kind == b"x":
                return int(payload or b"0")
            elif kind == b"d":
                self.message = "another terminal attached to"
                raise _Detach
            elif kind == b"e":
                raise PflaskError(
                    f"cannot attach to {self.record.name}: {payload.decode(errors='replace')}"
                )
        return None
