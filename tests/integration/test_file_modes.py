"""Every file each component writes is private: regular files 0600 (or 0400), directories 0700.

Each component runs for real, as a deployment runs it (the `qsc`, `qsc-ml`, `qsc-beta`,
`qsc-alpha` and `mesh.guardian` entry points as processes), under umask 000, the most
permissive one: nothing is masked, so a file is private only if it was created so, and what is
private here is private under any umask a deployment has. Then every directory the component
wrote is walked without following symlinks.

The exceptions are files meant to be public, listed in PUBLIC with the reason. Nothing else may
be group- or world-accessible, or anything but a regular file or directory.
"""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from qsc.beta.v1 import beta_service_pb2 as bpb
from qsc.beta.v1 import beta_service_pb2_grpc as bpb_grpc
from qsc.common.v1 import heal_details_pb2 as hpb
from qsc.common.v1 import pipeline_details_pb2
from qsc.guardian.v1 import guardian_service_pb2 as gpb
from qsc.guardian.v1 import guardian_service_pb2_grpc as gpb_grpc

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
TD = "modes.test"
TIMEOUT = 30.0
PRIVATE_FILE = frozenset({0o600, 0o400})
PRIVATE_DIR = 0o700

# Relative path pattern (fnmatch, from the walked root) -> why it may be world-readable.
PUBLIC: dict[str, str] = {
    "*.crt": "certificates are public by design (the CA's and every leaf's)",
    "run/port": "the bound port, for supervisors and tests that are not the service's user",
}


def _mode_violations(base: Path, roots: list[str]) -> list[str]:
    """Every path under `base/<root>` (root included) whose type or mode is wrong."""
    problems: list[str] = []

    def check(path: Path) -> None:
        rel = path.relative_to(base).as_posix()
        st = path.lstat()
        mode = stat.S_IMODE(st.st_mode)
        public = any(fnmatch.fnmatchcase(rel, pattern) for pattern in PUBLIC)
        if stat.S_ISDIR(st.st_mode):
            if mode != PRIVATE_DIR:
                problems.append(f"{rel}/ is {mode:04o}, want 0700")
        elif stat.S_ISREG(st.st_mode):
            if mode not in PRIVATE_FILE and not (public and mode & 0o022 == 0):
                problems.append(f"{rel} is {mode:04o}, want 0600 or 0400")
        else:
            problems.append(
                f"{rel} is not a regular file or directory ({stat.filemode(st.st_mode)})"
            )

    for root in roots:
        top = base / root
        assert top.exists(), f"{root} was not written"
        check(top)
        if top.is_dir() and not top.is_symlink():
            for dirpath, dirnames, filenames in os.walk(top):
                for name in [*dirnames, *filenames]:
                    check(Path(dirpath) / name)
    return sorted(problems)


def test_the_walk_reports_what_it_should(tmp_path: Path) -> None:
    """The checker itself: loose files and directories, public files that are writable, and
    anything that is not a file or directory are reported; a public file may be 0644."""
    (tmp_path / "pki" / "sub").mkdir(parents=True, mode=0o700)
    (tmp_path / "pki").chmod(0o700)
    (tmp_path / "pki" / "sub").chmod(0o755)
    for name, mode in [("ca.key", 0o644), ("ca.crt", 0o644), ("x.crt", 0o666), ("k", 0o400)]:
        (tmp_path / "pki" / name).write_text("")
        (tmp_path / "pki" / name).chmod(mode)
    (tmp_path / "pki" / "link").symlink_to("ca.key")
    os.mkfifo(tmp_path / "pki" / "fifo", 0o600)
    assert _mode_violations(tmp_path, ["pki"]) == [
        "pki/ca.key is 0644, want 0600 or 0400",
        "pki/fifo is not a regular file or directory (prw-------)",
        "pki/link is not a regular file or directory (lrwxrwxrwx)",
        "pki/sub/ is 0755, want 0700",
        "pki/x.crt is 0666, want 0600 or 0400",
    ]
    with pytest.raises(AssertionError, match="missing was not written"):
        _mode_violations(tmp_path, ["missing"])


@pytest.fixture(autouse=True)
def permissive_umask() -> Iterator[None]:
    """Umask 000, inherited by every process the test starts: nothing is masked for us."""
    old = os.umask(0o000)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture
def base(tmp_path: Path) -> Path:
    tmp_path.chmod(0o700)
    return tmp_path


def _env() -> dict[str, str]:
    # No stray QSC_* overrides (and no proxies) from the developer's shell.
    return {
        k: v for k, v in os.environ.items() if not k.startswith("QSC_") and "proxy" not in k.lower()
    }


def _run(*argv: str) -> str:
    done = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout


def _qsc(*args: str) -> str:
    return _run("-m", "mesh.cli", *args)


def _pki(base: Path, *leaves: tuple[str, str]) -> Path:
    pki = base / "pki"
    _qsc("pki", "init", "--dir", str(pki), "--trust-domain", TD)
    for role, host in leaves:
        _qsc("pki", "issue", role, host, "--dir", str(pki))
    return pki


def _wait_until(what: str, condition: Callable[[], bool], proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"exited before {what}: {proc.communicate()[1][-4000:]}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Service:
    """A long-running entry point started with `--port-file run/port`; SIGTERM ends it."""

    def __init__(self, base: Path, *argv: str, env: dict[str, str] | None = None) -> None:
        self.port_file = base / "run" / "port"
        # The port file's directory is the deployment's (systemd RuntimeDirectory), not ours.
        self.port_file.parent.mkdir(mode=0o700, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, *argv, "--port-file", str(self.port_file)],
            cwd=ROOT,
            env={**_env(), **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        _wait_until("the port file", self.port_file.exists, self.proc)
        self.port = int(self.port_file.read_text())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.communicate()
        assert self.proc.returncode == 0, err[-4000:]


def _tail(base: Path, pki: Path, port: int, role: str, count: int) -> None:
    """`qsc tail` as an operator, resuming from (and saving) a cursor file it creates."""
    stem = pki / "operator-ops"
    # The cursor's directory is the operator's choice (like ~/.qsc); the file is tail's.
    (base / "client").mkdir(mode=0o700, exist_ok=True)
    _qsc(
        "tail",
        f"{HOST}:{port}",
        *("--cert", f"{stem}.crt", "--key", f"{stem}.key", "--ca", str(pki / "ca.crt")),
        *("--guardian-role", role, "--from-oldest", "--count", str(count), "--timeout", "30"),
        *("--cursor-file", str(base / "client" / "cursor")),
    )


def _toml(sections: dict[str, dict[str, object]]) -> str:
    def value(v: object) -> str:
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, str):
            return '"' + v + '"'
        return str(v).lower() if isinstance(v, bool) else str(v)

    out = []
    for name, fields in sections.items():
        out.append(f"[{name}]")
        out += [f"{k} = {value(v)}" for k, v in fields.items()]
    return "\n".join(out) + "\n"


def _server(pki: Path, stem: str) -> dict[str, object]:
    return {
        "listen": f"{HOST}:0",
        "shutdown_grace": "2s",
        "tls": {"cert": f"{pki / stem}.crt", "key": f"{pki / stem}.key", "ca": str(pki / "ca.crt")},
    }


# --- qsc pki and qsc keys -------------------------------------------------------------------


def test_qsc_pki_and_keys(base: Path) -> None:
    _pki(base, ("alpha", "web-01"), ("operator", "ops"))
    _qsc("keys", "init", "--dir", str(base / "keys"), "--component", "beta")
    _qsc("keys", "rotate", "--dir", str(base / "keys"), "--force")
    _qsc("keys", "status", "--dir", str(base / "keys"))
    assert _mode_violations(base, ["pki", "keys"]) == []


# --- the bare guardian and a subscriber's cursor ----------------------------------------------


def test_guardian_outbox_port_file_and_subscriber_cursor(base: Path) -> None:
    pki = _pki(base, ("alpha", HOST), ("operator", "ops"))
    config = base / "guardian.toml"
    config.write_text(
        _toml(
            {
                "guardian": {"role": "alpha", "host": HOST},
                "server": _server(pki, f"alpha-{HOST}"),
                "outbox": {"directory": str(base / "outbox")},
                "synthetic": {"rate": 1000, "total": 50, "batch": 10},
            }
        )
    )
    guardian = Service(base, "-m", "mesh.guardian", "--config", str(config))
    try:
        _tail(base, pki, guardian.port, "alpha", 20)
        _tail(base, pki, guardian.port, "alpha", 20)  # resumes: rewrites the cursor
    finally:
        guardian.stop()
    assert _mode_violations(base, ["pki", "outbox", "run", "client"]) == []


# --- Guardian-Alpha ---------------------------------------------------------------------------


def test_alpha(base: Path) -> None:
    pki = _pki(base, ("alpha", HOST), ("operator", "ops"))
    rules = base / "site-rules.yaml"
    rules.write_text("[]\n")
    auth_log = base / "auth.log"
    auth_log.write_text("")
    config = base / "alpha.toml"
    config.write_text(
        _toml(
            {
                "guardian": {"role": "alpha"},
                "server": _server(pki, f"alpha-{HOST}"),
                "outbox": {"directory": str(base / "outbox")},
                "rules": {"files": [str(rules)]},
                "memscan": {"interval": "1h", "initial_delay": "1h"},
                "auth": {
                    "source": "file",
                    "log_path": str(auth_log),
                    "state_directory": str(base / "state"),
                    "poll_interval": "100ms",
                },
            }
        )
    )
    # The fallback sensor: this test is about files, not eBPF.
    alpha = Service(
        base, "-m", "alpha", "--config", str(config), env={"QSC_ALPHA_SENSOR__DISABLE_EBPF": "1"}
    )
    try:
        auth_log.write_text(
            "Jan  1 00:00:00 h sshd[1]: Failed password for root from 192.0.2.1 port 22 ssh2\n"
        )
        _tail(base, pki, alpha.port, "alpha", 1)
    finally:
        alpha.stop()
    assert _mode_violations(base, ["pki", "outbox", "state", "run", "client"]) == []


# --- Guardian-Beta: baseline, backups manifest, vault, heal queue ------------------------------


def test_beta(base: Path) -> None:
    pki = _pki(base, ("beta", HOST), ("operator", "ops"))
    keys = base / "keys"
    _qsc("keys", "init", "--dir", str(keys), "--component", "beta")
    watched = base / "etc"
    watched.mkdir()
    (watched / "hosts").write_text("127.0.0.1 localhost\n")
    target = watched / "sudoers"
    target.write_text("root ALL=(ALL) ALL\n")
    backup = base / "backup-set"
    backup.mkdir()
    (backup / "a.dump").write_bytes(b"a" * 4096)
    manifest = base / "manifests" / "db.manifest"
    manifest.parent.mkdir()
    config = base / "beta.toml"
    config.write_text(
        _toml(
            {
                "server": _server(pki, f"beta-{HOST}"),
                "outbox": {"directory": str(base / "outbox")},
                "keys": {"directory": str(keys)},
                "state": {"directory": str(base / "state")},
                "fim": {
                    "baseline": str(base / "state" / "fim-baseline.qsc"),
                    "paths": [{"path": str(watched), "heal": "approve"}],
                },
                "backups": {
                    "workers": 1,
                    "sets": [
                        {"name": "db", "root": str(backup), "manifest": str(manifest)},
                    ],
                },
                "heal": {"vault_directory": str(base / "vault")},
            }
        )
    )
    _run("-m", "beta", "manifest", "create", str(backup), "-m", str(manifest), "--keys", str(keys))
    _run("-m", "beta", "baseline", "init", "--config", str(config))
    beta = Service(base, "-m", "beta", "run", "--config", str(config))
    try:
        creds = grpc.ssl_channel_credentials(
            (pki / "ca.crt").read_bytes(),
            (pki / "operator-ops.key").read_bytes(),
            (pki / "operator-ops.crt").read_bytes(),
        )
        with grpc.secure_channel(f"{HOST}:{beta.port}", creds) as channel:
            stub = bpb_grpc.BetaServiceStub(channel)
            stub.VerifyBackup(bpb.VerifyBackupRequest(backup_set="db"), timeout=TIMEOUT)
            guardian = gpb_grpc.GuardianServiceStub(channel)

            def vault_synced() -> bool:
                status = guardian.GetStatus(gpb.GetStatusRequest(), timeout=TIMEOUT)
                return any(
                    s.name == "heal" and s.state == pipeline_details_pb2.SENSOR_STATE_HEALTHY
                    for s in status.sensors
                )

            _wait_until("the vault to hold the good copies", vault_synced, beta.proc)
            target.write_text("ALL ALL=(ALL) NOPASSWD: ALL\n")  # the attack
            proposals: list[bpb.HealProposal] = []

            def proposed() -> bool:
                reply = stub.ListHealProposals(
                    bpb.ListHealProposalsRequest(states=[hpb.HEAL_STATE_PROPOSED]), timeout=TIMEOUT
                )
                proposals[:] = [p for p in reply.proposals if p.path == str(target)]
                return bool(proposals)

            _wait_until("a heal proposal", proposed, beta.proc)
            approved = stub.ApproveHeal(
                bpb.ApproveHealRequest(
                    proposal_id=proposals[0].id,
                    expected_current_blake3=proposals[0].current_blake3,
                ),
                timeout=TIMEOUT,
            ).proposal
            assert approved.state == hpb.HEAL_STATE_VERIFIED, approved
        _tail(base, pki, beta.port, "beta", 1)
    finally:
        beta.stop()
    assert target.read_text() == "root ALL=(ALL) ALL\n"
    roots = ["pki", "keys", "outbox", "state", "vault", "run", "client"]
    assert _mode_violations(base, [*roots, "manifests/db.manifest"]) == []


# --- the ML service -----------------------------------------------------------------------------


def test_ml_train_tune_and_serve(base: Path) -> None:
    pki = _pki(base, ("ml", HOST))
    keys = base / "keys"
    _qsc("keys", "init", "--dir", str(keys), "--component", "ml")
    data = base / "ml-in" / "windows.csv"
    data.parent.mkdir(mode=0o700)
    models = base / "models"
    _run("-m", "ml", "generate", "--out", str(data), "--hosts", "3", "--days", "3")
    versions = []
    for seed in ("1", "2"):
        out = _run(
            *("-m", "ml", "train", "--input", str(data), "--out", str(models)),
            *("--keyring", str(keys), "--n-estimators", "20", "--seed", seed, "--quiet"),
        )
        versions.append(json.loads(out)["version"])
    _run("-m", "ml", "tune", "--input", str(data), "--models", str(models), "--keyring", str(keys))
    _run(
        *("-m", "ml", "promote", "--models", str(models), "--keyring", str(keys)),
        *("--version", versions[0], "--reason", "file modes test"),
    )
    config = base / "ml.toml"
    config.write_text(
        _toml(
            {
                "server": _server(pki, f"ml-{HOST}"),
                "model": {"directory": str(models), "keyring": str(keys)},
            }
        )
    )
    ml = Service(base, "-m", "ml", "serve", "--config", str(config))
    ml.stop()
    assert _mode_violations(base, ["pki", "keys", "ml-in", "models", "run"]) == []


# --- missing parent directories -----------------------------------------------------------------

# `Path.mkdir(mode=0o700, parents=True)` applies the mode to the last directory only: the parents
# it creates would get what the umask leaves (0777 here). Each writer below creates every missing
# parent 0700 itself.


def _pki_issue_out(base: Path) -> None:
    _pki(base)
    _qsc(
        "pki",
        "issue",
        "alpha",
        "web-01",
        "--dir",
        str(base / "pki"),
        "--out",
        str(base / "a/b/out"),
    )


def _ml_train(base: Path) -> None:
    keys = base / "keys"
    _qsc("keys", "init", "--dir", str(keys), "--component", "ml")
    data = base / "windows.csv"
    _run("-m", "ml", "generate", "--out", str(data), "--hosts", "2", "--days", "2")
    _run(
        *("-m", "ml", "train", "--input", str(data), "--out", str(base / "a/b/models")),
        *("--keyring", str(keys), "--n-estimators", "10", "--quiet"),
    )


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(
            lambda b: _qsc("pki", "init", "--dir", str(b / "a/b/pki"), "--trust-domain", TD),
            id="qsc-pki-init",
        ),
        pytest.param(
            _pki_issue_out,
            id="qsc-pki-issue-out",
        ),
        pytest.param(
            lambda b: _qsc("keys", "init", "--dir", str(b / "a/b/keys"), "--component", "beta"),
            id="qsc-keys-init",
        ),
        pytest.param(
            _ml_train,
            id="qsc-ml-train",
        ),
    ],
)
def test_missing_parent_directories_are_created_private(
    base: Path, write: Callable[[Path], object]
) -> None:
    write(base)
    assert _mode_violations(base, ["a"]) == []
