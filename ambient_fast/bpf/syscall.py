"""bpf(2) through ctypes: maps, programs, tcx attachments, and what the kernel says about
them.

Each call fills a zeroed `union bpf_attr` with the fields of its command (layouts from
linux/bpf.h) and raises `BpfError` naming what was asked when the kernel refuses. A program
the verifier refuses is loaded a second time with the log on, and the log is in the error.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import os
import platform
import struct
from dataclasses import dataclass

from ambient_fast.bpf.insn import INSN_SIZE

# The syscall's number per architecture (asm/unistd_64.h, asm-generic/unistd.h).
_SYS_BPF = {"x86_64": 321, "aarch64": 280}
# Larger than every union bpf_attr member we fill; the kernel checks the tail is zero.
_ATTR_SIZE = 128
OBJ_NAME_LEN = 16
# Enough for any program of ours, as libbpf's default (BPF_LOG_BUF_SIZE).
_LOG_SIZE = 16 * 1024 * 1024
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class Cmd(enum.IntEnum):
    MAP_CREATE = 0
    MAP_LOOKUP_ELEM = 1
    MAP_UPDATE_ELEM = 2
    PROG_LOAD = 5
    PROG_ATTACH = 8
    PROG_DETACH = 9
    PROG_TEST_RUN = 10
    PROG_GET_FD_BY_ID = 13
    MAP_GET_FD_BY_ID = 14
    OBJ_GET_INFO_BY_FD = 15
    PROG_QUERY = 16


class MapType(enum.IntEnum):
    ARRAY = 2
    SOCKMAP = 15


class ProgType(enum.IntEnum):
    SCHED_CLS = 3


class AttachType(enum.IntEnum):
    TCX_INGRESS = 46
    TCX_EGRESS = 47


class BpfError(OSError):
    """The kernel refused a bpf(2) call; `verifier_log` holds the verifier's reasons when a
    program was refused."""

    def __init__(self, code: int, what: str, verifier_log: str = "") -> None:
        message = f"{what}: {os.strerror(code)}"
        if verifier_log:
            message += f"\nverifier log:\n{verifier_log.rstrip()}"
        super().__init__(code, message)
        self.verifier_log = verifier_log

    def __str__(self) -> str:
        return str(self.strerror)


def _bpf(cmd: Cmd, attr: ctypes.Array[ctypes.c_char], what: str) -> int:
    number = _SYS_BPF.get(platform.machine())
    if number is None:
        raise BpfError(errno.ENOSYS, f"{what}: no bpf(2) number known for {platform.machine()}")
    result = int(_libc.syscall(number, int(cmd), attr, _ATTR_SIZE))
    if result < 0:
        raise BpfError(ctypes.get_errno(), what)
    return result


def _attr(fmt: str, *values: int | bytes) -> ctypes.Array[ctypes.c_char]:
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into(fmt, attr, 0, *values)
    return attr


def _name(name: str) -> bytes:
    raw = name.encode()
    if len(raw) >= OBJ_NAME_LEN:
        raise ValueError(f"BPF object name {name!r} is longer than {OBJ_NAME_LEN - 1} bytes")
    return raw


def _address(buffer: ctypes.Array[ctypes.c_char]) -> int:
    return ctypes.addressof(buffer)


def map_create(
    map_type: MapType, key_size: int, value_size: int, max_entries: int, name: str
) -> int:
    """A new map's fd."""
    # map_type, key_size, value_size, max_entries, map_flags, inner_map_fd, numa_node, map_name
    attr = _attr("<7I16s", map_type, key_size, value_size, max_entries, 0, 0, 0, _name(name))
    return _bpf(Cmd.MAP_CREATE, attr, f"create map {name}")


