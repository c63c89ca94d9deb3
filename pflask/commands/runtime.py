"""`pflask-oci`: runc's command line, so that podman, containerd and CRI-O can run pflask.

The engines drive a runtime per container: `create --bundle DIR --pid-file F
ID`, then `start ID`, `state ID`, `kill ID SIG`, `delete ID`, and `exec` for
more processes.  Each is a short-lived process; there is no pflask daemon.

- create: config.json is compiled (pflask.load.oci -> the compiler) into a
  plan whose container opens the start FIFO early and waits on it just
  before its command (StartFifo, AwaitStart).  pflask's supervisor runs the
  plan as for `pflask run` (host steps: id maps, the cgroup) until the
  container waits, then hands off (Supervisor.hand_off): it writes the state
  record and the pid file and exits without cleaning up.  PID 1 has dropped
  PDEATHSIG, so it lives on, adopted by the engine's subreaper (conmon,
  containerd-shim), which is the parent that reaps it, as with runc.
- start writes one byte to the FIFO: PID 1 execs the process.
- delete (after the process has exited, or with --force after a SIGKILL)
  removes the cgroup and the record: what the host steps made is recorded
  in it (the cgroup's directories), and mounts live and die with the
  container's mount namespace.
- run is create + start with this process staying as the supervisor.

Errors go to stderr and, with --log, to that file as JSON lines (runc's
`{"level":"error","msg":...,"time":...}`), where the engines read them.
Start-up imports little: argparse and json, then what the command needs.
"""

from __future__ import annotations

import os
import sys

from pflask.errors import EXIT_SETUP, PflaskError
from pflask.run import ocistate

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from pflask.compile.plan import Plan
    from pflask.run.ocistate import Record, Store
    from pflask.run.supervisor import Supervisor

SPEC_VERSION = "1.2.0"


class Log:
    """Where errors go besides stderr: the --log file, as runc writes it."""

    def __init__(self, path: str | None, form: str) -> None:
        self.path = path
        self.form = form

    def error(self, message: str) -> None:
        print(f"pflask-oci: {message}", file=sys.stderr)
        if not self.path:
            return
        import time

        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.form == "json":
            import json

            line = json.dumps({"level": "error", "msg": message, "time": now})
        else:
            line = f'time="{now}" level=error msg="{message}"'
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)
        except OSError:
            pass  # the message is on stderr anyway


