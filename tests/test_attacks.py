"""Escapes, tried as an attacker would: root inside a container with the default profile.

Each test runs one attack from pflask issue #13 ("Secure by default") in a
real container and asserts that it fails, and how: the capability the
kernel asked for, the `nodev` mount that refuses a device node, the devices
cgroup.  They run as root (no user namespace: the case the issue is about)
and, where the attack applies, as pflask-test (a user namespace, where the
kernel itself refuses most of them).  Every attack here is stopped by the
capability set, the mount flags, the devices cgroup or the session keyring
alone; a seccomp filter would stop several a second time.

The busybox root has no interpreter for raw system calls, so the attacks
that need one (keyctl, open_by_handle_at, /proc/1/map_files) run the host's
/usr/bin/python3 from a copy of that root with the host's /usr bound
read-only (`py_root`).  The block device is a loop device the test makes
over a small ext4 image (`loop_device`), never a disk of the host.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import describe, parse_status, pflask_cmd, run_as, run_pflask, wait_for
from helpers import shell as sh

pytestmark = pytest.mark.usefixtures("host_clean")

USERS = [None, "pflask-test"]
# The OCI runtime's default set (runc's spec, Docker, podman): what a plain
# command gets.
DEFAULT_SET = frozenset(
    {
        "chown",
        "dac_override",
        "fsetid",
        "fowner",
        "mknod",
        "net_raw",
        "setgid",
        "setuid",
        "setfcap",
        "setpcap",
        "net_bind_service",
        "sys_chroot",
        "kill",
        "audit_write",
    }
)
MARKER = "pflask-attack-marker-7f3a"


def manifest(directory: Path, name: str, **fields: Any) -> Path:
    path = directory / f"{name}.yaml"
    data = {"version": 1, "name": f"atk-{name}-{os.getpid()}", **fields}
    path.write_text(yaml.safe_dump(data))
    return path


def lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return result.stdout.splitlines()


@pytest.fixture
def py_root(writable_busybox_root: Path) -> Path:
    """A busybox root where /usr/bin/python3 runs: /lib and /lib64 lead into
    the host's /usr, which the manifest (`PY_MOUNTS`) binds read-only."""
    for name in ("lib", "lib64"):
        (writable_busybox_root / name).symlink_to(f"usr/{name}")
    return writable_busybox_root


PY_MOUNTS = [{"type": "bind", "source": "/usr", "target": "/usr", "readonly": True}]


def python(script: str) -> list[str]:
    return ["/usr/bin/python3", "-c", textwrap.dedent(script)]


@pytest.fixture
def loop_device(shared_tmp: Path) -> Iterator[tuple[str, int, int]]:
    """A loop device over a 4 MiB ext4 image holding a file with MARKER:
    (path, major, minor).  Detached afterwards."""
    content = shared_tmp / "image-content"
    content.mkdir()
    (content / "marker").write_text(MARKER + "\n")
    image = shared_tmp / "disk.img"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(content), str(image), "4M"],
        check=True,
        capture_output=True,
    )
    made = subprocess.run(
        ["losetup", "--find", "--show", str(image)], check=True, capture_output=True, text=True
    )
    device = made.stdout.strip()
    try:
        rdev = os.stat(device).st_rdev
        yield device, os.major(rdev), os.minor(rdev)
    finally:
        subprocess.run(["losetup", "--detach", device], check=True)


# --- capabilities -------------------------------------------------------------------------


@pytest.mark.parametrize("user", USERS)
def test_a_plain_command_holds_the_default_set(
    shared_tmp: Path, busybox_root: Path, user: str | None, test_user: Any
) -> None:
    box = manifest(shared_tmp, "caps", root={"path": str(busybox_root)})
    result = run_pflask("run", box, "--", "cat", "/proc/self/status", user=user)
    assert result.returncode == 0, describe(result)
    sets = parse_status(result.stdout)
    for field in ("CapEff", "CapPrm", "CapBnd"):
        assert sets[field] == DEFAULT_SET, (field, sorted(sets[field] ^ DEFAULT_SET))
    # nothing to hand on through binaries with file-inheritable capabilities
    assert sets["CapInh"] == sets["CapAmb"] == frozenset()
    # `all` gives the full set back (all that pflask itself holds)
    everything = manifest(shared_tmp, "all", root={"path": str(busybox_root)}, capabilities=["all"])
    result = run_pflask("run", everything, "--", "cat", "/proc/self/status", user=user)
    assert parse_status(result.stdout)["CapEff"] > DEFAULT_SET | {"sys_admin"}


# --- block devices --------------------------------------------------------------------------

