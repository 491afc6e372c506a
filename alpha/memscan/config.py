"""What a memory scan is configured with: `MemScanConfig` and the JIT allowlist."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Final

from alpha.memscan import procfs
from mesh.errors import ConfigError

DEFAULT_JIT_ALLOWLIST: Final = (
    "/usr/lib/jvm/",  # a trailing slash: every executable below (each JDK's bin/java, jshell...)
    "/usr/bin/node",
    "/usr/bin/nodejs",
    "/usr/local/bin/node",
    "/usr/share/dotnet/dotnet",
    "/usr/lib/dotnet/dotnet",
    "/usr/bin/luajit",
    "/usr/lib/chromium/chromium",
    "/opt/google/chrome/chrome",
    "/usr/lib/firefox-esr/firefox-esr",
    "/usr/lib/firefox/firefox",
    "/usr/bin/pypy3",
    "/usr/bin/mono-sgen",
    "/usr/bin/qemu-system-x86_64",
    "/usr/bin/qemu-system-aarch64",
    # Not CPython: without the experimental JIT (3.13+, a build option) it maps no code at run
    # time; with it, add the interpreter's path here.
)

# File names of libraries known to be backdoored: a process mapping one is reported as
# backdoored_library. Exact file names as the package installs them (the kernel shows the real
# file in maps, so a library loaded by its soname appears under its versioned name).
DEFAULT_BACKDOORED_LIBRARIES: Final = (
    # CVE-2024-3094: xz-utils 5.6.0 and 5.6.1 carry a backdoor in liblzma that hooks sshd's RSA
    # key verification (sshd loads liblzma through libsystemd on distributions that patch it).
    "liblzma.so.5.6.0",
    "liblzma.so.5.6.1",
)


# --- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class MemScanConfig:
    """The `[memscan]` section of Alpha's configuration (env: `QSC_ALPHA_MEMSCAN__<FIELD>`).

    Periodic rounds start every `interval` (+/- `jitter` of it, so a fleet does not scan in
    step) and scan `slice_size` processes at a time, pausing between slices so a round uses at
    most `max_cpu_fraction` of one core. On-exec scans run `exec_delay` after an exec (so the new
    image and its libraries are mapped); scans triggered by a W+X mmap/mprotect seen by the
    sensor (`syscall_scan`) run at most once per `rescan_interval` per exec_id; both are bounded
    by `exec_max_per_second` and `exec_max_pending` (beyond: dropped and counted).
    """

    enabled: bool = True  # periodic and triggered scans; on-demand ones are always served
    interval: timedelta = timedelta(seconds=60)
    jitter: float = 0.1
    initial_delay: timedelta = timedelta(seconds=1)
    slice_size: int = 64
    max_cpu_fraction: float = 0.05
    exec_scan: bool = True
    syscall_scan: bool = True
    exec_delay: timedelta = timedelta(milliseconds=200)
    rescan_interval: timedelta = timedelta(seconds=10)
    exec_max_per_second: float = 100.0
    exec_max_pending: int = 1024
    jit_allowlist: tuple[str, ...] = DEFAULT_JIT_ALLOWLIST
    backdoored_libraries: tuple[str, ...] = DEFAULT_BACKDOORED_LIBRARIES  # file names, no "/"
    max_regions: int = 16  # offending mappings carried per finding (the rest: regions_truncated)
    environ_max_bytes: int = 256 * 1024
    maps_max_bytes: int = 64 * 1024 * 1024
    check_threads: bool = True  # TracerPid of every thread: a tracer may attach to one thread
    ld_so_preload: Path = Path("/etc/ld.so.preload")
    ancestry_depth: int = 8
    dedup_max_entries: int = 65536

    def __post_init__(self) -> None:
        if self.interval < timedelta(seconds=1):
            raise ConfigError("interval", "at least 1s")
        if not 0 <= self.jitter < 1:
            raise ConfigError("jitter", "a fraction of the interval, from 0 to below 1")
        if not 0 < self.max_cpu_fraction <= 1:
            raise ConfigError("max_cpu_fraction", "above 0 and at most 1")
        if self.exec_max_per_second <= 0:
            raise ConfigError("exec_max_per_second", "above 0")
        for name in ("initial_delay", "exec_delay", "rescan_interval"):
            if getattr(self, name) < timedelta(0):
                raise ConfigError(name, "not negative")
        for name in (
            "slice_size",
            "exec_max_pending",
            "max_regions",
            "environ_max_bytes",
            "maps_max_bytes",
            "dedup_max_entries",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(name, "at least 1")
        if not 0 <= self.ancestry_depth <= 64:
            raise ConfigError("ancestry_depth", "between 0 and 64")
        for entry in self.jit_allowlist:
            if not entry.startswith("/") or entry == "/":
                raise ConfigError("jit_allowlist", f"{entry!r}: an absolute path, not /")
        for name in self.backdoored_libraries:
            if not name or "/" in name or name in (".", "..") or name != name.strip():
                raise ConfigError("backdoored_libraries", f"{name!r}: a file name, without a /")


class JitAllowlist:
    """Executable paths of JIT runtimes. An entry ending in "/" allows every executable below that
    directory, any other entry that exact file. Entries are matched as written and with symlinks
    resolved (the exe link always shows the resolved path: /usr/bin/java is
    /usr/lib/jvm/.../bin/java). A deleted or memfd executable is never allowlisted."""

    def __init__(self, entries: Iterable[str]) -> None:
        exact: set[str] = set()
        prefixes: set[str] = set()
        for entry in entries:
            for form in {entry, os.path.realpath(entry) + ("/" if entry.endswith("/") else "")}:
                (prefixes if form.endswith("/") else exact).add(form)
        self._exact = frozenset(exact)
        self._prefixes = tuple(sorted(prefixes))

    def allows(self, exe: str) -> bool:
        if not exe or exe.endswith(procfs.DELETED_SUFFIX) or exe.startswith(procfs.MEMFD_PREFIX):
            return False
        return exe in self._exact or exe.startswith(self._prefixes)


class BackdooredLibraries:
    """File names of known-backdoored libraries (`MemScanConfig.backdoored_libraries`).

    `match` takes a mapped path as maps shows it (a " (deleted)" suffix is ignored: a process
    started before the upgrade still runs the backdoored code) and gives the known-bad name it
    carries, or "". `generic` tells whether a path is a less specific name of one of them
    (`liblzma.so.5`, `liblzma.so` for `liblzma.so.5.6.1`): only those are worth resolving as a
    symlink. `watched` holds both sets, as bytes, for the maps parser's filter."""

    def __init__(self, names: Iterable[str]) -> None:
        self.names = frozenset(names)
        generic: set[str] = set()
        for name in self.names:
            stem = name
            # liblzma.so.5.6.1 -> liblzma.so.5.6 -> liblzma.so.5 -> liblzma.so
            while ".so." in stem:
                stem = stem.rsplit(".", 1)[0]
                generic.add(stem)
        self.generic_names = frozenset(generic - self.names)
        self.watched = frozenset(
            n.encode("utf-8", "surrogateescape") for n in self.names | self.generic_names
        )

    def __bool__(self) -> bool:
        return bool(self.names)

    def match(self, path: str) -> str:
        name = os.path.basename(path.removesuffix(procfs.DELETED_SUFFIX))
        return name if name in self.names else ""

    def generic(self, path: str) -> bool:
        return not path.endswith(procfs.DELETED_SUFFIX) and (
            os.path.basename(path) in self.generic_names
        )
