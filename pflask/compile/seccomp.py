"""Seccomp filters: built with libseccomp when a plan is compiled, loaded as BPF.

`security.seccomp` is `default` (pflask's profile, `seccomp_default`),
`unconfined` (no filter), or a profile file in the Docker/OCI JSON format,
so the profiles users have for podman and Docker work here too.

libseccomp (through pyseccomp, a thin ctypes binding) turns the rules into
classic BPF for every architecture the container's processes can use (on
x86_64 also x86, and x32 where the kernel has that ABI: a filter that left
them out would be bypassed by a 32-bit system call).  That happens in the compiler, on a cache
miss: the plan carries the exported programs (seccomp_export_bpf(3)) and
`pflask run` with a cached plan loads them with one prctl(PR_SET_SECCOMP)
each (libc.seccomp_set_mode_filter), without importing pyseccomp or ctypes,
and without libseccomp's start-up.  The filter depends on the capabilities
the container keeps (some calls are allowed only with one), which the
compiler knows.

Docker semantics kept for profile files: `architectures`, or the native
entry of `archMap`; each `syscalls[]` entry is skipped unless its
`includes` match and its `excludes` do not (`caps` against the kept set,
`arches` against the native architecture, `minKernel` against the running
kernel); arguments on distinct indices make one rule (all must match), on a
repeated index one rule per argument (either may); a rule whose action is
the default action adds nothing.  Anything pflask cannot honour (a notify
listener, filter flags, an unknown action or system call name) is a
manifest error naming the field, never a silently weaker filter.
`minKernel` is read when the plan is compiled: a cached plan keeps the
answer of the kernel it was compiled on (`pflask run --no-cache` after a
kernel downgrade).
"""

from __future__ import annotations

import errno
import os

from pflask.compile import plan as p
from pflask.compile import seccomp_default as d
from pflask.errors import ManifestError, SetupError
from pflask.kernel import libc
from pflask.record import Record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Any

# <seccomp.h>: libseccomp's actions (the kernel's SECCOMP_RET_* with its data).
SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_KILL_THREAD = 0x00000000
SCMP_ACT_TRAP = 0x00030000
SCMP_ACT_LOG = 0x7FFC0000
SCMP_ACT_ALLOW = 0x7FFF0000


def SCMP_ACT_ERRNO(err: int) -> int:
    return 0x00050000 | (err & 0xFFFF)


def SCMP_ACT_TRACE(message: int) -> int:
    return 0x7FF00000 | (message & 0xFFFF)


# <seccomp.h>: enum scmp_compare.
OPERATORS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
EQ = OPERATORS["SCMP_CMP_EQ"]
MASKED_EQ = OPERATORS["SCMP_CMP_MASKED_EQ"]

# The kernel's (AUDIT_ARCH_*) name for each architecture libseccomp knows,
# as `SCMP_ARCH_<NAME>` spells it, and the ones a native one also runs.
ARCHITECTURES = (
    "X86", "X86_64", "X32", "ARM", "AARCH64", "MIPS", "MIPS64", "MIPS64N32", "MIPSEL",
    "MIPSEL64", "MIPSEL64N32", "PPC", "PPC64", "PPC64LE", "S390", "S390X", "PARISC",
    "PARISC64", "RISCV64",
)  # fmt: skip
X32_SYSCALL_BIT = 0x40000000  # <asm/unistd.h>
SYS_GETPID_X86_64 = 39
COMPAT = {
    "X86_64": ("X86", "X32"),
    "AARCH64": ("ARM",),
    "MIPS64": ("MIPS", "MIPS64N32"),
    "MIPS64N32": ("MIPS", "MIPS64"),
    "MIPSEL64": ("MIPSEL", "MIPSEL64N32"),
    "MIPSEL64N32": ("MIPSEL", "MIPSEL64"),
    "S390X": ("S390",),
}
# Docker's `includes.arches` names (Go's GOARCH, and a few more): which
# native architecture each means.
ARCH_ALIASES = {
    "amd64": "X86_64", "x86_64": "X86_64", "386": "X86", "x86": "X86", "x32": "X32",
    "arm": "ARM", "arm64": "AARCH64", "aarch64": "AARCH64", "mips": "MIPS",
    "mipsle": "MIPSEL", "mips64": "MIPS64", "mips64le": "MIPSEL64", "mips64n32": "MIPS64N32",
    "mipsel": "MIPSEL", "mipsel64": "MIPSEL64", "mipsel64n32": "MIPSEL64N32", "ppc": "PPC",
    "ppc64": "PPC64", "ppc64le": "PPC64LE", "s390": "S390", "s390x": "S390X",
    "riscv64": "RISCV64", "parisc": "PARISC", "parisc64": "PARISC64",
}  # fmt: skip
# os.uname().machine -> the libseccomp name
MACHINES = {
    "x86_64": "X86_64", "i386": "X86", "i686": "X86", "aarch64": "AARCH64",
    "armv7l": "ARM", "ppc64le": "PPC64LE", "ppc64": "PPC64", "s390x": "S390X",
    "riscv64": "RISCV64", "mips64": "MIPS64", "mips": "MIPS",
}  # fmt: skip


