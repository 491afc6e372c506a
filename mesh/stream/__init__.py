"""The guardian stream protocol: the durable outbox, Subscribe with resume, batching, sealing,
and the subscriber side: cursor stores and the fan-in of many guardians into one consumer."""
