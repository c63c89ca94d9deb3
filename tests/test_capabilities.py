"""Capabilities against the real kernel.

Everything that changes privileges happens in a forked child that reports back
through a pipe and leaves with os._exit, so the test process keeps its own
capabilities.  What is checked is what a user would notice: the Cap* lines of
/proc/PID/status (of the child, and of a command it executes) and whether a
privileged operation works.
"""

from __future__ import annotations

import os
import tempfile

import pytest
from helpers import CAP_FIELDS, in_child, ok, parse_status, status_sets

from pflask.kernel import capabilities as caps
from pflask.kernel import libc
from pflask.kernel.libc import SyscallError
from pflask.run import rlimits

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

USER = 1000


def report_status(fd: int) -> None:
    with open("/proc/self/status") as f:
        os.write(fd, f.read().encode())


def exec_sh(fd: int, script: str) -> None:
    os.dup2(fd, 1)
    os.execv("/bin/sh", ["sh", "-c", script])


def become_user() -> None:
    caps.prepare_keep()
    os.setgroups([])
    os.setgid(USER)
    os.setuid(USER)


@pytest.fixture(scope="module")
def bounding() -> frozenset[str]:
    """What this test process can ever hand out (a VM may lack some)."""
    return status_sets()["CapBnd"]


def assert_exactly(sets: dict[str, frozenset[str]], expected: frozenset[str]) -> None:
    assert {f: sets[f] for f in CAP_FIELDS} == {f: expected for f in CAP_FIELDS}


# --- names and parsing ---------------------------------------------------------------


def test_names_cover_the_kernel() -> None:
    assert caps.NAMES[0] == "chown"
    assert caps.NAMES[21] == "sys_admin"
    assert caps.NAMES[40] == "checkpoint_restore"
    assert len(caps.NAMES) == 41 == len(set(caps.NAMES))
    assert caps.last_cap() >= 40  # kernel 6.18


def test_last_cap_without_proc() -> None:
    """After pivot_root into a root without /proc mounted, probing must still work."""

    def body(fd: int) -> None:
        libc.unshare(libc.CLONE_NEWNS)
        libc.mount(None, "/", None, libc.MS_REC | libc.MS_PRIVATE)
        libc.mount("none", "/proc", "tmpfs")
        assert not os.path.exists("/proc/sys/kernel/cap_last_cap")
        caps._last_cap = None  # forget the value read at import of the test process
        os.write(fd, str(caps.last_cap()).encode())

    with open("/proc/sys/kernel/cap_last_cap") as f:
        assert ok(in_child(body)) == f.read().strip()


def test_parse_all_and_none() -> None:
    assert caps.parse("all") == caps.ALL == frozenset(caps.NAMES)
    assert caps.parse("-all") == frozenset()
    assert caps.parse("-all,all") == caps.ALL


def test_parse_default_base_is_full_set() -> None:
    assert caps.parse("-sys_admin") == caps.ALL - {"sys_admin"}
    assert caps.parse("+chown", base=frozenset()) == {"chown"}


def test_parse_add_remove_combinations() -> None:
    assert caps.parse("-all,+chown,net_bind_service") == {"chown", "net_bind_service"}
    assert caps.parse("-all,+chown,+kill,-chown") == {"kill"}
    assert caps.parse("all,-sys_admin,-net_admin") == caps.ALL - {"sys_admin", "net_admin"}
    assert caps.parse("+chown,-all,+kill") == {"kill"}


def test_parse_case_prefix_and_spaces() -> None:
    expected = {"chown", "sys_admin", "net_raw"}
    assert caps.parse("-ALL, +CAP_CHOWN, Cap_Sys_Admin ,+cap_net_raw") == expected
    assert caps.parse("-all,-CAP_chown", base=caps.ALL) == frozenset()


