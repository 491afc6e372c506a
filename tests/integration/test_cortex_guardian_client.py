"""cortex.guardian_client over real mTLS channels (certificates from crypto.pki), no mocks.

- Beta: the real `qsc-beta` process that `test_beta_e2e` builds (its `world` and `running`
  fixtures, one process for this module): ScanIntegrity's stream into `on_progress`, VerifyBackup
  of a clean set and of the set with a flipped bit, ApproveHeal of an unknown proposal, RejectHeal
  of a real proposal (and deciding it twice), refused arguments.
- Alpha: an in-process `ComponentServer(component="alpha")` on its own loop thread serving the
  real `AlphaServicer` over the real memory-scan core (the non-BPF half of `alpha.app`):
  ScanMemory of a child with an RWX mapping, of this process, of a missing and an invalid pid.
- Roles: `soar` and `alpha` certificates are refused on the guardians' calls (mesh.authz).
- Deadlines: a 1 ms call against a real scan raises GuardianUnavailableError at once; a dead port,
  and a server that never finishes the TLS handshake, are unavailable within the call's deadline
  (the channel's transport check spends the call's deadline, not its own default).

Beta and Alpha cases need root (Beta changes owners; Alpha reads other processes' /proc).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

from alpha.memscan import MemoryScanner
from alpha.memscan.service import ScanMemoryCore
from alpha.pipeline import Pipeline
from alpha.rules import RuleEngine
from alpha.server import AlphaServicer
from cortex.errors import (
    GuardianArgumentError,
    GuardianBusyError,
    GuardianCallError,
    GuardianDeniedError,
    GuardianNotFoundCallError,
    GuardianPreconditionError,
    GuardianUnavailableError,
)
from cortex.guardian_client import GuardianClient, GuardianClientConfig
from crypto.pki import init_ca, issue_leaf, load_ca, write_leaf
from mesh.channel import ChannelConfig
from mesh.config import TlsFiles
from mesh.server import ComponentServer, ServerConfig
from qsc.beta.v1 import beta_service_pb2 as bpb
from qsc.common.v1 import event_pb2, memory_details_pb2
from qsc.common.v1 import heal_details_pb2 as hpb
from qsc.common.v1 import integrity_details_pb2 as ipb
from tests.integration import test_beta_e2e as e2e
from tests.integration.loop_thread import LoopThread
from tests.integration.test_beta_e2e import BetaProcess, Collector, World
from tests.integration.test_memscan_live import MAPPER, PY, _free_pid, first_line, spawn

HOST = "127.0.0.1"
T = TypeVar("T")
# A machine capability, not unfinished work: Beta sets file owners, Alpha reads every /proc.
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root (Beta chowns files, Alpha reads other processes' /proc)"
)

# test_beta_e2e's module fixtures, served to this module: a World made with the real tools and
# one running qsc-beta (plus its sealed Subscribe as cortex, used here to wait for proposals).
world = e2e.world
running = e2e.running


def _run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def _config(tls: TlsFiles, port: int, **timeouts: timedelta) -> GuardianClientConfig:
    return GuardianClientConfig(ChannelConfig(target=f"{HOST}:{port}", tls=tls), **timeouts)


# --- certificates for the in-process Alpha and the dead port ------------------------------------


@dataclass(frozen=True)
class Pki:
    directory: Path

    def files(self, stem: str) -> TlsFiles:
        return TlsFiles.in_dir(self.directory, stem)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca = init_ca(d, "guardian-client.test")
    for role, host in [("cortex", "c1"), ("alpha", HOST), ("soar", "s1"), ("beta", "b1")]:
        write_leaf(issue_leaf(ca, role, host), d, ca.cert)
    return Pki(d)


@pytest.fixture(scope="module")
def tls(pki: Pki) -> TlsFiles:
    return pki.files("cortex-c1")


# --- dead port ----------------------------------------------------------------------------------


def test_dead_port_is_unavailable_within_the_deadline(tls: TlsFiles) -> None:
    _run(_dead_port(tls))


async def _dead_port(tls: TlsFiles) -> None:
    config = GuardianClientConfig(
        ChannelConfig(target="127.0.0.1:1", tls=tls), heal_timeout=timedelta(seconds=2)
    )
    async with GuardianClient(config) as client:
        started = time.monotonic()
        with pytest.raises(GuardianUnavailableError, match="UNAVAILABLE"):
            await client.reject_heal("p-1")
        assert time.monotonic() - started < 2.5


# --- Beta: the real qsc-beta process ------------------------------------------------------------


def _beta_tls(world: World) -> TlsFiles:
    return TlsFiles.in_dir(world.pki, "cortex-c1")


@needs_root
def test_scan_integrity_streams_progress_and_changes_then_returns_the_summary(
    world: World, running: tuple[BetaProcess, Collector]
) -> None:
    proc, _ = running
    tampered = world.etc / "hosts"
    tampered.write_text("6.6.6.6 bank.example # guardian client\n")
    seen: list[bpb.ScanIntegrityResponse] = []

    async def scan() -> bpb.ScanSummary:
        async with GuardianClient(_config(_beta_tls(world), proc.port)) as beta:
            return await beta.scan_integrity(
                bpb.ScanIntegrityRequest(mode=bpb.SCAN_MODE_FULL), on_progress=seen.append
            )

    summary = _run(scan())
    kinds = [m.WhichOneof("payload") for m in seen]
    assert kinds, "on_progress got nothing"
    assert kinds[0] == "progress"
    assert "summary" not in kinds  # the summary is returned, not passed to on_progress
    assert kinds == sorted(
        kinds, key=lambda k: ["progress", "change"].index(str(k))
    )  # progress, then changes
    changed = [m.change for m in seen if m.HasField("change")]
    (hosts,) = [c for c in changed if c.path == str(tampered)]
    assert hosts.change == ipb.FILE_CHANGE_CONTENT_CHANGED
    last = [m.progress for m in seen if m.HasField("progress")][-1]
    assert last.files_scanned == last.files_total == summary.files_scanned
    assert summary.mode == bpb.SCAN_MODE_FULL
    assert summary.content_changed >= 1
    assert summary.files_scanned >= 7
    assert not summary.baseline_tampered


@needs_root
def test_scan_integrity_of_an_unwatched_path_is_an_argument_error(
    world: World, running: tuple[BetaProcess, Collector]
) -> None:
    proc, _ = running

    async def scan() -> None:
        async with GuardianClient(_config(_beta_tls(world), proc.port)) as beta:
            with pytest.raises(GuardianArgumentError) as caught:
                await beta.scan_integrity(bpb.ScanIntegrityRequest(paths=["/nowhere"]))
            assert caught.value.code == "INVALID_ARGUMENT"

    _run(scan())


@needs_root
def test_verify_backup_passes_a_clean_set_and_finds_the_flipped_bit(
    world: World, running: tuple[BetaProcess, Collector]
) -> None:
    proc, _ = running

    async def verify() -> tuple[bpb.VerifyBackupResponse, bpb.VerifyBackupResponse]:
        async with GuardianClient(_config(_beta_tls(world), proc.port)) as beta:
            clean = await beta.verify_backup("clean", whole_set=True)
            # The world fixture flipped bit 4 of byte 1000 of flip/a.dump while Beta was down.
            flip = await beta.verify_backup("flip", whole_set=True)
            with pytest.raises(GuardianNotFoundCallError) as caught:
                await beta.verify_backup("nope")
            assert caught.value.code == "NOT_FOUND"
            with pytest.raises(GuardianArgumentError):
                await beta.verify_backup("")
            return clean, flip

    clean, flip = _run(verify())
    assert clean.result.backup_set == "clean"
    assert clean.result.passed
    assert clean.result.files_checked == clean.result.files_expected == 2
    assert not flip.result.passed
    assert [(f.kind, f.path) for f in flip.result.failures] == [
        (ipb.BACKUP_FAILURE_KIND_CONTENT_MISMATCH, "a.dump")
    ]


@needs_root
def test_approve_heal_of_an_unknown_or_unnamed_proposal(
    world: World, running: tuple[BetaProcess, Collector]
) -> None:
    proc, _ = running

    async def approve() -> None:
        async with GuardianClient(_config(_beta_tls(world), proc.port)) as beta:
            # beta.heal.queue raises a NotFoundError: mesh.status maps it to NOT_FOUND.
            with pytest.raises(GuardianNotFoundCallError) as caught:
                await beta.approve_heal("no-such-proposal", comment="reviewed")
            assert caught.value.code == "NOT_FOUND"
            assert "no-such-proposal" in caught.value.details
            with pytest.raises(GuardianArgumentError, match="proposal_id"):
                await beta.approve_heal("")
            with pytest.raises(GuardianArgumentError, match="expected_current_blake3"):
                await beta.approve_heal("no-such-proposal", expected_current_blake3=b"short")

    _run(approve())


@needs_root
def test_reject_heal_of_a_real_proposal_then_deciding_again_is_a_precondition_error(
    world: World, running: tuple[BetaProcess, Collector]
) -> None:
    proc, events = running
    events.wait_for_sensor("heal")
    target = world.healed / "sudoers"
    target.write_text("ALL ALL=(ALL) NOPASSWD: ALL\n")
    proposed = events.wait_for("proposal", e2e._heal(target, hpb.HEAL_STATE_PROPOSED)).heal_action

    async def reject() -> bpb.HealProposal:
        async with GuardianClient(_config(_beta_tls(world), proc.port)) as beta:
            rejected = await beta.reject_heal(proposed.proposal_id, comment="intended change")
            with pytest.raises(GuardianPreconditionError) as caught:
                await beta.reject_heal(proposed.proposal_id)
            assert caught.value.code == "FAILED_PRECONDITION"
            with pytest.raises(GuardianPreconditionError):
                await beta.approve_heal(proposed.proposal_id)
            return rejected

    rejected = _run(reject())
    assert rejected.id == proposed.proposal_id
    assert rejected.state == hpb.HEAL_STATE_REJECTED
    assert rejected.comment == "intended change"
    assert rejected.actor == "spiffe://e2e.test/cortex/c1"  # from the client's certificate
    events.wait_for("rejected", e2e._heal(target, hpb.HEAL_STATE_REJECTED))
    assert "NOPASSWD" in target.read_text()  # left as it is


@needs_root
@pytest.mark.parametrize("role", ["soar", "alpha"])
def test_beta_refuses_a_role_not_allowed_to_call_it(
    role: str,
    world: World,
    running: tuple[BetaProcess, Collector],
    tmp_path: Path,
) -> None:
    proc, _ = running
    ca = load_ca(world.pki)
    files = write_leaf(issue_leaf(ca, role, "intruder"), tmp_path, ca.cert)
    tls = TlsFiles(files.cert, files.key, files.ca_cert)

    async def call() -> None:
        async with GuardianClient(_config(tls, proc.port)) as beta:
            with pytest.raises(GuardianDeniedError) as caught:
                await beta.verify_backup("clean")
            assert caught.value.code == "PERMISSION_DENIED"
            assert role in caught.value.details
            with pytest.raises(GuardianDeniedError):
                await beta.scan_integrity()
            with pytest.raises(GuardianDeniedError):
                await beta.reject_heal("p-1")

    _run(call())


@needs_root
def test_a_1ms_scan_integrity_of_a_slow_scan_is_unavailable_at_once(
    world: World, running: tuple[BetaProcess, Collector]
) -> None:
    proc, _ = running
    big = world.etc / "big.img"  # 512 MiB, sparse: hashing it takes Beta ~0.1 s
    with big.open("wb") as f:
        f.truncate(512 << 20)
    request = bpb.ScanIntegrityRequest(mode=bpb.SCAN_MODE_FULL, paths=[str(big)])

    async def call() -> tuple[bpb.ScanSummary, set[tuple[type[Exception], str]]]:
        async with GuardianClient(_config(_beta_tls(world), proc.port)) as beta:
            assert (await beta.verify_backup("clean")).result.passed  # connected and checked
            started = time.monotonic()
            with pytest.raises(GuardianUnavailableError) as caught:
                await beta.scan_integrity(request, timeout=timedelta(milliseconds=1))
            assert time.monotonic() - started < 0.5
            assert caught.value.code == "DEADLINE_EXCEEDED"
            # The client still works; Beta refuses a second scan (RESOURCE_EXHAUSTED: busy)
            # until the abandoned one has noticed it was cancelled.
            deadline = time.monotonic() + 10
            refusals: set[tuple[type[Exception], str]] = set()
            while True:
                try:
                    return await beta.scan_integrity(request), refusals
                except GuardianCallError as exc:
                    if exc.code != "RESOURCE_EXHAUSTED" or time.monotonic() > deadline:
                        raise
                    refusals.add((type(exc), exc.code))
                await asyncio.sleep(0.05)

    try:
        summary, refusals = _run(call())
    finally:
        big.unlink()
    assert refusals <= {(GuardianBusyError, "RESOURCE_EXHAUSTED")}
    assert summary.files_scanned == 1
    assert summary.bytes_hashed == 512 << 20


def test_a_calls_deadline_bounds_a_server_that_never_finishes_the_handshake(
    tls: TlsFiles,
) -> None:
    with socket.socket() as silent:  # accepts TCP (the kernel does), never speaks TLS
        silent.bind((HOST, 0))
        silent.listen(8)
        port = silent.getsockname()[1]

        async def call() -> float:
            config = GuardianClientConfig(
                ChannelConfig(
                    target=f"{HOST}:{port}", tls=tls, default_timeout=timedelta(seconds=3)
                ),
                heal_timeout=timedelta(milliseconds=300),
            )
            async with GuardianClient(config) as client:
                started = time.monotonic()
                with pytest.raises(GuardianUnavailableError):
                    await client.reject_heal("p-1")
                return time.monotonic() - started

        elapsed = _run(call())
    assert elapsed < 1.5, f"a 300 ms call took {elapsed:.1f} s"


# --- Alpha: an in-process ComponentServer serving the real AlphaServicer ------------------------


class AlphaThread(LoopThread):
    """`ComponentServer(component="alpha")` with the real AlphaServicer (rules pipeline and the
    memory-scan core wired as alpha.app does, without the eBPF sources), on its own loop."""

    def __init__(self, tls: TlsFiles) -> None:
        self.events: list[event_pb2.Event] = []
        super().__init__()
        self.server = self.run(self._build(tls))
        self.port = self.run(self.server.start())

    async def _build(self, tls: TlsFiles) -> ComponentServer:
        pipeline = Pipeline(RuleEngine.default(), self.events.extend)
        core = ScanMemoryCore(MemoryScanner(), emit=self.events.extend)
        server = ComponentServer(ServerConfig(tls=tls, listen=f"{HOST}:0"), component="alpha")
        server.add_service(AlphaServicer(pipeline, core).binding())
        return server

    def close(self) -> None:
        self.run(self.server.stop(timedelta(0)))
        self.close_loop()


@pytest.fixture(scope="module")
def alpha(pki: Pki) -> Iterator[AlphaThread]:
    server = AlphaThread(pki.files(f"alpha-{HOST}"))
    try:
        yield server
    finally:
        server.close()


@needs_root
def test_scan_memory_finds_a_childs_rwx_mapping_and_scans_this_process(
    alpha: AlphaThread, tls: TlsFiles
) -> None:
    with spawn([PY, "-c", MAPPER, "rwx"]) as rwx:
        first_line(rwx)  # mapped

        async def scan() -> None:
            async with GuardianClient(_config(tls, alpha.port)) as client:
                one = await client.scan_memory((rwx.pid,))
                assert one.processes_scanned == 1
                assert list(one.missing_pids) == []
                assert [f.process.pid for f in one.findings] == [rwx.pid]
                threat = one.findings[0].threat
                assert threat.kind == memory_details_pb2.MEMORY_THREAT_KIND_WRITABLE_EXECUTABLE
                assert threat.trigger == memory_details_pb2.MEMORY_SCAN_TRIGGER_ON_DEMAND
                assert one.duration.ToNanoseconds() > 0

                before = len(alpha.events)
                quiet = await client.scan_memory((rwx.pid,), skip_events=True)
                assert [f.process.pid for f in quiet.findings] == [rwx.pid]
                assert len(alpha.events) == before

                me = await client.scan_memory((os.getpid(),), skip_events=True)
                assert me.processes_scanned == 1
                assert all(f.process.pid == os.getpid() for f in me.findings)

        _run(scan())
    # The first scan emitted its finding as an event; skip_events kept the second one quiet.
    assert [e.memory_threat.kind for e in alpha.events if e.process.pid == rwx.pid] == [
        memory_details_pb2.MEMORY_THREAT_KIND_WRITABLE_EXECUTABLE
    ]


@needs_root
def test_scan_memory_of_a_missing_or_invalid_pid(alpha: AlphaThread, tls: TlsFiles) -> None:
    async def scan() -> None:
        async with GuardianClient(_config(tls, alpha.port)) as client:
            free = _free_pid()
            with pytest.raises(GuardianNotFoundCallError, match=str(free)):
                await client.scan_memory((free,))
            partial = await client.scan_memory((os.getpid(), free), skip_events=True)
            assert list(partial.missing_pids) == [free]
            assert partial.processes_scanned == 1
            with pytest.raises(GuardianArgumentError, match="pid_max"):
                await client.scan_memory((2**31,))

    _run(scan())


@needs_root
@pytest.mark.parametrize("stem", ["soar-s1", "beta-b1"])
def test_alpha_refuses_a_role_not_allowed_to_call_it(
    stem: str, alpha: AlphaThread, pki: Pki
) -> None:
    async def scan() -> None:
        async with GuardianClient(_config(pki.files(stem), alpha.port)) as client:
            with pytest.raises(GuardianDeniedError) as caught:
                await client.scan_memory((os.getpid(),))
            assert caught.value.code == "PERMISSION_DENIED"
            assert isinstance(caught.value, GuardianCallError)

    _run(scan())


@needs_root
def test_a_1ms_scan_memory_of_every_process_is_unavailable_at_once(
    alpha: AlphaThread, tls: TlsFiles
) -> None:
    async def scan() -> None:
        async with GuardianClient(_config(tls, alpha.port)) as client:
            await client.scan_memory((os.getpid(),), skip_events=True)  # connected and checked
            started = time.monotonic()
            with pytest.raises(GuardianUnavailableError) as caught:
                await client.scan_memory(skip_events=True, timeout=timedelta(milliseconds=1))
            assert caught.value.code == "DEADLINE_EXCEEDED"
            assert time.monotonic() - started < 0.5

    _run(scan())
