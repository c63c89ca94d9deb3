"""Resource limits and no_new_privs against the real kernel, in forked children."""

from __future__ import annotations

import os
import resource
from pathlib import Path

import pytest
from helpers import in_child, load_error, ok

from pflask.kernel.libc import SyscallError
from pflask.load import manifest
from pflask.run import rlimits

TYPE_CHECKING = False
if TYPE_CHECKING:
    pass


def exec_sh(fd: int, script: str) -> None:
    os.dup2(fd, 1)
    os.execv("/bin/sh", ["sh", "-c", script])


# --- the manifest's rlimits (checked by the loader, converted by manifest.from_data) --------


def test_resources_match_the_resource_module() -> None:
    assert len(rlimits.RESOURCES) == 16
    for name, number in rlimits.RESOURCES.items():
        constant = getattr(resource, f"RLIMIT_{name.upper()}", None)
        assert constant in (None, number), name  # 3.11 has no RLIMIT_LOCKS


def limits(value: object, name: str = "nofile") -> tuple[tuple[str, int, int], ...]:
    return manifest.from_data(
        {"name": "x", "security": {"rlimits": {name: value}}}
    ).security.rlimits


def test_manifest_forms() -> None:
    assert limits(1024) == (("nofile", 1024, 1024),)
    assert limits("unlimited", "core") == (("core", -1, -1),)
    assert limits({"soft": 100, "hard": 200}) == (("nofile", 100, 200),)
    assert limits({"soft": 10, "hard": "unlimited"}, "cpu") == (("cpu", 10, -1),)
    assert limits(0, "core") == (("core", 0, 0),)


def rlimit_error(tmp_path: Path, rlimit: str) -> str:
    return load_error(tmp_path, f"version: 1\nsecurity:\n  rlimits:\n    {rlimit}\n")


@pytest.mark.parametrize("value", ["{soft: 300, hard: 200}", "{soft: unlimited, hard: 200}"])
def test_soft_above_hard(tmp_path: Path, value: str) -> None:
    error = rlimit_error(tmp_path, f"nofile: {value}")
    assert "security.rlimits.nofile: the soft limit exceeds the hard limit" in error


@pytest.mark.parametrize(
    "value", ["-1", "true", "lots", "1.5", "{soft: 1}", "{soft: 1, hard: 2, x: 3}"]
)
def test_manifest_rejects(tmp_path: Path, value: str) -> None:
    assert "security.rlimits.nofile" in rlimit_error(tmp_path, f"nofile: {value}")


def test_unknown_resource(tmp_path: Path) -> None:
    assert "security.rlimits" in rlimit_error(tmp_path, "files: 10")


# --- apply ------------------------------------------------------------------------------


def test_nofile_reaches_the_command() -> None:
    def body(fd: int) -> None:
        rlimits.apply(limits({"soft": 100, "hard": 200}))
        exec_sh(fd, "ulimit -n; ulimit -Hn")

    assert ok(in_child(body)).split() == ["100", "200"]


def test_several_limits_in_order() -> None:
    def body(fd: int) -> None:
        rlimits.apply((("nofile", 64, 64), ("fsize", 2048, 4096), ("nofile", 32, 48)))
        exec_sh(fd, "ulimit -n; ulimit -Hn; ulimit -f; ulimit -Hf")

    # ulimit -f counts 512-byte blocks in dash
    assert ok(in_child(body)).split() == ["32", "48", "4", "8"]


@pytest.mark.skipif(
    resource.getrlimit(resource.RLIMIT_CORE)[1] != resource.RLIM_INFINITY,
    reason="needs an unlimited hard core limit to start from",
)
def test_unlimited() -> None:
    def body(fd: int) -> None:
        rlimits.apply((("core", 1000, -1),))
        rlimits.apply(limits("unlimited", "core"))
        exec_sh(fd, "ulimit -c; ulimit -Hc")

    assert ok(in_child(body)).split() == ["unlimited", "unlimited"]

    def finite_soft(fd: int) -> None:
        rlimits.apply(limits({"soft": 0, "hard": "unlimited"}, "core"))
        exec_sh(fd, "ulimit -c; ulimit -Hc")

    assert ok(in_child(finite_soft)).split() == ["0", "unlimited"]


def test_raising_hard_limit_without_cap_sys_resource() -> None:
    def body(fd: int) -> None:
        rlimits.apply((("nofile", 100, 200),))
        os.setgroups([])
        os.setgid(1000)
        os.setuid(1000)  # no capabilities left, CAP_SYS_RESOURCE included
        try:
            rlimits.apply((("nofile", 100, 300),))
        except SyscallError as exc:
            os.write(fd, f"{exc.call}|{exc.errno}|{exc}".encode())

    call, err, text = ok(in_child(body)).split("|")
    assert (call, int(err)) == ("setrlimit(2)", 1)
    assert text == (
        "setrlimit(2) nofile=100:300 (above the hard limit pflask was started with, 200; "
        "raising it needs CAP_SYS_RESOURCE on the host: ask for 200 or less, or start pflask "
        "with a higher limit): EPERM (Operation not permitted)"
    )


def test_soft_above_hard_from_kernel() -> None:
    """apply() does not re-check; the kernel's EINVAL comes back named."""

    def body(fd: int) -> None:
        rlimits.apply((("nofile", 300, 200),))

    code, out = in_child(body)
    assert code == 1
    assert out == "!SyscallError: setrlimit(2) nofile=300:200: EINVAL (Invalid argument)"


# --- no_new_privs ----------------------------------------------------------------------


def test_no_new_privs_survives_exec() -> None:
    def body(fd: int) -> None:
        rlimits.set_no_new_privs()
        exec_sh(fd, "grep NoNewPrivs /proc/self/status")

    assert ok(in_child(body)) == "NoNewPrivs:\t1\n"

    def without(fd: int) -> None:
        exec_sh(fd, "grep NoNewPrivs /proc/self/status")

    assert ok(in_child(without)) == "NoNewPrivs:\t0\n"
