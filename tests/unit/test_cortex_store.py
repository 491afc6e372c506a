"""The Cortex event store: sealed, exactly once, queryable, tamper-evident, refusing bad state.

Real SQLite files in tmp_path, a real keyring (`crypto.keyring`), a real certificate from a
test CA signing checkpoints.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import hmac
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from cortex import fields
from cortex.errors import (
    CheckpointFileError,
    CortexError,
    StoreArgumentError,
    StoreConflictError,
    StoreIntegrityError,
    StoreOpenError,
    StoreReadOnlyError,
)
from cortex.filter import parse
from cortex.store import (
    CheckpointSigner,
    Position,
    SqliteEventStore,
    StoreConfig,
    StoreCursorStore,
    codec,
    export_checkpoint,
    read_checkpoint_file,
)
from cortex.store.sqlite import BLIND_LABEL, BLIND_PURPOSE, DB_FILE, NONCES_DIR
from crypto import pki
from crypto.keyring import KeyManager
from crypto.subkeys import derive_subkey, gcm_key
from mesh.errors import FailedPreconditionError
from mesh.ids import uuid7
from mesh.stream.cursor import StoredCursor
from qsc.common.v1 import classification_pb2, event_pb2

REPO = Path(__file__).resolve().parents[2]
GUARDIAN = "alpha-web-1"
SPIFFE = "spiffe://example.org/alpha/web-1"
T0 = 1_800_000_000 * 10**9
USERS = ["root", "alice", "bob"]
PATHS = ["/etc/shadow", "/tmp/a", "/var/log/auth.log"]


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.create_ca("example.org")


@pytest.fixture(scope="module")
def signer(ca: pki.CertificateAuthority) -> CheckpointSigner:
    leaf = pki.issue_leaf(ca, "cortex", "cortex-1")
    return CheckpointSigner(leaf.key, leaf.cert)


@pytest.fixture
def keys(tmp_path: Path) -> KeyManager:
    return KeyManager.create(tmp_path / "keys", "cortex")


@pytest.fixture
def config(tmp_path: Path) -> StoreConfig:
    return StoreConfig(tmp_path / "store", checkpoint_every=25)


@pytest.fixture
def store(
    config: StoreConfig, keys: KeyManager, signer: CheckpointSigner
) -> Iterator[SqliteEventStore]:
    s = SqliteEventStore.open(config, keys, signer=signer, create=True)
    yield s
    s.close()


def event(
    seq: int, guardian: str = GUARDIAN, *, rng: random.Random | None = None
) -> event_pb2.Event:
    rng = rng or random.Random(seq)
    e = event_pb2.Event(
        id=uuid7(),
        seq=seq,
        severity=classification_pb2.Severity.ValueType(rng.randint(1, 5)),
        category=classification_pb2.Category.ValueType(rng.randint(1, 5)),
        summary=f"event {seq}",
    )
    e.guardian.id = guardian
    e.guardian.host = "web-1"
    e.time.FromNanoseconds(T0 + rng.randint(0, 10**12))
    e.rule.id = rng.choice(["alpha.shadow_read", "alpha.ptrace", "alpha.ssh_brute"])
    for technique in rng.sample(["T1003.008", "T1055", "T1110"], rng.randint(0, 2)):
        e.rule.techniques.add(id=technique)
    e.process.exe = rng.choice(["/usr/bin/cat", "/tmp/x"])
    if rng.random() < 0.5:
        e.auth_event.user = rng.choice(USERS)
        e.auth_event.source.address = "192.0.2.7"
    else:
        e.file_access.path = rng.choice(PATHS)
    return e


def batch(first: int, n: int) -> list[event_pb2.Event]:
    return [event(s) for s in range(first, first + n)]


def fill(store: SqliteEventStore, batches: int = 4, size: int = 10) -> list[event_pb2.Event]:
    stored: list[event_pb2.Event] = []
    for b in range(batches):
        events = batch(b * size + 1, size)
        assert store.append_batch(GUARDIAN, events, StoredCursor(SPIFFE, (b + 1) * size)) == size
        stored.extend(events)
    return stored


def db(config: StoreConfig) -> sqlite3.Connection:
    """A raw connection, as an attacker with write access to the file would have."""
    return sqlite3.connect(config.db_path, isolation_level=None)


def reopen(
    config: StoreConfig, keys: KeyManager, signer: CheckpointSigner | None = None
) -> SqliteEventStore:
    if signer is None:
        return SqliteEventStore.open(config, keys, readonly=True)
    return SqliteEventStore.open(config, keys, signer=signer)


# --- round trip, idempotence, queries ----------------------------------------------------------


def test_round_trip(store: SqliteEventStore) -> None:
    stored = fill(store)
    for e in stored:
        assert store.get(e.id) == e
    assert store.get(uuid7()) is None
    assert store.cursor(GUARDIAN) == StoredCursor(SPIFFE, 40)
    assert store.cursor("beta-web-1") is None
    page = store.query(limit=1000)
    assert len(page.events) == 40
    assert page.next is None
    times = [e.time.ToNanoseconds() for e in page.events]
    assert times == sorted(times)


def test_reappend_is_exactly_once(store: SqliteEventStore) -> None:
    events = batch(1, 10)
    assert store.append_batch(GUARDIAN, events, StoredCursor(SPIFFE, 10)) == 10
    assert store.append_batch(GUARDIAN, events, StoredCursor(SPIFFE, 10)) == 0
    # An overlapping redelivery (same seqs, even with new ids) stores only the new seqs.
    overlap = batch(6, 10)
    assert store.append_batch(GUARDIAN, overlap, StoredCursor(SPIFFE, 15)) == 5
    # Duplicates inside one batch count once.
    assert store.append_batch(GUARDIAN, [event(16), event(16)], StoredCursor(SPIFFE, 16)) == 1
    seqs = [e.seq for e in store.query(limit=100).events]
    assert sorted(seqs) == list(range(1, 17))
    assert store.get(events[7].id) == events[7]  # the first copy of seq 8 is the one kept
    assert store.get(overlap[2].id) is None
    assert store.cursor(GUARDIAN) == StoredCursor(SPIFFE, 16)
    # A redelivered batch never moves the cursor back.
    store.append_batch(GUARDIAN, events, StoredCursor(SPIFFE, 10))
    assert store.cursor(GUARDIAN) == StoredCursor(SPIFFE, 16)
    assert store.verify().ok


def test_bad_batches_are_refused(store: SqliteEventStore) -> None:
    with pytest.raises(StoreArgumentError, match="of guardian 'beta-web-1'"):
        store.append_batch(GUARDIAN, [event(1, "beta-web-1")], None)
    unnumbered = event(1)
    unnumbered.seq = 0
    with pytest.raises(StoreArgumentError, match="lacks a seq or an id"):
        store.append_batch(GUARDIAN, [unnumbered], None)
    store.append_batch(GUARDIAN, [event(1)], StoredCursor(SPIFFE, 1))
    with pytest.raises(StoreArgumentError, match="belongs to"):
        store.append_batch(GUARDIAN, [], StoredCursor("spiffe://example.org/alpha/web-2", 5))
    reused = event(2)
    reused.id = store.query(limit=1).events[0].id
    with pytest.raises(StoreConflictError):
        store.append_batch(GUARDIAN, [reused], StoredCursor(SPIFFE, 2))
    # Nothing of the refused batch was stored, the cursor did not move, the chain is whole.
    assert len(store.query(limit=10).events) == 1
    assert store.cursor(GUARDIAN) == StoredCursor(SPIFFE, 1)
    assert store.verify().ok
    assert isinstance(StoreConflictError("x"), CortexError)


def test_query_pages_in_both_directions(store: SqliteEventStore) -> None:
    # Events without a time sort first ascending, last descending, by rowid among themselves.
    untimed = [event(100 + i) for i in range(3)]
    for e in untimed:
        e.ClearField("time")
    store.append_batch(GUARDIAN, untimed[:2], None)
    stored = fill(store, batches=3, size=10)
    store.append_batch("alpha-web-2", [], None)
    store.append_batch(GUARDIAN, untimed[2:], None)
    rowid = {e.id: i for i, e in enumerate([*untimed[:2], *stored, *untimed[2:]])}
    every = stored + untimed
    key = [(e.HasField("time"), e.time.ToNanoseconds(), rowid[e.id]) for e in every]
    for descending in (False, True):
        seen: list[str] = []
        after: Position | None = None
        while True:
            page = store.query(descending=descending, after=after, limit=4)
            seen.extend(e.id for e in page.events)
            if page.next is None:
                break
            after = Position.parse(page.next.token())
        assert len(seen) == len(set(seen)) == len(every)
        by_id = {e.id: k for e, k in zip(every, key, strict=True)}
        order = [by_id[i] for i in seen]
        assert order == sorted(order, reverse=descending)


def test_filters_over_the_store_agree_with_memory(store: SqliteEventStore) -> None:
    stored = fill(store, batches=5, size=20)
    filters = [
        'user = "alice"',
        'file.path = "/etc/shadow"',
        'process.exe = "/tmp/x" AND severity >= HIGH',
        'mitre = "T1003*"',
        'NOT user = "root"',
        'rule.id = "alpha.ptrace" OR source_address = "192.0.2.7"',
        "category = FILE",
    ]
    for text in filters:
        f = parse(text)
        got = {e.id for e in store.query(f.to_sql(store.blind), limit=1000).events}
        assert got == {e.id for e in stored if f.matches(e)}, text


def test_blind_terms_are_keyed_hmacs(store: SqliteEventStore, keys: KeyManager) -> None:
    key = derive_subkey(keys.active_key(BLIND_PURPOSE), BLIND_LABEL)
    expected = hmac.new(key, b"user\x00alice", hashlib.sha256).digest()
    assert store.blind("user", "alice") == expected
    assert store.blind("user", "alice") != store.blind("file.path", "alice")
    with pytest.raises(StoreArgumentError):
        store.blind("host", "web-1")


def test_plain_sensitive_values_never_reach_the_disk(
    store: SqliteEventStore, config: StoreConfig
) -> None:
    e = event(1)
    e.ClearField("file_access")
    e.auth_event.user = "very-secret-user"
    e.process.exe = "/opt/very-secret-exe"
    e.process.args.append("--password=hunter2-very-secret")
    store.append_batch(GUARDIAN, [e], StoredCursor(SPIFFE, 1))
    store.close()
    raw = b"".join(p.read_bytes() for p in config.directory.rglob("*") if p.is_file())
    assert b"very-secret" not in raw
    assert GUARDIAN.encode() in raw  # the clear columns are there, as documented


def test_bad_positions_and_limits(store: SqliteEventStore) -> None:
    assert Position.parse(Position(None, 7).token()) == Position(None, 7)
    assert Position.parse(Position(-5, 7).token()) == Position(-5, 7)
    for token in ("", "x.1", "t1", "t1.x", "n.1.2"):
        with pytest.raises(StoreArgumentError):
            Position.parse(token)
    with pytest.raises(StoreArgumentError):
        store.query(limit=0)


def test_cursor_store_adapter(store: SqliteEventStore) -> None:
    cursors = StoreCursorStore(store, GUARDIAN)

    async def run() -> tuple[StoredCursor | None, StoredCursor | None]:
        before = await cursors.load()
        await cursors.commit(StoredCursor(SPIFFE, 7))
        return before, await cursors.load()

    assert asyncio.run(run()) == (None, StoredCursor(SPIFFE, 7))
    store.append_batch(GUARDIAN, batch(1, 9), StoredCursor(SPIFFE, 9))
    assert asyncio.run(cursors.load()) == StoredCursor(SPIFFE, 9)
    assert "alpha-web-1" in str(cursors)


# --- crash safety -------------------------------------------------------------------------------

_WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cortex.store import CheckpointSigner, SqliteEventStore, StoreConfig
    from crypto.keyring import KeyManager
    from mesh.ids import uuid7
    from mesh.stream.cursor import StoredCursor
    from qsc.common.v1 import event_pb2

    base = Path(sys.argv[1])
    SPIFFE = "spiffe://example.org/alpha/web-1"
    key = serialization.load_pem_private_key((base / "signer.key").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((base / "signer.crt").read_bytes())
    keys = KeyManager.open(base / "keys")
    store = SqliteEventStore.open(
        StoreConfig(base / "store", checkpoint_every=7), keys,
        signer=CheckpointSigner(key, cert), create=True,
    )
    cursor = store.cursor("alpha-web-1")
    seq = 0 if cursor is None else cursor.seq
    print("ready", seq, flush=True)
    while True:
        events = []
        for s in range(seq + 1, seq + 6):
            e = event_pb2.Event(id=uuid7(), seq=s)
            e.guardian.id = "alpha-web-1"
            e.time.FromNanoseconds(1_800_000_000 * 10**9 + s)
            e.auth_event.user = f"user{s % 3}"
            events.append(e)
        # Each batch is redelivered once (as after a reconnect) before the cursor moves on.
        store.append_batch("alpha-web-1", events, StoredCursor(SPIFFE, seq + 5))
        store.append_batch("alpha-web-1", events[:3], StoredCursor(SPIFFE, seq + 3))
        seq += 5
    """
)