def test_parse_list_items_may_hold_commas() -> None:
    assert caps.parse(["-all", "chown,kill", "+setuid, setgid"]) == {
        "chown",
        "kill",
        "setuid",
        "setgid",
    }
    assert caps.parse(("-all", "+mknod")) == {"mknod"}


def test_parse_typo_suggests() -> None:
    with pytest.raises(ValueError, match=r"unknown capability 'chwon' \(did you mean 'chown'\?\)"):
        caps.parse("-all,+chwon")
    with pytest.raises(ValueError, match=r"'sys_admn' \(did you mean 'sys_admin'\?\)"):
        caps.parse(["-CAP_SYS_ADMN"])
    with pytest.raises(ValueError, match=r"^unknown capability 'xyzzy'$"):
        caps.parse("xyzzy")


@pytest.mark.parametrize("spec", ["", "chown,,kill", "chown,", "+", "-cap_", ["-all", ""]])
def test_parse_empty_item_is_an_error(spec: str | list[str]) -> None:
    with pytest.raises(ValueError, match="empty item"):
        caps.parse(spec)


def test_ordered_and_parse_status() -> None:
    assert caps.ordered({"sys_admin", "chown", "kill"}) == ("chown", "kill", "sys_admin")
    sets = parse_status("Name:\tx\nCapEff:\t0000000000000401\nCapAmb:\t0000000000000000\n")
    assert sets == {"CapEff": {"chown", "net_bind_service"}, "CapAmb": frozenset()}


def test_unknown_names_refused_by_apply() -> None:
    with pytest.raises(ValueError, match="unknown capability"):
        caps.apply(("chwon",))


# --- applying as root -------------------------------------------------------------------


def test_apply_as_root_sets_exactly(bounding: frozenset[str]) -> None:
    keep = frozenset({"chown", "net_bind_service", "sys_admin"})

    def body(fd: int) -> None:
        caps.apply(keep)
        report_status(fd)

    assert_exactly(parse_status(ok(in_child(body))), keep & bounding)


def test_apply_all_keeps_what_is_there(bounding: frozenset[str]) -> None:
    """A VM or container may have lost some capabilities: "all" means all there are."""

    def body(fd: int) -> None:
        caps.apply(caps.ALL)
        report_status(fd)

    assert_exactly(parse_status(ok(in_child(body))), bounding)


def test_apply_none() -> None:
    def body(fd: int) -> None:
        caps.apply(())
        exec_sh(fd, "grep Cap /proc/self/status")

    assert_exactly(parse_status(ok(in_child(body))), frozenset())


def chown_in_child(keep: frozenset[str], path: str) -> tuple[int, str]:
    def body(fd: int) -> None:
        caps.apply(keep)
        os.chown(path, 4242, 4242)

    return in_child(body)


def test_dropped_chown_means_eperm(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "f")
    open(path, "w").close()
    code, out = chown_in_child(caps.parse("-chown"), path)
    assert code == 1
    assert out.startswith("!PermissionError: [Errno 1]")
    assert os.stat(path).st_uid == 0

    ok(chown_in_child(caps.parse("-all,+chown"), path))
    assert os.stat(path).st_uid == 4242


def test_sets_survive_exec_as_root() -> None:
    keep = frozenset({"chown", "kill", "net_raw"})

    def body(fd: int) -> None:
        caps.apply(keep)
        exec_sh(fd, "grep Cap /proc/self/status")

    assert_exactly(parse_status(ok(in_child(body))), keep)


# --- applying for a non-root user ----------------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[str]:
    """A directory uid 1000 can reach (pytest's tmp_path is root-only)."""
    with tempfile.TemporaryDirectory(prefix="pflask-caps-") as path:
        os.chmod(path, 0o755)
        yield path


def user_chown(keep: frozenset[str], path: str, no_new_privs: bool = False) -> str:
    def body(fd: int) -> None:
        if no_new_privs:
            rlimits.set_no_new_privs()
        become_user()
        caps.apply(keep)
        script = f"grep Cap /proc/self/status; id -u; chown 4242 {path} 2>&1 && echo chowned"
        exec_sh(fd, script + "; true")

    return ok(in_child(body))


