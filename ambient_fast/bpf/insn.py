"""A small typed assembler for eBPF instructions (linux/bpf_common.h, linux/bpf.h).

A program is a list of `Item`s: plain instructions (`Insn`), `Label`s, jumps to a label
(`Jump`) and map references (`LoadMap`, the two-slot `ld_imm64` with BPF_PSEUDO_MAP_FD).
`assemble` resolves labels to relative offsets and map names to the fds of this load, and
returns the bytes bpf(BPF_PROG_LOAD) takes. Only what our programs use is here.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

INSN_SIZE = 8
_INSN = struct.Struct("<BBhi")

# Instruction classes.
_LD, _LDX, _ST, _STX, _JMP, _ALU64 = 0x00, 0x01, 0x02, 0x03, 0x05, 0x07
# Operand source: an immediate (K) or a register (X).
_K, _X = 0x00, 0x08
# Addressing modes.
_IMM, _MEM = 0x00, 0x60
_CALL, _EXIT = 0x80, 0x90
# The src_reg of an ld_imm64 whose immediate is a map fd.
PSEUDO_MAP_FD = 1


class Reg(enum.IntEnum):
    """R0: return value and helper result; R1-R5: helper arguments (clobbered by calls);
    R6-R9: callee-saved; R10: read-only frame pointer."""

    R0 = 0
    R1 = 1
    R2 = 2
    R3 = 3
    R4 = 4
    R5 = 5
    R6 = 6
    R7 = 7
    R8 = 8
    R9 = 9
    R10 = 10


class Size(enum.IntEnum):
    W = 0x00  # 4 bytes
    H = 0x08  # 2 bytes
    B = 0x10  # 1 byte
    DW = 0x18  # 8 bytes


class Alu(enum.IntEnum):
    ADD = 0x00
    OR = 0x40
    AND = 0x50
    LSH = 0x60
    MOV = 0xB0


class Cond(enum.IntEnum):
    ALWAYS = 0x00
    EQ = 0x10
    NE = 0x50


@dataclass(frozen=True, slots=True)
class Insn:
    """One 8-byte instruction: opcode, registers, signed 16-bit offset, signed 32-bit
    immediate."""

    code: int
    dst: Reg = Reg.R0
    src: int = 0
    off: int = 0
    imm: int = 0

    def encode(self) -> bytes:
        return _INSN.pack(self.code, (self.src << 4) | self.dst, self.off, _s32(self.imm))


@dataclass(frozen=True, slots=True)
class Label:
    name: str


@dataclass(frozen=True, slots=True)
class Jump:
    """A conditional (or, with Cond.ALWAYS, unconditional) jump to a label; the operand is a
    register or a 32-bit immediate."""

    cond: Cond
    target: str
    dst: Reg = Reg.R0
    operand: Reg | int = 0


@dataclass(frozen=True, slots=True)
class LoadMap:
    """dst = the map called `name` (its fd, given to `assemble`)."""

    dst: Reg
    name: str


Item = Insn | Label | Jump | LoadMap


class AssemblyError(ValueError):
    """A program that cannot be encoded (unknown label or map, value out of range)."""


def _s32(value: int) -> int:
    """An immediate as the signed 32 bits the encoding holds (0xffffffff and -1 alike)."""
    if not -(1 << 31) <= value < (1 << 32):
        raise AssemblyError(f"immediate {value:#x} does not fit 32 bits")
    return value - (1 << 32) if value >= (1 << 31) else value


def _operand(code: int, operand: Reg | int) -> tuple[int, int, int]:
    """(opcode with its source bit, src register, immediate) for a register or a constant."""
    if isinstance(operand, Reg):
        return code | _X, operand, 0
    return code | _K, 0, operand


def alu64(op: Alu, dst: Reg, operand: Reg | int) -> Insn:
    code, src, imm = _operand(_ALU64 | op, operand)
    return Insn(code, dst, src, 0, imm)


def mov(dst: Reg, operand: Reg | int) -> Insn:
    return alu64(Alu.MOV, dst, operand)


def load(size: Size, dst: Reg, base: Reg, off: int) -> Insn:
    """dst = *(size *)(base + off)"""
    return Insn(_LDX | _MEM | size, dst, base, off)


def store(size: Size, base: Reg, off: int, operand: Reg | int) -> Insn:
    """*(size *)(base + off) = a register or a 32-bit immediate."""
    if isinstance(operand, Reg):
        return Insn(_STX | _MEM | size, base, operand, off)
    return Insn(_ST | _MEM | size, base, 0, off, operand)


def call(helper: int) -> Insn:
    return Insn(_JMP | _CALL, imm=helper)


def exit_() -> Insn:
    return Insn(_JMP | _EXIT)


def jump(cond: Cond, dst: Reg, operand: Reg | int, target: str) -> Jump:
    return Jump(cond, target, dst, operand)


def goto(target: str) -> Jump:
    return Jump(Cond.ALWAYS, target)


def _slots(item: Item) -> int:
    if isinstance(item, Label):
        return 0
    return 2 if isinstance(item, LoadMap) else 1


def assemble(items: Sequence[Item], maps: Mapping[str, int] | None = None) -> bytes:
    """The program's bytes: labels resolved, `LoadMap`s filled with `maps[name]`."""
    maps = maps or {}
    labels: dict[str, int] = {}
    position = 0
    for item in items:
        if isinstance(item, Label):
            if item.name in labels:
                raise AssemblyError(f"label {item.name!r} defined twice")
            labels[item.name] = position
        position += _slots(item)
    out = bytearray()
    position = 0
    for item in items:
        position += _slots(item)
        if isinstance(item, Insn):
            out += item.encode()
        elif isinstance(item, Jump):
            if item.target not in labels:
                raise AssemblyError(f"jump to unknown label {item.target!r}")
            offset = labels[item.target] - position
            if not -(1 << 15) <= offset < (1 << 15):
                raise AssemblyError(f"jump to {item.target!r} is too far ({offset} slots)")
            code, src, imm = _operand(_JMP | item.cond, item.operand)
            if item.cond is Cond.ALWAYS:
                code, src, imm = _JMP, 0, 0
            out += Insn(code, item.dst, src, offset, imm).encode()
        elif isinstance(item, LoadMap):
            if item.name not in maps:
                raise AssemblyError(f"program refers to unknown map {item.name!r}")
            out += Insn(_LD | _IMM | Size.DW, item.dst, PSEUDO_MAP_FD, 0, maps[item.name]).encode()
            out += Insn(0).encode()
    return bytes(out)
