"""A device policy for a cgroup v2 group: a BPF_PROG_TYPE_CGROUP_DEVICE program.

cgroup v1 has a `devices` controller that takes rules as text
(`devices.allow`); cgroup v2 has none.  There the kernel asks a BPF program
attached to the group, for every mknod(2) and every open of a device node by
a task in it (or below it), whether to allow it: the program gets the device
type, its major and minor numbers and the access (mknod, read, write) and
returns 1 to allow, 0 to refuse (EPERM).

The program is built here from the same rules as the v1 controller's
("c 1:3 rwm", "b *:* m", "c 136:* rwm"), one block of instructions per rule,
each falling through to the next when the device does not match, and a
final "refuse".  It is attached with BPF_F_ALLOW_MULTI: an init in the
container (systemd) may attach programs of its own below, and the kernel
allows an access only when every program on the way allows it, so they can
only narrow the policy.

Only the supervisor calls this, on the host side, for containers that keep
CAP_SYS_ADMIN (see compiler._devices), through libc.bpf; the attribute
structures are filled here, byte by byte.
"""

from __future__ import annotations

import errno
import os
import sys

from pflask.kernel import libc
from pflask.kernel.libc import SyscallError

# <linux/bpf.h>
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 1 << 1
BPF_DEVCG_ACC_MKNOD = 1
BPF_DEVCG_ACC_READ = 2
BPF_DEVCG_ACC_WRITE = 4
BPF_DEVCG_DEV_BLOCK = 1
BPF_DEVCG_DEV_CHAR = 2

# Instruction opcodes (class | size/op | mode/source), as <linux/bpf.h> composes them.
_LDX_MEM_W = 0x61  # BPF_LDX | BPF_MEM | BPF_W: dst = *(u32 *)(src + off)
_ALU64_AND_K = 0x57  # BPF_ALU64 | BPF_AND | BPF_K: dst &= imm
_ALU64_RSH_K = 0x77  # BPF_ALU64 | BPF_RSH | BPF_K: dst >>= imm
_ALU64_MOV_K = 0xB7  # BPF_ALU64 | BPF_MOV | BPF_K: dst = imm
_ALU64_MOV_X = 0xBF  # BPF_ALU64 | BPF_MOV | BPF_X: dst = src
_JMP_JNE_K = 0x55  # BPF_JMP | BPF_JNE | BPF_K: if dst != imm: pc += off
_JMP_EXIT = 0x95  # BPF_JMP | BPF_EXIT: return r0

_TYPES = {"c": BPF_DEVCG_DEV_CHAR, "b": BPF_DEVCG_DEV_BLOCK, "a": None}
_ACCESS = {"m": BPF_DEVCG_ACC_MKNOD, "r": BPF_DEVCG_ACC_READ, "w": BPF_DEVCG_ACC_WRITE}


class Rule:
    """One rule in the v1 controller's syntax: `type major:minor access`."""

    __slots__ = ("access", "major", "minor", "type")

    def __init__(self, text: str) -> None:
        try:
            kind, numbers, access = text.split()
            major, minor = numbers.split(":")
            self.type = _TYPES[kind]
            self.major = None if major == "*" else int(major)
            self.minor = None if minor == "*" else int(minor)
            self.access = 0
            for letter in access:
                self.access |= _ACCESS[letter]
        except (KeyError, ValueError):
            raise ValueError(f"device rule {text!r}: not 'c|b|a MAJOR|*:MINOR|* [rwm]'") from None


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    """struct bpf_insn: code, dst_reg:4 | src_reg:4, s16 off, s32 imm."""
    regs = dst | src << 4 if sys.byteorder == "little" else dst << 4 | src
    return (
        bytes((code, regs))
        + off.to_bytes(2, sys.byteorder, signed=True)
        + imm.to_bytes(4, sys.byteorder, signed=True)
    )


