"""Proving the store: the hash chain, the signed checkpoints, the head and every payload.

`verify_store` reads one snapshot (a read transaction of its own, so ingest goes on) as three
streams merged by rowid: records, their index terms, and checkpoints, in bounded memory. It
stops at the first problem and names it (`Problem`: rowid, guardian and seq as stored, reason):

* the chain starts at the latest signed "cut" checkpoint (retention) or at the genesis hash;
  records must follow it with consecutive rowids (a gap: deleted records), each one's hash
  must be ``chain_hash(previous, encode_row(record, its terms))`` (else: the record, a clear
  column or a term was edited, or records were reordered or inserted); index terms must belong
  to a stored record;
* every payload must open under its AAD and agree with its clear columns and terms (an edit
  that recomputed the chain is still caught here, the key being needed to forge a payload);
* every checkpoint must be signed by a certificate of this Cortex, and name the hash of its
  record; one that counts more records than the store holds is a truncated tail;
* the head (last rowid and hash, MACed under the store key) must be the last record's;
* an exported checkpoint (kept off the host) is checked the same way, so a tail truncated
  together with the in-database checkpoints and head is still found.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509

from cortex import fields
from cortex.store import codec, schema
from cortex.store.api import Checkpoint, Problem, Progress, VerifyReport
from cortex.store.checkpoint import certificate_identity, checkpoint_valid
from crypto.errors import DecryptionError
from qsc.common.v1 import event_pb2

__all__ = ["StoreView", "verify_store"]

_PROGRESS_EVERY: Final = 1024
_FETCH: Final = 512
_CLEAR: Final = (  # (row index, clear_columns key) of the columns a payload determines
    (1, "time_ns"),
    (3, "host"),
    (5, "category"),
    (6, "severity"),
    (7, "rule_id"),
    (8, "kind"),
)


@dataclass(frozen=True)
class StoreView:
    """What the verifier needs of an open store (its keys stay inside the store)."""

    store_id: str
    identity: str
    open_payload: Callable[[Sequence[Any]], event_pb2.Event]
    blind: Callable[[str, str], bytes]
    head_authentic: Callable[[sqlite3.Connection], bool]
    read_head: Callable[[sqlite3.Connection], tuple[int, bytes]]


class _VerifyFailedError(Exception):
    def __init__(self, problem: Problem) -> None:
        self.problem = problem


def _rows(cursor: sqlite3.Cursor) -> Iterator[Any]:
    while batch := cursor.fetchmany(_FETCH):
        yield from batch


def _at(row: Sequence[Any], reason: str) -> _VerifyFailedError:
    return _VerifyFailedError(Problem(row[0], row[2], row[4], reason))


class _Verifier:
    def __init__(
        self,
        conn: sqlite3.Connection,
        view: StoreView,
        exported: Checkpoint | None,
        certificate: x509.Certificate | None,
        progress: Progress | None,
    ) -> None:
        self.conn = conn
        self.view = view
        self.exported = exported
        self.certificate = certificate
        self.progress = progress
        self.records = 0
        self.checkpoints = 0
        self.notes: list[str] = []
        self.signers: dict[str, x509.Certificate | None] = {}
        self.first: int | None = None
        self.last: int | None = None

    # -- checkpoints --

    def signer(self, key_id: str) -> x509.Certificate | None:
        if key_id not in self.signers:
            row = self.conn.execute(
                "SELECT certificate FROM signers WHERE key_id = ?", (key_id,)
            ).fetchone()
            cert = None
            if row is not None and isinstance(row[0], bytes):
                try:
                    cert = x509.load_pem_x509_certificate(row[0])
                except ValueError:
                    cert = None
            if cert is not None and certificate_identity(cert) != self.view.identity:
                cert = None  # a certificate of another identity signs nothing here
            self.signers[key_id] = cert
        return self.signers[key_id]

    def check_signature(self, cp: Checkpoint, what: str) -> None:
        cert = self.signer(cp.key_id)
        if cert is None:
            raise _VerifyFailedError(
                Problem(
                    None,
                    None,
                    None,
                    f"{what} is signed by key {cp.key_id}, which is not "
                    f"a certificate of {self.view.identity} recorded in this store",
                )
            )
        if cp.store_id != self.view.store_id or not checkpoint_valid(cp, cert):
            raise _VerifyFailedError(
                Problem(None, None, None, f"{what} has an invalid signature (edited)")
            )
        self.checkpoints += 1

    def stored_checkpoints(
        self, where: str = "", params: tuple[Any, ...] = ()
    ) -> Iterator[tuple[int, Checkpoint]]:
        cursor = self.conn.execute(
            "SELECT id, kind, count, head, time_ns, key_id, signature FROM checkpoints "  # noqa: S608 - table and column names are module constants; values are bound
            f"{where} ORDER BY count, id",
            params,
        )
        for row in _rows(cursor):
            yield row[0], Checkpoint(self.view.store_id, *row[1:])

    # -- the run --

    def run(self) -> VerifyReport:
        try:
            self.check()
        except _VerifyFailedError as failed:
            return self.report(failed.problem)
        return self.report(None)

    def report(self, problem: Problem | None) -> VerifyReport:
        return VerifyReport(
            ok=problem is None,
            records=self.records,
            first_record=self.first,
            last_record=self.last,
            checkpoints=self.checkpoints,
            problem=problem,
            notes=tuple(self.notes),
        )

    def check(self) -> None:
        view = self.view
        exported = self.exported
        if exported is not None:
            if exported.store_id != view.store_id:
                raise _VerifyFailedError(
                    Problem(None, None, None, "the checkpoint file is of another store")
                )
            if self.certificate is not None:
                cert = self.signer(exported.key_id)
                if cert is None or cert != self.certificate:
                    raise _VerifyFailedError(
                        Problem(
                            None,
                            None,
                            None,
                            "the checkpoint file's certificate "
                            "is not one this store's Cortex signed with",
                        )
                    )
            self.check_signature(exported, "the exported checkpoint")

        # The anchor: the latest retention cut, or the genesis.
        anchor_count, anchor_head = 0, codec.genesis(view.store_id)
        cuts = list(
            self.stored_checkpoints(
                "WHERE kind = 'cut' AND count = "
                "(SELECT max(count) FROM checkpoints WHERE kind = 'cut')"
            )
        )
        if cuts:
            cp_id, cut = cuts[-1]
            self.check_signature(cut, f"retention checkpoint #{cp_id}")
            self.checkpoints -= 1  # counted again when streamed below
            anchor_count, anchor_head = cut.count, cut.head
            self.notes.append(f"records 1..{cut.count} were removed by retention (signed cut)")
        head_rowid, head_hash = view.read_head(self.conn)
        total = max(head_rowid - anchor_count, 0)

        cps = self.stored_checkpoints()
        next_cp = next(cps, None)
        terms = _rows(
            self.conn.execute(
                "SELECT event_rowid, field, term FROM event_terms ORDER BY event_rowid, field, term"
            )
        )
        next_term = next(terms, None)
        events = _rows(
            self.conn.execute(
                f"SELECT {schema.EVENT_COLUMNS_SQL}, chain FROM events ORDER BY rowid"  # noqa: S608 - table and column names are module constants; values are bound
            )
        )

        prev_rowid, prev_hash = anchor_count, anchor_head
        # Checkpoints at or before the anchor: signatures only (their records are gone), the
        # anchor's own count must carry the anchor's hash.
        while next_cp is not None and next_cp[1].count <= anchor_count:
            cp_id, cp = next_cp
            self.check_signature(cp, f"checkpoint #{cp_id}")
            if cp.count == anchor_count and not codec.same(cp.head, anchor_head):
                raise _VerifyFailedError(
                    Problem(
                        None,
                        None,
                        None,
                        f"checkpoint #{cp_id} disagrees with "
                        f"the retention cut at record {anchor_count}",
                    )
                )
            next_cp = next(cps, None)
        if exported is not None and exported.count <= anchor_count:
            if exported.count == anchor_count and not codec.same(exported.head, anchor_head):
                raise _VerifyFailedError(
                    Problem(
                        None,
                        None,
                        None,
                        "the exported checkpoint disagrees with "
                        f"the retention cut at record {anchor_count}",
                    )
                )
            self.notes.append(
                f"the exported checkpoint (record {exported.count}) predates the "
                f"retention cut at record {anchor_count}"
            )

        for row in events:
            rowid = row[0]
            if rowid <= anchor_count:
                raise _at(
                    row,
                    f"a record at or before the retention cut at record {anchor_count}"
                    " (inserted, or not deleted with its cut)",
                )
            if rowid != prev_rowid + 1:
                raise _at(
                    row, f"records {prev_rowid + 1}..{rowid - 1} before it are missing (deleted)"
                )
            own: list[tuple[str, bytes]] = []
            while next_term is not None and next_term[0] <= rowid:
                if next_term[0] < rowid:
                    raise _VerifyFailedError(
                        Problem(
                            next_term[0],
                            None,
                            None,
                            "index terms of a record that does not exist (inserted terms)",
                        )
                    )
                own.append((next_term[1], next_term[2]))
                next_term = next(terms, None)
            digest = codec.chain_hash(prev_hash, codec.encode_row(row[:-1], own))
            if not isinstance(row[-1], bytes) or not codec.same(digest, row[-1]):
                raise _at(
                    row,
                    "does not match its chain hash: the record, a clear column or "
                    "its index terms were edited, or records were reordered or inserted",
                )
            self.check_payload(row, own)
            while next_cp is not None and next_cp[1].count <= rowid:
                cp_id, cp = next_cp
                self.check_signature(cp, f"checkpoint #{cp_id}")
                if not codec.same(cp.head, digest):
                    raise _at(
                        row,
                        f"differs from signed checkpoint #{cp_id}: the records up to "
                        "it were rewritten",
                    )
                next_cp = next(cps, None)
            if (
                exported is not None
                and exported.count == rowid
                and not codec.same(exported.head, digest)
            ):
                raise _at(
                    row, "differs from the exported checkpoint: the records up to it were rewritten"
                )
            prev_rowid, prev_hash = rowid, digest
            self.first = rowid if self.first is None else self.first
            self.last = rowid
            self.records += 1
            if self.progress is not None and self.records % _PROGRESS_EVERY == 0:
                self.progress(self.records, max(total, self.records))

        if next_term is not None:
            raise _VerifyFailedError(
                Problem(
                    next_term[0],
                    None,
                    None,
                    "index terms of a record that does not exist (inserted terms)",
                )
            )
        if next_cp is not None:
            cp_id, cp = next_cp
            self.check_signature(cp, f"checkpoint #{cp_id}")
            raise _VerifyFailedError(
                Problem(
                    None,
                    None,
                    None,
                    f"truncated tail: signed checkpoint #{cp_id} "
                    f"covers {cp.count} records, the store ends at record "
                    f"{prev_rowid}",
                )
            )
        if exported is not None and exported.count > prev_rowid:
            raise _VerifyFailedError(
                Problem(
                    None,
                    None,
                    None,
                    f"truncated tail: the exported checkpoint "
                    f"covers {exported.count} records, the store ends at record "
                    f"{prev_rowid}",
                )
            )
        if not view.head_authentic(self.conn):
            raise _VerifyFailedError(
                Problem(None, None, None, "the store head does not authenticate (edited)")
            )
        if head_rowid != prev_rowid or not codec.same(head_hash, prev_hash):
            reason = (
                f"the store head says {head_rowid} records, the chain ends at record {prev_rowid}"
            )
            if head_rowid > prev_rowid:
                reason = f"truncated tail: {reason}"
            raise _VerifyFailedError(Problem(None, None, None, reason))
        if self.progress is not None:
            self.progress(self.records, max(total, self.records))

    def check_payload(self, row: Sequence[Any], own: list[tuple[str, bytes]]) -> None:
        try:
            event = self.view.open_payload(row)
        except DecryptionError:
            raise _at(
                row, "its payload does not open (ciphertext edited, or moved from another record)"
            ) from None
        if event.id != row[9] or event.guardian.id != row[2] or event.seq != row[4]:
            raise _at(row, "its payload is another event's")
        clear = fields.clear_columns(event)
        for index, column in _CLEAR:
            if clear[column] != row[index]:
                raise _at(row, f"clear column {column} does not match its payload (edited)")
        if sorted(fields.index_terms(event, self.view.blind)) != sorted(own):
            raise _at(row, "its index terms do not match its payload (edited)")


def verify_store(
    conn: sqlite3.Connection,
    view: StoreView,
    *,
    checkpoint: Checkpoint | None = None,
    certificate: x509.Certificate | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Verify the store behind `conn` (a connection of its own: it holds a read transaction for
    the whole run). See the module docstring."""
    conn.execute("BEGIN")
    try:
        return _Verifier(conn, view, checkpoint, certificate, progress).run()
    finally:
        conn.execute("ROLLBACK")
