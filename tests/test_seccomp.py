"""The seccomp filter (`security.seccomp`): real containers, real system calls.

What a user would notice: the Seccomp line of /proc/self/status; the errno
a refused call fails with (keyrings, kexec, open_by_handle_at, mount without
CAP_SYS_ADMIN: EPERM; a call the profile does not know: ENOSYS); TIOCSTI on
a terminal failing whatever the capabilities; `unconfined` lifting all of
it; a Docker-format profile file doing what it says (and a changed one
taking effect through the plan cache); the plan showing the step; a broken
profile being a one-line error with exit 2.

Raw system calls need a program that makes them: the busybox root has none,
so those tests run with no `root.path` (the host's root, in new namespaces)
and the host's python3 with ctypes.  System call numbers come from
libseccomp on the host, so the tests do not assume an architecture.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pyseccomp
import pytest
import yaml
from helpers import pflask_cmd, run_pflask, status_field
from helpers import shell as sh

from pflask.compile import seccomp

pytestmark = pytest.mark.usefixtures("host_clean")

USERS = [None, "pflask-test"]
EPERM, ENOENT, EACCES, ENOSYS = 1, 2, 13, 38
HOST_PYTHON = "/usr/bin/python3"

# What a container without CAP_SYS_ADMIN and CAP_DAC_READ_SEARCH keeps (the
# OCI default set): named here so the tests do not depend on pflask's default.
OCI_CAPS = [
    "-all",
    "chown,dac_override,fsetid,fowner,mknod,net_raw,setgid,setuid,setfcap,setpcap",
    "net_bind_service,sys_chroot,kill,audit_write",
]

# Each call with arguments that would do nothing harmful if it were allowed.
PROBES = ("keyctl", "add_key", "request_key", "open_by_handle_at", "kexec_load", "mount", "clone3")

PROBE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
for name, number in zip(sys.argv[1::2], sys.argv[2::2]):
    ctypes.set_errno(0)
    result = libc.syscall(int(number), 0, 0, 0, 0, 0)
    print(name, result, ctypes.get_errno())
"""


def probe_argv(names: tuple[str, ...] = PROBES) -> list[str]:
    args = []
    for name in names:
        args += [name, str(pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name))]
    return [HOST_PYTHON, "-c", PROBE, *args]


def errnos(stdout: str) -> dict[str, int]:
    """name -> errno of each probe (0 when the call succeeded)."""
    found = {}
    for line in stdout.splitlines():
        name, result, err = line.split()
        found[name] = int(err) if int(result) < 0 else 0
    return found


def manifest(directory: Path, name: str = "box", **fields: Any) -> Path:
    path = directory / f"{name}.yaml"
    data = {"version": 1, "name": f"sc-{name}-{uuid.uuid4().hex[:6]}", **fields}
    path.write_text(yaml.safe_dump(data))
    return path


# --- the default profile ---------------------------------------------------------------


@pytest.mark.parametrize("user", USERS)
def test_default_filter_confines_the_command_and_the_reaper(
    shared_tmp: Path, busybox_root: Path, user: str | None, test_user: Any
) -> None:
    box = manifest(shared_tmp, root={"path": str(busybox_root)})
    result = run_pflask(
        "run", box, "--", *sh("cat /proc/self/status; echo ---; cat /proc/1/status"), user=user
    )
    assert result.returncode == 0, result.stderr
    command, reaper = result.stdout.split("---\n")
    assert status_field(command, "Seccomp") == "2"
    assert status_field(command, "Seccomp_filters") == "2"  # the allow list and the refusals
    assert status_field(reaper, "Seccomp") == "2"  # PID 1 loaded it before spawning


@pytest.mark.parametrize("user", USERS)
def test_refused_calls_fail_with_eperm_and_unknown_ones_with_enosys(
    shared_tmp: Path, user: str | None, test_user: Any
) -> None:
    box = manifest(shared_tmp, capabilities=OCI_CAPS)
    result = run_pflask("run", box, "--", *probe_argv(), user=user)
    assert result.returncode == 0, result.stderr
    found = errnos(result.stdout)
    for name in ("keyctl", "add_key", "request_key", "open_by_handle_at", "kexec_load", "mount"):
        assert found[name] == EPERM, (name, found)
    # clone3 hides its flags from seccomp: ENOSYS makes C libraries use clone(2).
    assert found["clone3"] == ENOSYS, found


