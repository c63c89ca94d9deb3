"""Capability names, the original pflask `--caps` syntax, and applying the sets.

A container's command must end up holding exactly the capabilities the
manifest keeps, in all five sets, *after* execve(2) and whatever user it runs
as.  Each set matters for a different reason:

- bounding: the ceiling for everything the process tree can ever gain again,
  e.g. by executing a setuid-root or file-capability binary;
- permitted / effective: what the process holds and uses now;
- inheritable + ambient: what survives execve(2) for a *non-root* user.  Without
  ambient capabilities (Linux 4.3) execve(2) by a non-root uid recomputes the
  permitted set from the file's capabilities only, so a plain binary run as
  `user: www` would lose everything, including a kept `net_bind_service`.

Ordering with the uid switch (what the container steps must do)
---------------------------------------------------------------
setuid(2) from uid 0 to a non-zero uid clears the permitted, effective and
ambient sets, unless PR_SET_KEEPCAPS is set, and even then it clears effective
and ambient (the kernel does so deliberately, so that old "setuid then exec"
programs still drop privileges).  Ambient capabilities can therefore only be
raised *after* the switch, and dropping from the bounding set needs
CAP_SETPCAP in the effective set.  The design is:

1. `prepare_keep()` -- PR_SET_KEEPCAPS=1, while still uid 0, only when a
   Capabilities step follows (it is harmless for a root container);
2. setgroups / setgid / setuid (the SwitchUser step, other code);
3. `apply(keep)` -- first raises effective to the still-held permitted set
   (which regains CAP_SETPCAP), then drops the bounding set, sets
   permitted/effective/inheritable to `keep` with capset(2), refills the
   ambient set and clears PR_SET_KEEPCAPS again;
4. execve(2).

`apply` works the same for a container that stays root (steps 1 and 2 are
then no-ops).  Calling `apply` *before* a uid switch is wrong: the switch would
clear the ambient set and the command would lose its capabilities at exec.
If `prepare_keep` was forgotten, the permitted set is empty after the switch
and `apply` fails with an EPERM that says so (capset(2) when capabilities were
to be kept, PR_CAPBSET_DROP when only the bounding set was to shrink), rather
than silently running the command with less, or more, than it asked for.

Capabilities this process tree can never have -- those the running kernel does
not know (above /proc/sys/kernel/cap_last_cap) and those already dropped from
the bounding set by whoever started pflask (Docker, systemd's
CapabilityBoundingSet=, ...) -- are skipped, not an error: "all" then means
"all there is", and a default container still starts under such a parent.

Hot path: every container applies a capability set (see `DEFAULT`), so
this module is imported by every `pflask run`: it imports only `os`,
`errno` and `pflask.kernel.libc`, whose capget(2)/capset(2) wrappers pass the
kernel's structures as `_ctypes` arrays (`ctypes` itself costs ~3 ms);
`difflib` only when reporting a typo.
"""

from __future__ import annotations

import errno
import os

from pflask.kernel import libc
from pflask.kernel.libc import SyscallError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

# <linux/capability.h>, indexed by capability number.
NAMES: tuple[str, ...] = (
    "chown",  # 0
    "dac_override",
    "dac_read_search",
    "fowner",
    "fsetid",
    "kill",  # 5
    "setgid",
    "setuid",
    "setpcap",
    "linux_immutable",
    "net_bind_service",  # 10
    "net_broadcast",
    "net_admin",
    "net_raw",
    "ipc_lock",
    "ipc_owner",  # 15
    "sys_module",
    "sys_rawio",
    "sys_chroot",
    "sys_ptrace",
    "sys_pacct",  # 20
    "sys_admin",
    "sys_boot",
    "sys_nice",
    "sys_resource",
    "sys_time",  # 25
    "sys_tty_config",
    "mknod",
    "lease",
    "audit_write",
    "audit_control",  # 30
    "setfcap",
    "mac_override",
    "mac_admin",
    "syslog",
    "wake_alarm",  # 35
    "block_suspend",
    "audit_read",
    "perfmon",
    "bpf",
    "checkpoint_restore",  # 40
)

NUMBERS: dict[str, int] = {name: number for number, name in enumerate(NAMES)}

ALL: frozenset[str] = frozenset(NAMES)

# <linux/prctl.h> values libc.py does not define.
PR_GET_KEEPCAPS = 7
PR_SET_KEEPCAPS = 8

