"""A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): struct member offsets.

bcc compiles the sensor against packaged kernel headers, which need not match the running
kernel: a `task_struct` offset taken from them can be wrong. The running kernel describes its
own layout in BTF; this module reads just enough of that format (types and strings, see the
kernel's Documentation/bpf/btf.rst) to answer "where is `mm` in `task_struct`, and how big is
it", following embedded structs and anonymous unions. The sensor passes the answers to the BPF
program as #defines.

Pure and dependency-free: every function takes bytes, so malformed input is testable.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Final

VMLINUX: Final = Path("/sys/kernel/btf/vmlinux")
MAGIC: Final = 0xEB9F

# BTF kinds (include/uapi/linux/btf.h).
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT = 9, 10, 11, 12, 13, 14, 15, 16
DECL_TAG, TYPE_TAG, ENUM64 = 17, 18, 19

# Bytes after the 12-byte common header, fixed part and per-vlen part, by kind.
_EXTRA: Final[dict[int, tuple[int, int]]] = {
    INT: (4, 0),
    PTR: (0, 0),
    ARRAY: (12, 0),
    STRUCT: (0, 12),
    UNION: (0, 12),
    ENUM: (0, 8),
    FWD: (0, 0),
    TYPEDEF: (0, 0),
    VOLATILE: (0, 0),
    CONST: (0, 0),
    RESTRICT: (0, 0),
    FUNC: (0, 0),
    FUNC_PROTO: (0, 8),
    VAR: (4, 0),
    DATASEC: (0, 12),
    FLOAT: (0, 0),
    DECL_TAG: (4, 0),
    TYPE_TAG: (0, 0),
    ENUM64: (0, 12),
}
_QUALIFIERS: Final = frozenset({TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG})
_MAX_DEPTH: Final = 16  # nesting of anonymous members and qualifier chains


class BtfError(Exception):
    """The BTF is unreadable, malformed, or lacks a struct or member asked for."""


@dataclass(frozen=True, slots=True)
class Member:
    offset: int  # bytes from the start of the outermost struct
    size: int  # bytes of the member's type (0 when it has none, e.g. a flexible array)
    bitfield: bool  # a bitfield cannot be read with a plain load


class Btf:
    """Types of one BTF blob, indexed lazily: only struct and union names are looked up."""

    def __init__(self, data: bytes) -> None:
        if len(data) < 24:
            raise BtfError(f"BTF of {len(data)} bytes is shorter than its header")
        magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data)
        if magic != MAGIC:
            raise BtfError(f"not BTF (magic {magic:#x}; big-endian BTF is not supported)")
        type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
        base = hdr_len
        if hdr_len < 24 or base + type_off + type_len > len(data):
            raise BtfError("BTF type section runs past the end of the data")
        if base + str_off + str_len > len(data):
            raise BtfError("BTF string section runs past the end of the data")
        self._data = data
        self._strings = data[base + str_off : base + str_off + str_len]
        # type id -> byte offset of its record; id 0 is void.
        self._at: list[int] = [0]
        self._named: dict[str, int] = {}
        pos, end = base + type_off, base + type_off + type_len
        while pos < end:
            if pos + 12 > end:
                raise BtfError(f"truncated BTF type record at byte {pos}")
            name_off, info = struct.unpack_from("<II", data, pos)
            kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
            extra = _EXTRA.get(kind)
            if extra is None:
                raise BtfError(f"unknown BTF kind {kind} (type {len(self._at)})")
            self._at.append(pos)
            if kind in (STRUCT, UNION) and name_off:
                self._named.setdefault(self._str(name_off), len(self._at) - 1)
            pos += 12 + extra[0] + extra[1] * vlen
        if pos != end:
            raise BtfError("the last BTF type record runs past the type section")

    @classmethod
    def load(cls, path: Path = VMLINUX) -> Btf:
        try:
            return cls(path.read_bytes())
        except OSError as exc:
            raise BtfError(f"cannot read {path}: {exc.strerror or exc}") from exc

    def __len__(self) -> int:
        return len(self._at) - 1

    def _str(self, off: int) -> str:
        if off >= len(self._strings):
            raise BtfError(f"BTF string offset {off} is out of range")
        end = self._strings.find(b"\0", off)
        return self._strings[off : end if end >= 0 else None].decode("utf-8", "replace")

    def _type(self, tid: int) -> tuple[int, int, int, int, int]:
        """(kind, vlen, kind_flag, size_or_type, record offset) of a type id."""
        if not 0 < tid < len(self._at):
            raise BtfError(f"BTF type id {tid} is out of range")
        pos = self._at[tid]
        _name, info, size_or_type = struct.unpack_from("<III", self._data, pos)
        return (info >> 24) & 0x1F, info & 0xFFFF, info >> 31, size_or_type, pos

    def _resolve(self, tid: int) -> int:
        """Strip typedefs and qualifiers."""
        for _ in range(_MAX_DEPTH):
            if tid == 0:
                return 0
            kind, _, _, ref, _ = self._type(tid)
            if kind not in _QUALIFIERS:
                return tid
            tid = ref
        raise BtfError(f"BTF qualifier chain too deep at type {tid}")

    def sizeof(self, tid: int) -> int:
        tid = self._resolve(tid)
        if tid == 0:
            return 0
        kind, _, _, size, pos = self._type(tid)
        if kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC):
            return size
        if kind == PTR:
            return 8
        if kind == ARRAY:
            elem, _index, nelems = struct.unpack_from("<III", self._data, pos + 12)
            return self.sizeof(int(elem)) * int(nelems)
        return 0

    def struct_id(self, name: str) -> int:
        tid = self._named.get(name)
        if tid is None:
            raise BtfError(f"the kernel's BTF has no struct {name}")
        return tid

    def has_struct(self, name: str) -> bool:
        return name in self._named

    def _find(self, tid: int, name: str, depth: int = 0) -> tuple[int, int, bool] | None:
        """(bit offset, member type id, bitfield) of `name` in struct/union `tid`, looking
        inside anonymous members, which is how C sees them."""
        if depth > _MAX_DEPTH:
            raise BtfError("BTF anonymous members nested too deep")
        kind, vlen, kind_flag, _, pos = self._type(self._resolve(tid))
        if kind not in (STRUCT, UNION):
            return None
        for i in range(vlen):
            m_name, m_type, m_off = struct.unpack_from("<III", self._data, pos + 12 + 12 * i)
            bits, bitsize = (m_off & 0xFFFFFF, m_off >> 24) if kind_flag else (m_off, 0)
            if m_name:
                if self._str(m_name) == name:
                    return bits, m_type, bitsize != 0
            else:
                inner = self._find(m_type, name, depth + 1)
                if inner is not None:
                    return bits + inner[0], inner[1], inner[2]
        return None

    def member(self, struct_name: str, path: str) -> Member:
        """Where `path` ("f_path.dentry", dots through embedded structs) lies in the struct."""
        tid = self.struct_id(struct_name)
        bits = 0
        bitfield = False
        where = struct_name
        for part in path.split("."):
            found = self._find(tid, part)
            if found is None:
                raise BtfError(f"struct {where} has no member {part} in the kernel's BTF")
            off, tid, bitfield = found
            bits += off
            where = f"{where}.{part}"
        if bits % 8:
            raise BtfError(f"{where} is not byte-aligned in the kernel's BTF")
        return Member(bits // 8, self.sizeof(tid), bitfield)

    def offsetof(self, struct_name: str, path: str) -> int:
        return self.member(struct_name, path).offset
