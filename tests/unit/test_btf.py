"""The BTF reader and the kernel layout it yields: synthetic blobs for every bad path, and the
running kernel's own BTF, checked against facts that hold on every kernel."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from alpha.sensors import kernel_layout
from alpha.sensors.btf import ARRAY, INT, PTR, STRUCT, TYPEDEF, UNION, VMLINUX, Btf, BtfError
from alpha.sensors.decode import (
    ID_F_EXE_COMPLETE,
    ID_F_EXE_DELETED,
    ID_F_EXE_PSEUDO,
    ID_F_EXE_TRUNCATED,
    ID_F_NO_EXE,
    exe_path,
    tty_path,
)
from alpha.sensors.ebpf import ProgramConfig, render_program
from alpha.sensors.proctable import parse_stat_tty


class Builder:
    """A little-endian BTF blob, type by type."""

    def __init__(self) -> None:
        self.types = b""
        self.strings = b"\0"
        self.count = 0

    def name(self, text: str) -> int:
        if not text:
            return 0
        off = len(self.strings)
        self.strings += text.encode() + b"\0"
        return off

    def add(self, kind: int, name: str, size_or_type: int, extra: bytes = b"", vlen: int = 0,
            kind_flag: int = 0) -> int:  # fmt: skip
        info = (kind_flag << 31) | (kind << 24) | vlen
        self.types += struct.pack("<III", self.name(name), info, size_or_type) + extra
        self.count += 1
        return self.count

    def int_(self, name: str, size: int) -> int:
        return self.add(INT, name, size, struct.pack("<I", size * 8))

    def struct(self, name: str, size: int, members: list[tuple[str, int, int]], *,
               union: bool = False, bitfields: bool = False) -> int:  # fmt: skip
        extra = b"".join(struct.pack("<III", self.name(n), t, off) for n, t, off in members)
        kind = UNION if union else STRUCT
        return self.add(kind, name, size, extra, len(members), int(bitfields))

    def blob(self) -> bytes:
        hdr = struct.pack(
            "<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings)
        )
        return hdr + self.types + self.strings


def sample() -> bytes:
    b = Builder()
    u32 = b.int_("unsigned int", 4)  # 1
    u64 = b.int_("long long unsigned int", 8)  # 2
    ptr = b.add(PTR, "", 0)  # 3: void *
    kuid = b.struct("", 4, [("val", u32, 0)])  # 4: anonymous
    td = b.add(TYPEDEF, "kuid_t", kuid)  # 5
    arr = b.add(ARRAY, "", 0, struct.pack("<III", u32, u32, 16))  # 6: u32[16]
    inner = b.struct("inner", 16, [("a", u64, 0), ("b", ptr, 64)])  # 7
    anon = b.struct("", 8, [("x", u64, 0), ("y", u32, 0)], union=True)  # 8
    b.struct(
        "outer",
        128,
        [("first", u32, 0), ("id", td, 32), ("in", inner, 64), ("", anon, 192),
         ("tab", arr, 256), ("flag", u32, (3 << 24) | 768)],
        bitfields=True,
    )  # fmt: skip
    return b.blob()


def test_members_through_embedded_structs_unions_and_typedefs() -> None:
    btf = Btf(sample())
    assert len(btf) == 9
    assert btf.member("outer", "first").offset == 0
    assert btf.member("outer", "id").size == 4  # typedef -> anonymous struct
    assert btf.member("outer", "id.val").offset == 4
    assert btf.member("outer", "in.b").offset == 16
    assert btf.member("outer", "in.b").size == 8
    assert btf.member("outer", "x").offset == 24  # inside the anonymous union
    assert btf.member("outer", "y").size == 4
    assert btf.member("outer", "tab").size == 64
    assert btf.member("outer", "flag").bitfield
    assert btf.has_struct("inner")
    assert not btf.has_struct("nope")


@pytest.mark.parametrize(
    ("struct_name", "path", "message"),
    [
        ("nope", "a", "no struct nope"),
        ("outer", "missing", "struct outer has no member missing"),
        ("outer", "in.c", "struct outer.in has no member c"),
    ],
)
def test_missing_struct_or_member_is_named(struct_name: str, path: str, message: str) -> None:
    with pytest.raises(BtfError, match=message):
        Btf(sample()).member(struct_name, path)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:10], "shorter than its header"),
        (lambda b: b"\xeb\x9f" + b[2:], "not BTF"),
        (lambda b: b[:40], "runs past the end"),
        (lambda b: b[:28] + struct.pack("<I", 31 << 24) + b[32:], "unknown BTF kind 31"),
    ],
)
def test_malformed_btf_is_refused(mutate: object, message: str) -> None:
    data = sample()
    with pytest.raises(BtfError, match=message):
        Btf(mutate(data))  # type: ignore[operator]


def test_a_type_record_cut_by_the_section_end_is_refused() -> None:
    data = bytearray(sample())
    type_len = struct.unpack_from("<I", data, 12)[0]
    struct.pack_into("<I", data, 12, type_len - 4)  # the last record loses its tail
    with pytest.raises(BtfError, match="runs past the type section"):
        Btf(bytes(data))


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(BtfError, match="cannot read"):
        Btf.load(tmp_path / "absent")
    with pytest.raises(kernel_layout.LayoutError, match="cannot read"):
        kernel_layout.load(tmp_path / "absent")


def test_a_member_of_the_wrong_size_is_refused() -> None:
    b = Builder()
    u32 = b.int_("unsigned int", 4)
    b.struct("task_struct", 64, [("mm", u32, 0)])
    with pytest.raises(kernel_layout.LayoutError, match=r"task_struct\.mm is 4 bytes"):
        kernel_layout.from_btf(Btf(b.blob()))


@pytest.mark.skipif(not VMLINUX.exists(), reason="this kernel publishes no BTF")
def test_running_kernel_layout() -> None:
    btf = Btf.load()
    layout = kernel_layout.from_btf(btf)
    assert layout.tcp
    # Facts of every kernel: cred starts with its usage counter, then uid, gid, suid, sgid,
    # euid, egid (4 bytes each); path is { mnt, dentry }; vfsmount starts with mnt_root.
    assert layout.offset("OFF_CRED_EUID") - btf.offsetof("cred", "uid") == 16
    assert layout.offset("OFF_CRED_EGID") - layout.offset("OFF_CRED_EUID") == 4
    assert layout.offset("OFF_FILE_DENTRY") - layout.offset("OFF_FILE_MNT") == 8
    assert layout.offset("OFF_VFSMOUNT_ROOT") == 0
    defines = layout.defines()
    assert "#define KERNEL_LAYOUT 1" in defines
    assert f"#define OFF_TASK_MM {btf.offsetof('task_struct', 'mm')}" in defines
    program = ProgramConfig(1, frozenset({"exec"}), frozenset(), True, layout=layout)
    assert "#define KERNEL_LAYOUT 1" in render_program(program)
    assert "#define KERNEL_LAYOUT 1" not in render_program(
        ProgramConfig(1, frozenset({"exec"}), frozenset(), True)
    )


# --- what the kernel's walk becomes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "depth", "flags", "expected"),
    [
        (b"true\0bin\0usr\0", 3, ID_F_EXE_COMPLETE, ("/usr/bin/true", True)),
        (b"memfd:x\0", 1, ID_F_EXE_PSEUDO, ("/memfd:x (deleted)", True)),
        (b"gone\0tmp\0", 2, ID_F_EXE_COMPLETE | ID_F_EXE_DELETED, ("/tmp/gone (deleted)", True)),
        (b"a\0b\0", 2, ID_F_EXE_TRUNCATED, ("/b/a", False)),
        (b"", 0, ID_F_NO_EXE, ("", True)),
        (b"", 0, 0, ("", False)),
        (b"\xff\0", 1, ID_F_EXE_COMPLETE, ("/\\xff", True)),
    ],
)
def test_exe_path(raw: bytes, depth: int, flags: int, expected: tuple[str, bool]) -> None:
    assert exe_path(raw, depth, flags) == expected


def test_tty_names() -> None:
    assert tty_path("pts3") == "pts/3"
    assert tty_path("tty1") == "tty1"
    assert tty_path("ptsx") == "ptsx"
    assert tty_path("") == ""


def _stat(tty_nr: int) -> str:
    return f"42 (a b) S 1 42 42 {tty_nr} 42 0 0 0 0 0 0 0 0 20 0 1 0 100 0 0"


@pytest.mark.parametrize(
    ("nr", "name"),
    [
        (0, ""),
        ((136 << 8) | 3, "pts/3"),
        ((137 << 8) | 1, "pts/257"),
        ((136 << 8) | (1 << 20), "pts/256"),  # minor bits above 8 sit from bit 20
        ((4 << 8) | 2, "tty2"),
        ((4 << 8) | 64, "ttyS0"),
        ((5 << 8) | 1, "console"),
    ],
)
def test_stat_tty(nr: int, name: str) -> None:
    assert parse_stat_tty(_stat(nr)) == name
