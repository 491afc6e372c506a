"""`make demo`: one intrusion on this host, seen whole by the mesh.

Everything is real and on loopback: a dev PKI, `qsc-ml` trained on synthetic history,
`qsc-alpha` (eBPF, following a real sshd's log), `qsc-beta` (a watched tree, a backup with its
signed manifest), `qsc-cortex` subscribed to both guardians and scoring through the ML service,
and a webhook receiver that verifies each playbook delivery's signature. Then an intruder:
failed SSH logins, a login from another address, a payload run from memory that sends 160 MiB
out, a cron file, a corrupted backup. The guardians' events print as the Cortex stores them,
then its assessments, the OCSF finding the receiver got and its signature check.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from crypto import pki
from crypto.keyring import KeyManager
from demo import components, intrusion
from demo.harness import HOST, DemoError, Proc, run_tool, step
from demo.site import (
    ALPHA_AUTH_CONFIG,
    ALPHA_ID,
    BETA_BACKUP_CONFIG,
    BETA_ID,
    CORTEX_CONFIG,
    CortexView,
    eventually,
)
from demo.sshd import Sshd, running_sshd, temporary_user
from demo.webhook_receiver import WebhookReceiver, receiver_leaf
from qsc.common.v1 import classification_pb2, event_pb2, identity_pb2
from qsc.cortex.v1 import assessment_pb2
from qsc.cortex.v1 import cortex_service_pb2 as pb

TRUST_DOMAIN: Final = "demo.qsc.test"
BACKUP_SET: Final = "db"
CREDENTIAL_THEFT: Final = "cortex.credential_stuffing_exfiltration"
PERSISTENCE: Final = "cortex.persistence_after_login"
FILELESS: Final = "cortex.fileless_chain"
# The Cortex additions to the shared configuration: the ML service and the playbooks.
CORTEX_EXTRA: Final = """
[ml]
address = "127.0.0.1:{ml_port}"
batch_delay = "50ms"

[playbooks]
files = ["{playbooks}"]
poll_interval = "100ms"
retry_delays = ["200ms", "1s", "5s"]

[[playbooks.endpoints]]
name = "soar"
url = "{url}"
auth = "standard-webhooks"
secret_files = ["{secret}"]
ca_file = "{ca}"
"""
PLAYBOOKS: Final = """
- playbook: Tell the SOAR about confident intrusions
  id: notify-soar
  trigger:
    filter: 'severity >= HIGH AND confidence >= 0.7'
    on: [created]
  steps:
    - webhook: soar
      format: ocsf
"""
# Alpha sends its host telemetry every few seconds here, so the ML service scores the windows
# the intrusion falls in (the default is a minute).
TELEMETRY: Final = '\n[telemetry]\nwindow = "3s"\n'


@dataclass
class Mesh:
    workdir: Path
    alpha: Proc
    beta: Proc
    ml: Proc
    cortex: Proc
    receiver: WebhookReceiver
    backup_root: Path
    procs: list[Proc] = field(default_factory=list)

    @property
    def view(self) -> CortexView:
        return CortexView(self.workdir, self.cortex.port)


# --- setting up ---------------------------------------------------------------------------------


def _pki(workdir: Path) -> None:
    ca = pki.init_ca(workdir / "pki", TRUST_DOMAIN)
    for role in ("alpha", "beta", "ml", "cortex", "soar", "operator"):
        pki.write_leaf(pki.issue_leaf(ca, role, HOST), workdir / "pki", ca.cert)
    print(f"  CA {ca.trust_domain} and one certificate per role, keys 0600, in {workdir / 'pki'}")


def alpha_following(workdir: Path, auth_log: Path, telemetry: str = TELEMETRY) -> Proc:
    """qsc-alpha (not started) following `auth_log`, its config in workdir/alpha."""
    base = workdir / "alpha"
    base.mkdir(mode=0o700)
    text = ALPHA_AUTH_CONFIG.format(pki=workdir / "pki", base=base, auth_log=auth_log)
    (base / "alpha.toml").write_text(text + telemetry)
    return Proc("qsc-alpha", ["alpha", "--config", str(base / "alpha.toml")], base)


def beta_with_backup(workdir: Path) -> tuple[Proc, Path]:
    """qsc-beta (not started) watching workdir/beta/etc, with backup set BACKUP_SET signed;
    the process and the backup's root."""
    base = workdir / "beta"
    etc = base / "etc"
    etc.mkdir(parents=True, mode=0o700)
    (etc / "app.conf").write_text("listen = 443\nadmin = false\n")
    (etc / "sshd_like.conf").write_text("PermitRootLogin no\n")
    root = base / "backups" / BACKUP_SET
    (root / "sub").mkdir(parents=True)
    (root / "base.dump").write_bytes(bytes(range(256)) * 256)
    (root / "sub" / "wal.dump").write_bytes(b"w" * 20_000)
    manifest = base / "backups" / f"{BACKUP_SET}.manifest"
    config = base / "beta.toml"
    config.write_text(
        BETA_BACKUP_CONFIG.format(
            pki=workdir / "pki", base=base, name=BACKUP_SET, root=root, manifest=manifest
        )
    )
    KeyManager.create(base / "keys", "beta")
    run_tool("beta", "baseline", "init", "--config", str(config))
    run_tool(
        "beta", "manifest", "create", str(root), "--name", BACKUP_SET, "-m", str(manifest),
        "--keys", str(base / "keys"), "--no-progress",
    )  # fmt: skip
    print(f"  Beta: baseline of {etc.relative_to(workdir)}/, backup set {BACKUP_SET!r} signed")
    return Proc("qsc-beta", ["beta", "run", "--config", str(config)], base), root


