"""Parsers of the /proc files the memory scan reads, and race-safe readers of them.

The parsers are pure functions of text (tested on captured samples). The readers go through a
descriptor of the `/proc/PID` directory (`open_pid_dir`): once opened it pins that process, so a
pid reused by a new process between two reads makes the later reads fail (ESRCH/ENOENT) instead of
silently mixing two processes. A process that is gone is `ProcessGone`, /proc refusing access is
`PermissionError`; callers skip the first and count the second.
"""

from __future__ import annotations

import errno
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PROC: Final = Path("/proc")
DELETED_SUFFIX: Final = " (deleted)"
MEMFD_PREFIX: Final = "/memfd:"

# Kernel-provided code pages present in every process: not injected code.
KERNEL_SPECIAL: Final = frozenset({"[vdso]", "[vsyscall]", "[vvar]", "[vvar_vclock]", "[uprobes]"})
# Paths of memory-only objects that the kernel shows as files: shared anonymous memory (shmem
# behind MAP_SHARED|MAP_ANONYMOUS), System V shared memory segments.
_SHMEM_PREFIXES: Final = ("/dev/zero (deleted)", "/SYSV")
_OCTAL_ESCAPE: Final = re.compile(r"\\([0-7]{3})")
_GONE_ERRNOS: Final = frozenset({errno.ENOENT, errno.ESRCH})


class ProcessGone(Exception):  # noqa: N818 - a state, raised to skip the process
    """The process exited (or its pid now names another process) while it was being read."""


# --- /proc/PID/maps ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MapEntry:
    """One line of /proc/PID/maps."""

    start: int
    end: int
    perms: str  # e.g. "r-xp"; the 4th character is p (private) or s (shared)
    offset: int
    dev: str  # "fe:00"
    inode: int
    path: str  # "" for anonymous memory; "[heap]", "[anon:name]", "/memfd:x (deleted)"...

    @property
    def writable(self) -> bool:
        return self.perms[1] == "w"

    @property
    def executable(self) -> bool:
        return self.perms[2] == "x"

    @property
    def deleted(self) -> bool:
        return self.path.endswith(DELETED_SUFFIX)

    @property
    def kernel_special(self) -> bool:
        return self.path in KERNEL_SPECIAL

    @property
    def memfd(self) -> bool:
        return self.path.startswith(MEMFD_PREFIX)

    @property
    def anonymous(self) -> bool:
        """Backed by no file on a disk: anonymous memory ("", [heap], [stack], [anon:name]),
        memfds and shared memory. The kernel's own pages ([vdso]...) are not."""
        path = self.path
        if not path:
            return True
        if path.startswith("["):
            return not self.kernel_special
        return self.inode == 0 or path.startswith(MEMFD_PREFIX) or path.startswith(_SHMEM_PREFIXES)


def unescape_path(text: str) -> str:
    """The kernel prints a newline in a path as the octal escape \\012 (seq_path); undo it."""
    if "\\" not in text:
        return text
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def parse_maps_line(line: str) -> MapEntry | None:
    """A maps line, or None when malformed. The path is everything after the inode and the
    padding, so it keeps inner spaces ("/opt/my app/lib.so") and the " (deleted)" suffix."""
    line = line.rstrip("\n")
    parts = line.split(None, 5)
    if len(parts) < 5:
        return None
    addr, perms, offset, dev, inode = parts[:5]
    lo, sep, hi = addr.partition("-")
    if not sep or len(perms) != 4:
        return None
    try:
        return MapEntry(
            start=int(lo, 16),
            end=int(hi, 16),
            perms=perms,
            offset=int(offset, 16),
            dev=dev,
            inode=int(inode),
            path=unescape_path(parts[5]) if len(parts) == 6 else "",
        )
    except ValueError:
        return None


def parse_maps(text: str) -> list[MapEntry]:
    """Every well-formed line of a maps text."""
    return [e for e in map(parse_maps_line, text.splitlines()) if e is not None]


# Finding executable lines: "x" never occurs in the hex address range, so a search for the end of
# an executable perms field (x, then p/s/-, then the offset, %08lx) visits few places, at C speed
# (a per-line Python loop cost 2x, an anchored per-line regex 6x the kernel's own work). Each hit
# is then checked and split by the full line pattern.
_EXEC_HINT: Final = re.compile(rb"x[ps-] [0-9a-f]{8,} ")
_EXEC_LINE: Final = re.compile(
    rb"([0-9a-f]+)-([0-9a-f]+) ([r-][w-]x[ps-]) ([0-9a-f]+) (\S+) (\d+) *(.*)"
)


def _interesting(perms: bytes, inode: bytes, path: bytes) -> bool:
    """Could this executable mapping be a finding? A read-only, executable mapping of a file that
    still exists (the text of every library) cannot."""
    return (
        perms[1] == 0x77  # "w"
        or inode == b"0"
        or not path.startswith(b"/")
        or path.endswith(b" (deleted)")
        or path.startswith((b"/memfd:", b"/dev/zero", b"/SYSV"))
    )