# Every writable place the container gets: its root (/tmp of the bound root
# directory), /dev, /dev/shm, /run, a tmpfs and a bind the manifest asks for.
PLACES = ("/tmp", "/dev", "/dev/shm", "/run", "/scratch", "/host")


def device_mounts(shared_tmp: Path, root: Path) -> list[dict[str, Any]]:
    for target in ("scratch", "host"):  # made here: pflask-test may not write the root
        (root / target).mkdir(exist_ok=True)
    host_dir = shared_tmp / "host-dir"
    host_dir.mkdir(exist_ok=True)
    host_dir.chmod(0o1777)
    return [
        {"type": "tmp", "target": "/scratch"},
        {"type": "bind", "source": str(host_dir), "target": "/host"},
    ]


@pytest.mark.parametrize("user", USERS)
def test_mknod_then_read_a_block_device_is_refused_everywhere(
    shared_tmp: Path,
    writable_busybox_root: Path,
    loop_device: tuple[str, int, int],
    user: str | None,
    test_user: Any,
) -> None:
    _, major, minor = loop_device
    script = "".join(
        f"if mknod {d}/blk b {major} {minor} 2>/dev/null; then "
        f"if dd if={d}/blk bs=1M count=4 2>/dev/null | grep -q {MARKER}; "
        f"then echo '{d} read'; else echo '{d} refused'; fi; "
        f"else echo '{d} no-mknod'; fi; "
        for d in PLACES
    )
    box = manifest(
        shared_tmp,
        "mknod",
        root={"path": str(writable_busybox_root)},
        mounts=device_mounts(shared_tmp, writable_busybox_root),
    )
    result = run_pflask("run", box, "--", *sh(script), user=user)
    assert result.returncode == 0, describe(result)
    if user is None:
        # CAP_MKNOD is in the default set (images need it), but every writable
        # mount is nodev: the node exists and cannot be opened.
        assert lines(result) == [f"{d} refused" for d in PLACES], describe(result)
    else:
        # A user namespace may not make device nodes at all.
        assert lines(result) == [f"{d} no-mknod" for d in PLACES], describe(result)


@pytest.mark.parametrize("user", USERS)
def test_mknod_then_mount_a_block_device_is_refused(
    shared_tmp: Path,
    writable_busybox_root: Path,
    loop_device: tuple[str, int, int],
    user: str | None,
    test_user: Any,
) -> None:
    _, major, minor = loop_device
    script = (
        f"mknod /tmp/blk b {major} {minor}; mkdir -p /tmp/mnt; "
        "mount -t ext4 /tmp/blk /tmp/mnt && cat /tmp/mnt/marker"
    )
    box = manifest(shared_tmp, "mount", root={"path": str(writable_busybox_root)})
    result = run_pflask("run", box, "--", *sh(script), user=user)
    assert MARKER not in result.stdout, describe(result)
    assert result.returncode != 0
    assert "permission denied" in result.stderr.lower(), describe(result)


def test_the_devices_cgroup_holds_when_the_container_keeps_cap_sys_admin(
    shared_tmp: Path, writable_busybox_root: Path, loop_device: tuple[str, int, int]
) -> None:
    """An init (the boot profile) keeps CAP_SYS_ADMIN, as systemd-nspawn
    grants, so it could mount a tmpfs without nodev: the devices cgroup is
    what refuses the node then.  The standard nodes and the console's pty
    still work."""
    _, major, minor = loop_device
    init = writable_busybox_root / "sbin/init"
    init.unlink(missing_ok=True)
    init.write_text(
        "#!/bin/sh\n"
        "mkdir -p /tmp/fresh && mount -t tmpfs none /tmp/fresh && echo mounted\n"
        f"mknod /tmp/fresh/blk b {major} {minor} && echo made\n"
        f"dd if=/tmp/fresh/blk bs=1M count=4 2>/dev/null | grep -q {MARKER} && echo read\n"
        "mknod /tmp/fresh/null c 1 3 && echo x > /tmp/fresh/null && echo null-ok\n"
        "echo x > /dev/null && head -c 4 /dev/zero | wc -c\n"
    )
    init.chmod(0o755)
    box = manifest(
        shared_tmp, "boot", root={"path": str(writable_busybox_root)}, command=["/sbin/init"]
    )
    result = run_pflask("run", box)
    assert result.returncode == 0, describe(result)
    assert lines(result) == ["mounted", "made", "null-ok", "4"], describe(result)
    # the same for a plain command given CAP_SYS_ADMIN
    plain = manifest(
        shared_tmp,
        "sysadmin",
        root={"path": str(writable_busybox_root)},
        capabilities=["+sys_admin"],
    )
    result = run_pflask("run", plain, "--", "/bin/sh", "/sbin/init")
    assert lines(result) == ["mounted", "made", "null-ok", "4"], describe(result)