class _Tee:
    """stderr that also keeps what the supervisor prints (`pflask: step 7 ...`),
    so the --log file gets it too."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.lines.extend(line for line in text.splitlines() if line.strip())
        return int(self.real.write(text))

    def flush(self) -> None:
        self.real.flush()

    def fileno(self) -> int:
        return int(self.real.fileno())


def parser() -> argparse.ArgumentParser:
    import argparse

    from pflask.run.ocistate import default_root

    p = argparse.ArgumentParser(
        prog="pflask-oci",
        description="An OCI runtime with runc's command line, running bundles through pflask.",
    )
    p.add_argument("--version", "-v", action="store_true", help="print the version")
    p.add_argument("--root", default=default_root(), help="where container state is kept")
    p.add_argument("--log", help="append errors to this file")
    p.add_argument("--log-format", default="text", choices=("text", "json"))
    p.add_argument("--debug", action="store_true", help="accepted (runc's)")
    p.add_argument(
        "--systemd-cgroup",
        action="store_true",
        help='linux.cgroupsPath is "slice:prefix:name" (made as cgroupfs directories)',
    )
    p.add_argument("--rootless", default="auto", help="accepted (runc's): auto, true, false")
    p.add_argument("--criu", help="accepted (runc's); checkpoints are not supported")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def bundle_options(c: argparse.ArgumentParser) -> None:
        c.add_argument("--bundle", "-b", default=".", help="the bundle directory")
        c.add_argument("--pid-file", help="write PID 1's pid here")
        c.add_argument("--console-socket", help="send the pty master to this unix socket")
        c.add_argument("--no-pivot", action="store_true", help="accepted (pivot_root is used)")
        c.add_argument("--no-new-keyring", action="store_true", help="accepted")
        c.add_argument("--preserve-fds", type=int, default=0, help="must be 0")
        c.add_argument("id", metavar="ID")

    bundle_options(sub.add_parser("create", help="create a container from a bundle"))
    c = sub.add_parser("run", help="create, start and wait for a container")
    bundle_options(c)
    c.add_argument("--detach", "-d", action="store_true", help="return once it runs")
    sub.add_parser("start", help="start a created container").add_argument("id", metavar="ID")
    c = sub.add_parser("state", help="the container's state as OCI state JSON")
    c.add_argument("id", metavar="ID")
    c = sub.add_parser("kill", help="send a signal to the container's PID 1")
    c.add_argument("--all", "-a", action="store_true", help="to every process in it")
    c.add_argument("id", metavar="ID")
    c.add_argument("signal", nargs="?", default="SIGTERM")
    c = sub.add_parser("delete", help="remove a stopped container's cgroup and record")
    c.add_argument("--force", "-f", action="store_true", help="kill it first if it runs")
    c.add_argument("id", metavar="ID")
    c = sub.add_parser("exec", help="run another process in the container")
    c.add_argument("--process", "-p", help="the process as JSON (config.json's process)")
    c.add_argument("--detach", "-d", action="store_true", help="return once it runs")
    c.add_argument("--pid-file", help="write the process's pid here")
    c.add_argument("--tty", "-t", action="store_true", help="a pty (with --console-socket)")
    c.add_argument("--console-socket", help="send the pty master to this unix socket")
    c.add_argument("--cwd", help="working directory")
    c.add_argument("--env", "-e", action="append", default=[], help="NAME=VALUE")
    c.add_argument("--user", "-u", help="UID[:GID]")
    c.add_argument("--no-new-privs", action="store_true", help="set no_new_privs")
    c.add_argument("--preserve-fds", type=int, default=0, help="must be 0")
    c.add_argument("id", metavar="ID")
    c.add_argument("argv", nargs=argparse.REMAINDER, metavar="COMMAND")
    c = sub.add_parser("ps", help="the container's processes")
    c.add_argument("--format", "-f", default="table", choices=("table", "json"))
    c.add_argument("id", metavar="ID")
    c.add_argument("ps_options", nargs="*", help="accepted")
    sub.add_parser("pause", help="freeze the container").add_argument("id", metavar="ID")
    sub.add_parser("resume", help="thaw the container").add_argument("id", metavar="ID")
    sub.add_parser("list", help="the containers under --root")
    sub.add_parser("features", help="what this runtime supports, as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    ns = parser().parse_args(sys.argv[1:] if argv is None else argv)
    log = Log(ns.log, ns.log_format)
    if ns.version:
        from pflask import __version__

        print(f"pflask-oci version {__version__}\nspec: {SPEC_VERSION}")
        return 0
    if ns.command is None:
        log.error("a command is required (create, start, state, kill, delete, run, exec, ...)")
        return 2
    tee = _Tee(sys.stderr)
    sys.stderr = tee
    try:
        status = COMMANDS[ns.command](ns)
    except PflaskError as e:
        sys.stderr = tee.real
        log.error(str(e))
        return e.status
    except OSError as e:
        sys.stderr = tee.real
        log.error(f"{ns.command}: {e}")
        return EXIT_SETUP
    except Exception as e:  # a bug: still one line for the engine, never a traceback
        sys.stderr = tee.real
        log.error(f"{ns.command}: {type(e).__name__}: {e}")
        return EXIT_SETUP
    finally:
        sys.stderr = tee.real
    if status != 0 and ns.command in ("create", "run", "exec") and log.path:
        for line in tee.lines:  # the supervisor's own lines (the step that failed)
            if line.startswith("pflask: "):
                log.error(line.removeprefix("pflask: "))
    return status


# -- the commands ---------------------------------------------------------------------


def _store(ns: argparse.Namespace) -> Store:
    from pflask.run.ocistate import Store

    return Store(ns.root)


def _now() -> str:
    import time

    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


def create(ns: argparse.Namespace) -> int:
    return _create(ns, keep=False)


def run(ns: argparse.Namespace) -> int:
    if ns.detach:
        status = _create(ns, keep=False)
        if status == 0:
            record = _store(ns).find(ns.id)
            if not record.release():
                raise PflaskError(f"container {ns.id} ended before it started")
        return status
    return _create(ns, keep=True)


def _create(ns: argparse.Namespace, keep: bool) -> int:
    """Set the bundle's container up and leave it waiting for `start`; with
    `keep` (run), start it at once and supervise it here until it ends."""
    from pflask.compile import compiler, context
    from pflask.load import oci
    from pflask.run.ocistate import PLAN, valid_id

    valid_id(ns.id)
    if ns.preserve_fds:
        raise PflaskError("--preserve-fds: not supported")
    store = _store(ns)
    record = store.make(ns.id)
    try:
        fifo = record.make_fifo()
        manifest = oci.load(ns.bundle, ns.id, fifo, systemd=ns.systemd_cgroup)
        the_plan = compiler.compile_plan(manifest, context.read(None))
        assert manifest.oci is not None
        late = [
            {"stage": h.stage, "path": h.path, "args": h.args, "env": h.env, "timeout": h.timeout}
            for h in manifest.oci.hooks
            if h.stage in ("poststart", "poststop")
        ]
        if the_plan.terminal == "true" and not keep and not ns.console_socket:
            raise PflaskError("process.terminal needs --console-socket")
        import marshal

        record.write(PLAN, marshal.dumps(the_plan.to_wire()))
        status = _supervise(the_plan, record, ns, keep, late, manifest.oci.console_size)
    except BaseException:
        _forget(record)
        raise
    if keep:
        _hooks(late, "poststop", ns.id, 0, os.path.abspath(ns.bundle), "stopped")
    if status != 0 or keep:
        _forget(record)
    return status


def _hooks(
    hooks: list[dict[str, Any]], stage: str, container: str, pid: int, bundle: str, status: str
) -> None:
    """Run the poststart or poststop hooks: a failure is a warning, as the spec says."""
    state = {"id": container, "pid": pid, "bundle": bundle, "status": status}
    for hook in hooks:
        if hook.get("stage") != stage:
            continue
        try:
            ocistate.run_hook(
                str(hook["path"]),
                [str(a) for a in hook["args"]],
                [str(e) for e in hook["env"]],
                hook.get("timeout"),
                state,
                stage,
            )
        except PflaskError as e:
            print(f"pflask-oci: warning: {e}", file=sys.stderr)


def _forget(record: Record) -> None:
    try:
        record.remove()
    except OSError:
        pass


def _supervise(
    the_plan: Plan,
    record: Record,
    ns: argparse.Namespace,
    keep: bool,
    hooks: list[dict[str, Any]],
    console_size: tuple[int, int] | None = None,
) -> int:
    from pflask.run import mounts, supervisor, terminal
    from pflask.run import state as pflask_state

    with_terminal = the_plan.terminal == "true"
    supervisor.preload(the_plan, with_terminal)
    mounts.preflight(the_plan.steps)
    bundle = os.path.abspath(ns.bundle)

    def hand_off(s: Supervisor) -> bool:
        """The container waits for start: record it, then leave (create) or start it (run)."""
        group = s.group
        record.save_state(
            {
                "pid": s.pid,
                "pid_start": pflask_state.start_time(s.pid),
                "bundle": bundle,
                "rootfs": the_plan.root,
                "created": _now(),
                "cgroup": [list(d) for d in group.dirs] if group is not None else [],
                "cgroup_name": group.name if group is not None else None,
                "cgroup_made": [list(d) for d in group.made] if group is not None else [],
                "annotations": _annotations(bundle),
                "hooks": hooks,
            }
        )
        if ns.pid_file:
            _write_pid_file(ns.pid_file, s.pid)
        s.made = []  # mount points in the rootfs: the running container's now
        if keep:
            record.release()
            _hooks(hooks, "poststart", ns.id, s.pid, bundle, "running")
        return keep

    s = supervisor.Supervisor(the_plan, verbose=False, hand_off=hand_off)
    if with_terminal and ns.console_socket:
        size = console_size
        s.on_master = lambda master: terminal.to_console_socket(ns.console_socket, master, size)
    return s.run()


def _annotations(bundle: str) -> dict[str, str]:
    """config.json's annotations, for the state JSON (read again: small, bounded)."""
    from pflask.load import loader

    try:
        data = loader.read_json(os.path.join(bundle, "config.json"))
    except Exception:  # read once already by create; a change since is not ours to fail on
        return {}
    annotations = data.get("annotations") if isinstance(data, dict) else None
    if not isinstance(annotations, dict):
        return {}
    return {str(k): str(v) for k, v in annotations.items()}