def test_non_root_user_keeps_caps_across_exec(shared_dir: str) -> None:
    keep = frozenset({"net_bind_service", "chown"})
    path = os.path.join(shared_dir, "f")
    open(path, "w").close()
    out = user_chown(keep, path)
    assert_exactly(parse_status(out), keep)
    assert f"\n{USER}\n" in out
    assert out.endswith("chowned\n")
    assert os.stat(path).st_uid == 4242


def test_non_root_user_without_chown_cannot(shared_dir: str) -> None:
    path = os.path.join(shared_dir, "f")
    open(path, "w").close()
    out = user_chown(frozenset({"net_bind_service"}), path)
    assert parse_status(out)["CapEff"] == {"net_bind_service"}
    assert "Operation not permitted" in out
    assert os.stat(path).st_uid == 0


def test_non_root_user_with_no_new_privs(shared_dir: str) -> None:
    """Ambient capabilities are not "new" privileges: no_new_privs keeps them."""
    keep = frozenset({"chown"})
    path = os.path.join(shared_dir, "f")
    open(path, "w").close()
    out = user_chown(keep, path, no_new_privs=True)
    assert_exactly(parse_status(out), keep)
    assert out.endswith("chowned\n")


def test_forgotten_prepare_keep_is_an_error() -> None:
    def body(fd: int) -> None:
        os.setgroups([])
        os.setgid(USER)
        os.setuid(USER)
        caps.apply(("chown",))

    code, out = in_child(body)
    assert code == 1
    assert out.startswith("!SyscallError: capset(2) not in the permitted set: chown")
    assert "EPERM" in out


def test_forgotten_prepare_keep_with_nothing_to_keep() -> None:
    """-all for a non-root user must still empty the bounding set (setuid binaries!)."""

    def body(fd: int) -> None:
        os.setgroups([])
        os.setgid(USER)
        os.setuid(USER)
        caps.apply(())

    code, out = in_child(body)
    assert code == 1
    assert out.startswith(
        "!SyscallError: prctl(2) PR_CAPBSET_DROP chown without CAP_SETPCAP (PR_SET_KEEPCAPS"
    )


def test_non_root_user_with_nothing_kept() -> None:
    def body(fd: int) -> None:
        become_user()
        caps.apply(caps.parse("-all"))
        exec_sh(fd, "grep Cap /proc/self/status")

    assert_exactly(parse_status(ok(in_child(body))), frozenset())


def test_syscall_error_names_the_call() -> None:
    """Without CAP_SETPCAP the bounding set cannot shrink: the error says which drop."""

    def body(fd: int) -> None:
        caps.apply(caps.parse("-setpcap"))
        try:
            caps.apply(caps.parse("-setpcap,-sys_admin"))
        except SyscallError as exc:
            os.write(fd, f"{exc.call}|{exc}".encode())

    out = ok(in_child(body))
    assert out == (
        "prctl(2)|prctl(2) PR_CAPBSET_DROP sys_admin without CAP_SETPCAP:"
        " EPERM (Operation not permitted)"
    )


def test_kernel_refusal_names_the_call() -> None:
    """SECBIT_NO_CAP_AMBIENT_RAISE makes the kernel refuse ambient capabilities."""
    pr_set_securebits, secbit_no_cap_ambient_raise = 28, 1 << 6

    def body(fd: int) -> None:
        libc.prctl(pr_set_securebits, secbit_no_cap_ambient_raise)
        caps.apply(caps.parse("-all,+kill"))

    code, out = in_child(body)
    assert code == 1
    assert out == (
        "!SyscallError: prctl(2) PR_CAP_AMBIENT_RAISE kill: EPERM (Operation not permitted)"
    )
