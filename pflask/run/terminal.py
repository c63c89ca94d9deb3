"""The container's terminal: a pty, the user's terminal in raw mode, and the copying between.

Where the pty comes from:

- with a root, from the container's own devpts instance (the plan mounts
  /dev/pts with `newinstance`): the container opens /dev/pts/ptmx, takes the
  peer with TIOCGPTPEER (no path lookup that a hostile root could redirect),
  binds it onto /dev/console and hands the master to pflask over a unix
  socket (SCM_RIGHTS).  Inside, `tty` says /dev/pts/0, as on a real machine;
- without a root there is no new devpts: the supervisor opens the host's
  /dev/ptmx before forking and the container inherits the slave.

The command gets the slave as its controlling terminal (login_tty(3):
setsid, TIOCSCTTY, fds 0-2), so the line discipline turns a typed Ctrl-C into
SIGINT for the foreground job inside.  pflask puts the user's terminal in
raw mode so every key, Ctrl-C included, goes through the pty untouched; it
passes window-size changes (SIGWINCH) on with TIOCSWINSZ on the master, which
makes the kernel signal the container's foreground job; and it restores the
terminal on every way out (the caller's `finally`).

Without a terminal (pipes, CI, or `terminal: false`) none of this happens and
output streams through.  The command then runs in PID 1's session, which has
no controlling terminal: a user's terminal it inherits on fds 0-2 is not its
own, so TIOCSTI there (typing into the user's shell) needs CAP_SYS_ADMIN, and
TIOCSCTTY cannot take it from the user's session without it either.
"""

from __future__ import annotations

import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

TIOCGPTPEER = 0x5441  # <asm-generic/ioctls.h>, Linux 4.13; not in Python's termios
TIOCSPTLCK = 0x40045431  # _IOW('T', 0x31, int): unlockpt(3)
DEFAULT_SIZE = (24, 80)  # rows, columns, when there is no terminal to copy from
EOF_CHAR = b"\x04"  # VEOF: what a terminal sends when its input ends
_INPUT_LIMIT = 1 << 16  # stop reading the user's input while this much waits for the pty
PTY_FLAGS = os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC


# --- the pty ------------------------------------------------------------------------------


def peer(master: int) -> int:
    """Unlock the pty and open its slave through the master (TIOCGPTPEER)."""
    import fcntl

    from pflask.kernel.libc import SyscallError

    try:
        fcntl.ioctl(master, TIOCSPTLCK, b"\0\0\0\0")
        slave: int = fcntl.ioctl(master, TIOCGPTPEER, PTY_FLAGS)
    except OSError as e:
        raise SyscallError("ioctl(2) TIOCGPTPEER", e.errno or 0, "pty slave") from None
    return slave


def open_host_pty() -> tuple[int, int]:
    """A pty from the host's /dev/ptmx: (master, slave)."""
    from pflask.kernel.libc import SyscallError

    try:
        master = os.open("/dev/ptmx", PTY_FLAGS)
    except OSError as e:
        raise SyscallError("open(2)", e.errno or 0, "/dev/ptmx") from None
    try:
        return master, peer(master)
    except BaseException:
        os.close(master)
        raise


def window_size(fd: int) -> tuple[int, int] | None:
    """(rows, columns) of a terminal, None if `fd` is not one."""
    import termios

    try:
        rows, columns = termios.tcgetwinsize(fd)
    except (termios.error, OSError):
        return None
    return (rows, columns) if rows and columns else None


def set_window_size(master: int, size: tuple[int, int]) -> None:
    """Resize the pty; the kernel sends SIGWINCH to the container's foreground job."""
    import termios

    try:
        termios.tcsetwinsize(master, size)
    except (termios.error, OSError):
        pass  # the pty is gone: nothing to resize


# --- the user's terminal -----------------------------------------------------------------------


class RawMode:
    """The user's terminal in raw mode (cfmakeraw(3)) until `restore`."""

    __slots__ = ("fd", "saved")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved: list[Any] | None = None

    def enter(self) -> None:
        import termios

        try:
            saved = termios.tcgetattr(self.fd)
        except termios.error:
            return  # not a terminal
        mode = [*saved[:6], list(saved[6])]
        mode[0] &= ~(
            termios.IGNBRK
            | termios.BRKINT
            | termios.PARMRK
            | termios.ISTRIP
            | termios.INLCR
            | termios.IGNCR
            | termios.ICRNL
            | termios.IXON
        )
        mode[1] &= ~termios.OPOST
        mode[3] &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
        mode[2] = (mode[2] & ~(termios.CSIZE | termios.PARENB)) | termios.CS8
        mode[6][termios.VMIN] = 1
        mode[6][termios.VTIME] = 0
        _set(self.fd, termios.TCSANOW, mode)
        self.saved = saved

    def restore(self) -> None:
        """Put the terminal back as it was; safe to call twice and after errors."""
        if self.saved is None:
            return
        import termios

        saved, self.saved = self.saved, None
        _set(self.fd, termios.TCSADRAIN, saved)


def _set(fd: int, when: int, mode: list[Any]) -> None:
    import termios

    try:
        termios.tcsetattr(fd, when, mode)
    except (termios.error, OSError):
        pass  # the terminal went away (hangup): nothing left to restore


# --- passing the master -------------------------------------------------------------------


