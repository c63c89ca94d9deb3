"""Booting a real OS under pflask: Debian bookworm with systemd as PID 1.

Two kinds of tests live here:

- always run: what the compiler decides for a boot; the same profile for
  real, with a shell script as /sbin/init in a busybox root (its own cgroup
  it may write, a fresh boot id, no audit capabilities); the machined
  registration (against a stand-in busctl: see `fake_machined`); and a halt
  from inside (busybox's `poweroff -f` calls reboot(2) as systemd's shutdown
  does);
- marked `boot`, run by default (scripts/setup builds the debootstrapped
  roots they boot, about 200 MB each, under /var/cache/pflask-test, never in
  the checkout; a missing one is built by the fixture, minutes the first
  time; PFLASK_TEST_DEBIAN_ROOT overrides the place; PFLASK_TEST_BOOT=0
  skips them, for a developer's quick run): boot it with the init profile
  (systemd-nspawn's capabilities, the devices cgroup), reach multi-user.target with no failed unit
  and no error in the journal, check what systemd's container interface
  promises (cgroup delegation, read-only /sys and /proc/sys, its own machine
  id, the hostname, no audit), log in at the console's login prompt, halt it
  with `pflask stop` and from inside, and register a container with a real
  systemd-machined (in a booted Debian, as this host's init is not systemd).
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import describe, parse_status, pflask_cmd, run_as, run_pflask, status_sets, wait_for

from pflask.compile import compiler
from pflask.compile import plan as p
from pflask.compile.context import Context
from pflask.load import manifest
from pflask.run import machined

pytestmark = pytest.mark.usefixtures("host_clean")

BOOT_ENABLED = os.environ.get("PFLASK_TEST_BOOT", "1") != "0"
opt_in = pytest.mark.skipif(
    not BOOT_ENABLED,
    reason="PFLASK_TEST_BOOT=0: the Debian boot tests are skipped (unset it to run them)",
)
REPO = Path(__file__).resolve().parent.parent
DEBIAN_ROOT = Path(os.environ.get("PFLASK_TEST_DEBIAN_ROOT", "/var/cache/pflask-test/debian"))
MACHINED_ROOT = DEBIAN_ROOT.with_name(DEBIAN_ROOT.name + "-machined")
ROOT = Context(uid=0, gid=0)
USER = Context(uid=1000, gid=1000, subuid=((100000, 65536),), subgid=((200000, 65536),))


def compile_data(data: dict[str, Any], ctx: Context = ROOT) -> p.Plan:
    return compiler.compile_plan(manifest.from_data({"name": "os", **data}), ctx)


def steps(the_plan: p.Plan, cls: type[p.Step]) -> list[Any]:
    return [s for s in the_plan.steps if isinstance(s, cls)]


def cgroup_mount(the_plan: p.Plan) -> p.MountFs:
    return next(s for s in steps(the_plan, p.MountFs) if s.fstype == "cgroup2")


INIT = {"root": {"path": "/os"}, "command": ["/sbin/init"]}


# --------------------------------------------------------------------------- the compiler


def test_a_boot_gets_its_own_cgroup_delegated_read_write() -> None:
    the_plan = compile_data(INIT)
    kinds = [s.kind for s in the_plan.steps]
    # its own (cgroup2) group with the default task limit, entered before the
    # cgroup namespace is made, so that the namespace's root is that group; a
    # devices cgroup too, as it keeps CAP_SYS_ADMIN
    assert steps(the_plan, p.Cgroup) == [
        p.Cgroup(name="os", default_pids=4096, devices=compiler.DEVICE_RULES)
    ]
    assert kinds.index("cgroup") < kinds.index("unshare", 1)
    assert the_plan.steps[kinds.index("unshare", 1)] == p.Unshare(namespaces=("cgroup",))
    assert "cgroup" not in the_plan.steps[0].namespaces
    mount = cgroup_mount(the_plan)
    assert mount.target == "/sys/fs/cgroup" and "ro" not in mount.flags
    # the rest of the container interface is the usual root's
    sysfs = next(s for s in steps(the_plan, p.MountFs) if s.fstype == "sysfs")
    assert "ro" in sysfs.flags
    assert "/proc/sys" in steps(the_plan, p.ReadonlyPaths)[0].paths
    assert ("container", "pflask") in steps(the_plan, p.Environment)[0].set
    assert "reaper" not in kinds and the_plan.stop_signal == "SIGRTMIN+3"


def test_a_boot_gets_a_boot_id_of_its_own_once_proc_sys_is_read_only() -> None:
    the_plan = compile_data(INIT)
    kinds = [s.kind for s in the_plan.steps]
    assert steps(the_plan, p.BootId) == [p.BootId()]
    assert kinds.index("readonly_paths") < kinds.index("boot_id") < kinds.index("pivot_root")
    assert not steps(compile_data({"root": {"path": "/os"}}), p.BootId)


def test_a_boot_gets_its_hostname_in_etc_hostname_and_a_console_always() -> None:
    the_plan = compile_data(INIT)
    assert steps(the_plan, p.EtcHostname) == [p.EtcHostname(name="os")]
    assert steps(the_plan, p.Console) == [p.Console(boot=True)]
    named = compile_data({**INIT, "hostname": "web"})
    assert steps(named, p.EtcHostname) == [p.EtcHostname(name="web")]
    assert steps(the_plan.renamed("os", "os2"), p.EtcHostname) == [p.EtcHostname(name="os2")]
    ordinary = compile_data({"root": {"path": "/os"}})
    assert not steps(ordinary, p.EtcHostname)
    assert steps(ordinary, p.Console) == [p.Console()]
    assert not steps(compile_data({**INIT, "terminal": False}), p.Console)


def test_a_boot_keeps_nspawns_set_without_audit_control() -> None:
    from pflask.kernel import capabilities

    keep = set(steps(compile_data(INIT), p.Capabilities)[0].keep)
    assert keep == capabilities.BOOT
    assert not keep & {"audit_control", "audit_read", "net_admin", "sys_module", "sys_rawio"}
    assert {"sys_admin", "mknod", "audit_write", "sys_boot"} <= keep
    # net_admin only on a network of its own, as nspawn with --private-network
    private = compile_data({**INIT, "namespaces": {"net": True}})
    assert set(steps(private, p.Capabilities)[0].keep) == capabilities.BOOT | {"net_admin"}
    # what the manifest says changes it
    chosen = compile_data({**INIT, "capabilities": ["-sys_admin", "+audit_control"]})
    assert set(steps(chosen, p.Capabilities)[0].keep) == capabilities.BOOT - {"sys_admin"} | {
        "audit_control"
    }
    assert (
        "audit_read" in steps(compile_data({**INIT, "capabilities": "all"}), p.Capabilities)[0].keep
    )


def test_limits_asked_for_stay_and_are_delegated_too() -> None:
    the_plan = compile_data({**INIT, "cgroup": {"pids": 500}})
    assert steps(the_plan, p.Cgroup) == [
        p.Cgroup(name="os", pids=500, devices=compiler.DEVICE_RULES)
    ]
    assert "ro" not in cgroup_mount(the_plan).flags


@pytest.mark.parametrize(
    ("why", "data", "ctx"),
    [
        ("not an init", {"root": {"path": "/os"}, "command": ["/bin/sh"]}, ROOT),
        ("an init that is not PID 1", {**INIT, "pid1": "reaper"}, ROOT),
        ("the host's root", {"command": ["/sbin/init"]}, ROOT),
        ("no PID namespace", {**INIT, "namespaces": {"pid": False}}, ROOT),
    ],
)
def test_no_boot_profile(why: str, data: dict[str, Any], ctx: Context) -> None:
    from pflask.kernel import capabilities

    the_plan = compile_data(data, ctx)
    assert not steps(the_plan, p.Cgroup), why
    assert set(steps(the_plan, p.Capabilities)[0].keep) == capabilities.DEFAULT, why
    mounts = [s for s in steps(the_plan, p.MountFs) if s.fstype == "cgroup2"]
    assert all("ro" in m.flags for m in mounts), why


def test_an_ordinary_user_boots_without_a_cgroup_of_its_own() -> None:
    # Its own cgroup is not delegated to it: mkdir there would fail.  The tree
    # stays read-only rather than pretending to be writable.
    the_plan = compile_data(INIT, USER)
    assert not steps(the_plan, p.Cgroup)
    assert "ro" in cgroup_mount(the_plan).flags
    assert not steps(the_plan, p.RegisterMachine)


def test_no_cgroup_namespace_means_no_delegation() -> None:
    the_plan = compile_data({**INIT, "namespaces": {"cgroup": False}})
    # a group for the devices cgroup only, and no cgroup2 mount
    assert steps(the_plan, p.Cgroup) == [
        p.Cgroup(name="os", default_pids=compiler.DEFAULT_PIDS, devices=compiler.DEVICE_RULES)
    ]
    assert not [s for s in steps(the_plan, p.MountFs) if s.fstype == "cgroup2"]


def test_machines_are_registered_after_pid_1_exists() -> None:
    the_plan = compile_data({"root": {"path": "/os"}})
    kinds = [s.kind for s in the_plan.steps]
    assert steps(the_plan, p.RegisterMachine) == [p.RegisterMachine(name="os", root="/os")]
    # After the first process exists (as root it is PID 1 at once: no fork step).
    assert kinds.index("register_machine") > kinds.index("unshare")
    assert the_plan.steps[0].pid1
    assert "register_machine" not in [s.kind for s in compile_data({}).steps]
    assert "systemd-machined" in the_plan.render()


def test_boot_plan_survives_the_cache_wire_format() -> None:
    import marshal

    the_plan = compile_data(INIT)
    assert p.Plan.from_wire(marshal.loads(marshal.dumps(the_plan.to_wire()))) == the_plan


# --------------------------------------------------------------------------- machined


@pytest.fixture
def fake_machined(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A stand-in for busctl and a systemd host.  Mocked because this machine
    cannot run systemd-machined (its init is not systemd, so there is no
    system bus); the real one is exercised by
    test_machined_registers_a_container_inside_a_booted_debian.

    The fake logs its arguments to calls.log and answers from replies/: a
    file named after the method holds "exit-status message" lines, used in turn.
    """
    runtime = tmp_path / "run-systemd-system"
    runtime.mkdir()
    bus = tmp_path / "system_bus_socket"
    bus.touch()
    (tmp_path / "replies").mkdir()
    fake = tmp_path / "busctl"
    fake.write_text(
        f"""#!/bin/sh
dir={tmp_path}
echo "$*" >> "$dir/calls.log"
for method in RegisterMachine UnregisterMachine GetMachine Leader; do
    case " $* " in *" $method "*) ;; *) continue ;; esac
    replies="$dir/replies/$method"
    [ -s "$replies" ] || break
    line=$(head -n 1 "$replies"); sed -i 1d "$replies"
    status=${{line%% *}}; message=${{line#* }}
    if [ "$status" = 0 ]; then echo "$message"; else echo "$message" >&2; fi
    exit "$status"
done
echo 'o "/org/freedesktop/machine1/machine/x"'
"""
    )
    fake.chmod(0o755)
    monkeypatch.setattr(machined, "SYSTEMD_RUNTIME", str(runtime))
    monkeypatch.setattr(machined, "SYSTEM_BUS", str(bus))
    monkeypatch.setattr(machined, "BUSCTL", str(fake))
    return tmp_path