def map_update(fd: int, key: bytes, value: bytes) -> None:
    """Sets `key` to `value` (for a SOCKMAP: the value is a socket's fd as 4 or 8 bytes)."""
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    attr = _attr("<I4xQQQ", fd, _address(k), _address(v), 0)  # map_fd, key, value, flags=BPF_ANY
    _bpf(Cmd.MAP_UPDATE_ELEM, attr, f"update map fd {fd}")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value at `key`, or None when there is none."""
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value_size)
    attr = _attr("<I4xQQQ", fd, _address(k), _address(v), 0)
    try:
        _bpf(Cmd.MAP_LOOKUP_ELEM, attr, f"look up map fd {fd}")
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return v.raw


def prog_load(prog_type: ProgType, insns: bytes, name: str, license: str) -> int:
    """A loaded program's fd. Refused by the verifier: BpfError with the verifier's log."""
    code = ctypes.create_string_buffer(insns, len(insns))
    licence = ctypes.create_string_buffer(license.encode())
    what = f"load program {name}"

    def load(log_level: int, log: ctypes.Array[ctypes.c_char] | None) -> int:
        # prog_type, insn_cnt, insns, license, log_level, log_size, log_buf, kern_version,
        # prog_flags, prog_name
        attr = _attr(
            "<IIQQIIQII16s", prog_type, len(insns) // INSN_SIZE, _address(code),
            _address(licence), log_level, 0 if log is None else len(log),
            0 if log is None else _address(log), 0, 0, _name(name),
        )  # fmt: skip
        return _bpf(Cmd.PROG_LOAD, attr, what)

    try:
        return load(0, None)
    except BpfError as first:
        if first.errno not in (errno.EACCES, errno.EINVAL):
            raise  # not the verifier's judgement (no permission, no such program type)
        log = ctypes.create_string_buffer(_LOG_SIZE)
        try:
            fd = load(1, log)
        except BpfError as second:
            text = log.value.decode(errors="replace")
            raise BpfError(second.errno or errno.EINVAL, what, text) from None
        os.close(fd)  # accepted with the log on: the first refusal was not the verifier's
        raise


def _attachment(cmd: Cmd, ifindex: int, prog_fd: int, hook: AttachType, what: str) -> None:
    # target_ifindex, attach_bpf_fd, attach_type (flags, relative, revision: 0)
    _bpf(cmd, _attr("<III", ifindex, prog_fd, hook), what)


def prog_attach(ifindex: int, prog_fd: int, hook: AttachType) -> None:
    """Attaches a program to a device of the caller's network namespace, after those there
    (tcx). The device holds it until `prog_detach` or until the device goes."""
    _attachment(Cmd.PROG_ATTACH, ifindex, prog_fd, hook, f"attach to ifindex {ifindex} {hook.name}")


def prog_detach(ifindex: int, prog_fd: int, hook: AttachType) -> None:
    _attachment(
        Cmd.PROG_DETACH, ifindex, prog_fd, hook, f"detach from ifindex {ifindex} {hook.name}"
    )


def prog_query(ifindex: int, hook: AttachType, capacity: int = 64) -> list[int]:
    """The ids of the programs attached to a device of the caller's network namespace."""
    ids = ctypes.create_string_buffer(4 * capacity)
    # target, attach_type, query_flags, attach_flags, prog_ids, count
    attr = _attr("<IIIIQI", ifindex, hook, 0, 0, _address(ids), capacity)
    _bpf(Cmd.PROG_QUERY, attr, f"query ifindex {ifindex} {hook.name}")
    count = struct.unpack_from("<I", attr, 24)[0]
    return list(struct.unpack_from(f"<{count}I", ids))


def prog_fd_by_id(prog_id: int) -> int:
    return _bpf(Cmd.PROG_GET_FD_BY_ID, _attr("<I", prog_id), f"open program id {prog_id}")


def map_fd_by_id(map_id: int) -> int:
    return _bpf(Cmd.MAP_GET_FD_BY_ID, _attr("<I", map_id), f"open map id {map_id}")


def _info(fd: int, info: ctypes.Array[ctypes.c_char]) -> None:
    attr = _attr("<IIQ", fd, len(info), _address(info))  # bpf_fd, info_len, info
    _bpf(Cmd.OBJ_GET_INFO_BY_FD, attr, f"describe fd {fd}")


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode(errors="replace")


@dataclass(frozen=True, slots=True)
class ProgInfo:
    id: int
    name: str
    map_ids: tuple[int, ...]


def prog_info(fd: int, max_maps: int = 16) -> ProgInfo:
    maps = ctypes.create_string_buffer(4 * max_maps)
    info = ctypes.create_string_buffer(80)  # struct bpf_prog_info up to its name
    struct.pack_into("<IQ", info, 52, max_maps, _address(maps))  # nr_map_ids, map_ids
    _info(fd, info)
    prog_id, count = struct.unpack_from("<I", info, 4)[0], struct.unpack_from("<I", info, 52)[0]
    name = _text(info.raw[64:80])
    return ProgInfo(prog_id, name, struct.unpack_from(f"<{min(count, max_maps)}I", maps))


@dataclass(frozen=True, slots=True)
class MapInfo:
    id: int
    type: int
    name: str


def map_info(fd: int) -> MapInfo:
    info = ctypes.create_string_buffer(40)  # struct bpf_map_info up to its name
    _info(fd, info)
    map_type, map_id = struct.unpack_from("<II", info)
    return MapInfo(map_id, map_type, _text(info.raw[24:40]))


@dataclass(frozen=True, slots=True)
class TestRun:
    verdict: int  # the program's return value
    packet: bytes  # as the program left it
    mark: int


# sizeof(struct __sk_buff), and where its mark is.
_SK_BUFF_SIZE, _SK_BUFF_MARK = 192, 8


def prog_test_run(prog_fd: int, packet: bytes, mark: int = 0) -> TestRun:
    """Runs a tc program once on an Ethernet frame (BPF_PROG_TEST_RUN, on the loopback device
    of the caller's namespace) without sending anything: how the programs are tested."""
    data_in = ctypes.create_string_buffer(packet, len(packet))
    data_out = ctypes.create_string_buffer(len(packet) + 256)
    ctx_in = ctypes.create_string_buffer(_SK_BUFF_SIZE)
    ctx_out = ctypes.create_string_buffer(_SK_BUFF_SIZE)
    struct.pack_into("<I", ctx_in, _SK_BUFF_MARK, mark)
    # prog_fd, retval, data_size_in/out, data_in/out, repeat, duration, ctx_size_in/out,
    # ctx_in/out
    attr = _attr(
        "<IIIIQQIIIIQQ", prog_fd, 0, len(packet), len(data_out), _address(data_in),
        _address(data_out), 1, 0, _SK_BUFF_SIZE, _SK_BUFF_SIZE, _address(ctx_in),
        _address(ctx_out),
    )  # fmt: skip
    _bpf(Cmd.PROG_TEST_RUN, attr, f"test-run program fd {prog_fd}")
    verdict, _, size_out = struct.unpack_from("<iII", attr, 4)
    mark_out = struct.unpack_from("<I", ctx_out, _SK_BUFF_MARK)[0]
    return TestRun(verdict, data_out.raw[:size_out], mark_out)