# What a container holds unless its manifest says otherwise: the OCI
# runtimes' default set (runc's spec template, Docker, podman).  It keeps
# what images expect of root (owning and reading every file, changing
# users, binding low ports, ping, chroot, making device nodes, which the
# nodev mounts leave unopenable) and leaves out everything that reaches
# the kernel or the host: sys_admin (mount, umount, bpf, namespaces),
# dac_read_search (open_by_handle_at), sys_module, sys_rawio, sys_ptrace,
# sys_time, net_admin, syslog, audit_control, ...
DEFAULT: frozenset[str] = frozenset(
    {
        "chown",
        "dac_override",
        "fowner",
        "fsetid",
        "kill",
        "setgid",
        "setuid",
        "setpcap",
        "net_bind_service",
        "net_raw",
        "sys_chroot",
        "mknod",
        "audit_write",
        "setfcap",
    }
)

# What an init that boots an OS holds: systemd-nspawn's default set, which
# is what systemd's container interface is tested against, but without
# audit_control: the kernel's audit is not namespaced, and systemd and
# journald boot cleanly without it.  It keeps sys_admin (systemd mounts its
# own /run, /tmp, ... and sets up its services' namespaces), so devices are
# refused by the devices cgroup rather than by nodev mounts alone (see
# compiler._devices); net_admin comes only with a network namespace of its
# own (compiler._capabilities).
BOOT: frozenset[str] = DEFAULT | frozenset(
    {
        "dac_read_search",
        "ipc_owner",
        "lease",
        "linux_immutable",
        "net_broadcast",
        "sys_admin",
        "sys_boot",
        "sys_nice",
        "sys_ptrace",
        "sys_resource",
        "sys_tty_config",
    }
)


# --- names and the --caps syntax ----------------------------------------------------


def parse(
    spec: str | list[str] | tuple[str, ...], base: frozenset[str] | None = None
) -> frozenset[str]:
    """The capability set described by `spec`, applied left to right to `base`.

    The syntax is the original pflask `--caps`: comma-separated items, any
    case, `CAP_` prefix optional; `all` / `-all` fill / empty the set,
    `+name` / `name` add, `-name` remove.  A list's items may themselves hold
    commas, so a manifest can say `[-all, "net_bind_service,chown"]`.

    `base` is the set the items change: the compiler gives the container's
    profile (`DEFAULT`, or `BOOT` for an init), so `+sys_ptrace` means "the
    default set and sys_ptrace", `-mknod` "the default set without mknod",
    `all` the full set; without one, the full set.  Capabilities the host
    kernel or pflask's own bounding set lack are skipped when applying (see
    `apply`).

    Unknown names and empty items raise `ValueError`, with a suggestion for
    near-misses, because a silently ignored typo would leave a capability in.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    result = set(ALL if base is None else base)
    for chunk in items:
        for raw in chunk.split(","):
            item = raw.strip().lower()
            sign = "+"
            if item[:1] in ("+", "-"):
                sign, item = item[0], item[1:].strip()
            if item.startswith("cap_"):
                item = item[4:]
            if not item:
                raise ValueError(f"empty item in capability list {_show(spec)}")
            if item == "all":
                if sign == "+":
                    result.update(ALL)
                else:
                    result.clear()
                continue
            if item not in NUMBERS:
                raise ValueError(_unknown(item))
            if sign == "+":
                result.add(item)
            else:
                result.discard(item)
    return frozenset(result)


def ordered(names: Iterable[str]) -> tuple[str, ...]:
    """`names` sorted by capability number, the order the kernel and man pages use."""
    return tuple(sorted(names, key=lambda name: NUMBERS.get(name, len(NAMES))))


def _show(spec: str | list[str] | tuple[str, ...]) -> str:
    return repr(spec if isinstance(spec, str) else ",".join(spec))


def _unknown(name: str) -> str:
    # difflib imports re (~10 ms): only pay for it when there is a typo to report.
    import difflib

    close = difflib.get_close_matches(name, NAMES, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown capability {name!r}{hint}"


def _check_names(keep: Iterable[str]) -> None:
    for name in keep:
        if name not in NUMBERS:
            raise ValueError(_unknown(name))


# --- the running kernel and process -----------------------------------------------


_last_cap: int | None = None


def last_cap() -> int:
    """The highest capability number the running kernel knows.

    Read from /proc/sys/kernel/cap_last_cap; when /proc is not mounted (a
    container without proc, after pivot_root) the bounding set is probed
    instead: PR_CAPBSET_READ fails with EINVAL for numbers the kernel lacks.
    Cached: it cannot change while the system runs.
    """
    global _last_cap
    if _last_cap is None:
        try:
            with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
                _last_cap = int(f.read())
        except (OSError, ValueError):
            _bounding()  # its probe stops at the first number the kernel lacks, and notes it
    assert _last_cap is not None
    return _last_cap


def _libc_prctl(option: int, arg2: int = 0, arg3: int = 0) -> int:
    """prctl(2) returning -1 instead of raising: for probing."""
    return libc.prctl_errno(option, arg2, arg3)[0]


def _prctl(what: str, option: int, arg2: int = 0, arg3: int = 0) -> int:
    """prctl(2) raising a `SyscallError` that names the operation, not a number."""
    result, err = libc.prctl_errno(option, arg2, arg3)
    if result < 0:
        raise SyscallError("prctl(2)", err, what)
    return result


def _bounding() -> int:
    """This process's bounding set, read with PR_CAPBSET_READ up to the first
    number the kernel does not know (EINVAL): that also tells `last_cap`
    without opening a file in /proc, on every container's start."""
    global _last_cap
    mask = 0
    number = 0
    while (held := _libc_prctl(libc.PR_CAPBSET_READ, number)) >= 0:
        mask |= held << number
        number += 1
    if _last_cap is None:
        _last_cap = number - 1
    return mask


