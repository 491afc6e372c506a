"""render_program and its inputs: pure, no kernel. The filter macros are compiled and run with
the host C compiler when there is one, so their meaning is tested, not their spelling."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from alpha.sensors import decode as d
from alpha.sensors.ebpf import (
    OPTIONAL,
    REQUIRED,
    ProgramConfig,
    c_equals_test,
    c_prefix_test,
    render_program,
    tracepoints_of_interest,
)
from alpha.sensors.kernel_layout import KernelLayout
from alpha.sensors.model import PROBES, SensorConfig, SensorUnavailable
from mesh.config import load_config
from mesh.errors import ConfigError

ALL_TPS = frozenset(tracepoints_of_interest())
CC = shutil.which("cc") or shutil.which("gcc")


# A kernel layout as BTF would give it (the offsets do not matter to rendering).
LAYOUT = KernelLayout((("OFF_TASK_MM", 1136),), login=True, tcp=True, mount_mnt=32)


def build(
    cfg: SensorConfig | None = None,
    tps: frozenset[str] = ALL_TPS,
    machine: str = "x86_64",
    layout: KernelLayout | None = LAYOUT,
) -> tuple[ProgramConfig, tuple[str, ...]]:
    return ProgramConfig.build(
        cfg or SensorConfig(),
        self_tgid=4242,
        tracepoints=tps,
        group_dead=True,
        machine=machine,
        layout=layout,
    )


def test_without_the_kernel_layout_the_tcp_probe_is_left_out_saying_why() -> None:
    program, missing = build(layout=None)
    assert "tcp" not in program.probes
    assert any(m.startswith("probe tcp: the kernel's tcp_sock layout is unknown") for m in missing)
    defs = defines(render_program(program))
    assert "KERNEL_LAYOUT" not in defs
    assert "PROBE_TCP" not in defs
    defs = defines(render_program(build()[0]))
    assert defs["KERNEL_LAYOUT"] == "1"
    assert defs["TCP_LAYOUT"] == "1"
    assert defs["OFF_TASK_MM"] == "1136"
    assert defs["PROBE_TCP"] == "1"


def defines(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"#define (\w+)(?:\(\w+\))? ?(.*)", line)
        if m:
            out.setdefault(m.group(1), m.group(2))
    return out


def test_render_carries_own_tgid_sizes_and_probes() -> None:
    program, missing = build()
    assert missing == ()
    text = render_program(program)
    defs = defines(text)
    assert defs["SELF_TGID"] == "4242"
    assert defs["RINGBUF_PAGES"] == "2048"
    assert defs["INFLIGHT_ENTRIES"] == "16384"
    for probe in ("EXEC", "OPEN", "CHMOD", "CHOWN", "UNLINK", "RENAME", "PTRACE", "NET"):
        assert defs[f"PROBE_{probe}"] == "1"
    for probe in ("MEMFD", "MODULE", "BPF", "SETID", "MEMPROT", "SOCKET", "LINK"):
        assert f"PROBE_{probe}" in defs
    # records.h is inlined (bcc gets one text), and the program body follows the defines.
    assert '#include "records.h"' not in text
    assert "struct rec_hdr {" in text
    assert text.index("#define SELF_TGID") < text.index(
        "TRACEPOINT_PROBE(sched, sched_process_exec)"
    )


def test_render_is_deterministic() -> None:
    program, _ = build()
    assert render_program(program) == render_program(program)


def test_disabled_probes_are_not_defined() -> None:
    program, _ = build(SensorConfig(probes=("exec", "ptrace")))
    defs = defines(render_program(program))
    assert "PROBE_EXEC" in defs
    assert "PROBE_PTRACE" in defs
    assert not {"PROBE_OPEN", "PROBE_NET", "PROBE_BPF", "PROBE_MODULE"} & defs.keys()


def test_optional_tracepoints_need_enter_and_exit() -> None:
    tps = ALL_TPS - {"syscalls/sys_exit_openat2", "syscalls/sys_enter_fchmodat2"}
    defs = defines(render_program(build(tps=tps)[0]))
    assert "HAVE_sys_enter_openat2" not in defs  # enter without exit is useless
    assert "HAVE_sys_enter_fchmodat2" not in defs
    assert "HAVE_sys_enter_execveat" in defs
    assert "HAVE_sys_enter_symlink" in defs
    assert "HAVE_sys_enter_link" not in defines(
        render_program(build(tps=ALL_TPS - {"syscalls/sys_exit_link"})[0])
    )
    assert "HAVE_task_newtask" in defs
    assert "HAVE_GROUP_DEAD" in defs


def test_missing_required_tracepoint_drops_probe_with_reason() -> None:
    tps = ALL_TPS - {"syscalls/sys_enter_ptrace"}
    program, missing = build(tps=tps)
    assert "ptrace" not in program.probes
    assert "exec" in program.probes
    assert missing == ("probe ptrace: tracepoints missing: syscalls/sys_enter_ptrace",)


def test_module_probe_uses_raw_syscalls_without_module_tracepoints() -> None:
    # A kernel built without CONFIG_MODULES has no init_module tracepoints (this VM's case).
    no_mod = ALL_TPS - {
        "syscalls/sys_enter_init_module",
        "syscalls/sys_exit_init_module",
        "syscalls/sys_enter_finit_module",
        "syscalls/sys_exit_finit_module",
    }
    program, missing = build(tps=no_mod)
    assert "module" in program.probes
    assert missing == ()
    defs = defines(render_program(program))
    assert "HAVE_sys_enter_finit_module" not in defs
    assert (defs["NR_INIT_MODULE"], defs["NR_FINIT_MODULE"]) == ("175", "313")
    assert (defs["REG_ARG0"], defs["REG_NR"]) == ("di", "orig_ax")
    arm, _ = build(tps=no_mod, machine="aarch64")
    assert arm.module_nrs == (105, 273)
    arm_defs = defines(render_program(arm))
    assert (arm_defs["REG_ARG0"], arm_defs["REG_NR"]) == ("regs[0]", "syscallno")
    # Unknown architecture and no tracepoints: the probe cannot work and says so.
    odd, missing = build(tps=no_mod, machine="riscv64")
    assert "module" not in odd.probes
    assert missing
    assert "module" in missing[0]
    # With the tracepoints, raw_syscalls is not needed.
    defs = defines(render_program(build()[0]))
    assert "HAVE_sys_enter_finit_module" in defs


def test_every_tracepoint_the_c_uses_is_known_to_the_loader() -> None:
    source = (Path(__file__).parents[2] / "alpha/bpf/sensor.bpf.c").read_text()
    used = set(re.findall(r"TRACEPOINT_PROBE\((\w+), (\w+)\)", source))
    known = set(tracepoints_of_interest())
    for cat, event in used:
        assert f"{cat}/{event}" in known, f"{cat}/{event}"
    # Every HAVE_ block in the C is one the loader can define, and vice versa.
    have = set(re.findall(r"HAVE_(sys_enter_\w+|task_\w+)", source))
    assert have == {tp.split("/", 1)[1] for tp in OPTIONAL}
    assert set(REQUIRED) == set(PROBES)


def test_filter_macros_spelled_from_config() -> None:
    cfg = SensorConfig(
        read_prefixes=("/etc/shadow",),
        write_prefixes=(),
        ignore_prefixes=("/proc/",),
        ignore_comms=("noisy",),
        ptrace_requests=(16, 0x4206),
        bpf_commands=(5,),
        relative_reads=True,
        net_unix=True,
        socket_families=(17, 16),
    )
    defs = defines(render_program(build(cfg)[0]))
    assert defs["SOCKET_FAMILY_WANTED"] == "((f) == 17 || (f) == 16)"
    # By default only AF_PACKET, the family the rules judge; none: the probe reports nothing.
    assert defines(render_program(build()[0]))["SOCKET_FAMILY_WANTED"] == "((f) == 17)"
    none = defines(render_program(build(SensorConfig(socket_families=()))[0]))
    assert none["SOCKET_FAMILY_WANTED"] == "(0)"
    assert defs["MATCH_WRITE_PREFIX"] == "(0)"
    assert defs["PTRACE_WANTED"] == "((r) == 16 || (r) == 16902)"
    assert defs["BPF_CMD_WANTED"] == "((c) == 5)"
    assert defs["RELATIVE_READS"] == "1"
    assert defs["NET_UNIX"] == "1"
    assert c_prefix_test("p", "/e") == "(p[0] == 47 && p[1] == 101)"
    assert c_equals_test("c", "ab", 16) == "(c[0] == 97 && c[1] == 98 && c[2] == 0)"
    # A 15-byte name fills comm up to its NUL; a 16-byte one (impossible) has no terminator.
    assert c_equals_test("c", "x" * 16, 16).count("==") == 16


HARNESS = r"""
#include <stdio.h>
#include <string.h>
%(defines)s
static int path_wanted(const char *p, int write) {
    if (p[0] != '/') return write ? RELATIVE_WRITES : RELATIVE_READS;
    if (MATCH_IGNORE_PREFIX(p)) return 0;
    if (write && MATCH_WRITE_PREFIX(p)) return 1;
    return MATCH_READ_PREFIX(p);
}
int main(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i += 2) {
        char buf[256] = {0};
        strncpy(buf, argv[i + 1], 255);
        if (argv[i][0] == 'c') {
            char comm[16] = {0};
            strncpy(comm, argv[i + 1], 16);
            printf("%%d\n", IGNORE_COMM(comm) ? 1 : 0);
        } else {
            printf("%%d\n", path_wanted(buf, argv[i][0] == 'w'));
        }
    }
    return 0;
}
"""


@dataclass
class Harness:
    binary: Path
    cases: list[tuple[str, str]] = field(default_factory=list)

    def run(self, cases: list[tuple[str, str]]) -> list[int]:
        argv = [str(self.binary)]
        for mode, value in cases:
            argv += [mode, value]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    if CC is None:
        pytest.skip("no C compiler to run the filter macros")
    cfg = SensorConfig(
        read_prefixes=("/etc/shadow", "/root/.ssh/"),
        write_prefixes=("/etc/", "/usr/bin/"),
        ignore_prefixes=("/etc/ld.so.cache",),
        ignore_comms=("noisy", "fifteen-chars-x"),
        relative_writes=True,
        relative_reads=False,
    )
    text = render_program(build(cfg)[0])
    wanted = ("RELATIVE_", "MATCH_", "IGNORE_COMM")
    lines = [
        ln for ln in text.splitlines() if ln.startswith("#define") and any(w in ln for w in wanted)
    ]
    src = tmp_path / "h.c"
    src.write_text(HARNESS % {"defines": "\n".join(lines)})
    binary = tmp_path / "h"
    subprocess.run([CC, "-O0", "-o", str(binary), str(src)], check=True)
    return Harness(binary)


def test_filter_macros_behave(harness: Harness) -> None:
    cases = [
        ("r", "/etc/shadow"),  # 1: sensitive read
        ("r", "/etc/shadow-"),  # 1: prefix semantics (the backup is sensitive too)
        ("r", "/etc/passwd"),  # 0: not a read prefix
        ("w", "/etc/passwd"),  # 1: write below /etc
        ("w", "/etc/ld.so.cache"),  # 0: ignored wins
        ("r", "/etc/ld.so.cache"),  # 0
        ("w", "/usr/bin/x"),  # 1
        ("w", "/usr/lib/x"),  # 0
        ("r", "/root/.ssh/id_ed25519"),  # 1
        ("w", "relative/file"),  # 1: relative writes reported
        ("r", "relative/file"),  # 0: relative reads not
        ("r", ""),  # 0
        ("w", "/et"),  # 0: shorter than the prefix
        ("c", "noisy"),  # 1
        ("c", "noisy2"),  # 0: exact names, not prefixes
        ("c", "nois"),  # 0
        ("c", "fifteen-chars-x"),  # 1
    ]
    assert harness.run(cases) == [1, 1, 0, 1, 0, 0, 1, 0, 1, 1, 0, 0, 0, 1, 0, 0, 1]


def test_records_h_constants_match_decoder() -> None:
    header = (Path(__file__).parents[2] / "alpha/bpf/records.h").read_text()
    consts = {m[0]: int(m[1]) for m in re.findall(r"#define (\w+) (\d+)\b", header)}
    kinds = {k: v for k, v in consts.items() if k.startswith("KIND_")}
    for name, value in kinds.items():
        assert getattr(d, name) == value, name
    assert set(d.KIND_NAMES) == {v for k, v in kinds.items() if k != "KIND_MAX"}
    sc = {v: k for k, v in consts.items() if k.startswith("SC_")}
    assert len(d.SYSCALL_NAMES) == max(sc) + 1
    for number, name in sc.items():
        expected = "" if name == "SC_NONE" else name[3:].lower()
        assert d.SYSCALL_NAMES[number] == expected
    for name in (
        "CNT_FILTERED",
        "CNT_EXEC_NO_STASH",
        "CNT_MAX",
        "PATH_LEN",
        "ARGS_LEN",
        "ARG_LEN",
        "MAX_ARGS",
        "SOCKADDR_LEN",
        "BPF_NAME_LEN",
        "COMM_LEN",
        "EXEC_F_ARGS_TRUNCATED",
        "EXEC_F_NO_STASH",
        "EXIT_F_CODE_KNOWN",
    ):
        assert getattr(d, name) == consts[name], name


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"probes": ("exec", "kprobes")}, "probes"),
        ({"read_prefixes": ("etc/shadow",)}, "read_prefixes"),
        ({"write_prefixes": ("/" + "x" * 300,)}, "write_prefixes"),
        ({"ignore_comms": ("a-very-long-command-name",)}, "ignore_comms"),
        ({"ring_buffer_pages": 3}, "ring_buffer_pages"),
        ({"queue_max_events": 0}, "queue_max_events"),
        ({"ancestry_depth": 100}, "ancestry_depth"),
        ({"socket_families": (0,)}, "socket_families"),
        ({"socket_families": (17, 99)}, "socket_families"),
    ],
)
def test_sensor_config_rejects(kwargs: dict[str, object], field_name: str) -> None:
    with pytest.raises(ConfigError) as err:
        SensorConfig(**kwargs)  # type: ignore[arg-type]
    assert field_name in str(err.value)


@dataclass(frozen=True)
class _Alpha:
    sensor: SensorConfig = field(default_factory=SensorConfig)


def test_env_override_disables_ebpf() -> None:
    env = {
        "QSC_ALPHA_SENSOR__DISABLE_EBPF": "1",
        "QSC_ALPHA_SENSOR__FALLBACK": "proc_poll",
        "QSC_ALPHA_SENSOR__IGNORE_COMMS": "a,b",
    }
    cfg = load_config(_Alpha, component="alpha", path=None, env=env)
    assert cfg.sensor.disable_ebpf is True
    assert cfg.sensor.fallback == "proc_poll"
    assert cfg.sensor.ignore_comms == ("a", "b")
    assert load_config(_Alpha, component="alpha", path=None, env={}).sensor == SensorConfig()


def test_preflight_refuses_without_privileges(monkeypatch: pytest.MonkeyPatch) -> None:
    from alpha.sensors import ebpf

    monkeypatch.setattr(ebpf, "_capabilities", lambda: 0)
    with pytest.raises(SensorUnavailable, match="not privileged for eBPF"):
        ebpf.preflight()
    # CAP_BPF + CAP_PERFMON without CAP_SYS_ADMIN is enough to get past that check.
    monkeypatch.setattr(ebpf, "_capabilities", lambda: (1 << 39) | (1 << 38))
    monkeypatch.setattr(ebpf, "find_tracefs", lambda: None)
    monkeypatch.setattr(ebpf, "TRACEFS_CANDIDATES", (Path("/nonexistent/tracing"),))
    with pytest.raises(SensorUnavailable, match="tracefs"):
        ebpf.preflight()