def calls(fake: Path) -> list[str]:
    log = fake / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def reply(fake: Path, method: str, *lines: str) -> None:
    (fake / "replies" / method).write_text("".join(line + "\n" for line in lines))


def test_machined_absent_means_no_call_and_no_import(tmp_path: Path) -> None:
    # On this host (and any whose init is not systemd) nothing is attempted,
    # and the hot path imports nothing for it.
    script = f"""
import sys
from pflask.run import machined
machined.SYSTEMD_RUNTIME = {str(tmp_path / "none")!r}
print(machined.register_or_warn("x", 1, "/"), "subprocess" in sys.modules)
"""
    result = run_as([sys.executable, "-c", script])
    assert result.stdout.split() == ["False", "False"], describe(result)
    assert result.stderr == ""


def test_register_passes_name_id_leader_and_root(fake_machined: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/machine-id").write_text("0123456789abcdef0123456789abcdef\n")
    assert machined.register_or_warn("deb", 4242, str(root))
    id_bytes = " ".join(str(b) for b in bytes.fromhex("0123456789abcdef0123456789abcdef"))
    assert calls(fake_machined) == [
        "--system --timeout=5s call org.freedesktop.machine1 /org/freedesktop/machine1 "
        f"org.freedesktop.machine1.Manager RegisterMachine sayssus deb 16 {id_bytes} "
        f"pflask container 4242 {root}"
    ]
    machined.unregister_or_warn("deb")
    assert calls(fake_machined)[-1].endswith("UnregisterMachine s deb")


def test_root_without_a_machine_id_registers_an_empty_one(fake_machined: Path) -> None:
    assert machined.register("deb", 4242, "/nonexistent", machined.root_machine_id("/nonexistent"))
    assert " sayssus deb 0 pflask container 4242 /nonexistent" in calls(fake_machined)[0]


def test_a_stale_registration_of_the_name_is_replaced(fake_machined: Path) -> None:
    # A SIGKILLed pflask left "deb" registered; its leader is gone.
    dead = subprocess.Popen(["true"])
    dead.wait()
    reply(
        fake_machined,
        "RegisterMachine",
        "1 Call failed: Machine 'deb' already exists",
        '0 o "/org/freedesktop/machine1/machine/deb"',
    )
    reply(fake_machined, "Leader", f"0 u {dead.pid}")
    assert machined.register("deb", 4242, "/r")
    methods = [
        line.split()[6] if "call" in line else "get-property" for line in calls(fake_machined)
    ]
    assert methods == [
        "RegisterMachine",
        "GetMachine",
        "get-property",
        "UnregisterMachine",
        "RegisterMachine",
    ]


def test_a_live_registration_of_the_name_is_left_alone(
    fake_machined: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    reply(fake_machined, "RegisterMachine", "1 Call failed: Machine 'deb' already exists")
    reply(fake_machined, "Leader", f"0 u {os.getpid()}")
    assert not machined.register_or_warn("deb", 4242, "/r")
    assert "UnregisterMachine" not in " ".join(calls(fake_machined))
    err = capfd.readouterr().err
    assert "pflask: warning: not registered with systemd-machined" in err
    assert "already exists" in err


def test_no_machined_service_is_silent(
    fake_machined: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    reply(
        fake_machined,
        "RegisterMachine",
        "1 Call failed: The name org.freedesktop.machine1 was not provided by any .service files",
    )
    assert not machined.register_or_warn("deb", 4242, "/r")
    assert capfd.readouterr().err == ""


def test_failures_are_warnings_naming_the_call(
    fake_machined: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    reply(fake_machined, "RegisterMachine", "1 Call failed: Access denied")
    assert not machined.register_or_warn("deb", 4242, "/r")
    assert capfd.readouterr().err == (
        "pflask: warning: not registered with systemd-machined: "
        "RegisterMachine: Call failed: Access denied\n"
    )
    reply(fake_machined, "UnregisterMachine", "1 Call failed: No machine 'deb' known")
    machined.unregister_or_warn("deb")  # already gone: nothing to say
    assert capfd.readouterr().err == ""


def test_id_bytes() -> None:
    assert machined.id_bytes(None) == ["0"]
    assert machined.id_bytes("xyz") == ["0"]
    assert machined.id_bytes("zz" * 16) == ["0"]
    assert machined.id_bytes("ff" * 16) == ["16", *["255"] * 16]


# --------------------------------------------------------------------------- an init, for real

INIT_SCRIPT = """#!/bin/sh
echo "boot_id=$(cat /proc/sys/kernel/random/boot_id)"
echo "cgroup=$(tail -n 1 /proc/self/cgroup)"
mkdir /sys/fs/cgroup/payload && echo $$ > /sys/fs/cgroup/payload/cgroup.procs \\
    && echo "moved=$(tail -n 1 /proc/self/cgroup)"
echo > /proc/sys/kernel/random/boot_id 2>/dev/null && echo "boot_id_write=allowed"
touch /sys/x 2>/dev/null && echo "sys_write=allowed"
echo "capbnd=$(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status)"
"""


def report(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    assert result.returncode == 0, describe(result)
    # An init has its console on stdout, stderr included (the shell's own
    # complaints about a refused redirection): only the script's reports count.
    lines = result.stdout.splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def test_an_init_gets_the_boot_profile_for_real(
    shared_tmp: Path, writable_busybox_root: Path
) -> None:
    # Any /sbin/init gets it; this one is a script that reports what it sees.
    init = writable_busybox_root / "sbin/init"
    init.write_text(INIT_SCRIPT)
    init.chmod(0o755)
    path = init_manifest(shared_tmp, writable_busybox_root, "init", command=["/sbin/init"])
    host_boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    first, second = report(run_pflask("run", path)), report(run_pflask("run", path))
    # a fresh random (version 4) boot id each boot, never the host's, read-only
    assert len(first["boot_id"]) == 36 and first["boot_id"][14] == "4"
    assert host_boot_id not in (first["boot_id"], second["boot_id"])
    assert first["boot_id"] != second["boot_id"]
    assert "boot_id_write" not in first and "sys_write" not in first
    # the root of its own cgroup (namespace), where it may make groups
    assert first["cgroup"] == "0::/"
    assert first["moved"] == "0::/payload"
    bounding = int(first["capbnd"], 16)
    assert not bounding & (1 << 30 | 1 << 37)  # CAP_AUDIT_CONTROL, CAP_AUDIT_READ
    assert bounding & (1 << 21 | 1 << 27)  # CAP_SYS_ADMIN, CAP_MKNOD


# --------------------------------------------------------------------------- halting


def init_manifest(directory: Path, root: Path, name: str, **fields: Any) -> Path:
    path = directory / f"{name}.yaml"
    data = {"version": 1, "name": name, "root": {"path": str(root)}, **fields}
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("how", "status"),
    [("poweroff -f", 0), ("halt -f", 0), ("reboot -f", 128 + signal.SIGHUP)],
)
def test_reboot_syscall_inside_ends_pflask(
    shared_tmp: Path, busybox_root: Path, how: str, status: int
) -> None:
    # reboot(2) in a PID namespace kills its init: with SIGINT for a halt or
    # power-off (a clean shutdown: exit 0), SIGHUP for a reboot (128+1).  A
    # shell is no init, so it gets the default set: CAP_SYS_BOOT is asked for.
    path = init_manifest(
        shared_tmp,
        busybox_root,
        "halts",
        command=["/bin/sh", "-c", how],
        capabilities=["+sys_boot"],
    )
    result = run_pflask("run", path)
    assert result.returncode == status, describe(result)


def test_sigint_is_still_130_for_an_ordinary_command(shared_tmp: Path, busybox_root: Path) -> None:
    path = init_manifest(shared_tmp, busybox_root, "int")
    result = run_pflask("run", path, "--", "/bin/sh", "-c", "kill -INT $$")
    assert result.returncode == 130, describe(result)


# --------------------------------------------------------------------------- booting Debian


def build_root(path: Path, *options: str) -> Path:
    result = run_as([str(REPO / "scripts/debian-root"), *options, str(path)], timeout=1500)
    assert result.returncode == 0, describe(result)
    return path


@pytest.fixture(scope="session")
def debian_root() -> Path:
    return build_root(DEBIAN_ROOT)


@pytest.fixture(scope="session")
def machined_root() -> Path:
    return build_root(MACHINED_ROOT, "--include", "dbus,systemd-container,python3")


class Booted:
    """A pflask booting a root in the background; `pflask exec` looks inside,
    `pflask stop` halts it."""

    def __init__(self, manifest_path: Path, name: str, log: Path) -> None:
        self.name = name
        self.log = log
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [*pflask_cmd(), "run", str(manifest_path)],
            stdin=subprocess.DEVNULL,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid1 = wait_for(self._systemd, timeout=30, message="systemd as the container's PID 1")

    def _systemd(self) -> int | None:
        """The container's PID 1 (its host pid) once it is systemd."""
        if self.proc.poll() is not None:
            raise AssertionError(f"pflask exited {self.proc.returncode}:\n{self.output()}")
        listed = run_pflask("ps", "--json")
        for row in json.loads(listed.stdout or "[]"):
            if row["name"] == self.name and row["pid"]:
                with contextlib.suppress(OSError):
                    if Path(f"/proc/{row['pid']}/comm").read_text().strip() == "systemd":
                        return int(row["pid"])
        return None

    def run(self, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """`argv` inside the container (`pflask exec`)."""
        return run_pflask("exec", self.name, "--", *argv, timeout=timeout)

    def check(self, *argv: str) -> str:
        result = self.run(*argv)
        assert result.returncode == 0, describe(result)
        return result.stdout

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> float:
        """`pflask stop NAME`; the seconds from the request until pflask exited."""
        requested = time.monotonic()
        result = run_pflask("stop", self.name)
        assert result.returncode == 0, describe(result)
        self.proc.wait(timeout=60)
        return time.monotonic() - requested

    def kill(self) -> None:
        """After a failure: halt it, and SIGKILL only if that does not work
        (a SIGKILLed pflask leaves its cgroup for the next one to clean)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@contextlib.contextmanager
def booted(manifest_path: Path, name: str, log: Path) -> Iterator[Booted]:
    container = Booted(manifest_path, name, log)
    try:
        yield container
    finally:
        if container.proc.poll() is None:
            container.kill()


def wait_running(container: Booted) -> str:
    """systemd's state once the boot is over (`--wait` needs its bus, which
    appears a moment after PID 1 starts)."""
    wait_for(
        lambda: container.run("test", "-S", "/run/systemd/private").returncode == 0,
        timeout=30,
        message="systemd's private bus socket",
    )
    result = container.run("systemctl", "is-system-running", "--wait", timeout=120)
    return result.stdout.strip()


@pytest.mark.boot
@opt_in
def test_debian_boots_to_multi_user_and_halts_cleanly(shared_tmp: Path, debian_root: Path) -> None:
    name = "deb-boot"
    path = init_manifest(shared_tmp, debian_root, name, command=["/sbin/init"], terminal=False)
    with booted(path, name, shared_tmp / "console.log") as c:
        state = wait_running(c)
        booted_after = time.monotonic() - c.started
        failed = c.check("systemctl", "list-units", "--failed", "--plain", "--no-legend")
        assert state == "running" and failed == "", f"{state}\n{failed}\n{c.output()}"
        assert c.check("systemctl", "is-active", "multi-user.target").strip() == "active"
        # the journal holds no error from the boot
        errors = c.check("journalctl", "-b", "--no-pager", "-q", "-p", "err")
        assert errors == "", errors

        # systemd knows it is in a container, named by us; the hostname is
        # the container's name (the root has no /etc/hostname)
        assert c.check("cat", "/run/systemd/container").strip() == "pflask"
        assert c.check("systemd-detect-virt", "--container").strip() == "container-other"
        assert c.check("hostname").strip() == name

        # its machine id is the root's own, nothing of the host's
        host_id = Path("/etc/machine-id").read_text().strip()
        inside_id = c.check("cat", "/etc/machine-id").strip()
        assert inside_id == (debian_root / "etc/machine-id").read_text().strip()
        assert inside_id != host_id
        run_id = c.run("cat", "/run/machine-id")
        assert host_id not in run_id.stdout
        assert host_id not in c.check("journalctl", "--header", "--no-pager")

        # a delegated cgroup2 tree: systemd made its units there, and that
        # tree is the container's own group on the host
        assert c.check("stat", "-f", "-c", "%T", "/sys/fs/cgroup").strip() == "cgroup2fs"
        assert "rw" in c.check("findmnt", "-n", "-o", "OPTIONS", "/sys/fs/cgroup").split(",")
        assert c.check("cat", "/proc/1/cgroup").splitlines()[-1] == "0::/init.scope"
        host_group = Path(f"/proc/{c.pid1}/cgroup").read_text().splitlines()[-1]
        assert host_group.endswith("/init.scope") and f"pflask-{name}-" in host_group
        # ... while /sys and /proc/sys stay read-only, and audit is not offered
        for path in ("/sys", "/proc/sys"):
            assert "ro" in c.check("findmnt", "-n", "-o", "OPTIONS", path).split(","), path
        caps = c.check("grep", "CapBnd", "/proc/1/status").split()[1]
        assert not int(caps, 16) & (1 << 30 | 1 << 37)  # CAP_AUDIT_CONTROL, CAP_AUDIT_READ
        # the init profile: systemd-nspawn's set (what of it pflask itself has:
        # this VM's init lacks sys_resource) ...
        from pflask.kernel import capabilities

        status = c.check("cat", "/proc/1/status")
        ours = status_sets()["CapBnd"]
        assert parse_status(status)["CapBnd"] == capabilities.BOOT & ours
        # ... with CAP_SYS_ADMIN, so a fresh tmpfs holds a usable node, but the
        # devices cgroup refuses to open a block device
        attack = (
            "mkdir -p /tmp/atk && mount -t tmpfs none /tmp/atk && "
            "mknod /tmp/atk/blk b 7 0 && head -c 1 /tmp/atk/blk; echo status=$?; umount /tmp/atk"
        )
        tried = c.run("sh", "-c", attack)
        assert "status=1" in tried.stdout, describe(tried)
        assert "Operation not permitted" in tried.stderr, describe(tried)

        took = c.stop()
        print(f"multi-user after {booted_after:.2f} s; stop to exit {took:.2f} s")
        assert c.proc.returncode == 0, c.output()
        assert took < 5, f"the halt took {took:.1f} s (SIGKILL comes after 10 s)"


class Console:
    """pflask run on a pty of its own, as at a terminal: read what it shows, type."""

    def __init__(self, argv: list[str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            os.environ["TERM"] = "xterm"
            try:
                os.execv(argv[0], argv)
            finally:
                os._exit(127)
        self.seen = b""

    def expect(self, text: str, timeout: float = 60) -> float:
        """Read until `text` shows; the time it showed at (monotonic)."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise AssertionError(f"no {text!r} on the console:\n{self.tail()}")
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                raise AssertionError(f"the console closed before {text!r}:\n{self.tail()}")
            self.seen += chunk
        now = time.monotonic()
        self.seen = self.seen[self.seen.index(text.encode()) + len(text) :]
        return now

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 60) -> int:
        """pflask's exit status, draining the console meanwhile."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
            if select.select([self.fd], [], [], 0.05)[0]:
                with contextlib.suppress(OSError):
                    self.seen += os.read(self.fd, 65536)
        raise AssertionError(f"pflask still running after {timeout:g} s:\n{self.tail()}")

    def tail(self) -> str:
        return self.seen[-3000:].decode(errors="replace")

    def close(self) -> None:
        with contextlib.suppress(ChildProcessError, ProcessLookupError):
            if not os.waitpid(self.pid, os.WNOHANG)[0]:
                os.kill(self.pid, signal.SIGTERM)
                self.wait(30)
        os.close(self.fd)


@pytest.mark.boot
@opt_in
def test_login_prompt_on_the_console_then_poweroff_from_the_shell(
    shared_tmp: Path, debian_root: Path
) -> None:
    name = "deb-console"
    path = init_manifest(shared_tmp, debian_root, name, command=["/sbin/init"], terminal=True)
    console = Console([*pflask_cmd(), "run", str(path)])
    try:
        started = time.monotonic()
        console.expect("Multi-User System")
        prompt = console.expect(f"{name} login: ")
        print(f"login prompt after {prompt - started:.2f} s")
        console.type("root\r")  # scripts/debian-root: no password at the console
        console.expect(f"root@{name}:~# ", timeout=30)
        console.type("systemctl is-system-running; tty\r")
        console.expect("running")
        console.expect("/dev/console")
        console.type("poweroff\r")
        console.expect("Reached target")  # the shutdown, shown as it happens
        assert console.wait() == 0, console.tail()
    finally:
        console.close()


@pytest.mark.boot
@opt_in
def test_a_boot_without_a_terminal_shows_its_console_on_stdout(
    shared_tmp: Path, debian_root: Path
) -> None:
    """`pflask run boot.yaml </dev/null >log`: the init still gets a console
    (its boot messages and console-getty need one) and the log holds it; the
    end of the input is no Ctrl-D at the login prompt."""
    name = "deb-log"
    path = init_manifest(shared_tmp, debian_root, name, command=["/sbin/init"])
    with booted(path, name, shared_tmp / "console.log") as c:
        prompt = f"{name} login: "
        wait_for(lambda: prompt in c.output(), timeout=90, message=f"{prompt!r} in the log")
        log = c.output()
        assert "Welcome to" in log and "Reached target" in log, log
        time.sleep(2)  # a getty ended by a Ctrl-D would restart and prompt again
        assert c.output().count(prompt) == 1, c.output()
        c.stop()
        assert c.proc.returncode == 0, c.output()
        assert "Reached target" in c.output().split(prompt, 1)[1]  # the shutdown, logged too


@pytest.mark.boot
@opt_in
def test_the_manifests_hostname_wins_over_the_roots_etc_hostname(
    shared_tmp: Path, debian_root: Path
) -> None:
    """A debootstrapped root holds the host's name in /etc/hostname, which
    systemd reads first: pflask binds the container's name over it."""
    name = "deb-hostname"
    stale = shared_tmp / "hostname"
    stale.write_text("the-build-host\n")
    path = init_manifest(
        shared_tmp,
        debian_root,
        name,
        command=["/sbin/init"],
        terminal=False,
        hostname="from-manifest",
        mounts=[{"type": "bind", "source": str(stale), "target": "/etc/hostname"}],
    )
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "root": {**data["root"], "ephemeral": True}}))
    with booted(path, name, shared_tmp / "console.log") as c:
        assert wait_running(c) == "running", c.output()
        # systemd set the kernel's name from /etc/hostname (no dbus in this
        # root for hostnamectl: hostnamed reads the same file)
        assert c.check("hostname").strip() == "from-manifest"
        assert c.check("cat", "/etc/hostname").strip() == "from-manifest"
        denied = c.run("sh", "-c", "echo other > /etc/hostname")
        assert denied.returncode != 0, describe(denied)  # read-only, as the name is pflask's
        assert not c.check("ls", "-A", "/run").count(".hostname")
        c.stop()
    assert stale.read_text() == "the-build-host\n"


