"""The Python API: many containers from one warm process.

A program that starts many containers (a test runner, a grader, a CI
sandbox, a build tool) pays, with `pflask run`, the interpreter's start and
pflask's imports every time.  Here the manifest is loaded and checked once,
each command's plan is compiled once, and each run is a fork of the calling
process, which has every module the run needs imported already::

    import pflask

    box = pflask.Container.load("sandbox.yaml")
    result = box.run(["make", "test"], input=b"", timeout=60)
    print(result.status, result.stdout.decode())

    results = await asyncio.gather(*(box.run_async(["./grade", n]) for n in names))

Each run is what `pflask run` does: a supervisor (the same
pflask.run.supervisor) starts the container, runs the host steps, waits,
cleans up and exits with the command's status.  The supervisors are forked
by a small helper process started on the first run, the zygote
(pflask.run.zygote): a fork of it costs less than a fork of a large caller,
and it has no threads.  The calling process only feeds input, collects
output and waits; it never enters a namespace, and nothing of it reaches the
container but the fds it gives as stdin, stdout and stderr.

Errors are exceptions: a bad manifest raises ManifestError (as `pflask
validate` words it) from `Container.load`; a container that could not start its command
raises StartError naming the step (`step 7 (bind /src -> /work): mount(2):
ENOENT`), with the status `pflask run` would exit with (125; 126 or 127 when
the command cannot be executed or found); a run that outlives its timeout is
stopped as `pflask stop` stops it and raises Timeout with the output so far.
The command's own status, whatever it is, is the Result's.
"""

from __future__ import annotations

import marshal
import os
import select
import socket
import sys
import time

from pflask.errors import (
    EXIT_NOEXEC,
    EXIT_NOTFOUND,
    EXIT_SETUP,
    PflaskError,
    SetupError,
    UsageError,
)
from pflask.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as _signal  # typeshed describes the same functions there
    from collections.abc import Mapping, Sequence
    from typing import IO, Any

    from pflask.compile.context import Context
    from pflask.compile.plan import Plan
    from pflask.load.loader import Loaded
    from pflask.load.manifest import Manifest

    Stream = int | IO[Any] | None
else:
    import _signal  # signal without enum (a few ms at start)

CAPTURE = -1
"""stdout/stderr: collect the output into the Result (the default)."""
DEVNULL = -3
"""stdin/stdout/stderr: /dev/null."""
INHERIT = -2
"""stdin/stdout/stderr: the calling process's own fd 0, 1 or 2."""

KILL_GRACE = 5.0
"""After a timeout the supervisor stops the container as `pflask stop` does
(the stop signal, SIGKILL after the manifest's stop timeout); if it has not
ended this many seconds after that, it is killed (the container's PID 1 dies
with it: its parent-death signal is SIGKILL)."""

_zygote: _Zygote | None = None
_next_id = 0


class Result(Record):
    """How a run ended: the command's exit status (128+N for signal N) and the
    output collected from the streams given as CAPTURE (else None)."""

    status: int
    stdout: bytes | None = None
    stderr: bytes | None = None
    name: str = ""
    """The container's name while it ran (`pflask ps`)."""


class StartError(PflaskError):
    """The container could not start its command; the message names the step
    (`step 7 (bind /src -> /work): mount(2): ENOENT`).  `status` is what
    `pflask run` would exit with: 125, or 126/127 (the command cannot be
    executed, or is not found)."""

    def __init__(self, message: str, status: int = EXIT_SETUP) -> None:
        super().__init__(message)
        self.status = status

    @property
    def step(self) -> int | None:
        """The number of the plan step that failed (`pflask plan` lists them),
        when the message names one."""
        words = str(self).split(" ", 2)
        if len(words) > 1 and words[0] == "step" and words[1].isdigit():
            return int(words[1])
        return None


