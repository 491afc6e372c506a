"""Crypto recipes: AEAD with safe nonces, hashing, hybrid KEM, key hierarchy, PKI. No gRPC."""
