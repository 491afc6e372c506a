"""Beta: integrity assurance guardian (FIM, backups, certificates, vault, healing)."""

import mesh  # noqa: F401 (first: it sets grpc core's TLS settings before grpc loads)
