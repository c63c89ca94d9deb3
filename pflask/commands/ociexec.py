"""`pflask-oci exec`: another process in a running OCI container.

The process runs under the rules the container's own did (the plan `create`
recorded: rlimits, seccomp filter, ids, capability sets, no_new_privs,
environment, working directory), or under a `--process` JSON (config.json's
`process` object, compiled with the rest of the bundle's config.json, so the
bundle's seccomp filter applies to it too).  Joining works as `pflask exec`
does (pflask.commands.nsenter): PID 1's namespaces through its pidfd, PID 1's
cgroups, then a fork into the PID namespace.

With --detach the process that waits for the command (and exits with its
status) is left to the engine's subreaper, and its pid goes to --pid-file:
conmon and containerd-shim reap it as they reap runc's.
"""

from __future__ import annotations

import os

from pflask.compile import plan
from pflask.errors import PflaskError
from pflask.run import ocistate

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    from pflask.run.ocistate import Record, Store


class _Named:
    """What nsenter.Session reads of a container's record: its name."""

    def __init__(self, name: str) -> None:
        self.name = name


def _process_plan(ns: argparse.Namespace, record: Record, data: dict[str, object]) -> plan.Plan:
    """The plan whose process steps the command runs under."""
    if ns.process is None:
        import marshal

        return plan.Plan.from_wire(marshal.loads(record.read(ocistate.PLAN)))
    from pflask.compile import compiler, context
    from pflask.load import loader, oci

    bundle = str(data["bundle"])
    config = os.path.join(bundle, "config.json")
    raw = loader.read_json(config)
    process = loader.read_json(ns.process)
    if not isinstance(raw, dict):
        raise PflaskError(f"{config}: not an object")
    raw["process"] = process
    manifest = oci.from_data(raw, ns.process, bundle, name=record.id)
    return compiler.compile_plan(manifest, context.read(None))


def _adjusted(the_plan: plan.Plan, ns: argparse.Namespace) -> plan.Plan:
    """--cwd, --env, --user and --no-new-privs over the recorded process."""
    steps: list[plan.Step] = []
    for step in the_plan.steps:
        if isinstance(step, plan.Chdir) and ns.cwd:
            step = step.replace(path=ns.cwd)
        elif isinstance(step, plan.Environment) and ns.env:
            extra = tuple(tuple(item.split("=", 1)) for item in ns.env if "=" in item)
            step = step.replace(set=(*step.set, *extra))
        elif isinstance(step, plan.SetIds) and ns.user:
            uid, _, gid = ns.user.partition(":")
            if not uid.isdigit() or (gid and not gid.isdigit()):
                raise PflaskError(f"--user {ns.user[:40]!r}: UID[:GID] as numbers")
            step = step.replace(uid=int(uid), gid=int(gid or 0))
        steps.append(step)
    if ns.no_new_privs and not any(isinstance(s, plan.NoNewPrivs) for s in steps):
        steps.append(plan.NoNewPrivs())
    if ns.cwd and not any(isinstance(s, plan.Chdir) for s in steps):
        steps.append(plan.Chdir(path=ns.cwd))
    adjusted: plan.Plan = the_plan.replace(steps=tuple(steps))
    return adjusted


def run(ns: argparse.Namespace, store: Store) -> int:
    from pflask.commands import nsenter

    if ns.preserve_fds:
        raise PflaskError("--preserve-fds: not supported")
    record = store.find(ns.id)
    data = record.state()
    if ocistate.status(data, record) != "running":
        raise PflaskError(f"container {ns.id} is not running")
    the_plan = _adjusted(_process_plan(ns, record, data), ns)
    # --tty, or a --process asking for a terminal (podman's way).
    tty = bool(ns.tty) or (ns.process is not None and the_plan.terminal == "true")
    if tty and not ns.console_socket:
        raise PflaskError("exec --tty needs --console-socket (where the pty master goes)")
    argv = [a for a in ns.argv if a != "--"] if ns.argv[:1] == ["--"] else list(ns.argv)
    if not argv:
        argv = list(the_plan.command)
    nsenter._preload(tty)
    if not ns.detach:
        if ns.pid_file:
            _write_pid(ns.pid_file, os.getpid())
        return _enter_and_run(the_plan, data, ns.id, argv, tty, ns.console_socket, -1)
    # Detached: a child waits for the command and is left to the engine's
    # subreaper; with a terminal we return once the master reached the engine.
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    child = os.fork()
    if child == 0:
        os.close(ready_r)
        os.setsid()
        try:
            code = _enter_and_run(the_plan, data, ns.id, argv, tty, ns.console_socket, ready_w)
        except BaseException as e:  # a detached child has no one else to tell
            os.write(2, f"pflask-oci: exec: {e}\n".encode())
            code = 125
        os._exit(code)
    os.close(ready_w)
    sent = os.read(ready_r, 1) if tty else b"1"
    os.close(ready_r)
    if not sent:
        raise PflaskError(f"exec in {ns.id}: the process could not be started")
    if ns.pid_file:
        _write_pid(ns.pid_file, child)
    return 0


def _enter_and_run(
    the_plan: plan.Plan,
    data: dict[str, object],
    name: str,
    argv: list[str],
    tty: bool,
    console_socket: str | None,
    ready: int,
) -> int:
    """Join PID 1's namespaces and cgroups and run the command (nsenter.Session);
    with `tty` the pty master goes to `console_socket`, then a byte to `ready`."""
    from pflask.commands import nsenter
    from pflask.run import state

    pid = int(str(data["pid"]))
    pidfd = state.pidfd(pid, data.get("pid_start"))
    if pidfd < 0:
        raise PflaskError(f"container {name} has just stopped")
    console = None
    if tty:  # connected here: its path is the host's, out of reach once inside
        import socket

        console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        console.connect(str(console_socket))
    try:
        workdir = next((s.path for s in the_plan.steps if isinstance(s, plan.Chdir)), "/")
        names = nsenter.namespaces(the_plan)
        groups = nsenter.join(pidfd, pid, name, names, bool(data.get("cgroup")), workdir)
    finally:
        os.close(pidfd)
    session = nsenter.Session(the_plan, _Named(name), argv, tty, groups)  # type: ignore[arg-type]
    if console is not None:
        from pflask.run import terminal

        def send(master: int) -> None:
            terminal.send_fd(console.fileno(), master)
            os.close(master)
            console.close()
            if ready >= 0:
                os.write(ready, b"1")
                os.close(ready)

        session.send_master = send
    return session.run()


def _write_pid(path: str, pid: int) -> None:
    temporary = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}")
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(str(pid))
    os.rename(temporary, path)