def _ml(workdir: Path) -> Proc:
    base = workdir / "ml"
    config = components.train_ml(workdir, base)
    return Proc("qsc-ml", ["ml", "serve", "--config", str(config)], base)


def _receiver(workdir: Path, stack: ExitStack) -> tuple[WebhookReceiver, Path]:
    cert, key, _ = receiver_leaf(workdir / "pki")
    value = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    secret = workdir / "soar.whsec"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    receiver = stack.enter_context(WebhookReceiver(cert, key, secrets=[value]))
    print(f"  SOAR webhook receiver on {receiver.url()} (HTTPS, Standard Webhooks signatures)")
    return receiver, secret


def _cortex(
    workdir: Path, mesh_ports: tuple[int, int, int], rx: WebhookReceiver, secret: Path
) -> Proc:
    alpha_port, beta_port, ml_port = mesh_ports
    base = workdir / "cortex"
    base.mkdir(mode=0o700)
    KeyManager.create(base / "keys", "cortex")
    playbooks = base / "playbooks.yaml"
    playbooks.write_text(PLAYBOOKS)
    text = CORTEX_CONFIG.format(
        pki=workdir / "pki", base=base, silence=10, alpha_id=ALPHA_ID, beta_id=BETA_ID,
        alpha_port=alpha_port, beta_port=beta_port,
    ) + CORTEX_EXTRA.format(
        ml_port=ml_port, playbooks=playbooks, url=rx.url(), secret=secret,
        ca=workdir / "pki" / pki.CA_CERT_FILE,
    )  # fmt: skip
    (base / "cortex.toml").write_text(text)
    return Proc("qsc-cortex", ["cortex", "run", "--config", str(base / "cortex.toml")], base)


@contextlib.contextmanager
def running_mesh(workdir: Path, auth_log: Path) -> Iterator[Mesh]:
    """ML, Alpha, Beta, the receiver and the Cortex, started; all stopped afterwards, in
    reverse order, each saying how it exited."""
    with ExitStack() as stack:
        procs: list[Proc] = []

        def stop_all() -> None:
            for p in reversed(procs):
                code = p.stop()
                print(f"  {p.name} stopped, exit code {code}; log {p.log}")

        stack.callback(stop_all)
        alpha = alpha_following(workdir, auth_log)
        alpha.spawn()  # bcc compiles for several seconds: set the rest up meanwhile
        procs.append(alpha)
        ml = _ml(workdir)
        ml.start()
        procs.append(ml)
        beta, backup_root = beta_with_backup(workdir)
        beta.start()
        procs.append(beta)
        receiver, secret = _receiver(workdir, stack)
        alpha.wait_ready()
        cortex = _cortex(workdir, (alpha.port, beta.port, ml.port), receiver, secret)
        cortex.start()
        procs.append(cortex)
        mesh = Mesh(workdir, alpha, beta, ml, cortex, receiver, backup_root, procs)
        for gid in (ALPHA_ID, BETA_ID):
            eventually(f"the Cortex following {gid}", lambda gid=gid: mesh.view.connected(gid))  # type: ignore[misc]
        print(
            f"  qsc-alpha {HOST}:{alpha.port}, qsc-beta {HOST}:{beta.port}, "
            f"qsc-ml {HOST}:{ml.port}, qsc-cortex {HOST}:{cortex.port}: the Cortex follows both"
        )
        yield mesh


# --- what the Cortex stores, as it stores it ------------------------------------------------------

_SEVERITY: Final = {
    v: classification_pb2.Severity.Name(v).removeprefix("SEVERITY_")
    for v in classification_pb2.Severity.values()
}


_ROLE: Final = {
    v: identity_pb2.Role.Name(v).removeprefix("ROLE_").lower() for v in identity_pb2.Role.values()
}
_QUIET_KINDS: Final = frozenset({"sensor_health", "host_telemetry"})