def _write_pid_file(path: str, pid: int) -> None:
    """Atomically, as runc does: the engines poll for it."""
    temporary = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}")
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(str(pid))
    os.rename(temporary, path)


def start(ns: argparse.Namespace) -> int:
    record = _store(ns).find(ns.id)
    status = ocistate.status(record.state(), record)
    if status != "created":
        raise PflaskError(f"cannot start a container that is {status}")
    if not record.release():
        raise PflaskError(f"container {ns.id} is not waiting to start (its PID 1 is gone)")
    data = record.state()
    _hooks(data.get("hooks", []), "poststart", ns.id, data["pid"], data["bundle"], "running")
    return 0


def state(ns: argparse.Namespace) -> int:
    import json

    record = _store(ns).find(ns.id)
    data = record.state()
    status = ocistate.status(data, record)
    print(
        json.dumps(
            {
                "ociVersion": SPEC_VERSION,
                "id": ns.id,
                "pid": 0 if status == "stopped" else data["pid"],
                "status": status,
                "bundle": data["bundle"],
                "rootfs": data["rootfs"],
                "created": data["created"],
                "owner": "",
                "annotations": data.get("annotations", {}),
            },
            indent=2,
        )
    )
    return 0


def _signal_number(text: str) -> int:
    from pflask.kernel.signals import signal_number

    if text.isdigit():
        return int(text)
    name = text.upper()
    try:
        return signal_number(name if name.startswith("SIG") else f"SIG{name}")
    except (KeyError, ValueError):
        raise PflaskError(f"unknown signal {text[:40]!r}") from None


