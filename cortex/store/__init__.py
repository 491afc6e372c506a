"""The Cortex's event store: every event sealed, queryable, tamper-evident.

    store = SqliteEventStore.open(StoreConfig(dir), keys, signer=CheckpointSigner.from_tls(tls),
                                  create=True)
    store.append_batch("alpha-web-01", batch.events, batch.cursor)   # one transaction
    page = store.query(cortex.filter.parse('severity >= HIGH').to_sql(store.blind), limit=50)
    report = store.verify(checkpoint=cp, certificate=cert, progress=bar)

Modules: `api` (the `EventStore` protocol and its values, what a PostgreSQL store would
implement too), `sqlite` (the embedded store: layout, keys, refusals), `schema` (the tables),
`codec` (the bytes hashed, authenticated and signed), `checkpoint` (signer, exported files),
`verify` (the streaming verifier), `cursors` (the fan-in's `CursorStore` adapter).

**What is visible on disk** to someone who reads the database without the keyring:

* in clear, per event: event time, guardian id, host, seq, category, severity, rule id, detail
  kind (`file_rename`...), event id (a UUIDv7, so also its creation time), the time it was
  stored, the payload key id, the nonce, the ciphertext length (so the payload's size), and the
  MITRE technique ids of the rule (`event_terms` rows with field 'mitre');
* per blind field value (user, process exe, source and destination address, file path): an
  HMAC-SHA256 term, not the value. Equal values give equal terms, so a reader sees which events
  share a user or a path and how often (frequency), never what it is, unless they can guess
  it and hold the blind-index key;
* cursors (guardian id, its SPIFFE ID, last stored seq), signed checkpoints (counts, chain
  hashes, times), the signer certificates, the store id, the Cortex identity, the keyring
  component and key ids;
* sealed: everything else of the event (process, command line, user and paths, labels,
  summary, details), AES-256-GCM with the AAD binding store, guardian, seq, event id and key id.
"""

from __future__ import annotations

from cortex.store.api import (
    Checkpoint,
    EventStore,
    Page,
    Position,
    Problem,
    Progress,
    RetentionResult,
    VerifyReport,
    WhereClause,
)
from cortex.store.checkpoint import CheckpointSigner, export_checkpoint, read_checkpoint_file
from cortex.store.cursors import StoreCursorStore
from cortex.store.sqlite import SqliteEventStore, StoreConfig

__all__ = [
    "Checkpoint",
    "CheckpointSigner",
    "EventStore",
    "Page",
    "Position",
    "Problem",
    "Progress",
    "RetentionResult",
    "SqliteEventStore",
    "StoreConfig",
    "StoreCursorStore",
    "VerifyReport",
    "WhereClause",
    "export_checkpoint",
    "read_checkpoint_file",
]
