"""The eBPF assembler's encodings (checked against the instruction set's layout: opcode,
dst/src nibbles, little-endian 16-bit offset and 32-bit immediate) and the capture programs'
static shape. Loading and running them is tests/netns/test_ebpf_capture.py."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from ambient_fast.bpf.insn import (
    Alu,
    AssemblyError,
    Cond,
    Insn,
    Item,
    Label,
    LoadMap,
    Reg,
    Size,
    alu64,
    assemble,
    call,
    exit_,
    goto,
    jump,
    load,
    mov,
    store,
)
from ambient_fast.cni.ebpf import programs
from ambient_fast.cni.ebpf.programs import Settings


@pytest.mark.parametrize(
    ("insn", "encoded"),
    [
        (mov(Reg.R0, 0), "b7 00 0000 00000000"),
        (mov(Reg.R6, Reg.R1), "bf 16 0000 00000000"),
        (mov(Reg.R4, -1), "b7 04 0000 ffffffff"),
        (load(Size.W, Reg.R2, Reg.R6, 16), "61 62 1000 00000000"),
        (load(Size.B, Reg.R2, Reg.R10, -23), "71 a2 e9ff 00000000"),
        (load(Size.H, Reg.R2, Reg.R10, -46), "69 a2 d2ff 00000000"),
        (store(Size.W, Reg.R10, -4, 0), "62 0a fcff 00000000"),
        (store(Size.W, Reg.R10, -8, Reg.R2), "63 2a f8ff 00000000"),
        (store(Size.DW, Reg.R10, -72, 0), "7a 0a b8ff 00000000"),
        (alu64(Alu.AND, Reg.R2, 0xFFF), "57 02 0000 ff0f0000"),
        (alu64(Alu.AND, Reg.R2, ~0xFFF), "57 02 0000 00f0ffff"),
        (alu64(Alu.LSH, Reg.R2, 2), "67 02 0000 02000000"),
        (alu64(Alu.ADD, Reg.R3, -24), "07 03 0000 e8ffffff"),
        (alu64(Alu.OR, Reg.R2, 0x111), "47 02 0000 11010000"),
        (call(124), "85 00 0000 7c000000"),
        (exit_(), "95 00 0000 00000000"),
    ],
)
def test_instruction_encoding(insn: Insn, encoded: str) -> None:
    assert assemble([insn]) == bytes.fromhex(encoded.replace(" ", ""))


def test_jumps_are_relative_to_the_next_instruction_both_ways() -> None:
    code = assemble([
        Label("top"),
        jump(Cond.EQ, Reg.R0, 0, "end"),  # +2: over the next two
        jump(Cond.NE, Reg.R2, Reg.R3, "top"),  # -2: back to the first
        goto("top"),  # -3
        Label("end"),
        exit_(),
    ])  # fmt: skip
    assert code[0:8] == bytes.fromhex("15 00 0200 00000000".replace(" ", ""))
    assert code[8:16] == bytes.fromhex("5d 32 feff 00000000".replace(" ", ""))
    assert code[16:24] == bytes.fromhex("05 00 fdff 00000000".replace(" ", ""))


def test_a_map_reference_is_a_two_slot_load_of_the_maps_fd() -> None:
    code = assemble([goto("end"), LoadMap(Reg.R1, "m"), Label("end"), exit_()], {"m": 7})
    assert code[0:8] == bytes.fromhex("05 00 0200 00000000".replace(" ", ""))  # skips 2 slots
    assert code[8:24] == bytes.fromhex(
        "18 11 0000 07000000 00 00 0000 00000000".replace(" ", "")
    )  # src 1 = BPF_PSEUDO_MAP_FD


@pytest.mark.parametrize(
    ("items", "maps", "message"),
    [
        ([goto("nowhere")], {}, "unknown label 'nowhere'"),
        ([Label("a"), Label("a"), exit_()], {}, "label 'a' defined twice"),
        ([LoadMap(Reg.R1, "m"), exit_()], {}, "unknown map 'm'"),
        ([mov(Reg.R0, 1 << 32)], {}, "does not fit 32 bits"),
        ([goto("far"), *[exit_()] * 40000, Label("far"), exit_()], {}, "too far"),
    ],
)
def test_programs_that_cannot_be_encoded_are_refused_naming_why(
    items: list[Item], maps: dict[str, int], message: str
) -> None:
    with pytest.raises(AssemblyError, match=message):
        assemble(items, maps)


@pytest.mark.parametrize("program", [programs.egress, programs.ingress])
def test_the_capture_programs_assemble(program: Callable[[], list[Item]]) -> None:
    maps = {programs.SETTINGS_MAP: 3, programs.LISTENERS_MAP: 4}
    code = assemble(program(), maps)
    assert len(code) % 8 == 0 and code[-8:] == exit_().encode()


def test_the_stack_slots_do_not_overlap_and_fit_the_frame() -> None:
    spans = sorted((offset, offset + size) for offset, size in programs.STACK.items())
    assert all(end <= start for (_, end), (start, _) in itertools.pairwise(spans))
    assert spans[0][0] >= -512 and spans[-1][1] <= 0


def test_settings_hold_addresses_and_the_port_in_network_order() -> None:
    settings = Settings("169.254.7.127", 15008, "10.244.1.10", accept_local_before=0)
    raw = settings.encode()
    assert raw[:4] == bytes([169, 254, 7, 127])
    assert raw[4:8] == bytes([0x3A, 0xA0, 0, 0])  # 15008 = 0x3aa0, as the TCP header has it
    assert raw[8:12] == bytes([10, 244, 1, 10])
    assert Settings.decode(raw) == settings
    assert Settings.decode(Settings(None, 15008, "10.0.0.1", 1).encode()).probe_source is None
