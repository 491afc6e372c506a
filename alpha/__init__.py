"""Alpha: intrusion detection guardian (eBPF, memory forensics, network and auth analysis)."""

import mesh  # noqa: F401 (first: it sets grpc core's TLS settings before grpc loads)
