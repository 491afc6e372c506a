"""Keys derived from a purpose key for one algorithm, and the persisted nonces of AES-GCM ones.

A keyring purpose key (`crypto.keyring`) is an XChaCha20-Poly1305 key. A store that wants
AES-256-GCM (the vault, the Cortex's event store) or an HMAC key does not use its bytes
directly: it derives a subkey with HKDF, labelled by the job and bound to the purpose key's id,
so two algorithms or two jobs never share key bytes. The recipe, in one place:

    secret = HKDF-SHA256(purpose key, info = build_info(label, purpose key id, *context))

`context` (optional) narrows a key to one user of it: the event store passes its store id, so
two stores under one keyring never share a key, hence never a nonce space.

`gcm_key(purpose_key, label)` wraps that secret as an AES-256-GCM `AeadKey` with id
``<purpose key id>/gcm`` (`beta.vault.store.vault_gcm_key` is `gcm_key(k, "vault-aes-256-gcm")`,
byte for byte). Rotation gives a new purpose key, hence a new subkey and id; old ones still open.

`open_counter_nonces` resumes (or starts) the crash-safe counter (`crypto.nonces`) of one such key
in a directory of state files, one per key id. It starts a counter at zero only when the caller
says nothing was ever sealed under the key: a missing state file for a key in use means the
state was lost, and starting again would reuse nonces.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from crypto.aead import AeadKey, Algorithm
from crypto.errors import NonceStateLostError
from crypto.kdf import InfoField, build_info, hkdf
from crypto.nonces import CounterNonceSource, random_fixed_field

__all__ = ["derive_subkey", "gcm_key", "nonce_state_path", "open_counter_nonces"]


def derive_subkey(purpose_key: AeadKey, label: str, *context: InfoField) -> bytes:
    """32 bytes for the job `label`, bound to `purpose_key`'s id and to `context` (e.g. the
    id of the one store the key serves), by HKDF-SHA256."""
    return hkdf(purpose_key.secret, build_info(label, purpose_key.key_id, *context))


def gcm_key(purpose_key: AeadKey, label: str, *context: InfoField) -> AeadKey:
    """The AES-256-GCM key of `purpose_key` for `label` (and `context`), id
    ``<purpose key id>/gcm``."""
    secret = derive_subkey(purpose_key, label, *context)
    return AeadKey(f"{purpose_key.key_id}/gcm", secret, Algorithm.AES_256_GCM)


def nonce_state_path(directory: Path, key_id: str) -> Path:
    """Where the counter of `key_id` lives in `directory` (ids hold '/', names cannot)."""
    return directory / (key_id.replace("/", "_") + ".json")


def open_counter_nonces(
    directory: Path, key_id: str, *, key_used: Callable[[], bool]
) -> CounterNonceSource:
    """The nonce counter of `key_id`: resumed from its state file, or created (random fixed
    field) when the file is absent and `key_used()` says nothing was sealed under the key.

    NonceStateLostError when the file is absent but the key was used (never restart a counter);
    NonceStateError when the file cannot be used (corrupt, another key's, locked elsewhere).
    """
    state = nonce_state_path(directory, key_id)
    if state.exists() or state.is_symlink():
        return CounterNonceSource.open(state, key_id)
    if key_used():
        raise NonceStateLostError(
            f"nonce state file {state} is missing but data sealed under key {key_id} exists; "
            "refusing to start its counter again (nonce reuse). Restore the file from backup"
        )
    return CounterNonceSource.create(state, key_id, fixed_field=random_fixed_field())
