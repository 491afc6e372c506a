"""CVE-2024-3094 end to end against a real `qsc-alpha` (eBPF sensor, on-exec memory scan, default
rules, sealed stream): a copy of /bin/sleep named sshd started with LD_PRELOAD of the host's own
liblzma 5.4.x copied as liblzma.so.5.6.1 raises `alpha.backdoored_library_sshd`; the same fake
sshd preloading the real liblzma 5.4 (the benign look-alike) is scanned (its ld_preload alert
arrives) and raises no backdoored-library alert.

Everything lives in the test's scratch directory; the children are killed and reaped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from qsc.common.v1 import classification_pb2, memory_details_pb2
from tests.bpf.actions import killing
from tests.bpf.test_alpha_e2e import (
    WAIT,
    Event,
    SealedStream,
    pki,  # noqa: F401  (the module's PKI fixture)
    running_alpha,
    techniques,
)

pytestmark = pytest.mark.root

BACKDOOR_RULES = ("alpha.backdoored_library_sshd", "alpha.backdoored_library")


@pytest.fixture(scope="module")
def alpha(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SealedStream]:  # noqa: F811
    with running_alpha(pki, tmp_path_factory.mktemp("alpha-backdoor")) as (_, stream):
        yield stream


def host_liblzma() -> Path:
    for libdir in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64"):
        if (Path(libdir) / "liblzma.so.5").exists():
            real = Path(os.path.realpath(Path(libdir) / "liblzma.so.5"))
            assert real.name.startswith("liblzma.so.5.4."), f"{real}: expected xz-utils 5.4"
            return real
    pytest.fail("no liblzma.so.5 on this host (Debian's liblzma5 is always there)")


def fake_sshd(tmp_path: Path) -> Path:
    sshd = tmp_path / "sbin" / "sshd"
    sshd.parent.mkdir()
    shutil.copy(os.path.realpath(shutil.which("sleep") or "/bin/sleep"), sshd)
    return sshd


def start(exe: Path, preload: Path) -> subprocess.Popen[bytes]:
    env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(preload)}
    return subprocess.Popen([str(exe), "60"], env=env, stdin=subprocess.DEVNULL)


def alert(stream: SealedStream, rule: str, pid: int) -> Event:
    return stream.wait_for(
        lambda e: e.rule.id == rule and e.process.pid == pid, f"{rule} of pid {pid}", WAIT
    )


def test_sshd_with_a_backdoored_liblzma(alpha: SealedStream, tmp_path: Path) -> None:
    lib = tmp_path / "lib"
    lib.mkdir()
    bad = lib / "liblzma.so.5.6.1"
    shutil.copy(host_liblzma(), bad)
    sshd = fake_sshd(tmp_path)
    child = start(sshd, bad)
    with killing(child):
        event = alert(alpha, "alpha.backdoored_library_sshd", child.pid)
    assert event.WhichOneof("detail") == "memory_threat"
    threat = event.memory_threat
    assert threat.kind == memory_details_pb2.MEMORY_THREAT_KIND_BACKDOORED_LIBRARY
    assert threat.trigger == memory_details_pb2.MEMORY_SCAN_TRIGGER_EXEC
    assert {r.path for r in threat.regions} == {str(bad)}
    assert event.process.exe == str(sshd)
    assert event.process.comm == "sshd"
    assert event.severity == classification_pb2.SEVERITY_HIGH
    assert set(techniques(event)) == {"T1195.002", "T1556"}
    assert str(bad) in event.summary
    assert not [
        e
        for e in list(alpha.events)
        if e.rule.id == "alpha.backdoored_library" and e.process.pid == child.pid
    ], "sshd is its own rule, not both"


def test_sshd_with_the_real_liblzma_is_quiet(alpha: SealedStream, tmp_path: Path) -> None:
    sshd = fake_sshd(tmp_path)
    child = start(sshd, host_liblzma())
    with killing(child):
        # The exec scan ran: the preload itself is reported...
        preload = alert(alpha, "alpha.ld_preload", child.pid)
        assert preload.memory_threat.kind == memory_details_pb2.MEMORY_THREAT_KIND_LD_PRELOAD
    # ...and that same scan found no backdoored library: its findings are emitted together, the
    # grace only covers their being split across two stream batches.
    time.sleep(1.0)
    hits = [
        e for e in list(alpha.events) if e.rule.id in BACKDOOR_RULES and e.process.pid == child.pid
    ]
    assert not hits, hits[0]