@pytest.mark.boot
@opt_in
@pytest.mark.parametrize(("command", "status"), [("poweroff", 0), ("halt", 0)])
def test_shutting_down_from_inside_ends_pflask(
    shared_tmp: Path, debian_root: Path, command: str, status: int
) -> None:
    name = f"deb-{command}"
    path = init_manifest(shared_tmp, debian_root, name, command=["/sbin/init"], terminal=False)
    with booted(path, name, shared_tmp / "console.log") as c:
        assert wait_running(c) == "running", c.output()
        c.run("systemctl", command, "--no-block")
        assert c.proc.wait(timeout=30) == status, c.output()


@pytest.mark.boot
@opt_in
def test_machined_registers_a_container_inside_a_booted_debian(
    shared_tmp: Path, machined_root: Path, busybox_root: Path
) -> None:
    """The host's init is not systemd, so machined runs in a booted Debian, and
    a pflask inside it (the same installation, bound in) registers with it."""
    import pflask

    venv = Path(sys.executable).parent.parent
    package = Path(pflask.__file__).resolve().parent.parent
    binds = [venv, package, busybox_root]
    name = "deb-machined"
    path = init_manifest(
        shared_tmp,
        machined_root,
        name,
        command=["/sbin/init"],
        terminal=False,
        mounts=[
            {"type": "bind", "source": str(b), "target": str(b), "readonly": True} for b in binds
        ],
    )
    with booted(path, name, shared_tmp / "console.log") as c:
        assert wait_running(c) == "running", c.output()
        # A service of the container's systemd runs the inner pflask, so
        # machined finds a unit for its leader.
        inner = subprocess.Popen(
            [
                *pflask_cmd(),
                "exec",
                c.name,
                "--",
                "systemd-run",
                "--quiet",
                "--wait",
                "--pipe",
                "--unit=inner-box",
                "--",
                *pflask_cmd(),
                "--name",
                "inner",
                "-r",
                str(busybox_root),
                "--",
                "/bin/sleep",
                "3",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            listed = wait_for(
                lambda: "inner" in c.check("machinectl", "list", "--no-legend"),
                timeout=20,
                message="machinectl list showing the inner container",
            )
            assert listed
            status = c.check("machinectl", "show", "inner")
            fields = dict(line.split("=", 1) for line in status.splitlines() if "=" in line)
            assert fields["Class"] == "container" and fields["Service"] == "pflask"
            assert fields["RootDirectory"] == str(busybox_root)
            assert fields["Unit"] == "inner-box.service"
            leader = int(fields["Leader"])
            comm = c.check("cat", f"/proc/{leader}/comm").strip()
            assert comm in ("sleep", "python3", "pflask", "pflask-init"), comm
            out, _ = inner.communicate(timeout=30)
            assert inner.returncode == 0, out
            assert "warning" not in out, out
            # withdrawn when the container ended
            assert "inner" not in c.check("machinectl", "list", "--no-legend")
        finally:
            if inner.poll() is None:
                inner.kill()
                inner.wait()
        c.stop()
        assert c.proc.returncode == 0, c.output()