class Timeout(PflaskError, TimeoutError):
    """The run outlived its timeout and was stopped.  `status` is how it then
    ended (usually the stop signal's or SIGKILL's 128+N); `stdout` and `stderr`
    hold what was collected."""

    def __init__(self, timeout: float, result: Result) -> None:
        super().__init__(
            f"the container {result.name} ran longer than {timeout:g}s and was stopped"
        )
        self.timeout = timeout
        self.result = result
        self.stdout = result.stdout
        self.stderr = result.stderr


class Container:
    """A manifest loaded once; `run` starts a container from it, as often as wanted.

    Build one with `Container.load(path)`, or from a mapping as a manifest file would
    hold it (relative paths are relative to `base`, default the working
    directory).  Plans are compiled once per command and kept.
    """

    def __init__(self, manifest: Mapping[str, Any], base: str | None = None) -> None:
        from pflask.load import loader

        origin = "<pflask.api>"
        data = loader.located(dict(manifest), origin)
        if "name" not in data:
            data["name"] = "api"
        loader.absolutize(data, os.path.abspath(base or os.getcwd()))
        loader.check(data)
        self._setup(data, origin, None)

    @classmethod
    def load(cls, path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Container:
        """The container a manifest file describes, checked and ready to run.

        `overrides` are `pflask run --set` assignments (`"hostname=box"`).
        Raises ManifestError (or ManifestErrors) as `pflask validate` reports
        them.  (A classmethod, not `pflask.load`: pflask.load is the package
        of the loader.)
        """
        from pflask.load import loader

        loaded = loader.load(os.fspath(path), overrides=tuple(overrides))
        self = cls.__new__(cls)
        self._setup(loaded.data, os.fspath(path), loaded)
        return self

    def _setup(self, data: dict[str, Any], origin: str, loaded: Loaded | None) -> None:
        from pflask.compile import context
        from pflask.errors import ManifestError
        from pflask.pipeline import prepared

        self._loaded = loaded
        self._context: Context = context.read(None)
        try:  # an image is resolved and unpacked once, as `pflask run` does
            self.manifest: Manifest = prepared(data, origin, self._context, progress=False)[0]
        except ManifestError as e:
            raise (loaded.place(e) if loaded is not None else e) from None
        self._plans: dict[tuple[str, ...] | None, tuple[Plan, int]] = {}

    @property
    def name(self) -> str:
        """The manifest's name; each run is called NAME-PID (see `run`)."""
        return self.manifest.name

    def plan(self, argv: Sequence[str] | None = None) -> Plan:
        """The plan for running `argv` (None: the manifest's command), compiled once."""
        return self._compiled(argv)[0]

    def _compiled(self, argv: Sequence[str] | None) -> tuple[Plan, int]:
        global _next_id
        key = None if argv is None else tuple(argv)
        known = self._plans.get(key)
        if known is not None:
            return known
        if key == ():
            raise UsageError("run: the command is empty")
        from pflask.compile import compiler
        from pflask.errors import ManifestError

        try:
            plan = compiler.compile_plan(self.manifest, self._context.replace(command=key))
        except ManifestError as e:
            raise (self._loaded.place(e) if self._loaded is not None else e) from None
        if plan.detach:
            raise UsageError("run: the Python API runs containers in the foreground (detach: true)")
        _next_id += 1
        self._plans[key] = (plan, _next_id)
        return plan, _next_id

    def _start(
        self,
        argv: Sequence[str] | None,
        input: bytes | None,
        streams: tuple[Stream, Stream, Stream],
        name: str | None,
    ) -> _Job:
        plan, plan_id = self._compiled(argv)
        return _Job(_zygote_for(plan, plan_id), plan, plan_id, input, streams, name)

    def run(
        self,
        argv: Sequence[str] | None = None,
        *,
        input: bytes | None = None,
        stdin: Stream = DEVNULL,
        stdout: Stream = CAPTURE,
        stderr: Stream = CAPTURE,
        timeout: float | None = None,
        name: str | None = None,
    ) -> Result:
        """Run `argv` (None: the manifest's command) in a new container; wait.

        `input` is fed to the command's stdin (then closed); otherwise
        `stdin` is DEVNULL (the default), INHERIT, or an fd or file to read.
        `stdout` and `stderr`: CAPTURE (the default: bytes in the Result),
        DEVNULL, INHERIT, or an fd or file to write to.  `timeout` in seconds:
        the container is then stopped and Timeout raised.  `name`: the
        container's name in `pflask ps`; by default NAME-PID (PID: its
        supervisor's), so runs of one Container side by side never collide
        (the host name inside stays the manifest's).  Raises StartError when
        the command could not be started.  Interrupted (KeyboardInterrupt),
        the container is stopped and the exception goes on.
        """
        job = self._start(argv, input, (stdin, stdout, stderr), name)
        deadline = None if timeout is None else _now() + timeout
        try:
            while not job.done:
                poller = select.poll()
                for fd in job.readers():
                    poller.register(fd, select.POLLIN)
                writers = job.writers()
                for fd in writers:
                    poller.register(fd, select.POLLOUT)
                wait = None if deadline is None else max(0.0, deadline - _now()) * 1000
                events = poller.poll(wait)
                for fd, _ in events:
                    job.write(fd) if fd in writers else job.read(fd)
                if deadline is not None and not events and _now() >= deadline:
                    deadline = job.expire()
        except BaseException:
            job.abandon()
            raise
        return job.result(timeout)

    async def run_async(
        self,
        argv: Sequence[str] | None = None,
        *,
        input: bytes | None = None,
        stdin: Stream = DEVNULL,
        stdout: Stream = CAPTURE,
        stderr: Stream = CAPTURE,
        timeout: float | None = None,
        name: str | None = None,
    ) -> Result:
        """`run` for asyncio: the same arguments and result; the waiting is done
        by the running event loop, so many containers run side by side.
        Cancelled, it stops the container as a timeout does and the
        cancellation goes on at once (the zygote reaps the supervisor)."""
        import asyncio

        loop = asyncio.get_running_loop()
        job = self._start(argv, input, (stdin, stdout, stderr), name)
        finished: asyncio.Future[None] = loop.create_future()
        watched: list[tuple[int, bool]] = []

        def unwatch() -> None:
            for fd, writer in watched:
                if writer:
                    loop.remove_writer(fd)
                else:
                    loop.remove_reader(fd)
            watched.clear()

        def update() -> None:
            unwatch()
            if job.done:
                if not finished.done():
                    finished.set_result(None)
                return
            for fd in job.readers():
                loop.add_reader(fd, serve, fd, False)
                watched.append((fd, False))
            for fd in job.writers():
                loop.add_writer(fd, serve, fd, True)
                watched.append((fd, True))

        def serve(fd: int, writer: bool) -> None:
            if writer:
                job.write(fd)
            else:
                job.read(fd)
            update()

        timer: list[asyncio.TimerHandle | None] = [None]

        def expire() -> None:
            again = job.expire()
            timer[0] = loop.call_later(max(0.0, again - _now()), expire)

        if timeout is not None:
            timer[0] = loop.call_later(timeout, expire)
        update()
        try:
            await finished
        except BaseException:
            unwatch()
            job.abandon()
            raise
        finally:
            if timer[0] is not None:
                timer[0].cancel()
        return job.result(timeout)


def close() -> None:
    """End this process's zygote, once its containers have ended (it starts
    again with the next run).  Not needed before exiting: the zygote ends with
    its caller, stopping the containers still running."""
    global _zygote
    if _zygote is not None and _zygote.owner == os.getpid():
        _zygote.close()
    _zygote = None


def _now() -> float:
    return time.monotonic()


class _Zygote:
    """The caller's end of the zygote (pflask.run.zygote): started once per
    process, told each plan once, then one message per run."""

    def __init__(self) -> None:
        import _thread

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        code = (
            f"import sys; sys.path[:] = {sys.path!r}; from pflask.run.zygote import main; main(3)"
        )
        executable = sys.executable
        if not executable:
            raise SetupError("the Python API needs sys.executable to start its zygote")
        argv = [executable, "-I", "-S", "-c", code]
        try:
            self.pid = os.posix_spawn(
                executable,
                argv,
                os.environ,
                file_actions=[(os.POSIX_SPAWN_DUP2, theirs.fileno(), 3)],
            )
        except OSError as e:
            raise SetupError(f"starting the zygote {executable}: posix_spawn(3): {e}") from None
        finally:
            theirs.close()
        self.sock = ours
        self.owner = os.getpid()
        self.plans: set[int] = set()
        self.lock = _thread.allocate_lock()

    def send(self, message: tuple[Any, ...], fds: list[int]) -> None:
        data = marshal.dumps(message)
        try:
            with self.lock:
                socket.send_fds(self.sock, [data], fds)
        except OSError as e:
            raise SetupError(f"the zygote (pid {self.pid}) is gone: sendmsg(2): {e}") from None

    def tell(self, plan: Plan, plan_id: int) -> None:
        """Give the zygote `plan` (once), in a memfd: a plan has no size limit."""
        if plan_id in self.plans:
            return
        memfd = os.memfd_create("pflask-plan", os.MFD_CLOEXEC)
        try:
            os.write(memfd, marshal.dumps(plan.to_wire()))
            os.lseek(memfd, 0, os.SEEK_SET)
            self.send(("plan", plan_id), [memfd])
        finally:
            os.close(memfd)
        self.plans.add(plan_id)

    def alive(self) -> bool:
        try:
            return os.waitpid(self.pid, os.WNOHANG)[0] == 0
        except ChildProcessError:
            return False

    def close(self) -> None:
        self.sock.close()
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


def _zygote_for(plan: Plan, plan_id: int) -> _Zygote:
    """This process's zygote (a fork of a process that had one starts its own),
    knowing `plan`."""
    global _zygote
    zygote = _zygote
    if zygote is None or zygote.owner != os.getpid() or not zygote.alive():
        if zygote is not None and zygote.owner == os.getpid():
            zygote.sock.close()
        zygote = _zygote = _Zygote()
    zygote.tell(plan, plan_id)
    return zygote


class _Job:
    """One run: its fds, the report the zygote and the supervisor write, and
    what the caller collects until all of them have ended."""

    def __init__(
        self,
        zygote: _Zygote,
        plan: Plan,
        plan_id: int,
        input: bytes | None,
        streams: tuple[Stream, Stream, Stream],
        name: str | None,
    ) -> None:
        global _next_id
        _next_id += 1
        self.id = _next_id
        self.zygote = zygote
        self.plan_name = plan.name
        self.name = name
        self.stop_timeout = plan.stop_timeout
        self.input = memoryview(input) if input is not None else None
        self.outputs: dict[int, bytearray] = {}  # our read end -> what came
        self.which: dict[int, int] = {}  # our read end -> 1 or 2
        self.collected: dict[int, bytes] = {}  # 1 or 2 -> all that came, once it ended
        self.feed = -1  # our write end of the command's stdin, while input remains
        self.timed_out = False
        self.report = bytearray()
        theirs: list[int] = []  # the supervisor's fds 0-2, then its report pipe
        ours: list[int] = []  # fds made for it, closed once the zygote has them
        try:
            if self.input is not None:
                read_end, self.feed = os.pipe2(os.O_CLOEXEC)
                os.set_blocking(self.feed, False)
                theirs.append(read_end)
                ours.append(read_end)
            for target, stream in enumerate(streams):
                if target == 0 and self.input is not None:
                    continue
                if stream == CAPTURE and target > 0:
                    read_end, write_end = os.pipe2(os.O_CLOEXEC)
                    self.outputs[read_end] = bytearray()
                    self.which[read_end] = target
                    theirs.append(write_end)
                    ours.append(write_end)
                elif stream in (DEVNULL, CAPTURE):
                    mode = os.O_RDONLY if target == 0 else os.O_WRONLY
                    fd = os.open(os.devnull, mode | os.O_CLOEXEC)
                    theirs.append(fd)
                    ours.append(fd)
                elif stream == INHERIT or stream is None:
                    theirs.append(target)
                elif isinstance(stream, int):
                    theirs.append(stream)
                else:
                    theirs.append(stream.fileno())
            self.pipe, report = os.pipe2(os.O_CLOEXEC)
            ours.append(report)
            zygote.send(("run", self.id, plan_id, name), [*theirs, report])
        except BaseException:
            for fd in [*self.outputs, self.feed]:
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            for fd in ours:
                os.close(fd)

    @property
    def done(self) -> bool:
        return self.pipe < 0 and not self.outputs

    def readers(self) -> list[int]:
        return [*self.outputs, self.pipe] if self.pipe >= 0 else list(self.outputs)

    def writers(self) -> list[int]:
        return [self.feed] if self.feed >= 0 else []

    def read(self, fd: int) -> None:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        if fd == self.pipe:
            if chunk:
                self.report += chunk
            else:
                os.close(fd)
                self.pipe = -1
                if self.feed >= 0:  # the command has ended: its input is not wanted
                    os.close(self.feed)
                    self.feed = -1
        elif chunk:
            self.outputs[fd] += chunk
        else:
            self.collected[self.which[fd]] = bytes(self.outputs.pop(fd))
            os.close(fd)

    def write(self, fd: int) -> None:
        assert self.input is not None
        try:
            written = os.write(fd, self.input[:65536])
        except BlockingIOError:
            return
        except BrokenPipeError:  # the command stopped reading: the rest is not wanted
            written = len(self.input)
        self.input = self.input[written:]
        if not self.input:
            os.close(fd)
            self.feed = -1

    def expire(self) -> float:
        """The timeout passed: stop the container (the first time), kill the
        supervisor (after the grace); return when to look again."""
        if not self.timed_out:
            self.timed_out = True
            self.zygote.send(("signal", self.id, _signal.SIGTERM), [])
            return _now() + self.stop_timeout + KILL_GRACE
        self.zygote.send(("signal", self.id, _signal.SIGKILL), [])
        return _now() + 3600.0

    def abandon(self) -> None:
        """Interrupted or cancelled: stop the container, stop listening (the
        zygote reaps the supervisor, which cleans up)."""
        if self.pipe >= 0:
            try:
                self.zygote.send(("signal", self.id, _signal.SIGTERM), [])
            except SetupError:
                pass  # the zygote is gone, and its supervisors were told
        for fd in [*self.outputs, self.feed, self.pipe]:
            if fd >= 0:
                os.close(fd)
        self.outputs.clear()
        self.feed = self.pipe = -1

    def result(self, timeout: float | None) -> Result:
        """The Result; or the StartError or Timeout it amounts to."""
        failure, nul, end = bytes(self.report).rpartition(b"\0")
        fields = end.split()
        if not nul or len(fields) != 2:
            raise StartError("the zygote died before the container ended")
        pid, status = int(fields[0]), int(fields[1])
        name = self.name or f"{self.plan_name}-{pid}"
        result = Result(
            status=status, stdout=self.collected.get(1), stderr=self.collected.get(2), name=name
        )
        if failure:
            code = status if status in (EXIT_NOEXEC, EXIT_NOTFOUND) else EXIT_SETUP
            raise StartError(failure.decode(errors="replace"), code)
        if self.timed_out:
            assert timeout is not None
            raise Timeout(timeout, result)
        return result
