"""Registering a container with systemd-machined, where the host runs it.

A registered container shows in `machinectl list` and `machinectl status
NAME` (its processes, its root, its leader), `machinectl poweroff NAME`
halts it, and tools that ask machined which machine a process belongs to
find it.  The original pflask registered every container the same way.

RegisterMachine, not CreateMachine: the container already lives in a cgroup
pflask made (or in pflask's own), and CreateMachine would have machined move
it into a new scope unit of its own.  machined instead records, as the
machine's unit, the unit the leader's cgroup belongs to: the one pflask
runs in (a login session's scope, a service).  Two consequences:

- the registration outlives the container while that unit is active, so
  pflask withdraws it when the container ends (UnregisterMachine, which
  leaves the unit alone); a SIGKILLed pflask leaves it behind until the unit
  ends, and the next `register` of that name clears it;
- `machinectl terminate NAME` stops that whole unit, exactly as it does for
  `systemd-nspawn --keep-unit`.

Cost where machined is absent: two stat(2) calls, and nothing imported: this
module is loaded on `pflask run`'s hot path whenever a plan holds the step.
Where it is present, busctl(1) speaks D-Bus for us (one exec, ~10 ms, made
while the container sets itself up): pflask carries no D-Bus implementation.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

# sd_booted(3): systemd creates this directory early at boot, and only then.
SYSTEMD_RUNTIME = "/run/systemd/system"
# The system bus (the default address of sd_bus_open_system(3)).
SYSTEM_BUS = "/run/dbus/system_bus_socket"
BUSCTL = "busctl"
DESTINATION = "org.freedesktop.machine1"
OBJECT = "/org/freedesktop/machine1"
INTERFACE = "org.freedesktop.machine1.Manager"
TIMEOUT = "5s"
# busctl(1) prints a failed call's error message, not the error's name, so
# these are machined's and the bus daemon's messages.  "No machined here",
# which is not worth a warning:
ABSENT = (
    "was not provided by any .service files",  # ServiceUnknown
    "dbus-org.freedesktop.machine1.service not found",  # activation without the unit
    "is not activatable",
)
MACHINE_EXISTS = "already exists"  # org.freedesktop.machine1.MachineExists
NO_SUCH_MACHINE = "No machine"  # org.freedesktop.machine1.NoSuchMachine


class MachinedError(Exception):
    """machined was there but refused or failed a call (a warning, not fatal)."""


def running() -> bool:
    """Whether systemd is the host's init and its system bus is up.

    machined is activated on demand over the bus, so a running systemd with a
    bus is as far as can be told without calling it.  /run/systemd/machines
    alone proves nothing: the package's tmpfiles create it on hosts whose
    init is not systemd.
    """
    return os.path.isdir(SYSTEMD_RUNTIME) and os.path.exists(SYSTEM_BUS)


def register(
    name: str,
    leader: int,
    root: str | None,
    machine_id: str | None = None,
    service: str = "pflask",
) -> bool:
    """RegisterMachine: `leader` (a host pid) is PID 1 of container `name`.

    True once registered; False where machined is absent (nothing to undo).
    A registration of the same name whose leader is gone (a SIGKILLed pflask
    left it) is withdrawn and the call repeated once.  `machine_id` is the
    root's /etc/machine-id when it holds one (`machinectl status` shows it),
    else machined leaves the id empty.  Raises MachinedError on any other
    failure.
    """
    if not running():
        return False
    args = [
        "RegisterMachine",
        "sayssus",
        name,
        *id_bytes(machine_id),
        service,
        "container",
        str(leader),
        root or "",
    ]
    try:
        _call(args)
    except MachinedError as e:
        if _absent(str(e)):
            return False
        if MACHINE_EXISTS not in str(e) or _leader_alive(name):
            raise
        unregister(name)
        _call(args)
    return True


def unregister(name: str) -> None:
    """UnregisterMachine: forget `name` without touching its processes or unit."""
    try:
        _call(["UnregisterMachine", "s", name])
    except MachinedError as e:
        if NO_SUCH_MACHINE not in str(e) and not _absent(str(e)):
            raise


def id_bytes(machine_id: str | None) -> list[str]:
    """The `ay` argument as busctl takes it: a count, then each byte in decimal."""
    if machine_id is None or len(machine_id) != 32:
        return ["0"]
    try:
        raw = bytes.fromhex(machine_id)
    except ValueError:
        return ["0"]
    return [str(len(raw)), *(str(b) for b in raw)]


def root_machine_id(root: str | None) -> str | None:
    """The root's own /etc/machine-id, if it holds a valid one.

    Read as every file of a root is (libc.read_in_root: inside the root, a
    regular file, bounded); one that is not (a FIFO, a device, a symlink out
    of the root to a host file) is warned about and left out: the id is a
    convenience for `machinectl status`, never a reason to stop a container.
    """
    if root is None:
        return None
    from pflask.kernel import libc

    try:
        shown = os.path.join(root, "etc/machine-id")
        data = libc.read_in_root(root, "/etc/machine-id", limit=4096, what=shown)
    except OSError as e:
        _warn(f"machine id not registered: {e}")
        return None
    text = (data or b"").strip().decode("ascii", errors="replace")
    if len(text) == 32 and all(c in "0123456789abcdef" for c in text):
        return text
    return None


def _absent(message: str) -> bool:
    return any(marker in message for marker in ABSENT)


def _leader_alive(name: str) -> bool:
    """Whether the leader of the registered machine `name` still exists."""
    try:
        reply = _busctl(
            ["call", DESTINATION, OBJECT, INTERFACE, "GetMachine", "s", name],
        )
        path = reply.split()[-1].strip('"')
        leader = _busctl(
            ["get-property", DESTINATION, path, "org.freedesktop.machine1.Machine", "Leader"]
        )
    except MachinedError:
        return True  # cannot tell: do not take over someone else's name
    try:
        os.kill(int(leader.split()[-1]), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def _call(args: Sequence[str]) -> str:
    return _busctl(["call", DESTINATION, OBJECT, INTERFACE, *args])


def _busctl(args: Sequence[str]) -> str:
    """Run busctl on the system bus; its reply, or MachinedError with its message."""
    import subprocess

    argv = [BUSCTL, "--system", f"--timeout={TIMEOUT}", *args]
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10
        )
    except FileNotFoundError:
        raise MachinedError(
            f"{args[4] if len(args) > 4 else args[0]}: {BUSCTL} not found "
            "(install systemd to register containers with machined)"
        ) from None
    except subprocess.TimeoutExpired:
        raise MachinedError(f"{' '.join(argv)}: no answer in 10 s") from None
    if done.returncode != 0:
        message = done.stderr.strip() or f"exit status {done.returncode}"
        raise MachinedError(f"{args[4] if len(args) > 4 else args[0]}: {message}")
    return done.stdout.strip()


def register_or_warn(name: str, leader: int, root: str | None) -> bool:
    """`register`, with a failure reported as a warning: registration is a
    convenience for the host's tools, never a reason to stop a container."""
    if not running():
        return False  # the common case, decided before reading anything
    try:
        return register(name, leader, root, machine_id=root_machine_id(root))
    except MachinedError as e:
        _warn(f"not registered with systemd-machined: {e}")
        return False


def unregister_or_warn(name: str) -> None:
    try:
        unregister(name)
    except MachinedError as e:
        _warn(f"systemd-machined still lists {name}: {e}")


def unregistering(name: str) -> Callable[[], None]:
    """`unregister_or_warn(name)` as a clean-up action (without functools,
    which costs milliseconds to import on the hot path)."""

    def action() -> None:
        unregister_or_warn(name)

    return action


def _warn(message: str) -> None:
    os.write(2, f"pflask: warning: {message}\n".encode(errors="replace"))