def channel() -> tuple[int, int]:
    """A socket pair (supervisor end, container end) to pass the master over."""
    import _socket

    a, b = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    return a.detach(), b.detach()


def send_fd(sock: int, fd: int) -> None:
    """Send one descriptor (SCM_RIGHTS) with a one-byte message."""
    import _socket

    s = _socket.socket(fileno=sock)
    try:
        s.sendmsg([b"m"], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd.to_bytes(4, "little"))])
    finally:
        s.detach()


def receive_fd(sock: int) -> int | None:
    """The descriptor `send_fd` sent, or None at EOF (the container died first)."""
    import _socket

    s = _socket.socket(fileno=sock)
    try:
        _, ancillary, _, _ = s.recvmsg(1, _socket.CMSG_SPACE(4), _socket.MSG_CMSG_CLOEXEC)
    finally:
        s.detach()
    for level, kind, payload in ancillary:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS and len(payload) >= 4:
            return int.from_bytes(payload[:4], "little")
    return None


# --- copying ------------------------------------------------------------------------------------


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write everything, waiting when `fd` is non-blocking and full."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            import select

            select.select([], [fd], [])
            continue
        except InterruptedError:
            continue
        view = view[written:]


def write_pending(master: int, pending: bytearray) -> None:
    """Write what the pty accepts now (the master is non-blocking) and keep the
    rest for later; a pty that is gone takes nothing more."""
    try:
        written = os.write(master, pending)
    except BlockingIOError:
        written = 0
    except OSError:
        written = len(pending)
    del pending[:written]


def read_master(master: int) -> bytes | None:
    """Output from the pty: b"" when nothing is waiting, None once every slave is closed."""
    try:
        return os.read(master, 65536) or None
    except BlockingIOError:
        return b""
    except OSError as e:
        if e.errno == errno.EIO:  # no process holds the slave any more
            return None
        raise


class Proxy:
    """The foreground terminal: the user's stdin into the pty, the pty's output to stdout.

    Driven by the supervisor's select loop (`readers`, `writers`, `handle`),
    so signals and a stop deadline are served while it copies.  The master
    is non-blocking and input waits in a buffer: a container that does not
    read its input can never stall the copying of its output.
    """

    def __init__(self, master: int, stdin: int = 0, stdout: int = 1, send_eof: bool = True) -> None:
        os.set_blocking(master, False)
        self.send_eof = send_eof  # the end of the input is a Ctrl-D into the pty
        self.master = master
        self.stdin = stdin
        self.stdout = stdout
        self.raw = RawMode(stdin)
        self.pending = bytearray()  # typed, not yet taken by the pty
        self.reading = False  # the user's input is copied (once the command runs)
        self.open = True  # the master still delivers output
        self.output_lost = False
        resize(master, stdin)

    def start(self) -> None:
        """The command runs: raw mode, and copy the user's input from now on."""
        self.raw.enter()
        self.reading = True

    def suspend(self) -> None:
        self.raw.restore()

    def resume(self) -> None:
        """Continued after a stop: raw mode again (if copying had begun), and the
        window may have changed meanwhile."""
        if self.reading:
            self.raw.enter()
        self.resize()

    def readers(self) -> list[int]:
        fds = [self.master] if self.open else []
        if self.reading and len(self.pending) < _INPUT_LIMIT:
            fds.append(self.stdin)
        return fds

    def writers(self) -> list[int]:
        return [self.master] if self.pending and self.open else []

    def handle(self, readable: list[int], writable: list[int]) -> None:
        if self.master in readable:
            self.output()
        if self.reading and self.stdin in readable:
            try:
                data = os.read(self.stdin, 4096)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            if data == b"":
                # Input ended (a pipe): end the pty's input too, as a terminal
                # would, unless told not to (a booted OS's console stays open).
                self.reading = False
                if self.send_eof:
                    self.pending += EOF_CHAR
            elif data:
                self.pending += data
        if self.master in writable and self.pending:
            write_pending(self.master, self.pending)

    def output(self) -> None:
        data = read_master(self.master)
        if data is None:
            self.open = False
        elif data and not self.output_lost:
            try:
                write_all(self.stdout, data)
            except OSError:
                self.output_lost = True  # stdout closed: keep draining the pty anyway

    def resize(self) -> None:
        resize(self.master, self.stdin)

    def finish(self, status: int | None = None) -> None:
        """The container is gone: copy what it wrote last, give the terminal back."""
        while self.open:
            data = read_master(self.master)
            if not data:
                break
            if not self.output_lost:
                try:
                    write_all(self.stdout, data)
                except OSError:
                    break
        self.raw.restore()

    def close(self) -> None:
        self.raw.restore()
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


def resize(master: int, source: int) -> None:
    """Give the pty the size of the user's terminal (or 24x80 without one)."""
    set_window_size(master, window_size(source) or DEFAULT_SIZE)


def to_console_socket(path: str, master: int, size: tuple[int, int] | None = None) -> None:
    """Send a pty master to an OCI engine's console socket (SCM_RIGHTS), as
    runc does, and close it: the engine copies the terminal from then on.
    `size` (rows, columns: process.consoleSize) is set first."""
    import socket

    if size is not None:
        import fcntl
        import struct
        import termios

        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", size[0], size[1], 0, 0))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        send_fd(sock.fileno(), master)
    os.close(master)