def _mask(names: Iterable[str]) -> int:
    mask = 0
    for name in names:
        mask |= 1 << NUMBERS[name]
    return mask


def _names(mask: int) -> frozenset[str]:
    """Names for the bits of `mask`; numbers beyond NAMES (a newer kernel) as "cap_N"."""
    result = set()
    number = 0
    while mask:
        if mask & 1:
            result.add(NAMES[number] if number < len(NAMES) else f"cap_{number}")
        mask >>= 1
        number += 1
    return frozenset(result)


# --- applying --------------------------------------------------------------------


def prepare_keep() -> None:
    """Set PR_SET_KEEPCAPS so a following setuid(2) away from uid 0 keeps the permitted set.

    Call it while still uid 0, before the SwitchUser step, when `apply` is to
    follow.  The flag is cleared by `apply` (and by the kernel at execve).
    """
    _prctl("PR_SET_KEEPCAPS", PR_SET_KEEPCAPS, 1)


def apply(keep: tuple[str, ...] | frozenset[str], ambient: bool = True) -> None:
    """Leave this process holding exactly `keep` in all five capability sets.

    With `ambient` false, only in the bounding, permitted and effective sets,
    the inheritable and ambient ones empty: enough for uid 0, whose execve(2)
    recomputes its capabilities from the bounding set, and for a user the
    profile only bounds (a container's default set), which then cannot pass
    capabilities on through binaries with file-inheritable ones.

    Call it last before execve(2): after any uid/gid switch (see the module
    docstring for the PR_SET_KEEPCAPS ordering) and after everything that
    needs privilege -- raising rlimits needs CAP_SYS_RESOURCE, for instance.
    Capabilities in `keep` that the kernel lacks or that are outside this
    process's bounding set are skipped.
    """
    _check_names(keep)
    effective, permitted, inheritable = libc.capget()

    # After a setuid with PR_SET_KEEPCAPS the effective set is empty; take
    # back what is still permitted, CAP_SETPCAP above all, which
    # PR_CAPBSET_DROP needs.  A no-op for a process that stayed root.
    if effective != permitted:
        libc.capset(permitted, permitted, inheritable, "raise effective to permitted")

    bounding = _bounding()
    top = last_cap()
    wanted = _mask(keep) & ((1 << (top + 1)) - 1) & bounding
    hint = " (PR_SET_KEEPCAPS not set before setuid?)" if os.geteuid() else ""
    if wanted & ~permitted:
        missing = " ".join(ordered(_names(wanted & ~permitted)))
        raise SyscallError("capset(2)", errno.EPERM, f"not in the permitted set: {missing}{hint}")

    # The bounding set first: the drops need CAP_SETPCAP, which the capset
    # below may remove.
    _drop_bounding(bounding & ~wanted, permitted, top, hint)

    # Inheritable too: ambient capabilities must be both permitted and
    # inheritable, and a kept inheritable bit lets file-inheritable binaries
    # work as the man page describes.
    inheritable = wanted if ambient else 0
    try:
        libc.capset(wanted, wanted, inheritable)
    except SyscallError as e:
        kept = " ".join(ordered(_names(wanted))) or "none"
        raise SyscallError("capset(2)", e.errno or errno.EPERM, f"keep {kept}") from None

    # Ambient last: it is what carries `keep` across execve(2) for a non-root
    # uid (for uid 0 the kernel recomputes from inheritable | bounding).
    _set_ambient(wanted if ambient else 0, top)