def test_kept_capabilities_allow_their_calls(shared_tmp: Path) -> None:
    """With CAP_SYS_ADMIN and CAP_DAC_READ_SEARCH kept, mount and open_by_handle_at
    reach the kernel (which rejects the null arguments: not EPERM from the filter)."""
    box = manifest(shared_tmp, capabilities=["all"])
    result = run_pflask("run", box, "--", *probe_argv(("mount", "open_by_handle_at", "keyctl")))
    assert result.returncode == 0, result.stderr
    found = errnos(result.stdout)
    assert found["mount"] not in (EPERM, ENOSYS), found
    assert found["open_by_handle_at"] not in (EPERM, ENOSYS), found
    assert found["keyctl"] == EPERM, found  # refused whatever the capabilities


def test_clone_with_namespace_flags_needs_cap_sys_admin(shared_tmp: Path) -> None:
    """Without CAP_SYS_ADMIN, unshare(1)'s namespaces are refused; plain forks work."""
    script = "unshare --uts true; echo unshare=$?; (true) && echo fork=ok"
    box = manifest(shared_tmp, capabilities=OCI_CAPS)
    result = run_pflask("run", box, "--", *sh(script))
    assert "unshare=1" in result.stdout and "fork=ok" in result.stdout, result.stdout
    assert "Operation not permitted" in result.stderr, result.stderr


# keyctl(0, 0, 0) made as an x86 (int 0x80) and as an x32 (syscall with
# __X32_SYSCALL_BIT) system call from a 64-bit process: a filter covering only
# x86_64 would let both through.
COMPAT_PROBE = """
import ctypes, mmap
CODE = {
    "x86": bytes.fromhex("b820010000" "31db" "31c9" "31d2" "cd80" "c3"),
    "x32": bytes.fromhex("b8fa000040" "31ff" "31f6" "31d2" "0f05" "c3"),
}
for name, code in CODE.items():
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    address = ctypes.addressof(ctypes.c_char.from_buffer(page))
    print(name, -ctypes.CFUNCTYPE(ctypes.c_int)(address)())
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86 and x32 calls need x86_64")
@pytest.mark.parametrize("setting", ["default", "unconfined"])
def test_x86_and_x32_system_calls_are_filtered_too(shared_tmp: Path, setting: str) -> None:
    box = manifest(shared_tmp, security={"seccomp": setting})
    result = run_pflask("run", box, "--", HOST_PYTHON, "-c", COMPAT_PROBE)
    assert result.returncode == 0, result.stderr
    found = {name: int(err) for name, err in (line.split() for line in result.stdout.splitlines())}
    if setting == "default":
        # A kernel without the x32 ABI answers ENOSYS, and so does the filter
        # that leaves x32 out there; with the ABI the filter covers x32 too.
        x32 = EPERM if seccomp.x32_abi() else ENOSYS
        assert found == {"x86": EPERM, "x32": x32}, found
    else:  # the kernel's own answers: EINVAL for the x86 call; x32 may not be built in
        assert found["x86"] not in (EPERM, ENOSYS) and found["x32"] != EPERM, found


TIOCSTI_PROBE = """
import ctypes, fcntl, os, termios
libc = ctypes.CDLL(None, use_errno=True)
master, slave = os.openpty()
for name, request in (("TIOCSTI", termios.TIOCSTI), ("TIOCLINUX", 0x541C),
                      ("TIOCSTI+high", termios.TIOCSTI | (1 << 32))):
    ctypes.set_errno(0)
    result = libc.syscall(16 if os.uname().machine == "x86_64" else 29, slave,
                          ctypes.c_ulong(request), ctypes.c_char_p(b"x"))
    print(name, ctypes.get_errno() if result < 0 else 0)
