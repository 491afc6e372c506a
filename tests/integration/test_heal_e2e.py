"""Healing end to end on real files in temporary trees: tamper with protected files (content,
mode, owner, xattrs, deletion, symlinks), heal from the vault with validators that pass and fail
(including OpenSSH's real `sshd -t`), the approval flow, the loop guard, and a running FIM
monitor that reports the tampering but not the heal's own write."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from beta.fim.baseline import Baseline, BaselineStore, Change, ChangeKind
from beta.fim.config import FimConfig, WatchPath
from beta.fim.metadata import MetaField
from beta.fim.realtime import FimMonitor
from beta.fim.scanner import Scanner
from beta.heal import (
    HEAL_TEMP_GLOB,
    HEAL_TEMP_SUFFIX,
    BackoffConfig,
    HealConfig,
    HealConflictError,
    Healer,
    HealExpiredError,
    HealRecord,
    HealState,
    ValidatorRule,
    fim_policy,
    with_heal_exclude,
)
from beta.heal.convert import proposal_to_proto, record_to_event
from beta.vault import Vault, VaultConfig
from beta.vault.store import OBJECTS_DIR, slot_of
from crypto.hashing import blake3_256
from crypto.keyring import KeyManager
from qsc.common.v1 import classification_pb2 as cls
from qsc.common.v1 import heal_details_pb2 as pb

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="restores owners: needs root")

SSHD = shutil.which("sshd", path="/usr/sbin:/usr/bin:/sbin")
PY_READS = ("python3", "-c", "import sys; open(sys.argv[1]).read()", "{path}")
PY_FAILS = ("python3", "-c", "import sys; print('bad candidate', file=sys.stderr); sys.exit(3)")
OWNER = (1234, 4321)
XATTR = ("user.qsc.label", b"trusted")


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    etc: Path
    config: FimConfig
    keys: KeyManager
    store: BaselineStore
    vault: Vault
    clock: Clock
    records: list[HealRecord]
    tmp: Path

    def healer(
        self,
        baseline: Callable[[], Baseline] | None = None,
        *,
        validators: tuple[ValidatorRule, ...] | None = None,
        suppress: Callable[[str, bytes | None], None] | None = None,
    ) -> Healer:
        cfg = HealConfig(
            self.tmp / "state" / "heal",
            validators=(ValidatorRule(f"{self.etc}/**", PY_READS),)
            if validators is None
            else validators,
            backoff=BackoffConfig(initial=timedelta(minutes=1), max_attempts=2),
            approval_ttl=timedelta(hours=1),
        )
        return Healer(
            cfg,
            self.vault,
            baseline or self.store.load,
            self.keys,
            policy=fim_policy(self.config),
            suppress=suppress,
            on_record=self.records.append,
            clock=self.clock,
        )

    def changes(self, *paths: Path) -> list[Change]:
        report = Scanner(self.config).check(self.store.load(), [str(p) for p in paths])
        return list(report.changes)

    def baseline_hash(self, path: Path) -> bytes:
        entry = self.store.load().get(str(path))
        assert entry is not None
        assert entry.blake3 is not None
        return entry.blake3


def _write(path: Path, data: str, mode: int = 0o640) -> None:
    path.write_text(data)
    os.chown(path, *OWNER)
    os.chmod(path, mode)
    os.setxattr(path, *XATTR)


@pytest.fixture
def sshd_runtime() -> Iterator[None]:
    if SSHD is None:
        pytest.skip("sshd not installed")
    run_dir = Path("/run/sshd")  # sshd -t insists on its privilege separation directory
    made = not run_dir.exists()
    if made:
        run_dir.mkdir(mode=0o755, parents=True)
    try:
        yield
    finally:
        if made:
            shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    etc = tmp_path / "etc"
    (etc / "ssh").mkdir(parents=True)
    (etc / "approve.d").mkdir()
    hostkey = tmp_path / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)], check=True)
    _write(etc / "app.conf", "listen = 127.0.0.1\nworkers = 4\n")
    _write(etc / "ssh" / "sshd_config", f"HostKey {hostkey}\nPermitRootLogin no\n", 0o600)
    _write(etc / "approve.d" / "motd", "authorised use only\n", 0o644)
    _write(etc / "broken.conf", f"HostKey {hostkey}\nPermitRootLogin maybe-yes\n", 0o600)
    config = with_heal_exclude(
        FimConfig(
            paths=(WatchPath(etc, heal="auto"), WatchPath(etc / "approve.d", heal="approve")),
            baseline=tmp_path / "state" / "fim.qsc",
        )
    )
    assert config.exclude == (HEAL_TEMP_GLOB,)
    keys = KeyManager.create(tmp_path / "keys", "beta")
    store = BaselineStore(config.baseline, keys)
    snap = Scanner(config).snapshot()
    assert snap.entries is not None
    store.create(snap.entries.values())
    vault = Vault(VaultConfig(tmp_path / "state" / "vault", roots=(etc,)), keys)
    w = World(etc, config, keys, store, vault, Clock(), [], tmp_path)
    sync = w.healer().sync_vault()
    assert sorted(sync.captured) == sorted(
        str(p)
        for p in (
            etc / "app.conf",
            etc / "ssh" / "sshd_config",
            etc / "approve.d" / "motd",
            etc / "broken.conf",
        )
    )
    assert sync.failed == ()
    try:
        yield w
    finally:
        vault.close()


def _temps(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if n.endswith(HEAL_TEMP_SUFFIX)]


def _assert_restored(path: Path, content: str, mode: int) -> None:
    st = os.lstat(path)
    assert stat.S_ISREG(st.st_mode)
    assert path.read_text() == content
    assert stat.S_IMODE(st.st_mode) == mode
    assert (st.st_uid, st.st_gid) == OWNER
    assert os.getxattr(path, XATTR[0]) == XATTR[1]
    assert _temps(path.parent) == []


def _tamper_everything(path: Path, content: str) -> None:
    path.write_text(content)
    os.chmod(path, 0o666)
    os.chown(path, 0, 0)
    os.removexattr(path, XATTR[0])
    os.setxattr(path, "user.planted", b"1")


# --- auto heal with validators ----------------------------------------------------------------


def test_heal_restores_content_mode_owner_xattrs(world: World) -> None:
    target = world.etc / "app.conf"
    good = target.read_text()
    inode = target.stat().st_ino
    _tamper_everything(target, "listen = 0.0.0.0\n")
    healer = world.healer()
    [change] = world.changes(target)
    assert change.kind is ChangeKind.CONTENT_CHANGED
    record = healer.on_change(change, trigger_event_id="evt-1")
    assert record is not None
    assert record.state is HealState.VERIFIED, record.failure_reason
    _assert_restored(target, good, 0o640)
    assert "user.planted" not in os.listxattr(target)
    assert target.stat().st_ino != inode  # swapped in by rename, not rewritten in place
    assert record.before_blake3 == blake3_256(b"listen = 0.0.0.0\n")
    assert record.after_blake3 == record.baseline_blake3 == world.baseline_hash(target)
    assert record.vault_blake3 == record.baseline_blake3
    assert record.validator is not None
    assert record.validator.passed
    assert record.trigger_event_id == "evt-1"
    # Only what no restore can keep (inode, ctime) differs; the running monitor absorbs that.
    assert all(set(c.fields) <= {MetaField.INODE, MetaField.CTIME} for c in world.changes(target))
    event = record_to_event(record)
    assert event.heal_action.state == pb.HEAL_STATE_VERIFIED
    assert event.heal_action.before_blake3 == record.before_blake3
    assert event.heal_action.after_blake3 == record.after_blake3
    assert event.heal_action.validator.passed
    assert world.records == [record]


def test_deleted_file_is_recreated(world: World) -> None:
    target = world.etc / "app.conf"
    good = target.read_text()
    target.unlink()
    [change] = world.changes(target)
    assert change.kind is ChangeKind.DELETED
    record = world.healer().on_change(change)
    assert record is not None
    assert record.state is HealState.VERIFIED
    assert record.before_blake3 == b""
    _assert_restored(target, good, 0o640)


def test_sshd_validator_passes_real_config(world: World, sshd_runtime: None) -> None:
    target = world.etc / "ssh" / "sshd_config"
    good = target.read_text()
    target.write_text(good + "PermitRootLogin yes\nPasswordAuthentication yes\n")
    assert SSHD is not None
    healer = world.healer(validators=(ValidatorRule(str(target), (SSHD, "-t", "-f", "{path}")),))
    record = healer.heal(str(target))
    assert record.state is HealState.VERIFIED, record
    assert record.validator is not None
    assert record.validator.passed
    assert record.validator.command.startswith(f"{SSHD} -t -f /proc/")
    _assert_restored(target, good, 0o600)


def test_sshd_validator_rejects_invalid_candidate(world: World, sshd_runtime: None) -> None:
    # The known-good copy of broken.conf is not a valid sshd config (sshd moved on since the
    # baseline): restoring it would break sshd, so nothing is swapped.
    target = world.etc / "broken.conf"
    target.write_text("# attacker's version\n")
    assert SSHD is not None
    healer = world.healer(validators=(ValidatorRule(str(target), (SSHD, "-t", "-f", "{path}")),))
    record = healer.heal(str(target))
    assert record.state is HealState.FAILED
    assert record.validator is not None
    assert not record.validator.passed
    assert record.validator.exit_code == 255
    assert "maybe-yes" in record.validator.message
    assert "validator rejected" in record.failure_reason
    assert target.read_text() == "# attacker's version\n"  # no swap
    assert _temps(target.parent) == []
    event = record_to_event(record)
    assert event.heal_action.state == pb.HEAL_STATE_FAILED
    assert event.severity == cls.SEVERITY_HIGH
    assert not event.heal_action.validator.passed


def test_failing_and_hanging_validators_leave_the_file(world: World) -> None:
    target = world.etc / "app.conf"
    target.write_text("tampered\n")
    healer = world.healer(validators=(ValidatorRule(str(target), (*PY_FAILS, "{path}")),))
    record = healer.heal(str(target))
    assert record.state is HealState.FAILED
    assert record.validator is not None
    assert record.validator.exit_code == 3
    assert "bad candidate" in record.validator.message
    assert target.read_text() == "tampered\n"
    assert _temps(target.parent) == []
    hang = ValidatorRule(
        str(target),
        ("python3", "-c", "import time; time.sleep(30)", "{path}"),
        timeout=timedelta(seconds=0.5),
    )
    world.clock.now += 3600  # past the backoff of the first failed attempt
    t0 = time.monotonic()
    record = world.healer(validators=(hang,)).heal(str(target))
    assert time.monotonic() - t0 < 10
    assert record.validator is not None
    assert record.validator.timed_out
    assert record.state is HealState.FAILED
    assert target.read_text() == "tampered\n"


def test_symlink_in_parent_chain_refused(world: World, tmp_path: Path) -> None:
    target = world.etc / "ssh" / "sshd_config"
    decoy = tmp_path / "decoy"
    decoy.mkdir()
    (decoy / "sshd_config").write_text("attacker's\n")
    shutil.rmtree(world.etc / "ssh")
    (world.etc / "ssh").symlink_to(decoy)  # a restore through it would write into decoy/
    record = world.healer().heal(str(target))
    assert record.state is HealState.FAILED
    assert "symlink" in record.failure_reason
    assert (decoy / "sshd_config").read_text() == "attacker's\n"
    assert _temps(decoy) == []


def test_target_replaced_by_symlink_is_healed_not_followed(world: World, tmp_path: Path) -> None:
    target = world.etc / "app.conf"
    good = target.read_text()
    victim = tmp_path / "victim"
    victim.write_text("do not overwrite me\n")
    target.unlink()
    target.symlink_to(victim)
    record = world.healer().heal(str(target))
    assert record.state is HealState.VERIFIED
    _assert_restored(target, good, 0o640)
    assert victim.read_text() == "do not overwrite me\n"


def test_tampered_vault_copy_is_never_restored(world: World) -> None:
    target = world.etc / "app.conf"
    target.write_text("tampered\n")
    obj = world.vault.config.directory / OBJECTS_DIR / f"{slot_of(str(target))}.1"
    blob = bytearray(obj.read_bytes())
    blob[-1] ^= 1
    obj.write_bytes(bytes(blob))
    record = world.healer().heal(str(target))
    assert record.state is HealState.FAILED
    assert "vault" in record.failure_reason
    assert "failed verification" in record.failure_reason
    assert target.read_text() == "tampered\n"


# --- approval -------------------------------------------------------------------------------


def test_propose_approve_heals(world: World) -> None:
    target = world.etc / "approve.d" / "motd"
    good = target.read_text()
    target.write_text("pwned\n")
    healer = world.healer()
    [change] = world.changes(target)
    assert change.heal == "approve"
    proposed = healer.on_change(change, trigger_event_id="evt-7")
    assert proposed is not None
    assert proposed.state is HealState.PROPOSED
    assert target.read_text() == "pwned\n"  # nothing happens before approval
    assert healer.on_change(change) is None  # the same tampering does not queue twice
    page, _ = healer.list_proposals((HealState.PROPOSED,))
    [p] = page
    assert p.current_blake3 == blake3_256(b"pwned\n")
    with pytest.raises(HealConflictError, match="changed since"):
        healer.approve(p.id, "spiffe://qsc.test/operator/alice", "", blake3_256(b"other"))
    # A restart in between: the proposal survives and is approved on the new instance.
    healer = world.healer()
    done = healer.approve(
        p.id, "spiffe://qsc.test/operator/alice", "reviewed", blake3_256(b"pwned\n")
    )
    assert done.state is HealState.VERIFIED
    assert done.last_action is not None
    assert done.last_action.actor == "spiffe://qsc.test/operator/alice"
    _assert_restored(target, good, 0o644)
    assert [r.state for r in world.records] == [
        HealState.PROPOSED,
        HealState.APPROVED,
        HealState.VERIFIED,
    ]
    msg = proposal_to_proto(done)
    assert msg.state == pb.HEAL_STATE_VERIFIED
    assert msg.actor == "spiffe://qsc.test/operator/alice"
    assert msg.last_action.after_blake3 == world.baseline_hash(target)
    with pytest.raises(HealConflictError):
        healer.approve(p.id, "spiffe://qsc.test/operator/bob")


def test_propose_reject_leaves_file(world: World) -> None:
    target = world.etc / "approve.d" / "motd"
    target.write_text("planned change\n")
    healer = world.healer()
    p = healer.propose(str(target))
    rejected = healer.reject(p.id, "spiffe://qsc.test/operator/alice", "planned")
    assert rejected.state is HealState.REJECTED
    assert target.read_text() == "planned change\n"
    assert world.records[-1].state is HealState.REJECTED
    assert world.records[-1].comment == "planned"


def test_expired_approval_is_refused(world: World) -> None:
    target = world.etc / "approve.d" / "motd"
    target.write_text("pwned\n")
    healer = world.healer()
    p = healer.propose(str(target))
    world.clock.now += 3601
    with pytest.raises(HealExpiredError):
        healer.approve(p.id, "spiffe://qsc.test/operator/alice")
    assert target.read_text() == "pwned\n"
    assert healer.queue.get(p.id).state is HealState.REJECTED
    assert world.records[-1].state is HealState.REJECTED
    # The next proposal starts a fresh window and can be approved.
    again = healer.propose(str(target))
    assert again.id != p.id
    assert healer.approve(again.id, "spiffe://qsc.test/operator/alice").state is (
        HealState.VERIFIED
    )


# --- the loop guard -------------------------------------------------------------------------


def test_tampered_again_right_after_heal_backs_off(world: World) -> None:
    target = world.etc / "app.conf"
    good = target.read_text()
    healer = world.healer()
    target.write_text("attack 1\n")
    assert healer.heal(str(target)).state is HealState.VERIFIED
    world.clock.now += 5
    target.write_text("attack 2\n")  # the attacker is still there
    second = healer.heal(str(target))
    assert second.state is HealState.FAILED
    assert second.loop_guard
    assert "backing off" in second.failure_reason
    assert target.read_text() == "attack 2\n"  # reported, not fought
    event = record_to_event(second)
    assert event.rule.id == "beta.heal.loop_guard"
    # After the backoff one more attempt is allowed (max_attempts=2)...
    world.clock.now += 61
    assert healer.heal(str(target)).state is HealState.VERIFIED
    assert target.read_text() == good
    # ...and then never again for this baseline version, even after a restart.
    target.write_text("attack 3\n")
    world.clock.now += 10 * 3600
    third = world.healer().heal(str(target))
    assert third.loop_guard
    assert "not healing it again" in third.failure_reason
    assert target.read_text() == "attack 3\n"


# --- with the FIM monitor running -----------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.cond = threading.Condition()

    def on_changes(self, changes: Sequence[Change]) -> None:
        with self.cond:
            self.changes.extend(changes)
            self.cond.notify_all()

    def wait_for(self, path: Path, n: int, timeout: float = 5.0) -> list[Change]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.of(path)) < n:
                left = deadline - time.monotonic()
                assert left > 0, [(c.path, c.kind) for c in self.changes]
                self.cond.wait(left)
            return self.of(path)

    def of(self, path: Path) -> list[Change]:
        return [c for c in self.changes if c.path == str(path)]

    def wait_past(self, marker: Path) -> None:
        """Create `marker` under a watched directory and wait for its report: the monitor handles
        inotify in order on one thread, so every write finished before it has been checked."""
        marker.write_text("written after the heal\n")
        [created] = self.wait_for(marker, 1)
        assert created.kind is ChangeKind.CREATED


def test_heal_raises_no_fim_event_but_tampering_does(world: World) -> None:
    rec = Recorder()
    monitor = FimMonitor(world.config, world.store, on_changes=rec.on_changes)
    monitor.start()
    try:
        assert monitor.wait_idle()
        assert rec.changes == []
        healer = world.healer(lambda: monitor.baseline, suppress=monitor.suppress)
        target = world.etc / "ssh" / "sshd_config"
        good = target.read_text()
        _tamper_everything(target, "PermitRootLogin yes\n")
        [change] = rec.wait_for(target, 1)
        assert change.kind is ChangeKind.CONTENT_CHANGED
        record = healer.on_change(change)
        assert record is not None
        assert record.state is HealState.VERIFIED, record.failure_reason
        rec.wait_past(world.etc / "after-heal-1")
        assert len(rec.of(target)) == 1  # only the tampering
        assert all(not c.path.endswith(HEAL_TEMP_SUFFIX) for c in rec.changes)
        assert monitor.stats.suppressed >= 1
        _assert_restored(target, good, 0o600)
        # A metadata-only tampering of another file: reported, healed, the heal silent.
        other = world.etc / "app.conf"
        os.chmod(other, 0o4777)
        [meta_change] = rec.wait_for(other, 1)
        assert meta_change.kind is ChangeKind.METADATA_CHANGED
        record = healer.on_change(meta_change)
        assert record is not None
        assert record.state is HealState.VERIFIED
        rec.wait_past(world.etc / "after-heal-2")
        assert len(rec.of(other)) == 1
        assert stat.S_IMODE(other.stat().st_mode) == 0o640
        # Someone else writing afterwards is reported again.
        target.write_text("PermitRootLogin yes\n")
        rec.wait_for(target, 2)
        assert len(rec.changes) == 3 + 2  # and the two markers
    finally:
        monitor.stop()