# --- /proc/sys and /sys ---------------------------------------------------------------------


@pytest.mark.parametrize("user", USERS)
def test_core_pattern_cannot_be_reached_by_unmounting_proc_sys(
    shared_tmp: Path, writable_busybox_root: Path, user: str | None, test_user: Any
) -> None:
    """kernel.core_pattern runs a program as root on the host on every crash."""
    before = Path("/proc/sys/kernel/core_pattern").read_text()
    script = (
        "umount /proc/sys 2>&1 || umount -l /proc/sys 2>&1; "
        "echo pflask-attack > /proc/sys/kernel/core_pattern && echo written"
    )
    box = manifest(shared_tmp, "core", root={"path": str(writable_busybox_root)})
    try:
        result = run_pflask("run", box, "--", *sh(script), user=user)
        after = Path("/proc/sys/kernel/core_pattern").read_text()
    finally:
        Path("/proc/sys/kernel/core_pattern").write_text(before)
    assert after == before
    assert "written" not in result.stdout, describe(result)
    assert "Operation not permitted" in result.stdout, describe(result)


@pytest.mark.parametrize("user", USERS)
def test_no_cgroup_v1_hierarchy_can_be_mounted_for_release_agent(
    shared_tmp: Path, writable_busybox_root: Path, user: str | None, test_user: Any
) -> None:
    """A v1 hierarchy's release_agent runs as root on the host."""
    script = (
        "mkdir -p /tmp/cg && mount -t cgroup -o none,name=pflask-attack cgroup /tmp/cg "
        "&& echo mounted && echo /bin/true > /tmp/cg/release_agent && echo agent"
    )
    box = manifest(shared_tmp, "cgv1", root={"path": str(writable_busybox_root)})
    result = run_pflask("run", box, "--", *sh(script), user=user)
    assert result.stdout == "", describe(result)
    assert "permission denied" in result.stderr, describe(result)  # busybox's words for EPERM


# A harmless file under /sys/kernel: writing back its own value changes nothing.
SYS_KERNEL_FILE = "kernel/rcu_expedited"


@pytest.mark.parametrize("user", USERS)
def test_a_fresh_sysfs_cannot_be_mounted_to_write_sys_kernel(
    shared_tmp: Path, writable_busybox_root: Path, user: str | None, test_user: Any
) -> None:
    value = Path("/sys", SYS_KERNEL_FILE).read_text().strip()
    script = (
        f"echo {value} > /sys/{SYS_KERNEL_FILE} && echo written-sys; "
        "mkdir -p /tmp/sys && mount -t sysfs sysfs /tmp/sys && echo mounted "
        f"&& echo {value} > /tmp/sys/{SYS_KERNEL_FILE} && echo written-fresh"
    )
    box = manifest(shared_tmp, "sysfs", root={"path": str(writable_busybox_root)})
    result = run_pflask("run", box, "--", *sh(script), user=user)
    assert "written" not in result.stdout, describe(result)
    assert "mounted" not in result.stdout, describe(result)
    assert "Read-only file system" in result.stderr, describe(result)


# --- keyrings ---------------------------------------------------------------------------------

_KEY_SYSCALLS = {"x86_64": (248, 250), "aarch64": (217, 219)}  # add_key, keyctl
ADD_KEY, KEYCTL = _KEY_SYSCALLS[os.uname().machine]
KEYCTL_JOIN_SESSION_KEYRING = 1
KEYCTL_LINK = 8
KEYCTL_SEARCH = 10
KEYCTL_READ = 11
KEYCTL_INVALIDATE = 21
KEY_SPEC_SESSION_KEYRING = -3
KEY_SPEC_USER_KEYRING = -4
SECRET = "pflask-host-secret"

# Run pflask with a key of ours in the session or the user keyring; the user
# keyring outlives the process, so the key is invalidated afterwards.  pflask
# runs in a child of this process, through its `main` (pflask-test may not
# execute this venv's interpreter again from a process of its own here).
KEY_WRAPPER = f"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
ring = int(sys.argv[1])
if libc.syscall({KEYCTL}, {KEYCTL_JOIN_SESSION_KEYRING}, None) < 0:
    sys.exit("join: " + os.strerror(ctypes.get_errno()))