def _set_ambient(ambient: int, top: int) -> None:
    """The ambient set exactly `ambient` (a mask of permitted and inheritable
    capabilities); then PR_SET_KEEPCAPS undone (prepare_keep), so a later
    setuid in this process drops privileges as usual (execve clears it anyway)."""
    _prctl("PR_CAP_AMBIENT_CLEAR_ALL", libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)
    for number in range(top + 1):
        if ambient >> number & 1:
            _prctl(
                f"PR_CAP_AMBIENT_RAISE {_name(number)}",
                libc.PR_CAP_AMBIENT,
                libc.PR_CAP_AMBIENT_RAISE,
                number,
            )
    if _prctl("PR_GET_KEEPCAPS", PR_GET_KEEPCAPS):
        _prctl("PR_SET_KEEPCAPS", PR_SET_KEEPCAPS, 0)


def _drop_bounding(drops: int, permitted: int, top: int, hint: str) -> None:
    """Drop `drops` (a mask) from the bounding set.  Capabilities already
    outside it need no drop, so a process that is already confined enough
    does not need CAP_SETPCAP.  (Messages are built only on failure: this
    runs at every start.)"""
    if drops and not permitted >> NUMBERS["setpcap"] & 1:
        first = (drops & -drops).bit_length() - 1
        raise SyscallError(
            "prctl(2)", errno.EPERM, f"PR_CAPBSET_DROP {_name(first)} without CAP_SETPCAP{hint}"
        )
    for number in range(top + 1):
        if drops >> number & 1:
            result, err = libc.prctl_errno(libc.PR_CAPBSET_DROP, number)
            if result < 0:
                raise SyscallError("prctl(2)", err, f"PR_CAPBSET_DROP {_name(number)}")


def apply_sets(
    bounding: Iterable[str],
    effective: Iterable[str],
    permitted: Iterable[str],
    inheritable: Iterable[str],
    ambient: Iterable[str],
) -> None:
    """Leave this process with each capability set as given: an OCI bundle's
    process.capabilities, which, unlike a manifest's profile, name the five
    sets one by one (runc applies them the same way, so /proc/PID/status
    reads alike).  Called last before execve(2), after the id switch
    (SetIds with keep_caps); capabilities the kernel lacks are skipped."""
    sets = [tuple(names) for names in (bounding, effective, permitted, inheritable, ambient)]
    for names in sets:
        _check_names(names)
    top = last_cap()
    known = (1 << (top + 1)) - 1
    b, e, p, i, a = (_mask(names) & known for names in sets)
    current_e, current_p, current_i = libc.capget()
    if current_e != current_p:
        libc.capset(current_p, current_p, current_i, "raise effective to permitted")
    bounding_now = _bounding()
    _drop_bounding(bounding_now & ~b, current_p, top, "")
    if p & ~current_p:
        missing = " ".join(ordered(_names(p & ~current_p)))
        raise SyscallError("capset(2)", errno.EPERM, f"not in the permitted set: {missing}")
    try:
        libc.capset(e & p, p, i)
    except SyscallError as error:
        raise SyscallError("capset(2)", error.errno or errno.EPERM, "the OCI sets") from None
    # The kernel takes an ambient capability only if it is permitted and
    # inheritable; runc skips the others (its spec template lists ambient
    # capabilities with no inheritable set), and so does pflask.
    _set_ambient(a & p & i, top)


def _name(number: int) -> str:
    return NAMES[number] if number < len(NAMES) else f"cap_{number}"


__all__ = [
    "ALL",
    "BOOT",
    "DEFAULT",
    "NAMES",
    "NUMBERS",
    "apply",
    "last_cap",
    "ordered",
    "parse",
    "prepare_keep",
]
