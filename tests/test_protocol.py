"""pflask.run.protocol: the messages between the supervisor and the container's processes."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from pflask.run import protocol as m

EVERY_STATUS_MESSAGE = [
    m.UNSHARED,
    m.Pid(pid=4242),
    m.Made(paths=("/a", "/a/b c", "/new\nline", "/\N{SNOWMAN}")),
    m.Made(paths=()),
    m.Failed(code=125, message="step 3 (bind /x -> /y): mount(2): ENOENT"),
    m.Failed(code=127, message="frobnicate: command not found"),
]


@pytest.mark.parametrize("message", EVERY_STATUS_MESSAGE, ids=repr)
def test_status_messages_round_trip(message: m.Status) -> None:
    frame = m.encode(message)
    assert m.decode(frame + b"u0:") == (message, len(frame))


def test_control_messages_are_one_byte_each() -> None:
    for message in (m.GO, m.ADOPTED):
        byte = m.encode_control(message)
        assert len(byte) == 1
        assert m.decode_control(byte) == message
    assert m.decode_control(b"") is None  # EOF: the supervisor is gone or says stop
    assert m.decode_control(b"x") is None


def test_a_frame_not_all_there_yet_is_none() -> None:
    frame = m.encode(m.Failed(code=125, message="x" * 100))
    for cut in range(len(frame)):
        assert m.decode(frame[:cut]) is None, cut


@pytest.mark.parametrize(
    "garbage",
    [b"garbage!", b"q0:", b"p3:abc", b"p1:0", b"f3:999", b"f5:x oops", b"u1:x", b"p99999999:"],
)
def test_garbled_frames_are_refused(garbage: bytes) -> None:
    with pytest.raises(ValueError):
        m.decode(garbage)


def test_encode_refuses_end_which_is_the_pipe_closing() -> None:
    with pytest.raises(ValueError):
        m.encode(m.END)


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe2(os.O_CLOEXEC)
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_reader_gives_each_message_then_end(pipe: tuple[int, int]) -> None:
    r, w = pipe
    for message in EVERY_STATUS_MESSAGE:
        m.send(w, message)
    os.close(w)
    reader = m.Reader(r)
    assert [reader.receive() for _ in EVERY_STATUS_MESSAGE] == EVERY_STATUS_MESSAGE
    assert reader.receive() == m.END
    assert reader.receive() == m.END


def test_reader_puts_a_message_together_from_pieces(pipe: tuple[int, int]) -> None:
    """A long message comes in several reads; send writes it whole."""
    r, w = pipe
    long = m.Made(paths=tuple(f"/dir{i}/" + "x" * 200 for i in range(200)))  # several reads
    writer = threading.Thread(target=lambda: (m.send(w, long), os.close(w)))
    writer.start()
    waited: list[int] = []
    reader = m.Reader(r, waited.append)
    assert reader.receive() == long
    assert reader.receive() == m.END
    writer.join()
    assert waited and set(waited) == {r}  # it waited through the supervisor's loop


@pytest.mark.parametrize("sent", [b"f10:125 cut", b"p4:12", b"u"])
def test_a_truncated_message_is_a_clear_setup_failure(pipe: tuple[int, int], sent: bytes) -> None:
    r, w = pipe
    os.write(w, sent)
    os.close(w)
    reader = m.Reader(r)
    message = reader.receive()
    assert isinstance(message, m.Failed)
    assert message.code == 125
    assert message.message.startswith("garbled message from the container: cut short: ")
    assert reader.receive() == m.END


def test_garbage_after_a_good_message_is_a_clear_setup_failure(pipe: tuple[int, int]) -> None:
    r, w = pipe
    os.write(w, m.encode(m.UNSHARED) + b"\x1b[2Jrm -rf /\n")
    os.close(w)
    reader = m.Reader(r)
    assert reader.receive() == m.UNSHARED
    message = reader.receive()
    assert isinstance(message, m.Failed) and message.code == 125
    assert "garbled message from the container" in message.message
    assert "\n" not in message.message and "\x1b" not in message.message  # one line, escaped
    assert reader.receive() == m.END  # nothing after it is trusted
