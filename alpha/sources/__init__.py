"""Alpha's event sources as guardian workers, one module each.

Each worker registers a sensor in the guardian's registry and keeps it current: its state and
reasons (every change is a sensor-health event in the stream), its events and, by stage, its
losses. Blocking work runs on threads of its own; `start`/`stop` are what `Guardian` awaits.

- `syscalls.SyscallSource` ("syscalls"): the eBPF sensor or its fallback, into the pipeline.
- `memscan.MemscanSource` ("memscan"): periodic, on-exec and W+X memory scans.
- `network.NetworkSource` ("sockets"): sock_diag polling, eBPF connects, blocklist marks.
- `auth.AuthSource` ("auth_log"): the sshd log, from a file or the journal.
- `common`: the monitor period, the late-bound process lookup, the ticking thread they share.
"""
