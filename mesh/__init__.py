"""What every component shares: config, TLS identity, policy, servers, clients, the service and
command-line frame (`service`, `command`), the `qsc` CLI."""

from mesh import grpc_env as grpc_env  # first: grpc core reads its settings when it loads