@functools.lru_cache(maxsize=8)
def _shortest(names: frozenset[bytes]) -> tuple[bytes, ...]:
    """The names no other one is a part of: liblzma.so stands for liblzma.so.5.6.1 in a search."""
    return tuple(n for n in names if not any(m != n and m in n for m in names))


def parse_executable_maps(
    data: bytes, every: bool = False, names: frozenset[bytes] = frozenset()
) -> list[MapEntry]:
    """The executable mappings of a maps text (whole lines only) that could be findings, or,
    with `every`, all of them (to match mapped libraries against /etc/ld.so.preload). Mappings of
    a file whose name is in `names` (known-backdoored libraries) are always kept."""
    if names and not any(name in data for name in _shortest(names)):
        names = frozenset()  # a substring search at C speed spares the per-line check
    out = []
    last = -1
    for hint in _EXEC_HINT.finditer(data):
        begin = data.rfind(b"\n", 0, hint.start()) + 1
        if begin == last:
            continue  # a second hit in the same line (in its path)
        last = begin
        end = data.find(b"\n", hint.end())
        m = _EXEC_LINE.fullmatch(data, begin, len(data) if end < 0 else end)
        if m is None:
            continue  # the hit was inside a path
        start, end_addr, perms, offset, dev, inode, path = m.groups()
        if (
            not every
            and not _interesting(perms, inode, path)
            and not (names and path[path.rfind(b"/") + 1 :] in names)
        ):
            continue
        out.append(
            MapEntry(
                start=int(start, 16),
                end=int(end_addr, 16),
                perms=perms.decode(),
                offset=int(offset, 16),
                dev=dev.decode(),
                inode=int(inode),
                path=unescape_path(path.decode("utf-8", "surrogateescape")),
            )
        )
    return out


# --- /proc/PID/status ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProcStatus:
    """The fields of /proc/PID/status the scan uses."""

    name: str
    state: str  # one letter: R S D T t Z X I...
    tgid: int
    ppid: int
    tracer_pid: int
    uids: tuple[int, int, int, int]  # real, effective, saved, filesystem
    gids: tuple[int, int, int, int]
    threads: int
    kthread: bool | None  # the "Kthread:" line (Linux 6.x); None on older kernels
    has_mm: bool  # a VmSize line: the process has user memory (kernel threads and zombies do not)

    @property
    def zombie(self) -> bool:
        return self.state in ("Z", "X")

    @property
    def kernel_thread(self) -> bool:
        if self.kthread is not None:
            return self.kthread
        # Older kernels: a live task without memory (an exiting process is rarely caught here).
        return not self.has_mm and not self.zombie


def _ids(value: str) -> tuple[int, int, int, int]:
    parts = [int(p) for p in value.split()[:4]]
    if len(parts) != 4:
        raise ValueError(f"expected 4 ids, got {value!r}")
    return parts[0], parts[1], parts[2], parts[3]


_STATUS_LINE: Final = re.compile(
    r"^(Name|State|Tgid|PPid|TracerPid|Uid|Gid|Kthread|VmSize|Threads):(.*)$", re.MULTILINE
)


def parse_status(text: str) -> ProcStatus:
    """Parses a status text; raises ValueError when a needed line is missing or malformed.
    On the hot path of every scan: one regex pass picks the lines it needs."""
    fields = dict(_STATUS_LINE.findall(text))
    try:
        name = fields.get("Name", "")
        return ProcStatus(
            name=name[1:] if name.startswith("\t") else name.strip(),
            state=fields.get("State", "?").strip()[:1] or "?",
            tgid=int(fields["Tgid"]),
            ppid=int(fields.get("PPid", "0")),
            tracer_pid=int(fields.get("TracerPid", "0")),
            uids=_ids(fields["Uid"]),
            gids=_ids(fields["Gid"]),
            threads=int(fields.get("Threads", "1")),
            kthread=None if "Kthread" not in fields else fields["Kthread"].strip() == "1",
            has_mm="VmSize" in fields,
        )
    except KeyError as exc:
        raise ValueError(f"status has no {exc.args[0]} line") from None


def parse_tracer_pid(text: str) -> int:
    """TracerPid alone, for the status of every thread."""
    for line in text.splitlines():
        if line.startswith("TracerPid:"):
            return int(line[10:])
    return 0


# --- /proc/PID/environ and /etc/ld.so.preload ---------------------------------------------------


def split_preload(value: str) -> tuple[str, ...]:
    """Library names of an LD_PRELOAD value or of /etc/ld.so.preload: ld.so splits on spaces and
    colons (we also split on tabs and newlines, as the file may hold them)."""
    return tuple(p for p in re.split(r"[\s:]+", value) if p)


def preload_from_environ(data: bytes) -> tuple[str, ...]:
    """Libraries named by LD_PRELOAD in a NUL-separated environment, in order, without repeats.

    Every occurrence counts: a duplicated variable must not hide a library (which one ld.so uses
    is an implementation detail). A truncated last entry is still read: the bound is the
    caller's, and a partial name is better evidence than none."""
    libs: list[str] = []
    for entry in data.split(b"\0"):
        if entry.startswith(b"LD_PRELOAD="):
            for lib in split_preload(entry[11:].decode("utf-8", "surrogateescape")):
                if lib not in libs:
                    libs.append(lib)
    return tuple(libs)