def kill(ns: argparse.Namespace) -> int:
    from pflask.kernel import libc
    from pflask.run import state as pflask_state

    record = _store(ns).find(ns.id)
    data = record.state()
    signum = _signal_number(ns.signal)
    if ns.all:
        for pid in ocistate.pids(data):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass
        return 0
    fd = pflask_state.pidfd(data["pid"], data.get("pid_start"))
    if fd < 0 or ocistate.status(data, record) == "stopped":
        raise PflaskError(f"container {ns.id} is not running")
    try:
        libc.pidfd_send_signal(fd, signum)
    finally:
        os.close(fd)
    return 0


def delete(ns: argparse.Namespace) -> int:
    import time

    from pflask.run import cgroups
    from pflask.run.ocistate import Missing

    try:
        record = _store(ns).find(ns.id)
    except Missing:
        if ns.force:
            return 0
        raise
    try:
        data = record.state()
    except Missing:  # a create that died before it wrote one
        record.remove()
        return 0
    status = ocistate.status(data, record)
    if status in ("running", "paused") and not ns.force:
        raise PflaskError(f"cannot delete container {ns.id} that is not stopped: {status}")
    if status != "stopped":
        _kill_all(data)
        deadline = time.monotonic() + 5
        while ocistate.status(data, record) != "stopped" and time.monotonic() < deadline:
            time.sleep(0.01)
    if data.get("cgroup"):
        dirs = tuple((str(path), int(version)) for path, version in data["cgroup"])
        made = data.get("cgroup_made")
        if made is not None:
            made = tuple((str(path), int(version)) for path, version in made)
        cgroups.Group(str(data.get("cgroup_name")), dirs, None, made=made).remove()
    record.remove()
    _hooks(data.get("hooks", []), "poststop", ns.id, 0, data["bundle"], "stopped")
    return 0


