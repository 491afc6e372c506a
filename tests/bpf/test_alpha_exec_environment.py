"""What the kernel reads at exec from the new image's environment, and what an open's own path
says, against a real `qsc-alpha` (eBPF, default rules). Every process here exits at once: the
environment and the file opened are read where they happen, not from /proc afterwards. Each
case has a benign look-alike run first, which must stay quiet.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from alpha.pipeline import ALSO_MATCHED_LABEL
from tests.bpf.test_alpha_attack_classes import alert, quiet
from tests.bpf.test_alpha_e2e import (
    WAIT,
    SealedStream,
    pki,  # noqa: F401  (the module's PKI fixture)
    running_alpha,
)

pytestmark = pytest.mark.root

NOBODY = 65534


@pytest.fixture(scope="module")
def alpha(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SealedStream]:  # noqa: F811
    with running_alpha(pki, tmp_path_factory.mktemp("alpha-env")) as (_, stream):
        yield stream


def run(argv: list[str], env: dict[str, str], *, uid: int | None = None,
        cwd: str | Path | None = None) -> int:  # fmt: skip
    """Run argv to its end with exactly `env`; returns its pid."""
    p = subprocess.Popen(
        argv,
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=cwd,
        user=uid,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    p.wait(timeout=30)
    return p.pid


def test_glibc_tunables_for_a_setuid_program(alpha: SealedStream) -> None:
    """CVE-2023-4911's entry: GLIBC_TUNABLES through a setuid binary, run by an unprivileged
    user. The same variable for an ordinary program is quiet."""
    tunables = {"GLIBC_TUNABLES": "glibc.malloc.mxfast=glibc.malloc.mxfast=1"}
    plain = run(["/bin/true"], tunables, uid=NOBODY)
    suid = run(["/usr/bin/passwd", "--help"], tunables, uid=NOBODY)
    event = alert(alpha, "alpha.glibc_tunables_setuid", suid)
    assert "GLIBC_TUNABLES=glibc.malloc.mxfast=glibc.malloc.mxfast=1" in list(
        event.process_exec.environment
    )
    assert event.process_exec.setuid_exec
    quiet(alpha, "alpha.glibc_tunables_setuid", plain)


def test_setuid_program_with_a_padded_environment(alpha: SealedStream) -> None:
    padded = {f"QSC_PAD{i}": "x" for i in range(200)}
    normal = run(["/usr/bin/passwd", "--help"], {"LANG": "C"}, uid=NOBODY)
    suid = run(["/usr/bin/passwd", "--help"], {**padded, "GLIBC_TUNABLES": "x"}, uid=NOBODY)
    event = alert(alpha, "alpha.setuid_env_overflow", suid)
    assert not event.process_exec.environment_complete
    quiet(alpha, "alpha.setuid_env_overflow", normal)


def test_downloader_through_an_unknown_proxy(alpha: SealedStream) -> None:
    # Port 9 on loopback refuses at once: nothing leaves the host, the exec is what counts.
    url = "http://127.0.0.1:9/"
    direct = run(["curl", "-s", "--max-time", "2", url], {})
    proxied = run(["curl", "-s", "--max-time", "2", url], {"http_proxy": "http://127.0.0.1:9"})
    event = alert(alpha, "alpha.proxy_env_tool", proxied)
    assert list(event.process_exec.environment) == ["http_proxy=http://127.0.0.1:9"]
    quiet(alpha, "alpha.proxy_env_tool", direct)


def test_library_preloaded_from_tmp_by_a_process_gone_at_once(
    alpha: SealedStream, tmp_path: Path
) -> None:
    system_lib = Path("/lib/x86_64-linux-gnu/libz.so.1")
    if not system_lib.exists():
        pytest.skip("no libz.so.1 to preload")
    planted = Path(f"/tmp/qsc-{uuid.uuid4().hex[:8]}.so")
    shutil.copy(system_lib, planted)
    try:
        benign = run(["/bin/true"], {"LD_PRELOAD": str(system_lib)})
        hijacked = run(["/bin/true"], {"LD_PRELOAD": str(planted)})
        event = alert(alpha, "alpha.preload_from_writable_dir", hijacked)
        assert f"LD_PRELOAD={planted}" in list(event.process_exec.environment)
        quiet(alpha, "alpha.preload_from_writable_dir", benign)
    finally:
        planted.unlink(missing_ok=True)


def test_shell_with_history_sent_to_dev_null(alpha: SealedStream) -> None:
    kept = run(["bash", "-c", "true"], {"HISTFILE": "/root/.bash_history"})
    hidden = run(["bash", "-c", "true"], {"HISTFILE": "/dev/null"})
    alert(alpha, "alpha.history_disabled_env", hidden)
    quiet(alpha, "alpha.history_disabled_env", kept)


def test_shadow_read_through_a_directory_traversal(alpha: SealedStream, tmp_path: Path) -> None:
    """`../` from a web root: the kernel names /etc/shadow from the fd it opened."""
    root = tmp_path / "www" / "html"
    root.mkdir(parents=True)
    (tmp_path / "www" / "index.txt").write_text("hello\n")
    up = os.path.relpath("/etc/shadow", root)
    benign = run(["cat", "../index.txt"], {}, cwd=root)
    plain = run(["cat", "/etc/shadow"], {})
    climbed = run(["cat", up], {}, cwd=root)
    # One event per open: the traversal and the sensitive read it also is, the one reported,
    # the other named in the label.
    event = alpha.wait_for(
        lambda e: e.process.pid == climbed and e.WhichOneof("detail") == "file_access",
        "the traversal's event",
        WAIT,
    )
    assert event.file_access.path == "/etc/shadow"
    assert event.file_access.requested_path == up
    fired = {event.rule.id, *event.labels.get(ALSO_MATCHED_LABEL, "").split(",")}
    assert {"alpha.directory_traversal_read", "alpha.sensitive_file_read"} <= fired
    for pid in (benign, plain):
        hits = [
            e for e in list(alpha.events)
            if e.process.pid == pid
            and "alpha.directory_traversal_read"
            in {e.rule.id, *e.labels.get(ALSO_MATCHED_LABEL, "").split(",")}
        ]  # fmt: skip
        assert not hits, hits[0]
