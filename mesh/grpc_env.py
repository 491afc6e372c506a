"""What grpc core reads once, when it loads: set here, before anything imports grpc.

`mesh/__init__.py` imports this module, and every component package (`alpha`, `beta`, `ml`,
`cortex`, `demo`) imports `mesh` first, so a component's grpc always starts with these:

- TLS 1.2 refused at the handshake. grpcio's Python API has no minimum-TLS-version setting, but
  grpc core takes its TLS 1.2 cipher suites from `GRPC_SSL_CIPHER_SUITES` when it loads. Naming
  only a PSK suite (no mesh server holds a pre-shared key) leaves a TLS 1.2 ClientHello with no
  shared cipher: the handshake fails before either side sends a certificate, so a TLS 1.2 client
  no longer gets to present its certificate (role and host) in clear. TLS 1.3 suites are not
  configurable in BoringSSL and are unaffected; mesh clients in the same process offer TLS 1.3.
  The value is forced, not defaulted: re-enabling TLS 1.2 is not a knob.
- `GRPC_VERBOSITY=ERROR` unless the operator set it: grpc core writes a plain-text line to
  stderr for every failed handshake (no peer address), which would flood the JSON log.

`HANDSHAKE_FLOOR` says whether the first point held (grpc was not yet loaded); `mesh.server`
warns at start when it did not, and the interceptor's per-call TLS 1.3 check still applies.
"""

from __future__ import annotations

import os
import sys
from typing import Final

# One TLS 1.2 suite that can never be negotiated without a PSK: see the module docstring.
TLS12_CIPHER_SUITES: Final = "ECDHE-PSK-CHACHA20-POLY1305"

HANDSHAKE_FLOOR: Final = "grpc" not in sys.modules
os.environ["GRPC_SSL_CIPHER_SUITES"] = TLS12_CIPHER_SUITES
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
