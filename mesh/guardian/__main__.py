"""`python -m mesh.guardian --config PATH [--port-file PATH]`: run a guardian.

Once listening it writes the bound port (decimal, newline) atomically to `--port-file` and logs
`guardian listening`. SIGTERM or SIGINT drains gracefully and exits 0. Startup errors print
`qsc-guardian: error: ...` (no traceback): exit 2 for bad arguments or configuration (an invalid
value, a role or host the certificate does not certify, an address that cannot be bound), 1 for
anything else (unreadable or mismatched key, locked outbox, I/O errors). The command line itself
is mesh.service's, shared by every component.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from mesh.service import serve

from .config import COMPONENT, GuardianConfig, load_guardian_config
from .runtime import Guardian
from .synthetic import SyntheticSource

PROG = "qsc-guardian"


def build(config: GuardianConfig) -> Guardian:
    guardian = Guardian(config)
    if config.synthetic.enabled:
        guardian.add_worker(SyntheticSource(guardian.emit_many, guardian.sensors, config.synthetic))
    return guardian


def main(argv: Sequence[str] | None = None) -> int:
    return serve(
        PROG,
        argv,
        component=COMPONENT,
        load_config=load_guardian_config,
        build=build,
        description="Run a QSC guardian (GuardianService over mTLS).",
    )


if __name__ == "__main__":
    sys.exit(main())
