"""What every component shares: config, TLS identity, policy, servers, clients, the CLI."""