# as pam_keyinit does for a login: the user keyring is linked into the session's
if libc.syscall({KEYCTL}, {KEYCTL_LINK}, {KEY_SPEC_USER_KEYRING}, {KEY_SPEC_SESSION_KEYRING}) < 0:
    sys.exit("link: " + os.strerror(ctypes.get_errno()))
key = libc.syscall({ADD_KEY}, b"user", b"pflask-attack", b"{SECRET}", {len(SECRET)}, ring)
if key < 0:
    sys.exit("add_key: " + os.strerror(ctypes.get_errno()))
try:
    pid = os.fork()
    if pid == 0:
        from pflask.cli import main
        os._exit(main(sys.argv[2:]))
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
finally:
    libc.syscall({KEYCTL}, {KEYCTL_INVALIDATE}, ctypes.c_long(key))
sys.exit(status)
"""

KEY_THIEF = f"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
for name, ring in (("session", -3), ("user", -4), ("user-session", -5)):
    key = libc.syscall({KEYCTL}, {KEYCTL_SEARCH}, ring, b"user", b"pflask-attack", 0)
    if key < 0:
        print(name, "none", os.strerror(ctypes.get_errno()))
        continue
    buf = ctypes.create_string_buffer(64)
    n = libc.syscall({KEYCTL}, {KEYCTL_READ}, ctypes.c_long(key), buf, 64)
    print(name, "read" if n >= 0 else "unreadable", buf.value.decode())
"""


@pytest.mark.parametrize("user", USERS)
@pytest.mark.parametrize("ring", ["session", "user"])
def test_the_host_keyrings_are_out_of_reach(
    shared_tmp: Path, py_root: Path, user: str | None, ring: str, test_user: Any
) -> None:
    box = manifest(shared_tmp, "keys", root={"path": str(py_root)}, mounts=PY_MOUNTS)
    command = ["run", str(box), "--", *python(KEY_THIEF)]
    ring_id = KEY_SPEC_SESSION_KEYRING if ring == "session" else KEY_SPEC_USER_KEYRING
    result = run_as([sys.executable, "-c", KEY_WRAPPER, str(ring_id), *command], user=user)
    assert result.returncode == 0, describe(result)
    assert SECRET not in result.stdout, describe(result)
    assert len(lines(result)) == 3, describe(result)


