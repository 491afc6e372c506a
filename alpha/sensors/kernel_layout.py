"""The running kernel's struct offsets the sensor reads at exec (and at a socket's close).

Taken from the kernel's own BTF (alpha.sensors.btf), never from the packaged headers bcc
compiles against: on this project's machines those are Debian's 6.1 headers under a newer
kernel, where `task_struct` differs. `KernelLayout.defines()` renders them for the BPF program.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alpha.sensors.btf import VMLINUX, Btf, BtfError

# (define, struct, member path): read with a plain load of the member's size.
_POINTERS = (
    ("OFF_TASK_MM", "task_struct", "mm"),
    ("OFF_TASK_REAL_CRED", "task_struct", "real_cred"),
    ("OFF_TASK_REAL_PARENT", "task_struct", "real_parent"),
    ("OFF_TASK_SIGNAL", "task_struct", "signal"),
    ("OFF_SIGNAL_TTY", "signal_struct", "tty"),
    ("OFF_MM_EXE_FILE", "mm_struct", "exe_file"),
    ("OFF_FILE_DENTRY", "file", "f_path.dentry"),
    ("OFF_FILE_MNT", "file", "f_path.mnt"),
    ("OFF_DENTRY_PARENT", "dentry", "d_parent"),
    ("OFF_DENTRY_NAME", "dentry", "d_name.name"),
    ("OFF_DENTRY_HASH_PPREV", "dentry", "d_hash.pprev"),
    ("OFF_MOUNT_PARENT", "mount", "mnt_parent"),
    ("OFF_MOUNT_MOUNTPOINT", "mount", "mnt_mountpoint"),
    ("OFF_VFSMOUNT_ROOT", "vfsmount", "mnt_root"),
    # fd -> file (-> socket -> sock), cwd
    ("OFF_TASK_FILES", "task_struct", "files"),
    ("OFF_TASK_FS", "task_struct", "fs"),
    ("OFF_FILES_FDT", "files_struct", "fdt"),
    ("OFF_FDT_FD", "fdtable", "fd"),
    ("OFF_FILE_PRIVATE", "file", "private_data"),
    ("OFF_FILE_INODE", "file", "f_inode"),
    ("OFF_SOCKET_SK", "socket", "sk"),
    ("OFF_FS_PWD_MNT", "fs_struct", "pwd.mnt"),
    ("OFF_FS_PWD_DENTRY", "fs_struct", "pwd.dentry"),
    # an executable's identity for the enforcement allow list: (s_dev, i_ino)
    ("OFF_INODE_INO", "inode", "i_ino"),
    ("OFF_INODE_SB", "inode", "i_sb"),
)
_U32 = (
    ("OFF_TASK_TGID", "task_struct", "tgid"),
    ("OFF_CRED_EUID", "cred", "euid"),
    ("OFF_CRED_EGID", "cred", "egid"),
    ("OFF_FDT_MAX_FDS", "fdtable", "max_fds"),
    ("OFF_SB_DEV", "super_block", "s_dev"),
    ("OFF_INODE_RDEV", "inode", "i_rdev"),
    ("OFF_SK_DADDR", "sock_common", "skc_daddr"),
)
_U64 = (
    ("OFF_CRED_CAP_EFFECTIVE", "cred", "cap_effective"),
    ("OFF_CRED_CAP_PERMITTED", "cred", "cap_permitted"),
    # the new image's environment block, read at exec
    ("OFF_MM_ENV_START", "mm_struct", "env_start"),
    ("OFF_MM_ENV_END", "mm_struct", "env_end"),
)
_U16 = (
    ("OFF_INODE_MODE", "inode", "i_mode"),
    ("OFF_SK_FAMILY", "sock_common", "skc_family"),
    ("OFF_SK_DPORT", "sock_common", "skc_dport"),
)
# Present only with CONFIG_AUDIT (loginuid).
_LOGIN = (
    ("OFF_TASK_LOGINUID", "task_struct", "loginuid"),
    ("OFF_TASK_SESSIONID", "task_struct", "sessionid"),
)
_TCP8 = (
    ("OFF_TCP_BYTES_ACKED", "tcp_sock", "bytes_acked"),
    ("OFF_TCP_BYTES_RECEIVED", "tcp_sock", "bytes_received"),
    ("OFF_SK_COOKIE", "sock", "__sk_common.skc_cookie"),
)
_TCP4 = (
    ("OFF_TCP_SEGS_OUT", "tcp_sock", "segs_out"),
    ("OFF_TCP_SEGS_IN", "tcp_sock", "segs_in"),
)
_TCP2 = (("OFF_SK_PROTOCOL", "sock", "sk_protocol"),)


class LayoutError(Exception):
    """The kernel's BTF is missing, or lacks a member the sensor needs."""


@dataclass(frozen=True, slots=True)
class KernelLayout:
    """Offsets (bytes) of the members the sensor reads; `login` and `tcp` are optional."""

    offsets: tuple[tuple[str, int], ...]
    login: bool  # task_struct has loginuid/sessionid (CONFIG_AUDIT)
    tcp: bool  # tcp_sock's byte counters were found
    mount_mnt: int  # offsetof(struct mount, mnt): vfsmount -> mount is a container_of

    def defines(self) -> list[str]:
        lines = ["#define KERNEL_LAYOUT 1", f"#define OFF_MOUNT_MNT {self.mount_mnt}"]
        lines += [f"#define {name} {value}" for name, value in self.offsets]
        if self.tcp:
            lines.append("#define TCP_LAYOUT 1")
        return lines

    def offset(self, name: str) -> int:
        return dict(self.offsets)[name]


def _get(btf: Btf, table: tuple[tuple[str, str, str], ...], size: int) -> list[tuple[str, int]]:
    out = []
    for define, struct_name, path in table:
        m = btf.member(struct_name, path)
        if m.bitfield or m.size != size:
            raise LayoutError(
                f"{struct_name}.{path} is {m.size} bytes{' (a bitfield)' if m.bitfield else ''}"
                f" in the kernel's BTF, expected {size}"
            )
        out.append((define, m.offset))
    return out


def from_btf(btf: Btf) -> KernelLayout:
    try:
        offsets = (
            _get(btf, _POINTERS, 8) + _get(btf, _U32, 4) + _get(btf, _U16, 2) + _get(btf, _U64, 8)
        )
        offsets.append(("OFF_SK_V6_DADDR", btf.offsetof("sock_common", "skc_v6_daddr")))
        mount_mnt = btf.offsetof("mount", "mnt")
        offsets.append(("OFF_TTY_NAME", btf.offsetof("tty_struct", "name")))  # char[64]
    except BtfError as exc:
        raise LayoutError(str(exc)) from exc
    login = True
    try:
        offsets += _get(btf, _LOGIN, 4)
    except (BtfError, LayoutError):
        login = False
    tcp = True
    try:
        offsets += _get(btf, _TCP8, 8) + _get(btf, _TCP4, 4) + _get(btf, _TCP2, 2)
    except (BtfError, LayoutError):
        tcp = False
    return KernelLayout(tuple(offsets), login, tcp, mount_mnt)


def load(path: Path = VMLINUX) -> KernelLayout:
    """The running kernel's layout. Raises LayoutError saying what is missing."""
    try:
        btf = Btf.load(path)
    except BtfError as exc:
        raise LayoutError(str(exc)) from exc
    return from_btf(btf)
