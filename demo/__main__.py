"""`make demo`: QSC on embedded defaults, end to end, in a scratch workspace.

By default the whole mesh on this host acts out one intrusion (demo.story): the guardians'
events as the Cortex stores them, its assessments, the signed playbook delivery. `--tour`
instead shows the building blocks one at a time: a deployment PKI, the post-quantum handshake,
the key hierarchy with rotation, crash-safe nonces, the hybrid KEM, file hashing, and each
component alone.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from pathlib import Path
from types import FrameType

from demo import components, foundations, story
from demo.harness import DemoError
from demo.sshd import SshdError


def _tour(workdir: Path) -> int:
    foundations.issue_all(workdir / "pki")
    foundations.mtls(workdir)
    foundations.keys(workdir / "keys")
    foundations.nonces(workdir)
    foundations.kem()
    foundations.hashing(workdir)
    components.alpha(workdir)
    components.beta(workdir)
    components.ml(workdir)
    print("\ndemo finished: every step above ran for real on this machine")
    return 0


def _interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the mesh as Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="qsc-demo", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, default=Path("build/demo"), help="workspace (recreated each run)"
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="leave the mesh running after the story and print how to explore it (Ctrl-C stops)",
    )
    parser.add_argument(
        "--tour", action="store_true", help="the building blocks one at a time instead"
    )
    args = parser.parse_args(argv)
    # Absolute: the components' configs name their paths, and they must not depend on the cwd.
    workdir: Path = args.dir.resolve()
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True, mode=0o700)
    signal.signal(signal.SIGTERM, _interrupted)
    try:
        if args.tour:
            print(f"QSC demo (tour), workspace {workdir}")
            return _tour(workdir)
        return story.run(workdir, keep=args.keep)
    except KeyboardInterrupt:
        print("\nstopped: every process of the demo was stopped and the host restored")
        return 130
    except (DemoError, SshdError) as exc:
        print(f"qsc-demo: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