def program(rules: tuple[str, ...]) -> bytes:
    """The instructions that allow exactly `rules` (and refuse the rest).

    r1 holds the context, struct bpf_cgroup_dev_ctx: access_type (access
    << 16 | device type), major, minor.  r2 = type, r3 = access, r4 = major,
    r5 = minor; each rule is a block that jumps past itself on a mismatch
    and returns 1 on a match.
    """
    code = [
        _insn(_LDX_MEM_W, dst=2, src=1, off=0),
        _insn(_ALU64_AND_K, dst=2, imm=0xFFFF),
        _insn(_LDX_MEM_W, dst=3, src=1, off=0),
        _insn(_ALU64_RSH_K, dst=3, imm=16),
        _insn(_LDX_MEM_W, dst=4, src=1, off=4),
        _insn(_LDX_MEM_W, dst=5, src=1, off=8),
    ]
    for text in rules:
        rule = Rule(text)
        checks: list[tuple[int, int]] = []  # (register, value) that must be equal
        if rule.type is not None:
            checks.append((2, rule.type))
        if rule.major is not None:
            checks.append((4, rule.major))
        if rule.minor is not None:
            checks.append((5, rule.minor))
        # every access asked for must be in the rule's: (r3 & ~access) == 0
        block_length = len(checks) + 3 + 2
        for index, (register, value) in enumerate(checks):
            skip = block_length - index - 1
            code.append(_insn(_JMP_JNE_K, dst=register, off=skip, imm=value))
        code.append(_insn(_ALU64_MOV_X, dst=1, src=3))
        code.append(_insn(_ALU64_AND_K, dst=1, imm=~rule.access & 0xFFFF))
        code.append(_insn(_JMP_JNE_K, dst=1, off=2, imm=0))
        code.append(_insn(_ALU64_MOV_K, dst=0, imm=1))
        code.append(_insn(_JMP_EXIT))
    code.append(_insn(_ALU64_MOV_K, dst=0, imm=0))
    code.append(_insn(_JMP_EXIT))
    return b"".join(code)


def attach(group: str, rules: tuple[str, ...]) -> None:
    """Load the program for `rules` and attach it to the cgroup v2 directory `group`."""
    order = sys.byteorder
    code = libc.c_array(program(rules))
    license = libc.c_array(b"GPL\0")

    def load(log_size: int) -> tuple[int, int, str]:
        """(program fd or -1, errno, the verifier's last words): a log only when asked."""
        log = libc.c_array(max(log_size, 1))
        # union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license,
        # log_level, log_size, log_buf, kern_version, prog_flags, prog_name[16],
        # prog_ifindex, expected_attach_type.
        attr = bytearray(72)
        attr[0:4] = BPF_PROG_TYPE_CGROUP_DEVICE.to_bytes(4, order)
        attr[4:8] = (len(code) // 8).to_bytes(4, order)
        attr[8:16] = libc.address(code).to_bytes(8, order)
        attr[16:24] = libc.address(license).to_bytes(8, order)
        if log_size:
            attr[24:28] = (1).to_bytes(4, order)
            attr[28:32] = log_size.to_bytes(4, order)
            attr[32:40] = libc.address(log).to_bytes(8, order)
        attr[48:64] = b"pflask_devices".ljust(16, b"\0")
        attr[68:72] = BPF_CGROUP_DEVICE.to_bytes(4, order)
        fd, err = libc.bpf(BPF_PROG_LOAD, bytes(attr))
        text = bytes(log).split(b"\0", 1)[0].decode(errors="replace")
        lines = text.strip().splitlines()
        return fd, err, lines[-1] if lines else ""

    prog, err, _ = load(0)
    if prog < 0:
        _, _, why = load(1 << 20)  # again, for the verifier's reason
        raise SyscallError("bpf(2)", err, f"BPF_PROG_LOAD device program: {why}".rstrip(": "))
    try:
        cgroup = os.open(group, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        os.close(prog)
        raise SyscallError("open(2)", e.errno or errno.EIO, group) from None
    try:
        # target_fd, attach_bpf_fd, attach_type, attach_flags
        attach_attr = (
            cgroup.to_bytes(4, order)
            + prog.to_bytes(4, order)
            + BPF_CGROUP_DEVICE.to_bytes(4, order)
            + BPF_F_ALLOW_MULTI.to_bytes(4, order)
            + bytes(16)
        )
        result, err = libc.bpf(BPF_PROG_ATTACH, attach_attr)
        if result < 0:
            raise SyscallError("bpf(2)", err, f"BPF_PROG_ATTACH {group}")
    finally:
        os.close(cgroup)
        os.close(prog)  # the attachment holds the program; it goes with the group
