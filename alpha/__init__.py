"""Alpha: intrusion detection guardian (eBPF, memory forensics, network and auth analysis)."""