"""


@pytest.mark.parametrize("setting", ["default", "unconfined"])
def test_tiocsti_and_tioclinux_fail_with_eperm_even_with_every_capability(
    shared_tmp: Path, setting: str
) -> None:
    box = manifest(shared_tmp, capabilities=["all"], security={"seccomp": setting})
    result = run_pflask("run", box, "--", HOST_PYTHON, "-c", TIOCSTI_PROBE)
    assert result.returncode == 0, result.stderr
    found = dict(line.split() for line in result.stdout.splitlines())
    if setting == "default":
        # High bits set in the request do not get past it (the kernel reads 32).
        assert found == {"TIOCSTI": "1", "TIOCLINUX": "1", "TIOCSTI+high": "1"}, found
    else:
        # Without the filter, root with CAP_SYS_ADMIN may push input into a pty.
        assert found["TIOCSTI"] == "0", found


@pytest.mark.parametrize("user", USERS)
def test_unconfined_lifts_the_filter(shared_tmp: Path, user: str | None, test_user: Any) -> None:
    box = manifest(shared_tmp, capabilities=OCI_CAPS, security={"seccomp": "unconfined"})
    script = "grep '^Seccomp:' /proc/self/status"
    result = run_pflask("run", box, "--", *sh(script), user=user)
    assert result.returncode == 0, result.stderr
    assert status_field(result.stdout, "Seccomp") == "0"
    result = run_pflask("run", box, "--", *probe_argv(("keyctl", "clone3")), user=user)
    found = errnos(result.stdout)
    assert found["keyctl"] not in (EPERM, ENOSYS), found  # the kernel's own answer
    assert found["clone3"] != ENOSYS, found


# --- profile files ---------------------------------------------------------------------


DENY_MKDIR = {
    "defaultAction": "SCMP_ACT_ALLOW",
    "archMap": [
        {
            "architecture": "SCMP_ARCH_X86_64",
            "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        },
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    ],
    "syscalls": [
        {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": EACCES},
        # Skipped: the container keeps no CAP_SYS_MODULE.
        {"names": ["rmdir"], "action": "SCMP_ACT_ERRNO", "includes": {"caps": ["CAP_SYS_MODULE"]}},
    ],
}


@pytest.mark.parametrize("user", USERS)
def test_a_docker_format_profile_is_honoured(
    shared_tmp: Path, busybox_root: Path, user: str | None, test_user: Any
) -> None:
    (shared_tmp / "deny-mkdir.json").write_text(json.dumps(DENY_MKDIR))
    box = manifest(
        shared_tmp,
        root={"path": str(busybox_root)},
        capabilities=OCI_CAPS,
        security={"seccomp": "deny-mkdir.json"},  # relative to the manifest
    )
    script = "mkdir /tmp/d; echo mkdir=$?; grep Seccomp: /proc/self/status; rmdir /absent"
    result = run_pflask("run", box, "--", *sh(script), user=user)
    assert "mkdir=1" in result.stdout, result.stdout
    assert "Permission denied" in result.stderr, result.stderr  # errnoRet 13: EACCES
    assert "Seccomp:\t2" in result.stdout
    # The rmdir rule was skipped: the kernel's own answer, not the rule's EPERM.
    assert "No such file or directory" in result.stderr, result.stderr
    plan = run_pflask("plan", box, user=user)
    assert f"seccomp filter, {shared_tmp / 'deny-mkdir.json'} profile" in plan.stdout


def test_a_changed_profile_file_is_compiled_again(shared_tmp: Path, tmp_path: Path) -> None:
    """The plan cache holds the compiled filter only while the file is the same."""
    profile = shared_tmp / "profile.json"
    profile.write_text(json.dumps(DENY_MKDIR))
    box = manifest(shared_tmp, security={"seccomp": str(profile)})
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    target = shared_tmp / "made"
    first = run_pflask("run", box, "--", "mkdir", target, env=env)
    assert first.returncode == 1 and "Permission denied" in first.stderr
    profile.write_text(json.dumps({**DENY_MKDIR, "syscalls": []}))
    second = run_pflask("run", box, "--", "mkdir", target, env=env)
    assert second.returncode == 0, second.stderr
    assert target.is_dir()


@pytest.mark.parametrize(
    ("profile", "field", "message"),
    [
        ({"defaultAction": "SCMP_ACT_NOPE"}, "defaultAction", "not supported"),
        ({"syscalls": []}, "defaultAction", "required field is missing"),
        (
            {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/x.sock"},
            "listenerPath",
            "not supported by pflask",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdri"], "action": "SCMP_ACT_ERRNO"}],
            },
            "syscalls[0].names[1]",
            "unknown system call 'mkdri'",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}],
            },
            "syscalls[0].action",
            "not supported",
        ),
        (
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [
                    {
                        "names": ["socket"],
                        "action": "SCMP_ACT_ERRNO",
                        "args": [{"index": 7, "value": 40, "op": "SCMP_CMP_EQ"}],
                    }
                ],
            },
            "syscalls[0].args[0].index",
            "from 0 to 5",
        ),
    ],
)
def test_a_bad_profile_is_a_manifest_error_naming_file_and_field(
    shared_tmp: Path, profile: dict[str, Any], field: str, message: str
) -> None:
    path = shared_tmp / "bad.json"
    path.write_text(json.dumps(profile))
    box = manifest(shared_tmp, security={"seccomp": str(path)})
    for command in (("run", box, "--no-cache", "--", "true"), ("plan", box)):
        result = run_pflask(*command)
        assert result.returncode == 2, result
        assert result.stderr.startswith(f"pflask: {path}: {field}: "), result.stderr
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert len(result.stderr.splitlines()) == 1


def test_a_missing_profile_file_names_the_manifest_field(shared_tmp: Path) -> None:
    box = manifest(shared_tmp, security={"seccomp": "nowhere.json"})
    result = run_pflask("run", box, "--no-cache", "--", "true")
    assert result.returncode == 2
    assert "security.seccomp: seccomp profile '" in result.stderr
    assert "nowhere.json" in result.stderr and "No such file or directory" in result.stderr


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("zero", "not a regular file (a character device)"),
        ("fifo", "not a regular file (a FIFO)"),
        ("deep", "nested deeper than"),
        ("big", "larger than 1 MiB"),
    ],
)
def test_a_hostile_profile_file_is_refused_at_once(
    shared_tmp: Path, kind: str, message: str
) -> None:
    """A profile comes from the checkout like the manifest: the same bounds."""
    path = shared_tmp / f"{kind}.json"
    if kind == "zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "deep":
        path.write_text("[" * 10000 + "]" * 10000)
    else:
        path.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "x": "y" * (2 << 20)}))
    box = manifest(shared_tmp, security={"seccomp": str(path)})
    started = time.monotonic()
    result = run_pflask("plan", box, timeout=10)
    assert time.monotonic() - started < 1.5
    assert result.returncode == 2, result
    assert message in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr


# --- plan, placement, cache, exec ------------------------------------------------------


def plan_lines(box: Path) -> list[str]:
    result = run_pflask("plan", box)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_plan_shows_the_step_where_the_kernel_allows_loading_it(shared_tmp: Path) -> None:
    def index(lines: list[str], text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    # With no_new_privs: the last step before the command.
    lines = plan_lines(
        manifest(shared_tmp, capabilities=OCI_CAPS, security={"no_new_privileges": True})
    )
    at = index(lines, "seccomp filter, default profile")
    if os.uname().machine == "x86_64":
        arches = "x86_64 x86 x32" if seccomp.x32_abi() else "x86_64 x86 (x32: not in this kernel"
        assert arches in lines[at]
    assert "clone with namespace flags EPERM" in lines[at]
    assert "the command runs as PID 2" in lines[at + 1]
    # Without: before the capabilities go (CAP_SYS_ADMIN is needed to load it).
    lines = plan_lines(manifest(shared_tmp, capabilities=OCI_CAPS))
    assert index(lines, "seccomp filter") < index(lines, "capabilities:")
    # Unconfined: no step at all.
    lines = plan_lines(manifest(shared_tmp, security={"seccomp": "unconfined"}))
    assert not [line for line in lines if "seccomp" in line]


def test_a_cached_run_loads_the_filter_without_pyseccomp_or_ctypes(
    shared_tmp: Path, tmp_path: Path
) -> None:
    box = manifest(shared_tmp, command=["grep", "^Seccomp:", "/proc/self/status"])
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    argv = [sys.executable, "-X", "importtime", *pflask_cmd(), "run", str(box)]
    runs = [subprocess.run(argv, capture_output=True, text=True, env=env) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs
    assert " pyseccomp\n" in runs[0].stderr  # the compiler built it (in its own process)
    for module in (
        "pyseccomp",
        "ctypes",
        "pflask.compile.seccomp",
        "pflask.compile.seccomp_default",
        "json",
    ):
        assert f" {module}\n" not in runs[1].stderr, module
    assert runs[1].stdout.split() == ["Seccomp:", "2"]


@pytest.fixture
def detached() -> Any:
    started: list[tuple[str, str | None]] = []

    def start(path: Path, name: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
        started.append((name, user))
        return run_pflask("run", path, "--detach", "--name", name, "--", "sleep", "60", user=user)

    yield start
    for name, user in started:
        run_pflask("stop", name, "--timeout", "1", user=user)


@pytest.mark.parametrize("user", USERS)
def test_exec_puts_the_new_process_under_the_filter(
    shared_tmp: Path, detached: Any, user: str | None, test_user: Any
) -> None:
    box = manifest(shared_tmp, capabilities=OCI_CAPS)
    name = f"sc-exec-{uuid.uuid4().hex[:6]}"
    assert detached(box, name, user).returncode == 0
    result = run_pflask("exec", name, "--", *probe_argv(("keyctl", "mount")), user=user)
    assert result.returncode == 0, result.stderr
    assert errnos(result.stdout) == {"keyctl": EPERM, "mount": EPERM}
    status = run_pflask("exec", name, "--", "grep", "^Seccomp:", "/proc/self/status", user=user)
    assert status.stdout.split() == ["Seccomp:", "2"]


# --- the compiler's side, without containers -------------------------------------------


def test_profile_semantics_follow_docker(tmp_path: Path) -> None:
    """includes/excludes by capability, repeated argument indices as "any of"."""
    path = tmp_path / "p.json"
    path.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ERRNO",
                "defaultErrnoRet": ENOSYS,
                "syscalls": [
                    {"names": ["read"], "action": "SCMP_ACT_ALLOW"},
                    {
                        "names": ["chroot"],
                        "action": "SCMP_ACT_ALLOW",
                        "includes": {"caps": ["CAP_SYS_CHROOT"]},
                    },
                    {
                        "names": ["reboot"],
                        "action": "SCMP_ACT_ALLOW",
                        "excludes": {"caps": ["CAP_SYS_BOOT"]},
                    },
                    {
                        "names": ["personality"],
                        "action": "SCMP_ACT_ALLOW",
                        "args": [
                            {"index": 0, "value": 0, "op": "SCMP_CMP_EQ"},
                            {"index": 0, "value": 8, "op": "SCMP_CMP_EQ"},
                        ],
                    },
                ],
            }
        )
    )
    machine = seccomp.native()
    f = seccomp.from_profile(str(path), frozenset({"sys_boot"}), machine, "m.yaml")
    assert f.default == seccomp.SCMP_ACT_ERRNO(ENOSYS)
    assert [r.name for r in f.rules] == ["read", "personality", "personality"]
    assert [r.args for r in f.rules[1:]] == [((0, 4, 0, 0),), ((0, 4, 8, 0),)]
    f = seccomp.from_profile(str(path), frozenset({"sys_chroot"}), machine, "m.yaml")
    assert [r.name for r in f.rules][:3] == ["read", "chroot", "reboot"]
    assert f.arches == (machine,)


def test_the_original_flags_take_seccomp_too(shared_tmp: Path, tmp_path: Path) -> None:
    """`--seccomp=unconfined|default|FILE`; a cached flags plan follows the file."""
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache")}
    grep = ["grep", "^Seccomp:", "/proc/self/status"]
    for setting, expected in (("unconfined", "0"), ("default", "2")):
        result = run_pflask(f"--seccomp={setting}", "--", *grep, env=env)
        assert result.stdout.split() == ["Seccomp:", expected], result.stderr
    profile = shared_tmp / "flags.json"
    profile.write_text(json.dumps(DENY_MKDIR))
    target = shared_tmp / "by-flags"
    flags = ["--seccomp", "flags.json", "--", "mkdir", str(target)]
    first = run_pflask(*flags, env=env, cwd=shared_tmp)  # relative to the working directory
    assert first.returncode == 1 and "Permission denied" in first.stderr, first
    profile.write_text(json.dumps({**DENY_MKDIR, "syscalls": []}))
    second = run_pflask(*flags, env=env, cwd=shared_tmp)
    assert second.returncode == 0, second.stderr
    saved = tmp_path / "saved.yaml"
    assert run_pflask("--seccomp", str(profile), "--save", saved).returncode == 0
    assert yaml.safe_load(saved.read_text())["security"] == {"seccomp": str(profile)}


def test_convert_keeps_a_relative_profile_pointing_at_the_same_file(shared_tmp: Path) -> None:
    (shared_tmp / "deny-mkdir.json").write_text(json.dumps(DENY_MKDIR))
    box = manifest(shared_tmp, security={"seccomp": "deny-mkdir.json"})
    (shared_tmp / "sub").mkdir()
    moved = shared_tmp / "sub" / "box.toml"
    assert run_pflask("convert", box, "--to", "toml", "-o", moved).returncode == 0
    assert 'seccomp = "../deny-mkdir.json"' in moved.read_text()
    assert plan_lines(moved)[1:] == plan_lines(box)[1:]