class Feed:
    """The events of the demo's own activity, printed as the Cortex stores them: one line each,
    a run of the same rule in one poll as one line with its count."""

    def __init__(self, view: CortexView) -> None:
        self.view = view
        self.seen: dict[str, event_pb2.Event] = {}
        self._me = os.getpid()

    def ours(self, e: event_pb2.Event) -> bool:
        if e.guardian.role == identity_pb2.ROLE_ALPHA:
            if not e.rule.id:
                return False
            if e.HasField("auth_event") or not e.process.pid:
                return True
            return self._me in {e.process.pid, e.process.ppid, *(a.pid for a in e.process.ancestry)}
        return bool(e.rule.id) or e.WhichOneof("detail") not in _QUIET_KINDS

    def poll(self) -> None:
        # The newest page: a busy host may have stored more than a page since the start.
        newest = self.view.events(order_by="time desc")
        fresh = [e for e in newest if e.id not in self.seen]
        fresh.sort(key=lambda e: (e.time.seconds, e.time.nanos))
        shown: list[tuple[event_pb2.Event, int]] = []
        for e in fresh:
            self.seen[e.id] = e
            if not self.ours(e):
                continue
            if shown and shown[-1][0].rule.id == e.rule.id and e.rule.id:
                shown[-1] = (shown[-1][0], shown[-1][1] + 1)
            else:
                shown.append((e, 1))
        for e, n in shown:
            print(self.line(e, n))

    @staticmethod
    def line(e: event_pb2.Event, n: int = 1) -> str:
        source = _ROLE.get(e.guardian.role, "?")
        what = e.rule.id or e.WhichOneof("detail") or "?"
        techniques = ",".join(t.id for t in e.rule.techniques) or "-"
        severity = _SEVERITY.get(e.severity, "?")
        times = f" (x{n})" if n > 1 else ""
        return f"  {source:<6} {severity:<8} {what:<36} {techniques:<14} {e.summary[:60]}{times}"

    def until(self, what: str, found: Callable[[event_pb2.Event], bool], wait: float = 45) -> None:
        def probe() -> bool:
            self.poll()
            return any(found(e) for e in self.seen.values())

        eventually(what, probe, wait)


def _rule(rule: str) -> Callable[[event_pb2.Event], bool]:
    return lambda e: e.rule.id == rule


# --- the story ------------------------------------------------------------------------------------


def intrude(mesh: Mesh, s: Sshd, feed: Feed) -> None:
    step("An intruder at work (every step real; the events as the Cortex stores them)")
    print(f"-- 10 failed SSH logins against sshd on {HOST}:{s.port}")
    intrusion.failed_login_burst(s)
    feed.until("alpha.credential_stuffing", _rule("alpha.credential_stuffing"))
    print(f"-- the right password for {s.user}, from {intrusion.NEW_SOURCE}")
    intrusion.login_from_new_source(s)
    feed.until("the login from the new address", _rule("alpha.login_new_source"))
    print("-- a cron file dropped in /etc/cron.d (it schedules nothing; removed at the end)")
    with intrusion.cron_persistence():
        feed.until("alpha.cron_job_scheduled", _rule("alpha.cron_job_scheduled"))
    print("-- a bit flipped in the database backup, found by a verification")
    intrusion.corrupt_backup(mesh.workdir, mesh.beta.port, mesh.backup_root, BACKUP_SET)
    feed.until("the corrupted backup", lambda e: e.HasField("backup_integrity"))
    print("-- a payload run from memory (memfd) sends 160 MiB out")
    with intrusion.fileless_exfiltration() as pid:
        feed.until(
            "the large transfer",
            lambda e: e.rule.id == "alpha.large_outbound_transfer" and e.process.pid == pid,
        )


def _assessments(mesh: Mesh) -> list[assessment_pb2.Assessment]:
    request = pb.ListAssessmentsRequest(page_size=100)
    return list(mesh.view.call("ListAssessments", request).assessments)


def show_assessments(mesh: Mesh, feed: Feed) -> list[assessment_pb2.Assessment]:
    step("The Cortex's assessments")

    def complete() -> list[assessment_pb2.Assessment]:
        feed.poll()
        done = [a for a in _assessments(mesh) if _of(a) == CREDENTIAL_THEFT]
        names = {f.name for a in done for f in a.factors}
        wanted = {"failed_login_burst", "login_from_new_address", "large_outbound_transfer"}
        return done if names >= wanted else []

    eventually(f"the {CREDENTIAL_THEFT} assessment", complete, wait=60)
    time.sleep(2.0)  # later revisions (the backup, the anomaly) and the other rules
    feed.poll()
    found = sorted(_assessments(mesh), key=lambda a: -a.confidence)
    for a in found:
        severity = _SEVERITY.get(a.severity, "?")
        print(f"\n  {a.title}")
        print(
            f"    {a.name}, rule {_of(a)}, severity {severity}, "
            f"confidence {a.confidence:.3f} (prior {a.prior:.3f}), revision {a.revision}"
        )
        for f in a.factors:
            print(
                f"    factor {f.name:<28} x{f.count:<3} "
                f"likelihood ratio {f.likelihood_ratio:>6.2f}  log-odds {f.log_odds:+.2f}"
            )
        print(f"    MITRE {', '.join(f'{t.id} {t.name}'.strip() for t in a.techniques)}")
        print(f"    hosts {', '.join(a.hosts)}; {a.contributing_event_count} contributing events")
    return found