def parse_ld_so_preload(text: str) -> tuple[str, ...]:
    """Entries of /etc/ld.so.preload, in order. glibc knows no comments; a `#` line is still
    skipped here, as ld.so only warns that it cannot load such a "library"."""
    lines = (line for line in text.splitlines() if not line.lstrip().startswith("#"))
    out: list[str] = []
    for lib in split_preload("\n".join(lines)):
        if lib not in out:
            out.append(lib)
    return tuple(out)


# --- /proc/PID/exe --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExeLink:
    """What the exe link says: `/usr/bin/sleep`, `/tmp/x (deleted)`, `/memfd:name (deleted)`."""

    text: str

    @property
    def memfd(self) -> bool:
        return self.text.startswith(MEMFD_PREFIX)

    @property
    def deleted(self) -> bool:
        return self.text.endswith(DELETED_SUFFIX) and not self.memfd

    @property
    def memfd_name(self) -> str:
        return self.text[len(MEMFD_PREFIX) :].removesuffix(DELETED_SUFFIX) if self.memfd else ""

    @property
    def path(self) -> str:
        """The path without the " (deleted)" suffix."""
        return self.text.removesuffix(DELETED_SUFFIX)


def parse_stat_start(text: str) -> tuple[str, int, int]:
    """(comm, ppid, start time in clock ticks since boot) from /proc/PID/stat. The comm is between
    the first "(" and the last ")": it may hold spaces and parentheses itself."""
    lpar, rpar = text.index("("), text.rindex(")")
    rest = text[rpar + 2 :].split()
    return text[lpar + 1 : rpar], int(rest[1]), int(rest[19])


# --- readers -----------------------------------------------------------------------------------


def _gone_or_raise(exc: OSError) -> None:
    if exc.errno in _GONE_ERRNOS:
        raise ProcessGone(str(exc)) from None
    raise exc


def open_pid_dir(proc: Path, pid: int) -> int:
    """A descriptor of /proc/PID. Raises ProcessGone, PermissionError or OSError."""
    try:
        return os.open(f"{proc}/{pid}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        _gone_or_raise(exc)
        raise  # unreachable: keeps the type checker sure a descriptor is returned


def read_small(dirfd: int, name: str, limit: int = 65536) -> bytes:
    """Up to `limit` bytes of a file under the pid directory, in as few reads as it takes."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError as exc:
        _gone_or_raise(exc)
        raise
    try:
        chunks: list[bytes] = []
        size = 0
        while size < limit:
            chunk = os.read(fd, min(65536, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError as exc:
        _gone_or_raise(exc)
        raise
    finally:
        os.close(fd)


def readlink_at(dirfd: int, name: str) -> str:
    try:
        return os.readlink(name, dir_fd=dirfd)
    except OSError as exc:
        _gone_or_raise(exc)
        raise


def read_executable_maps(
    dirfd: int, max_bytes: int, every: bool = False, names: frozenset[bytes] = frozenset()
) -> list[MapEntry]:
    """`parse_executable_maps` of the process's maps, read in 64 KiB chunks (a JVM's maps run to
    thousands of lines; only whole lines are parsed, the rest carried over), at most
    `max_bytes` in all."""
    try:
        fd = os.open("maps", os.O_RDONLY | os.O_CLOEXEC, dir_fd=dirfd)
    except OSError as exc:
        _gone_or_raise(exc)
        raise
    try:
        out: list[MapEntry] = []
        rest = b""
        total = 0
        while total < max_bytes:
            try:
                chunk = os.read(fd, 65536)
            except OSError as exc:
                _gone_or_raise(exc)
                raise
            if not chunk:
                break
            total += len(chunk)
            data = rest + chunk
            cut = data.rfind(b"\n") + 1
            out.extend(parse_executable_maps(data[:cut], every, names))
            rest = data[cut:]
        if rest:
            out.extend(parse_executable_maps(rest, every, names))
        return out
    finally:
        os.close(fd)


def resolve_link_at(dirfd: int, path: str, hops: int = 8) -> str:
    """Where a path of the process (as maps names it, from its root) leads when its last
    component is a symlink, followed up to `hops` links: the path itself when it is none, "" when
    it cannot be read. Read through `root` of the `/proc/PID` descriptor, so a container's path is
    looked up in the container's filesystem."""
    for _ in range(hops):
        try:
            target = os.readlink("root" + path, dir_fd=dirfd)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return path  # not a symlink
            if exc.errno == errno.ESRCH:
                raise ProcessGone(str(exc)) from None
            return ""
        path = os.path.normpath(os.path.join(os.path.dirname(path), target))
    return path


def list_pids(proc: Path) -> list[int]:
    """The thread-group ids under the proc root, ascending."""
    return sorted(int(name) for name in os.listdir(proc) if name.isdigit())
