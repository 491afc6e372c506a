"""`make demo` (`python -m demo`): QSC on embedded defaults, end to end, in a scratch workspace.

A package of its own, outside `mesh/`, because it drives every component the way a user would
(processes, config files, the CLIs) while every component imports `mesh/`.

- `foundations`: the in-process steps (PKI, an mTLS call on a mesh server, keys, nonces, the
  hybrid KEM, hashing).
- `components`: one step per component process (Alpha, Beta, ML).
- `harness`: starting and stopping those processes and talking to them as `cortex`.
"""

import mesh  # noqa: F401 (first: it sets grpc core's TLS settings before grpc loads)
