"""What every component shares: config, TLS identity, policy, servers, clients, the service and
command-line frame (`service`, `command`), the `qsc` CLI."""
