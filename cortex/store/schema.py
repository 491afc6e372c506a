"""The SQLite schema of the event store.

`events` and `event_terms` are fixed: `cortex.filter.sql` compiles filters against exactly
these names (`cortex.fields.COLUMNS`, `MITRE_TERM_FIELD`, the blind field names). The rest is
the store's own: `cursors` (one row per guardian, committed with its batch), `checkpoints`
(signed heads and retention cuts), `signers` (the certificates checkpoints were signed with),
`sealing_keys` (every payload key ever used and its highest nonce counter, so a lost or
rolled-back nonce state file is refused) and `store_meta` (format, identity binding, head).
"""

from __future__ import annotations

from typing import Final

SCHEMA: Final = """
CREATE TABLE store_meta (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE events (
    rowid INTEGER PRIMARY KEY,
    time_ns INTEGER,
    guardian_id TEXT NOT NULL,
    host TEXT,
    seq INTEGER NOT NULL,
    category INTEGER,
    severity INTEGER,
    rule_id TEXT,
    kind TEXT,
    event_id TEXT NOT NULL,
    stored_ns INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL,
    chain BLOB NOT NULL,
    UNIQUE (guardian_id, seq),
    UNIQUE (event_id)
);
CREATE INDEX events_time ON events (time_ns);
CREATE INDEX events_host_time ON events (host, time_ns);
CREATE INDEX events_rule_time ON events (rule_id, time_ns);

CREATE TABLE event_terms (
    event_rowid INTEGER NOT NULL,
    field TEXT NOT NULL,
    term BLOB NOT NULL,
    PRIMARY KEY (field, term, event_rowid)
) WITHOUT ROWID;
CREATE INDEX event_terms_row ON event_terms (event_rowid, field, term);

CREATE TABLE cursors (
    guardian_id TEXT PRIMARY KEY,
    spiffe_id TEXT NOT NULL,
    seq INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE checkpoints (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    count INTEGER NOT NULL,
    head BLOB NOT NULL,
    time_ns INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    signature BLOB NOT NULL
);
CREATE INDEX checkpoints_count ON checkpoints (count);

CREATE TABLE signers (
    key_id TEXT PRIMARY KEY,
    certificate BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE sealing_keys (
    key_id TEXT PRIMARY KEY,
    counter INTEGER NOT NULL
) WITHOUT ROWID;
"""

# The tables a store must have; a database without them is not one.
TABLES: Final = (
    "store_meta",
    "events",
    "event_terms",
    "cursors",
    "checkpoints",
    "signers",
    "sealing_keys",
)

# store_meta names.
META_FORMAT: Final = "format"
META_VERSION: Final = "format_version"
META_STORE_ID: Final = "store_id"
META_CREATED: Final = "created_ns"
META_IDENTITY: Final = "cortex_identity"
META_COMPONENT: Final = "keyring_component"
META_BINDING_KEY: Final = "binding_key_id"
META_BLIND_KEY: Final = "blind_key_id"
META_BINDING_MAC: Final = "binding_mac"
META_HEAD: Final = "head"  # rowid (8) || chain hash (32) || HMAC (32)
BINDING_FIELDS: Final = (
    META_FORMAT,
    META_VERSION,
    META_STORE_ID,
    META_CREATED,
    META_IDENTITY,
    META_COMPONENT,
    META_BINDING_KEY,
    META_BLIND_KEY,
)

EVENT_COLUMNS_SQL: Final = (
    "rowid, time_ns, guardian_id, host, seq, category, severity, rule_id, kind, event_id, "
    "stored_ns, key_id, nonce, ciphertext"
)