class Rule(Record):
    """One libseccomp rule: `action` for `name` when every argument test holds.

    `args`: (index, operator, datum_a, datum_b); with SCMP_CMP_MASKED_EQ,
    datum_a is the mask and datum_b the value.
    """

    action: int
    name: str
    args: tuple[tuple[int, int, int, int], ...] = ()


class Filter(Record):
    """One BPF program's worth of rules.

    `bad_arch`: the answer to a call of an architecture not in `arches`
    (libseccomp's own default kills the thread).
    """

    default: int
    arches: tuple[str, ...]
    rules: tuple[Rule, ...]
    bad_arch: int | None = None


def step(setting: str, keep: Iterable[str], source: str) -> p.Seccomp | None:
    """The plan's Seccomp step for `security.seccomp`, or None for `unconfined`.

    `keep`: the capabilities the container keeps (lowercase, no CAP_).
    `source`: the manifest, for errors about the setting itself.
    """
    if setting == "unconfined":
        return None
    caps = frozenset(keep)
    machine = native()
    if setting == "default":
        main, deny = default_filters(caps, machine)
        filters: tuple[Filter, ...] = (main, deny)
        summary = (
            f"{' '.join(a.lower() for a in main.arches)}"
            + (" (x32: not in this kernel, ENOSYS)" if "X32" in _left_out(machine, main) else "")
            + ": "
            f"{_count(main, SCMP_ACT_ALLOW)} calls allowed, "
            f"{_count(main, SCMP_ACT_ERRNO(errno.EPERM))} EPERM, others ENOSYS; "
            "TIOCSTI, TIOCLINUX, AF_VSOCK"
            + ("" if "sys_admin" in caps else ", clone with namespace flags")
            + " EPERM"
        )
        profile_file = ""
    else:
        main = from_profile(setting, caps, machine, source)
        filters = (main,)
        summary = (
            f"{' '.join(a.lower() for a in main.arches)}: {len(main.rules)} rules, "
            f"others {action_name(main.default)}"
        )
        profile_file = setting
    programs = tuple(build(f, profile_file) for f in filters)
    size = sum(len(program) // 8 for program in programs)
    return p.Seccomp(
        profile=setting,
        summary=f"{summary}; {size} BPF instructions",
        programs=tuple(program.hex() for program in programs),
    )


def step_from_json(text: str, keep: frozenset[str], source: str) -> p.Seccomp:
    """The Seccomp step for an OCI bundle's linux.seccomp object (JSON text):
    the Docker profile format it shares, with `flags` and a notify listener
    refused by the front end (pflask.load.oci), not here."""
    import json

    main = from_data(json.loads(text), keep, native(), source, "linux.seccomp")
    program = build(main, "")
    summary = (
        f"{' '.join(a.lower() for a in main.arches)}: {len(main.rules)} rules, "
        f"others {action_name(main.default)}; {len(program) // 8} BPF instructions"
    )
    return p.Seccomp(profile="config.json", summary=summary, programs=(program.hex(),))


def _left_out(machine: str, f: Filter) -> tuple[str, ...]:
    return tuple(a for a in COMPAT.get(machine, ()) if a not in f.arches)


def _count(f: Filter, action: int) -> int:
    return len({r.name for r in f.rules if r.action == action})


def action_name(action: int) -> str:
    if action & 0xFFFF0000 == 0x00050000:
        value = action & 0xFFFF
        return f"errno {errno.errorcode.get(value, value)}"
    names = {
        SCMP_ACT_ALLOW: "allowed",
        SCMP_ACT_KILL_PROCESS: "kill the process",
        SCMP_ACT_KILL_THREAD: "kill the thread",
        SCMP_ACT_TRAP: "SIGSYS",
        SCMP_ACT_LOG: "logged",
    }
    return names.get(action, "traced")


def native() -> str:
    """The libseccomp name of the architecture pflask runs on."""
    machine = os.uname().machine
    try:
        return MACHINES[machine]
    except KeyError:
        raise SetupError(
            f"seccomp: no filter for this machine ({machine}); set security.seccomp: unconfined"
        ) from None


def kernel_version() -> tuple[int, ...]:
    release = os.uname().release
    numbers = []
    for part in release.split("-")[0].split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        numbers.append(int(digits or 0))
    return tuple(numbers)


# --- the default profile -------------------------------------------------------------


def default_filters(caps: frozenset[str], machine: str) -> tuple[Filter, Filter]:
    """pflask's default profile (see `seccomp_default`) for these capabilities.

    Two programs, because libseccomp cannot carve an exception out of a call
    that one rule allows outright (its unconditional rule wins): the first
    allows, the second refuses a few argument values of allowed calls.  The
    kernel runs both and takes the stricter answer.
    """
    arches = (machine, *(a for a in COMPAT.get(machine, ()) if a != "X32" or x32_abi()))
    host = os.uname().machine
    rules = [Rule(action=SCMP_ACT_ALLOW, name=name) for name in d.ALLOWED]
    rules += [
        Rule(action=SCMP_ACT_ALLOW, name=name)
        for name, machines in d.ALLOWED_ON.items()
        if host in machines
    ]
    needs: dict[str, set[str]] = {}
    for cap, names in d.WITH_CAPABILITY.items():
        for name in names:
            needs.setdefault(name, set()).add(cap)
    for name, wanted in needs.items():
        if wanted & caps:
            action = SCMP_ACT_ALLOW
        elif name in d.ENOSYS_WITHOUT_CAPABILITY:
            action = SCMP_ACT_ERRNO(errno.ENOSYS)
        else:
            action = SCMP_ACT_ERRNO(errno.EPERM)
        rules.append(Rule(action=action, name=name))
    rules += [Rule(action=SCMP_ACT_ERRNO(errno.EPERM), name=name) for name in d.REFUSED]
    rules += [
        Rule(action=SCMP_ACT_ALLOW, name="personality", args=((0, EQ, value, 0),))
        for value in d.PERSONALITIES
    ]
    # x32 calls where the kernel has no x32 ABI get its own answer, ENOSYS,
    # from a filter a third smaller (so quicker to load at every start).
    bad_arch = SCMP_ACT_ERRNO(errno.ENOSYS)
    main = Filter(default=bad_arch, arches=arches, rules=tuple(rules), bad_arch=bad_arch)

    refuse = SCMP_ACT_ERRNO(errno.EPERM)
    low32 = 0xFFFFFFFF
    deny = [
        Rule(action=refuse, name="ioctl", args=((1, MASKED_EQ, low32, request),))
        for request in d.REFUSED_IOCTLS
    ]
    deny.append(Rule(action=refuse, name="socket", args=((0, MASKED_EQ, low32, d.AF_VSOCK),)))
    if "sys_admin" not in caps:
        flags_at = 1 if machine.startswith("S390") else 0  # s390 swaps clone's first two
        deny += [
            Rule(action=refuse, name="clone", args=((flags_at, MASKED_EQ, flag, flag),))
            for flag in d.CLONE_NAMESPACE_FLAGS
        ]
    return main, Filter(default=SCMP_ACT_ALLOW, arches=arches, rules=tuple(deny), bad_arch=bad_arch)


def x32_abi() -> bool:
    """Whether this kernel runs x32 system calls (CONFIG_X86_X32_ABI, and on
    Debian's kernels `syscall.x32=y` at boot): getpid(2) with the x32 bit.

    Without it an x32 call can only fail with ENOSYS, so the default filter
    leaves the architecture out and answers it the kernel's way.  A plan
    cached across a reboot that turns x32 on keeps refusing x32 calls (ENOSYS)
    until it is compiled again: it fails closed.
    """
    if os.uname().machine != "x86_64":
        return False
    return libc.syscall_errno(X32_SYSCALL_BIT | SYS_GETPID_X86_64) != errno.ENOSYS


# --- Docker/OCI profile files ---------------------------------------------------------

_PROFILE_FIELDS = ("defaultAction", "defaultErrnoRet", "architectures", "archMap", "syscalls")
_IGNORED_FIELDS = ("comment",)
_SYSCALL_FIELDS = ("names", "name", "action", "errnoRet", "args", "includes", "excludes")
_CONDITION_FIELDS = ("caps", "arches", "minKernel")
_ARG_FIELDS = ("index", "value", "valueTwo", "op")


class _Profile:
    """Reading one profile file: every error names the file and the field."""

    def __init__(self, path: str, prefix: str = "") -> None:
        self.path = path
        self.prefix = prefix  # where the profile sits in its file (linux.seccomp)

    def error(self, field: str, message: str) -> ManifestError:
        where = ".".join(part for part in (self.prefix, field) if part)
        return ManifestError(message, self.path, field=where or None)

    def mapping(self, value: Any, field: str, known: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(field, f"must be an object, not {type(value).__name__}")
        for key in value:
            if key not in known and key not in _IGNORED_FIELDS:
                where = f"{field}.{key}" if field else key
                raise self.error(where, f"not supported by pflask (known: {', '.join(known)})")
        return value

    def strings(self, value: Any, field: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.error(field, "must be a list of strings")
        return value

    def integer(self, value: Any, field: str, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(field, f"must be an integer from {low} to {high}")
        return value

    def action(self, value: Any, errno_ret: Any, field: str, errno_field: str) -> int:
        if value == "SCMP_ACT_ERRNO" or value == "SCMP_ACT_TRACE":
            # Without errnoRet, Docker's profiles mean EPERM (a trace message: 1 too).
            number = (
                errno.EPERM
                if errno_ret is None
                else self.integer(errno_ret, errno_field, 0, 0xFFFF)
            )
            return (SCMP_ACT_ERRNO if value == "SCMP_ACT_ERRNO" else SCMP_ACT_TRACE)(number)
        plain = {
            "SCMP_ACT_ALLOW": SCMP_ACT_ALLOW,
            "SCMP_ACT_KILL": SCMP_ACT_KILL_THREAD,
            "SCMP_ACT_KILL_THREAD": SCMP_ACT_KILL_THREAD,
            "SCMP_ACT_KILL_PROCESS": SCMP_ACT_KILL_PROCESS,
            "SCMP_ACT_TRAP": SCMP_ACT_TRAP,
            "SCMP_ACT_LOG": SCMP_ACT_LOG,
        }
        if value not in plain:
            known = ", ".join([*plain, "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE"])
            raise self.error(field, f"action {value!r} is not supported (known: {known})")
        return plain[value]

    def arch(self, value: str, field: str) -> str:
        name = value[len("SCMP_ARCH_") :] if value.startswith("SCMP_ARCH_") else ""
        if name not in ARCHITECTURES:
            raise self.error(field, f"unknown architecture {value!r} (SCMP_ARCH_X86_64, ...)")
        return name

    def tests(self, condition: Any, field: str, caps: frozenset[str], machine: str) -> list[bool]:
        """The outcome of each test in an `includes` or `excludes`: one per
        capability (kept?), one for `arches` (is the native one listed?), one
        for `minKernel` (is the running kernel as new?)."""
        if condition is None:
            return []
        data = self.mapping(condition, field, _CONDITION_FIELDS)
        from pflask.kernel import capabilities

        results = []
        for index, cap in enumerate(self.strings(data.get("caps"), f"{field}.caps")):
            name = cap.lower().removeprefix("cap_")
            if name not in capabilities.ALL:
                raise self.error(f"{field}.caps[{index}]", f"unknown capability {cap!r}")
            results.append(name in caps)
        arches = set()
        for index, arch in enumerate(self.strings(data.get("arches"), f"{field}.arches")):
            key = arch.removeprefix("SCMP_ARCH_").lower()
            if key not in ARCH_ALIASES:
                raise self.error(f"{field}.arches[{index}]", f"unknown architecture {arch!r}")
            arches.add(ARCH_ALIASES[key])
        if arches:
            results.append(machine in arches)
        if data.get("minKernel") is not None:
            text = data["minKernel"]
            parts = text.split(".") if isinstance(text, str) else []
            if len(parts) < 2 or not all(part.isdigit() for part in parts):
                raise self.error(f"{field}.minKernel", 'must be a version such as "4.8"')
            results.append(kernel_version() >= tuple(int(part) for part in parts[:2]))
        return results

    def args(self, value: Any, field: str) -> list[tuple[int, int, int, int]]:
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.error(field, "must be a list")
        result = []
        for index, item in enumerate(value):
            where = f"{field}[{index}]"
            data = self.mapping(item, where, _ARG_FIELDS)
            position = self.integer(data.get("index"), f"{where}.index", 0, 5)
            op = data.get("op")
            if op not in OPERATORS:
                raise self.error(f"{where}.op", f"unknown operator {op!r} ({', '.join(OPERATORS)})")
            first = self.integer(data.get("value", 0), f"{where}.value", 0, 2**64 - 1)
            second = self.integer(data.get("valueTwo", 0), f"{where}.valueTwo", 0, 2**64 - 1)
            result.append((position, OPERATORS[op], first, second))
        return result


def from_profile(path: str, caps: frozenset[str], machine: str, source: str) -> Filter:
    """The Filter a Docker/OCI JSON profile file describes, for these capabilities."""
    from pflask.errors import shown_path
    from pflask.load import loader

    try:
        # A profile is read like a manifest: a regular file of at most 1 MiB,
        # depth and values bounded (it may come from an untrusted checkout).
        raw = loader.read_json(path)
    except loader.Unreadable as e:
        raise ManifestError(
            f"seccomp profile {shown_path(path)}: {e.message}", source, field="security.seccomp"
        ) from None
    return from_data(raw, caps, machine, path)


def from_data(raw: Any, caps: frozenset[str], machine: str, path: str, prefix: str = "") -> Filter:
    """The Filter a parsed profile describes; errors name `path` (the file it
    came from) and the field, under `prefix` when the profile is part of it."""
    reader = _Profile(path, prefix)
    data = reader.mapping(raw, "", _PROFILE_FIELDS)
    if "defaultAction" not in data:
        raise reader.error("defaultAction", "required field is missing")
    default = reader.action(
        data["defaultAction"], data.get("defaultErrnoRet"), "defaultAction", "defaultErrnoRet"
    )
    arches = [
        reader.arch(a, f"architectures[{i}]")
        for i, a in enumerate(reader.strings(data.get("architectures"), "architectures"))
    ]
    if not arches and data.get("archMap") is not None:
        if not isinstance(data["archMap"], list):
            raise reader.error("archMap", "must be a list")
        for index, entry in enumerate(data["archMap"]):
            where = f"archMap[{index}]"
            item = reader.mapping(entry, where, ("architecture", "subArchitectures"))
            if reader.arch(str(item.get("architecture")), f"{where}.architecture") == machine:
                subs = reader.strings(item.get("subArchitectures"), f"{where}.subArchitectures")
                arches = [machine]
                arches += [
                    reader.arch(s, f"{where}.subArchitectures[{i}]") for i, s in enumerate(subs)
                ]
    if machine not in arches:
        arches.insert(0, machine)
    syscalls = data.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise reader.error("syscalls", "must be a list")
    rules: list[Rule] = []
    for index, entry in enumerate(syscalls):
        where = f"syscalls[{index}]"
        item = reader.mapping(entry, where, _SYSCALL_FIELDS)
        # Docker's rule: every test of `includes` must pass, none of `excludes`.
        if not all(reader.tests(item.get("includes"), f"{where}.includes", caps, machine)):
            continue
        if any(reader.tests(item.get("excludes"), f"{where}.excludes", caps, machine)):
            continue
        if "name" in item and "names" in item:
            raise reader.error(where, "has both name and names")
        if "name" in item:
            if not isinstance(item["name"], str):
                raise reader.error(f"{where}.name", "must be a string")
            names = [(item["name"], f"{where}.name")]
        else:
            listed = reader.strings(item.get("names"), f"{where}.names")
            names = [(n, f"{where}.names[{i}]") for i, n in enumerate(listed)]
        if "action" not in item:
            raise reader.error(f"{where}.action", "required field is missing")
        action = reader.action(
            item["action"], item.get("errnoRet"), f"{where}.action", f"{where}.errnoRet"
        )
        args = reader.args(item.get("args"), f"{where}.args")
        # libseccomp tests one argument once per rule: repeated indices mean "any of".
        groups = [tuple(args)] if len({a[0] for a in args}) == len(args) else [(a,) for a in args]
        for name, field in names:
            check_name(name, reader, field)
            rules.extend(Rule(action=action, name=name, args=group) for group in groups)
    return Filter(default=default, arches=tuple(dict.fromkeys(arches)), rules=tuple(rules))


def _pyseccomp() -> Any:
    """pyseccomp, or a one-line error when it or libseccomp is missing."""
    try:
        import pyseccomp
    except (ImportError, RuntimeError, OSError) as e:
        raise SetupError(
            f"seccomp: cannot use libseccomp ({e}); install libseccomp2 and pyseccomp, "
            "or set security.seccomp: unconfined"
        ) from None
    return pyseccomp


def check_name(name: str, reader: _Profile, field: str) -> None:
    pyseccomp = _pyseccomp()
    if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) == -1:  # __NR_SCMP_ERROR
        raise reader.error(field, f"unknown system call {name!r} (unknown to libseccomp)")


# --- building ------------------------------------------------------------------------


def build(f: Filter, source: str) -> bytes:
    """The BPF program of a Filter, as libseccomp exports it (struct sock_filter[])."""
    pyseccomp = _pyseccomp()

    ctx = pyseccomp.SyscallFilter(f.default)
    # A binary tree over the system call numbers rather than a linear list:
    # loading the default profile costs the kernel ~0.9 ms instead of ~1.3
    # (it evaluates the filter for every call number to build its cache of
    # always-allowed calls), and each filtered call runs fewer instructions.
    ctx.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)
    if f.bad_arch is not None:
        ctx.set_attr(pyseccomp.Attr.ACT_BADARCH, f.bad_arch)
    native_token = pyseccomp.system_arch()
    for arch in f.arches:
        token = getattr(pyseccomp.Arch, arch)
        if token != native_token:
            try:
                ctx.add_arch(token)
            except OSError as e:
                raise ManifestError(
                    f"libseccomp cannot add architecture {arch}: {e.strerror}",
                    source or None,
                    field="architectures",
                ) from None
    for rule in f.rules:
        if rule.action == f.default:
            continue  # libseccomp refuses a rule that changes nothing
        number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, rule.name)
        if number == -1:
            raise ManifestError(f"unknown system call {rule.name!r}", source or None)
        args = [pyseccomp.Arg(i, op, a, b) for i, op, a, b in rule.args]
        try:
            ctx.add_rule(rule.action, number, *args)
        except OSError as e:
            raise ManifestError(
                f"libseccomp refuses the rule for {rule.name}: {e.strerror}", source or None
            ) from None
    fd = os.memfd_create("pflask-seccomp", os.MFD_CLOEXEC)
    with os.fdopen(fd, "w+b") as out:
        ctx.export_bpf(out)
        out.seek(0)
        return out.read()