def _kill_all(data: dict[str, Any]) -> None:
    import signal

    from pflask.kernel import libc
    from pflask.run import state as pflask_state

    path = ocistate.v2_dir(data)
    if path is not None and os.path.exists(os.path.join(path, "cgroup.freeze")):
        try:
            with open(os.path.join(path, "cgroup.freeze"), "w", encoding="utf-8") as f:
                f.write("0")  # a frozen task cannot die
        except OSError:
            pass
    fd = pflask_state.pidfd(data["pid"], data.get("pid_start"))
    if fd >= 0:
        try:
            libc.pidfd_send_signal(fd, signal.SIGKILL)
        except OSError:
            pass
        finally:
            os.close(fd)
    for pid in ocistate.pids(data):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def ps(ns: argparse.Namespace) -> int:
    import json

    record = _store(ns).find(ns.id)
    found = ocistate.pids(record.state())
    if ns.format == "json":
        print(json.dumps(found))
        return 0
    print("PID CMD")
    for pid in found:
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
                name = f.read().strip()
        except OSError:
            continue
        print(f"{pid} {name}")
    return 0


def _freeze(ns: argparse.Namespace, value: str, wanted: str) -> int:
    import time

    record = _store(ns).find(ns.id)
    data = record.state()
    status = ocistate.status(data, record)
    if status != wanted:
        raise PflaskError(f"container {ns.id} is {status}, not {wanted}")
    path = ocistate.v2_dir(data)
    if path is None:
        raise PflaskError(f"container {ns.id} has no cgroup2 group: no freezer")
    with open(os.path.join(path, "cgroup.freeze"), "w", encoding="utf-8") as f:
        f.write(value)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the kernel freezes asynchronously
        with open(os.path.join(path, "cgroup.events"), encoding="utf-8") as f:
            if f"frozen {value}" in f.read():
                return 0
        time.sleep(0.005)
    raise PflaskError(f"container {ns.id}: cgroup.freeze did not take effect in 5 s")


def pause(ns: argparse.Namespace) -> int:
    return _freeze(ns, "1", "running")


def resume(ns: argparse.Namespace) -> int:
    return _freeze(ns, "0", "paused")


def list_(ns: argparse.Namespace) -> int:
    store = _store(ns)
    print("ID PID STATUS BUNDLE")
    for container_id in store.ids():
        try:
            record = store.find(container_id)
            data = record.state()
        except PflaskError:
            continue
        print(f"{container_id} {data['pid']} {ocistate.status(data, record)} {data['bundle']}")
    return 0


def features(ns: argparse.Namespace) -> int:
    import json

    from pflask.kernel import capabilities
    from pflask.load import oci

    print(
        json.dumps(
            {
                "ociVersionMin": "1.0.0",
                "ociVersionMax": SPEC_VERSION,
                "hooks": list(oci.HOOK_STAGES),
                "mountOptions": sorted(
                    {*oci.MOUNT_FLAGS, *oci.DEFAULT_OPTIONS, *oci.HELD_PROPAGATION, "bind", "rbind"}
                ),
                "linux": {
                    "namespaces": sorted(oci.NAMESPACES),
                    "capabilities": [
                        f"CAP_{c.upper()}" for c in capabilities.ordered(capabilities.ALL)
                    ],
                    "cgroup": {"v1": True, "v2": True, "systemd": True, "systemdUser": False},
                    "seccomp": {"enabled": True},
                },
                "annotations": {"org.opencontainers.runc.checkpoint.enabled": "false"},
            },
            indent=2,
        )
    )
    return 0


def exec_(ns: argparse.Namespace) -> int:
    from pflask.commands import ociexec

    return ociexec.run(ns, _store(ns))


COMMANDS = {
    "create": create,
    "run": run,
    "start": start,
    "state": state,
    "kill": kill,
    "delete": delete,
    "exec": exec_,
    "ps": ps,
    "pause": pause,
    "resume": resume,
    "list": list_,
    "features": features,
}


def entry() -> None:
    """The console script."""
    sys.exit(main())