def test_pflask_exec_gets_the_same_profile_and_keyring(shared_tmp: Path, py_root: Path) -> None:
    """A command started by `pflask exec` in a running container holds what its
    command holds, and not the keys of the session `pflask exec` ran in."""
    box = manifest(shared_tmp, "exec", root={"path": str(py_root)}, mounts=PY_MOUNTS)
    name = f"atk-exec-{os.getpid()}"
    running = subprocess.Popen(
        [*pflask_cmd(), "run", str(box), "--", "sleep", "60"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: run_pflask("exec", name, "--", "true").returncode == 0,
            timeout=10,
            message="the container running",
        )
        status = run_pflask("exec", name, "--", "cat", "/proc/self/status")
        assert parse_status(status.stdout)["CapEff"] == DEFAULT_SET, describe(status)
        command = ["exec", name, "--", *python(KEY_THIEF)]
        ring = str(KEY_SPEC_SESSION_KEYRING)
        result = run_as([sys.executable, "-c", KEY_WRAPPER, ring, *command])
        assert result.returncode == 0, describe(result)
        assert SECRET not in result.stdout, describe(result)
        assert run_pflask("stop", name).returncode == 0
        running.wait(timeout=10)
    finally:
        if running.poll() is None:
            running.terminate()  # pflask stops the container and cleans up
            try:
                running.wait(timeout=15)
            except subprocess.TimeoutExpired:
                running.kill()
                running.wait()


# --- open_by_handle_at ------------------------------------------------------------------------


class _FileHandle(ctypes.Structure):
    _fields_ = [
        ("handle_bytes", ctypes.c_uint),
        ("handle_type", ctypes.c_int),
        ("f_handle", ctypes.c_ubyte * 128),
    ]


def file_handle(path: Path) -> tuple[int, bytes]:
    """name_to_handle_at(2) on the host: (handle type, handle bytes)."""
    libc = ctypes.CDLL(None, use_errno=True)
    handle = _FileHandle(handle_bytes=128)
    mount_id = ctypes.c_int()
    result = libc.name_to_handle_at(
        -100, os.fsencode(path), ctypes.byref(handle), ctypes.byref(mount_id), 0
    )
    assert result == 0, os.strerror(ctypes.get_errno())
    return handle.handle_type, bytes(handle.f_handle[: handle.handle_bytes])


@pytest.mark.parametrize("user", USERS)
def test_open_by_handle_at_cannot_open_a_host_file(
    shared_tmp: Path, py_root: Path, user: str | None, test_user: Any
) -> None:
    """The "shocker" attack: a file handle names a host file on the same
    filesystem as the container's root, outside that root."""
    victim = shared_tmp / "victim"
    victim.write_text("untouched\n")
    victim.chmod(0o666)
    kind, raw = file_handle(victim)
    thief = f"""
    import ctypes, os
    class Handle(ctypes.Structure):
        _fields_ = [("bytes", ctypes.c_uint), ("type", ctypes.c_int),
                    ("data", ctypes.c_ubyte * {len(raw)})]
    h = Handle({len(raw)}, {kind}, (ctypes.c_ubyte * {len(raw)})(*bytes.fromhex("{raw.hex()}")))
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.open_by_handle_at(os.open("/", os.O_RDONLY), ctypes.byref(h), os.O_WRONLY)
    if fd < 0:
        print("refused", os.strerror(ctypes.get_errno()))
    else:
        os.write(fd, b"escaped\\n")
        print("written")
    """
    box = manifest(shared_tmp, "shocker", root={"path": str(py_root)}, mounts=PY_MOUNTS)
    result = run_pflask("run", box, "--", *python(thief), user=user)
    assert victim.read_text() == "untouched\n"
    assert result.stdout == "refused Operation not permitted\n", describe(result)


# --- /proc/1/map_files ------------------------------------------------------------------------

MAP_FILES_THIEF = """
import os
try:
    names = os.listdir("/proc/1/map_files")
except OSError as e:
    names = []
    print("list refused", e.strerror)
opened = refused = 0
for name in names:
    path = "/proc/1/map_files/" + name
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        refused += 1
        last = e.strerror
        continue
    os.close(fd)  # nothing is written: opening it for writing is the escape
    opened += 1
print("opened", opened)
if refused:
    print("refused", last)
"""


@pytest.mark.parametrize("user", USERS)
def test_proc_1_map_files_cannot_open_host_files_for_writing(
    shared_tmp: Path, py_root: Path, user: str | None, test_user: Any
) -> None:
    """PID 1 is pflask's reaper, which maps the host's python and libc: through
    /proc/1/map_files they could be opened for writing."""
    box = manifest(shared_tmp, "mapfiles", root={"path": str(py_root)}, mounts=PY_MOUNTS)
    result = run_pflask("run", box, "--", *python(MAP_FILES_THIEF), user=user)
    assert result.returncode == 0, describe(result)
    assert "opened 0" in lines(result), describe(result)
    # Refused when opened, or (PID 1 is not dumpable) already when listed.
    assert any(
        "Operation not permitted" in line or line == "list refused Permission denied"
        for line in lines(result)
    ), describe(result)


def test_on_cgroup_v2_a_device_program_holds_the_same_policy(
    loop_device: tuple[str, int, int], shared_tmp: Path
) -> None:
    """A host with only cgroup v2 has no devices controller: the rules become a
    BPF device program on the container's group.  This host is hybrid, so the
    v2 tree is used alone (Layout.only) for a process of the test's own."""
    from pflask.compile import compiler
    from pflask.run import cgroups

    device, major, minor = loop_device
    group = cgroups.create(
        "atk-bpf",
        (),
        None,
        None,
        None,
        layout=cgroups.detect().replace(v1=()),
        devices=compiler.DEVICE_RULES,
    )
    node = shared_tmp / "blk"
    try:
        assert group.devices
        read, write = os.pipe()
        report_r, report_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover (the child)
            results = []
            os.read(read, 1)
            for path in ("/dev/null", "/dev/zero", device):
                try:
                    os.close(os.open(path, os.O_RDONLY))
                    results.append(f"{path} opened")
                except OSError as e:
                    results.append(f"{path} {e.strerror}")
            try:
                os.mknod(node, 0o60600, os.makedev(major, minor))
                results.append("mknod done")
                os.close(os.open(node, os.O_RDONLY))
                results.append("node opened")
            except OSError as e:
                results.append(f"node {e.strerror}")
            os.write(report_w, "\n".join(results).encode())
            os._exit(0)
        os.close(report_w)
        group.attach(pid)
        os.write(write, b"go")
        report = b""
        while chunk := os.read(report_r, 4096):
            report += chunk
        os.waitpid(pid, 0)
    finally:
        group.remove()
    assert report.decode().splitlines() == [
        "/dev/null opened",
        "/dev/zero opened",
        f"{device} Operation not permitted",
        "mknod done",  # "m" is allowed, as in the v1 rules
        "node Operation not permitted",
    ]