@pytest.mark.slow
def test_sigkill_at_any_point_neither_loses_nor_duplicates(
    tmp_path: Path, keys: KeyManager, signer: CheckpointSigner
) -> None:
    (tmp_path / "writer.py").write_text(_WRITER)
    (tmp_path / "signer.key").write_bytes(
        signer.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "signer.crt").write_bytes(signer.certificate_pem)
    rng = random.Random(1)
    nonces: set[bytes] = set()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'proto'}"}
    for _ in range(6):
        proc = subprocess.Popen(
            [sys.executable, str(tmp_path / "writer.py"), str(tmp_path)],
            stdout=subprocess.PIPE,
            cwd=REPO,
            env=env,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("ready"), line
        time.sleep(rng.uniform(0.05, 0.4))  # let it append for a while, then kill it mid-batch
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        store = SqliteEventStore.open(StoreConfig(tmp_path / "store"), keys, readonly=True)
        try:
            cursor = store.cursor(GUARDIAN)
            assert cursor is not None
            assert cursor.seq > 0
            seqs = [e.seq for e in store.query(limit=10_000).events]
            assert sorted(seqs) == list(range(1, cursor.seq + 1))  # no loss, no duplicate
            report = store.verify()
            assert report.ok, report.problem
        finally:
            store.close()
    with db(StoreConfig(tmp_path / "store")) as conn:
        rows = conn.execute("SELECT nonce FROM events").fetchall()
    nonces = {r[0] for r in rows}
    assert len(nonces) == len(rows)  # never a nonce twice across all those restarts


def test_nonces_never_repeat_across_reopen_and_rotation(
    config: StoreConfig, keys: KeyManager, signer: CheckpointSigner
) -> None:
    seq = 0
    for round_ in range(4):
        s = SqliteEventStore.open(config, keys, signer=signer, create=True)
        s.append_batch(GUARDIAN, batch(seq + 1, 10), StoredCursor(SPIFFE, seq + 10))
        seq += 10
        s.close()
        if round_ == 1:
            assert keys.rotate(force=True)
    with db(config) as conn:
        rows = conn.execute("SELECT key_id, nonce FROM events").fetchall()
    assert len({n for _, n in rows}) == len(rows) == 40
    assert len({k for k, _ in rows}) == 2  # sealed under both epochs' keys...
    s = reopen(config, keys)
    assert len(s.query(limit=100).events) == 40  # ...and both still open
    assert s.verify().ok
    s.close()
    counters = sorted((config.directory / NONCES_DIR).glob("*.json"))
    assert len(counters) == 2


# --- AAD binding ---------------------------------------------------------------------------------


def test_moved_ciphertext_does_not_open(store: SqliteEventStore, config: StoreConfig) -> None:
    stored = fill(store, batches=1)
    with db(config) as conn:
        conn.execute(
            "UPDATE events SET (nonce, ciphertext) = "
            "(SELECT nonce, ciphertext FROM events WHERE rowid = 2) WHERE rowid = 5"
        )
    with pytest.raises(StoreIntegrityError, match=r"record 5 \(guardian alpha-web-1, seq 5\)"):
        store.get(stored[4].id)
    assert isinstance(StoreIntegrityError("x"), FailedPreconditionError)
    assert store.get(stored[1].id) == stored[1]


def test_payload_aad_binds_guardian_seq_event_and_key(
    store: SqliteEventStore, keys: KeyManager, config: StoreConfig
) -> None:
    e = event(1)
    store.append_batch(GUARDIAN, [e], None)
    with db(config) as conn:
        key_id, nonce, ciphertext = conn.execute(
            "SELECT key_id, nonce, ciphertext FROM events"
        ).fetchone()
    from crypto.aead import RawAead
    from crypto.errors import DecryptionError

    key = gcm_key(keys.active_key("event-store"), "event-store-aes-256-gcm", store.store_id)
    aead = RawAead(key)
    good = codec.payload_aad(store.store_id, GUARDIAN, 1, e.id, key_id)
    assert event_pb2.Event.FromString(aead.decrypt(nonce, ciphertext, good)) == e
    for aad in (
        codec.payload_aad(store.store_id, "alpha-web-2", 1, e.id, key_id),
        codec.payload_aad(store.store_id, GUARDIAN, 2, e.id, key_id),
        codec.payload_aad(store.store_id, GUARDIAN, 1, uuid7(), key_id),
        codec.payload_aad(store.store_id, GUARDIAN, 1, e.id, key_id + "x"),
        codec.payload_aad("0" * 32, GUARDIAN, 1, e.id, key_id),
    ):
        with pytest.raises(DecryptionError):
            aead.decrypt(nonce, ciphertext, aad)


# --- tamper evidence -----------------------------------------------------------------------------


def _tamper(config: StoreConfig, sql: str, *params: object) -> None:
    with db(config) as conn:
        conn.execute(sql, params)


TAMPERING = [
    (
        "payload byte",
        "UPDATE events SET ciphertext = substr(ciphertext, 1, 10) || "
        "x'00' || substr(ciphertext, 12) WHERE rowid = 17",
        17,
        "chain hash",
    ),
    ("clear column", "UPDATE events SET severity = 1 WHERE rowid = 12", 12, "chain hash"),
    ("time column", "UPDATE events SET time_ns = 5 WHERE rowid = 3", 3, "chain hash"),
    ("deleted row", "DELETE FROM events WHERE rowid = 9", 10, "records 9..9"),
    (
        "index term",
        "UPDATE event_terms SET term = x'00' WHERE event_rowid = 14 AND term = x'01'",
        14,
        "chain hash",
    ),
]


@pytest.mark.parametrize(
    ("what", "sql", "rowid", "reason"), TAMPERING, ids=[t[0] for t in TAMPERING]
)
def test_verify_names_the_first_bad_record(
    store: SqliteEventStore,
    config: StoreConfig,
    keys: KeyManager,
    what: str,
    sql: str,
    rowid: int,
    reason: str,
) -> None:
    fill(store)
    for e in store.query(limit=100).events:  # make sure every record has a MITRE term
        assert e.seq
    with db(config) as conn:
        conn.execute(
            "INSERT OR IGNORE INTO event_terms (event_rowid, field, term) "
            "VALUES (14, 'mitre', x'01')"
        )
    if what != "index term":
        # The helper term above is itself a tampering: undo it for the other cases.
        _tamper(config, "DELETE FROM event_terms WHERE event_rowid = 14 AND term = x'01'")
    _tamper(config, sql)
    report = store.verify()
    assert not report.ok
    assert report.problem is not None
    assert report.problem.rowid == rowid, report.problem
    assert reason in report.problem.reason
    if what != "deleted row":
        assert report.problem.guardian_id == GUARDIAN
    assert f"record {rowid}" in str(report.problem)


def test_swapped_rows_are_found(store: SqliteEventStore, config: StoreConfig) -> None:
    fill(store)
    with db(config) as conn:
        conn.execute("UPDATE events SET rowid = -1 WHERE rowid = 6")
        conn.execute("UPDATE event_terms SET event_rowid = -1 WHERE event_rowid = 6")
        conn.execute("UPDATE events SET rowid = 6 WHERE rowid = 7")
        conn.execute("UPDATE event_terms SET event_rowid = 6 WHERE event_rowid = 7")
        conn.execute("UPDATE events SET rowid = 7 WHERE rowid = -1")
        conn.execute("UPDATE event_terms SET event_rowid = 7 WHERE event_rowid = -1")
    report = store.verify()
    assert report.problem is not None
    assert report.problem.rowid == 6
    assert report.problem.seq == 7  # what now sits at rowid 6
    assert "reordered" in report.problem.reason


def test_inserted_rows_are_found(store: SqliteEventStore, config: StoreConfig) -> None:
    fill(store)
    # An insertion that even recomputes the chain: the forged payload does not open.
    with db(config) as conn:
        row = list(conn.execute("SELECT * FROM events WHERE rowid = 40").fetchone())
        terms = conn.execute(
            "SELECT field, term FROM event_terms WHERE event_rowid = 40"
        ).fetchall()
    forged = [41, *row[1:4], 999, *row[5:9], uuid7(), *row[10:13], b"\x00" * len(row[13])]
    forged.append(codec.chain_hash(row[14], codec.encode_row(forged, terms)))
    with db(config) as conn:
        conn.execute(f"INSERT INTO events VALUES ({', '.join('?' * 15)})", forged)
        conn.executemany("INSERT INTO event_terms VALUES (41, ?, ?)", [tuple(t) for t in terms])
    report = store.verify()
    assert report.problem is not None
    assert report.problem.rowid == 41
    assert report.problem.seq == 999
    assert "does not open" in report.problem.reason
    # Terms pointing at no record are inserted terms.
    _tamper(config, "DELETE FROM events WHERE rowid = 41")
    _tamper(config, "DELETE FROM event_terms WHERE event_rowid = 41")
    _tamper(config, "INSERT INTO event_terms VALUES (77, 'user', x'00')")
    report = store.verify()
    assert report.problem is not None
    assert report.problem.rowid == 77
    assert "does not exist" in report.problem.reason


def test_rewritten_chain_is_caught_by_the_payload_and_the_head(
    store: SqliteEventStore, config: StoreConfig
) -> None:
    fill(store, batches=1)  # 10 records, no checkpoint in between (every 25)
    with db(config) as conn:
        conn.execute("UPDATE events SET host = 'elsewhere' WHERE rowid = 4")
        prev = conn.execute("SELECT chain FROM events WHERE rowid = 3").fetchone()[0]
        for rowid in range(4, 11):
            row = conn.execute(
                "SELECT rowid, time_ns, guardian_id, host, seq, category, severity, rule_id, "
                "kind, event_id, stored_ns, key_id, nonce, ciphertext FROM events WHERE rowid = ?",
                (rowid,),
            ).fetchone()
            terms = conn.execute(
                "SELECT field, term FROM event_terms WHERE event_rowid = ?", (rowid,)
            ).fetchall()
            prev = codec.chain_hash(prev, codec.encode_row(row, terms))
            conn.execute("UPDATE events SET chain = ? WHERE rowid = ?", (prev, rowid))
    report = store.verify()
    assert report.problem is not None
    assert report.problem.rowid == 4
    assert "clear column host does not match its payload" in report.problem.reason


def test_truncated_tail_against_an_exported_checkpoint(
    tmp_path: Path, store: SqliteEventStore, config: StoreConfig, keys: KeyManager
) -> None:
    fill(store, batches=2)  # 20 records
    with db(config) as conn:
        old_head = conn.execute("SELECT value FROM store_meta WHERE name = 'head'").fetchone()[0]
        old_max_cp = conn.execute("SELECT max(id) FROM checkpoints").fetchone()[0] or 0
    store.append_batch(GUARDIAN, batch(21, 30), StoredCursor(SPIFFE, 50))
    cp = store.checkpoint()
    out = tmp_path / "offsite" / "cp.json"
    out.parent.mkdir()
    export_checkpoint(out, cp, store._signer.certificate)  # type: ignore[union-attr]
    exported, cert = read_checkpoint_file(out)
    assert exported == cp
    store.close()
    # Roll the database back to 20 records, head and checkpoints included: consistent on its own.
    with db(config) as conn:
        conn.execute("DELETE FROM events WHERE rowid > 20")
        conn.execute("DELETE FROM event_terms WHERE event_rowid > 20")
        conn.execute("DELETE FROM checkpoints WHERE id > ?", (old_max_cp,))
        conn.execute("UPDATE store_meta SET value = ? WHERE name = 'head'", (old_head,))
    s = reopen(config, keys)
    try:
        assert s.verify().ok  # nothing in the database can tell
        report = s.verify(checkpoint=exported, certificate=cert)
        assert not report.ok
        assert report.problem is not None
        assert "truncated tail" in report.problem.reason
        assert "covers 50 records, the store ends at record 20" in report.problem.reason
    finally:
        s.close()


def test_truncated_tail_without_export_is_found_by_the_head(
    store: SqliteEventStore, config: StoreConfig, keys: KeyManager, signer: CheckpointSigner
) -> None:
    fill(store, batches=3)
    store.close()
    _tamper(config, "DELETE FROM events WHERE rowid > 27")
    _tamper(config, "DELETE FROM event_terms WHERE event_rowid > 27")
    s = reopen(config, keys)
    report = s.verify()
    s.close()
    assert report.problem is not None
    assert "truncated tail" in report.problem.reason
    with pytest.raises(StoreOpenError, match="truncated tail or edited"):
        reopen(config, keys, signer)


def test_edited_checkpoint_and_checkpoint_files(
    tmp_path: Path, store: SqliteEventStore, config: StoreConfig
) -> None:
    fill(store)
    cp = store.checkpoint()
    out = tmp_path / "cp.json"
    export_checkpoint(out, cp, store._signer.certificate)  # type: ignore[union-attr]
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    text = out.read_text()
    edited = tmp_path / "edited.json"
    edited.write_text(text.replace(f'"count": {cp.count}', f'"count": {cp.count + 5}'))
    with pytest.raises(CheckpointFileError, match="does not verify"):
        read_checkpoint_file(edited)
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(CheckpointFileError, match=r"junk\.json is not valid JSON"):
        read_checkpoint_file(tmp_path / "junk.json")
    with pytest.raises(CheckpointFileError, match=r"missing\.json"):
        read_checkpoint_file(tmp_path / "missing.json")
    _tamper(config, "UPDATE checkpoints SET count = count + 1 WHERE id = 1")
    report = store.verify()
    assert report.problem is not None
    assert "checkpoint #1 has an invalid signature" in str(report.problem)


def test_checkpoint_of_another_store_is_refused(
    tmp_path: Path, store: SqliteEventStore, keys: KeyManager, signer: CheckpointSigner
) -> None:
    fill(store, batches=1)
    other = SqliteEventStore.open(StoreConfig(tmp_path / "other"), keys, signer=signer, create=True)
    other.append_batch(GUARDIAN, batch(1, 3), None)
    foreign = other.checkpoint()
    other.close()
    report = store.verify(checkpoint=foreign)
    assert report.problem is not None
    assert "another store" in report.problem.reason


def test_checkpoints_every_n_records_and_t_seconds(
    config: StoreConfig, keys: KeyManager, signer: CheckpointSigner
) -> None:
    now = [T0]
    cfg = StoreConfig(config.directory, checkpoint_every=25, checkpoint_interval=60)
    s = SqliteEventStore.open(cfg, keys, signer=signer, create=True, clock=lambda: now[0])
    s.append_batch(GUARDIAN, batch(1, 10), None)
    assert s.latest_checkpoint() is None
    s.append_batch(GUARDIAN, batch(11, 20), None)  # 30 records >= 25
    latest = s.latest_checkpoint()
    assert latest is not None
    assert latest.count == 30
    now[0] += 61 * 10**9
    s.append_batch(GUARDIAN, batch(31, 1), None)  # one record, but 61 s later
    latest = s.latest_checkpoint()
    assert latest is not None
    assert latest.count == 31
    assert latest.kind == "head"
    s.append_batch(GUARDIAN, batch(32, 1), None)
    s.close()  # a last checkpoint covers the tail
    s = reopen(cfg, keys)
    latest = s.latest_checkpoint()
    assert latest is not None
    assert latest.count == 32
    assert s.verify().checkpoints == 3
    assert s.checkpoint() == latest  # read-only: the latest signed one, for export
    s.close()


def test_verify_reports_progress(store: SqliteEventStore) -> None:
    for b in range(25):
        store.append_batch(GUARDIAN, batch(b * 100 + 1, 100), None)
    calls: list[tuple[int, int]] = []
    report = store.verify(progress=lambda done, total: calls.append((done, total)))
    assert report.ok
    assert report.records == 2500
    assert calls[-1] == (2500, 2500)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    assert len(calls) >= 3


# --- retention -----------------------------------------------------------------------------------


def test_retention_deletes_old_records_and_keeps_verify_green(
    tmp_path: Path, config: StoreConfig, keys: KeyManager, signer: CheckpointSigner
) -> None:
    now = [T0]
    s = SqliteEventStore.open(config, keys, signer=signer, create=True, clock=lambda: now[0])
    s.append_batch(GUARDIAN, batch(1, 30), StoredCursor(SPIFFE, 30))
    early = s.checkpoint()
    now[0] += 10 * 86_400 * 10**9
    s.append_batch(GUARDIAN, batch(31, 20), StoredCursor(SPIFFE, 50))
    result = s.retain(dt.timedelta(days=5))
    assert result.deleted == 30
    assert result.cut is not None
    assert result.cut.kind == "cut"
    assert result.cut.count == 30
    assert sorted(e.seq for e in s.query(limit=100).events) == list(range(31, 51))
    report = s.verify()
    assert report.ok, report.problem
    assert (report.first_record, report.last_record) == (31, 50)
    assert any("retention" in n for n in report.notes)
    assert s.verify(checkpoint=early).ok  # an export from before the cut still checks out
    assert s.retain(dt.timedelta(days=5)).deleted == 0
    s.append_batch(GUARDIAN, batch(51, 5), StoredCursor(SPIFFE, 55))
    s.close()
    # The writer reopens after a cut.
    s = SqliteEventStore.open(config, keys, signer=signer, clock=lambda: now[0])
    assert s.verify().ok
    now[0] += 10 * 86_400 * 10**9
    assert s.retain(dt.timedelta(days=1)).deleted == 25  # everything
    assert s.verify().ok
    s.append_batch(GUARDIAN, batch(56, 2), StoredCursor(SPIFFE, 57))
    assert s.verify().ok
    s.close()
    # Removing the cut checkpoint leaves a chain without its anchor.
    _tamper(config, "DELETE FROM checkpoints WHERE kind = 'cut'")
    s = reopen(config, keys)
    report = s.verify()
    s.close()
    assert report.problem is not None
    assert report.problem.rowid == 56
    assert "records 1..55 before it are missing" in report.problem.reason


# --- refusals at open -----------------------------------------------------------------------------


def test_wrong_keyring_is_another_cortex(
    tmp_path: Path, store: SqliteEventStore, config: StoreConfig, signer: CheckpointSigner
) -> None:
    fill(store, batches=1)
    store.close()
    other = KeyManager.create(tmp_path / "other-keys", "cortex")
    with pytest.raises(StoreOpenError) as caught:
        SqliteEventStore.open(config, other, signer=signer)
    message = str(caught.value)
    assert str(config.db_path) in message
    assert "belongs to another Cortex" in message
    wrong_component = KeyManager.create(tmp_path / "beta-keys", "beta")
    with pytest.raises(StoreOpenError, match=r"component 'cortex'.*wrong keyring"):
        SqliteEventStore.open(config, wrong_component, readonly=True)


def test_missing_master_key_is_refused_naming_files(
    tmp_path: Path, store: SqliteEventStore, config: StoreConfig, signer: CheckpointSigner
) -> None:
    store.close()
    (tmp_path / "keys" / "master.key").unlink()
    with pytest.raises(StoreOpenError) as caught:
        SqliteEventStore.open_with_keyring(config, tmp_path / "keys", signer=signer)
    message = str(caught.value)
    assert str(config.db_path) in message
    assert "master.key" in message


def test_another_cortex_identity_is_refused(
    ca: pki.CertificateAuthority, store: SqliteEventStore, config: StoreConfig, keys: KeyManager
) -> None:
    store.close()
    leaf = pki.issue_leaf(ca, "cortex", "cortex-2")
    with pytest.raises(
        StoreOpenError, match=r"belongs to Cortex spiffe://example\.org/cortex/cortex-1"
    ):
        SqliteEventStore.open(config, keys, signer=CheckpointSigner(leaf.key, leaf.cert))


def test_edited_binding_is_refused(
    store: SqliteEventStore, config: StoreConfig, keys: KeyManager, signer: CheckpointSigner
) -> None:
    store.close()
    _tamper(config, "UPDATE store_meta SET value = 'x' WHERE name = 'created_ns'")
    with pytest.raises(StoreOpenError, match="does not authenticate"):
        SqliteEventStore.open(config, keys, signer=signer)


@pytest.mark.parametrize("damage", ["header", "garbage", "empty", "foreign"])
def test_corrupted_or_foreign_file_is_refused(
    damage: str,
    store: SqliteEventStore,
    config: StoreConfig,
    keys: KeyManager,
    signer: CheckpointSigner,
) -> None:
    fill(store, batches=1)
    store.close()
    path = config.db_path
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    if damage == "header":
        data = bytearray(path.read_bytes())
        data[0:16] = b"\x00" * 16
        path.write_bytes(bytes(data))
    elif damage == "garbage":
        path.write_bytes(os.urandom(8192))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE t (x)")
        path.chmod(0o600)
    with pytest.raises(StoreOpenError) as caught:
        SqliteEventStore.open(config, keys, signer=signer, create=True)
    message = str(caught.value)
    assert str(path) in message
    expected = {
        "header": "not an SQLite database or is corrupted",
        "garbage": "not an SQLite database or is corrupted",
        "empty": "is not a QSC event store",
        "foreign": "is not a QSC event store",
    }[damage]
    assert expected in message
    assert path.exists()  # never replaced by a new store


def test_missing_database_beside_nonce_state_is_refused(
    store: SqliteEventStore, config: StoreConfig, keys: KeyManager, signer: CheckpointSigner
) -> None:
    fill(store, batches=1)
    store.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{config.db_path}{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreOpenError, match="restore the database from backup"):
        SqliteEventStore.open(config, keys, signer=signer, create=True)
    assert not config.db_path.exists()


def test_missing_or_stale_nonce_state_is_refused(
    store: SqliteEventStore, config: StoreConfig, keys: KeyManager, signer: CheckpointSigner
) -> None:
    fill(store, batches=1)
    store.close()
    (state,) = (config.directory / NONCES_DIR).glob("*.json")
    saved = state.read_bytes()
    state.unlink()
    with pytest.raises(StoreOpenError, match="nonce reuse"):
        SqliteEventStore.open(config, keys, signer=signer)
    # A state file older than the database (rolled back) is refused too.
    state.write_bytes(saved)
    state.chmod(0o600)
    s = SqliteEventStore.open(StoreConfig(config.directory), keys, signer=signer)
    for b in range(3):  # past the first reserved block of 4096? no: use a small block below
        s.append_batch(GUARDIAN, batch(100 + b * 10, 10), None)
    s.close()
    with db(config) as conn:
        conn.execute("UPDATE sealing_keys SET counter = counter + 100000")
    with pytest.raises(StoreOpenError, match="behind the database"):
        SqliteEventStore.open(config, keys, signer=signer)


def test_one_writer_and_readers_beside_it(
    store: SqliteEventStore, config: StoreConfig, keys: KeyManager, signer: CheckpointSigner
) -> None:
    fill(store, batches=1)
    with pytest.raises(StoreOpenError, match="another process"):
        SqliteEventStore.open(config, keys, signer=signer)
    reader = reopen(config, keys)
    try:
        assert len(reader.query(limit=100).events) == 10
        with pytest.raises(StoreReadOnlyError):
            reader.append_batch(GUARDIAN, batch(11, 1), None)
        store.append_batch(GUARDIAN, batch(11, 1), None)
        assert len(reader.query(limit=100).events) == 11
        assert reader.verify().ok
    finally:
        reader.close()
    with pytest.raises(StoreOpenError, match="needs the Cortex's signing key"):
        SqliteEventStore.open(config, keys)
    with pytest.raises(StoreOpenError, match="directory does not exist"):
        SqliteEventStore.open(StoreConfig(config.directory.parent / "none"), keys, readonly=True)
    (config.directory.parent / "empty").mkdir(mode=0o700)
    with pytest.raises(StoreOpenError, match="no event store here"):
        SqliteEventStore.open(StoreConfig(config.directory.parent / "empty"), keys, readonly=True)


def test_files_are_private(store: SqliteEventStore, config: StoreConfig) -> None:
    old = os.umask(0o022)
    try:
        fill(store, batches=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(config.directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((config.directory / NONCES_DIR).stat().st_mode) == 0o700
    files = [p for p in config.directory.rglob("*") if p.is_file()]
    assert {DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm"} <= {p.name for p in files}
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_loose_permissions_are_refused(
    store: SqliteEventStore, config: StoreConfig, keys: KeyManager
) -> None:
    store.close()
    config.db_path.chmod(0o644)
    with pytest.raises(StoreOpenError, match="mode 0644; it must be 0600"):
        reopen(config, keys)
    config.db_path.chmod(0o600)
    config.directory.chmod(0o755)
    with pytest.raises(StoreOpenError, match="mode 0755; it must be 0700"):
        reopen(config, keys)


# --- the shared crypto helper ---------------------------------------------------------------


def test_gcm_key_is_the_vaults_derivation(keys: KeyManager) -> None:
    from beta.vault.store import vault_gcm_key

    purpose = keys.active_key("vault")
    ours, theirs = gcm_key(purpose, "vault-aes-256-gcm"), vault_gcm_key(purpose)
    assert ours == theirs
    assert ours.key_id == f"{purpose.key_id}/gcm"


def test_index_terms_come_from_cortex_fields(store: SqliteEventStore, config: StoreConfig) -> None:
    e = event(1)
    store.append_batch(GUARDIAN, [e], None)
    with db(config) as conn:
        stored = sorted(conn.execute("SELECT field, term FROM event_terms").fetchall())
    assert stored == sorted(fields.index_terms(e, store.blind))