def _of(a: assessment_pb2.Assessment) -> str:
    """The correlation rule an assessment comes from: its key is RULE/KEY."""
    return a.correlation_key.split("/", 1)[0]


def _trimmed(value: object) -> object:
    """The JSON with every list cut to its first two items and a count of the rest."""
    if isinstance(value, dict):
        return {k: _trimmed(v) for k, v in value.items()}
    if isinstance(value, list):
        head = [_trimmed(v) for v in value[:2]]
        return [*head, f"... {len(value) - 2} more"] if len(value) > 2 else head
    return value


def show_delivery(mesh: Mesh, found: list[assessment_pb2.Assessment]) -> None:
    step("The playbook: notify-soar delivered each confident assessment as OCSF, signed")
    rx = mesh.receiver
    rx.wait_for(lambda r: bool(r.verified()), timeout=30)
    titles = {a.name: a.title for a in found}
    out = mesh.workdir / "soar-deliveries"
    out.mkdir()
    for i, r in enumerate(rx.requests, 1):
        finding = r.json()
        name = finding.get("unmapped", {}).get("assessment", "")
        (out / f"{i}.ocsf.json").write_text(json.dumps(finding, indent=2, sort_keys=True))
        print(
            f"  POST {r.path} webhook-id {r.webhook_id}: signature verified by the receiver "
            f"{r.verified}, answered {r.status}: {titles.get(name, name)}"
        )
    shown = _trimmed(rx.verified()[0].json())
    print(f"  the first OCSF finding, lists cut to two items ({out}/ has each one whole):")
    for line in json.dumps(shown, indent=2, sort_keys=True).splitlines():
        print(f"    {line}")


def explore_commands(mesh: Mesh) -> list[str]:
    """Ways into the running mesh: the guardian's stream, the Cortex's API by two clients."""
    p = mesh.workdir / "pki"
    soar = f"--cacert {p}/ca.crt --cert {p}/soar-{HOST}.crt --key {p}/soar-{HOST}.key"
    method = "qsc.cortex.v1.CortexService/ListAssessments"
    return [
        f".venv/bin/qsc tail --cert {p}/cortex-{HOST}.crt --key {p}/cortex-{HOST}.key "
        f"--ca {p}/ca.crt --from-oldest --count 5 {HOST}:{mesh.alpha.port}",
        f".venv/bin/grpcurl {soar.replace('--', '-')} -import-path proto "
        f"-proto qsc/cortex/v1/cortex_service.proto {HOST}:{mesh.cortex.port} {method}",
        f"tools/npm/node_modules/.bin/buf curl {soar} --schema proto --protocol grpc "
        f"https://{HOST}:{mesh.cortex.port}/{method}",
    ]


def explore(mesh: Mesh) -> None:
    step("The mesh stays up (--keep): explore it from the repository, then Ctrl-C")
    for command in explore_commands(mesh):
        print(f"  {command}")
    print(f"  workspace {mesh.workdir}: each component's log is next to its state", flush=True)
    while True:
        time.sleep(3600)


def run(workdir: Path, keep: bool) -> int:
    print(f"QSC demo: one intrusion, seen whole. Workspace {workdir}")
    if os.geteuid() != 0:
        raise DemoError("the demo needs root: eBPF, a local sshd and its user")
    started = time.monotonic()
    step("Setting up the mesh on loopback")
    _pki(workdir)
    (workdir / "sshd").mkdir()
    with (
        temporary_user() as user,
        running_sshd(workdir / "sshd", *user) as s,
        running_mesh(workdir, s.log) as mesh,
    ):
        took = time.monotonic() - started
        print(f"  sshd on {HOST}:{s.port} with a temporary user {s.user}; set up in {took:.0f}s")
        feed = Feed(mesh.view)
        feed.poll()
        intrude(mesh, s, feed)
        found = show_assessments(mesh, feed)
        show_delivery(mesh, found)
        print(f"\ndemo finished in {time.monotonic() - started:.0f}s")
        if keep:
            explore(mesh)
        step("Stopping")
    return 0
