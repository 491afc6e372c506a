"""The guardian stream protocol: the durable outbox, Subscribe with resume, batching, sealing."""
