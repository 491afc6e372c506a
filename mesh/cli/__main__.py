"""`python -m mesh.cli` runs the `qsc` command."""

import sys

from mesh.cli import main

sys.exit(main())
