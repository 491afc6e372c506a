"""`qsc-cortex assessments export` and `qsc-cortex model show|reset` as real processes.

The store is a real one made from a configuration file (the Cortex's own `open_store`): two
guardians' events of a credential-stuffing attack each, and the assessment records a Cortex
stores for them (the default rules' engine and book, each revision one of the Cortex's own
events, as `Cortex._store_assessments` records them); one of the two assessments judged a
false positive. The commands run beside it as subprocesses: what they print, their exit codes,
and that the reset is read back by the Cortex's own restore.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format

from cortex import assessment_records as records
from cortex.app import open_store
from cortex.assessments import Assessment, AssessmentBook
from cortex.config import COMPONENT, CortexConfig, load_cortex_config
from cortex.correlate import Correlator, VerdictModel, load_files
from cortex.correlation import CorrelationRuntime
from cortex.ingest import OwnIdentity
from cortex.store import CheckpointSigner, SqliteEventStore
from crypto.keyring import KeyManager
from crypto.pki import init_ca, issue_leaf, write_leaf
from mesh.identity import load_tls, load_tls_of_role
from mesh.ids import uuid7
from mesh.stream.cursor import StoredCursor
from qsc.common.v1 import event_pb2, identity_pb2
from qsc.cortex.v1 import assessment_pb2
from tests.integration.test_cortex_store_cli import CONFIG
from tests.ocsf_validation import ocsf_errors
from tests.unit.correlate_events import T0, ev

RULE = "cortex.credential_stuffing_exfiltration"
SOAR = "spiffe://cli.test/soar/s1"
PRESENT = ("failed_login_burst", "login_from_new_address", "large_outbound_transfer")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("pki")
    ca = init_ca(base, "cli.test")
    write_leaf(issue_leaf(ca, "cortex", "c1"), base, ca.cert)
    return base


class Made:
    """The store's content, as the test knows it."""

    def __init__(self, config_file: Path) -> None:
        self.config_file = config_file
        self.config: CortexConfig = load_cortex_config(config_file)
        self.own = OwnIdentity.of(load_tls_of_role(self.config.server.tls, COMPONENT).identity)
        self.ticks = itertools.count(T0, 10**9)
        self.book = AssessmentBook(VerdictModel(), clock=lambda: next(self.ticks))
        self.engine = Correlator(load_files())
        self.guardian_events: dict[str, list[event_pb2.Event]] = {}

    def writer(self) -> SqliteEventStore:
        return open_store(self.config, CheckpointSigner.from_tls(load_tls(self.config.server.tls)))

    def attack(self, store: SqliteEventStore, host: str) -> None:
        guardian = f"alpha-{host}"
        events = [
            ev(
                "alpha.credential_stuffing",
                "auth_event",
                host=host,
                user="alice",
                source="203.0.113.9",
            ),
            ev(
                "alpha.login_new_source",
                "auth_event",
                host=host,
                at=60,
                user="alice",
                source="203.0.113.9",
            ),
            ev("alpha.large_outbound_transfer", "transfer_volume", host=host, at=120),
        ]
        for seq, e in enumerate(events, 1):
            e.seq = seq
        store.append_batch(guardian, events, StoredCursor(f"spiffe://cli.test/alpha/{host}", 3))
        self.guardian_events[host] = events
        changes = []
        for e in events:
            for hit in self.engine.observe(e):
                changed = self.book.apply(hit)
                if changed is not None:
                    changes.append(changed)
        self.record(store, changes)

    def record(self, store: SqliteEventStore, changes: list[Assessment], at: int = 0) -> None:
        """Store `changes` as the Cortex does: each one of its own events, numbered on."""
        cursor = store.cursor(self.own.guardian_id)
        seq = 0 if cursor is None else cursor.seq
        out = []
        for a in changes:
            seq += 1
            e = records.to_event(a)
            e.id = uuid7()
            e.seq = seq
            e.guardian.CopyFrom(
                identity_pb2.GuardianRef(
                    id=self.own.guardian_id, role=identity_pb2.ROLE_CORTEX, host=self.own.host
                )
            )
            e.time.FromNanoseconds(at or a.update_ns)
            out.append(e)
        store.append_batch(self.own.guardian_id, out, StoredCursor(self.own.spiffe_id, seq))

    def assessment_of(self, host: str) -> Assessment:
        (a,) = [a for a in self.book.all() if a.hosts == (host,)]
        return a


@pytest.fixture
def made(pki: Path, tmp_path: Path) -> Made:
    path = tmp_path / "cortex.toml"
    path.write_text(CONFIG.format(pki=pki, base=tmp_path))
    KeyManager.create(tmp_path / "keys", "cortex")
    m = Made(path)
    store = m.writer()
    try:
        m.attack(store, "web-01")
        m.attack(store, "web-02")
        judged = m.book.verdict(m.assessment_of("web-02").id, "false_positive", "drill", SOAR)
        m.record(store, [judged])
    finally:
        store.close()
    return m


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cortex", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def lines(text: str) -> list[dict[str, Any]]:
    assert text.endswith("\n") or not text
    return [json.loads(line) for line in text.splitlines()]


def export(made: Made, *args: str) -> list[dict[str, Any]]:
    return lines(ok(cli("assessments", "export", "--config", str(made.config_file), *args)))


def test_export_writes_ocsf_findings_that_conform_and_the_api_json(made: Made) -> None:
    findings = export(made)  # --format ocsf is the default
    assert len(findings) == 2
    for f in findings:
        assert ocsf_errors(f) == []
    by_host = {f["device"]["hostname"]: f for f in findings}
    open_one, judged = by_host["web-01"], by_host["web-02"]
    assert (open_one["activity_id"], open_one["status_id"]) == (1, 1)
    assert (judged["activity_id"], judged["status_id"]) == (3, 4)
    assert judged["comment"] == "drill"
    assert judged["finding_info"]["uid"] == made.assessment_of("web-02").id
    # Evidences are the stored contributing events, read back from the store.
    assert [e["uid"] for e in open_one["evidences"]] == [
        e.id for e in made.guardian_events["web-01"]
    ]
    assert open_one["evidences"][0]["user"] == {"name": "alice"}
    assert {f["step"] for f in open_one["unmapped"]["factors"]} == set(PRESENT)

    as_json = export(made, "--format", "json")
    assert len(as_json) == 2
    parsed = [json_format.ParseDict(d, assessment_pb2.Assessment()) for d in as_json]
    assert {p.name for p in parsed} == {a.name for a in made.book.all()}
    resolved = [p for p in parsed if p.state == assessment_pb2.ASSESSMENT_STATE_RESOLVED]
    assert [p.verdict.verdict for p in resolved] == [assessment_pb2.VERDICT_FALSE_POSITIVE]
    assert all(len(p.contributing_events) == 3 for p in parsed)
    assert {f.name for f in parsed[0].factors} == set(PRESENT)


def test_export_filters_like_list_assessments_and_writes_a_private_file(
    made: Made, tmp_path: Path
) -> None:
    (only,) = export(made, "--filter", "state = OPEN")
    assert only["finding_info"]["uid"] == made.assessment_of("web-01").id
    (fp,) = export(made, "--filter", 'verdict = FALSE_POSITIVE AND host = "web-02"')
    assert fp["finding_info"]["uid"] == made.assessment_of("web-02").id
    assert export(made, "--filter", "severity >= CRITICAL") == []
    out = tmp_path / "findings.jsonl"
    result = cli("assessments", "export", "--config", str(made.config_file), "--out", str(out))
    assert ok(result) == ""
    assert "exported 2 assessment(s) as ocsf" in result.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    assert len(lines(out.read_text())) == 2
    again = cli("assessments", "export", "--config", str(made.config_file), "--out", str(out))
    assert again.returncode == 1
    assert "exists already" in again.stderr
    assert str(out) in again.stderr
    assert "Traceback" not in again.stderr


def test_export_refuses_clearly(made: Made, tmp_path: Path) -> None:
    bad = cli(
        "assessments", "export", "--config", str(made.config_file), "--filter", "colour = red"
    )
    assert bad.returncode == 2
    assert "filter position 1" in bad.stderr
    assert "colour" in bad.stderr
    assert "Traceback" not in bad.stderr
    worse = cli(
        "assessments", "export", "--config", str(made.config_file), "--filter", "confidence >= high"
    )
    assert worse.returncode == 2
    assert "filter position" in worse.stderr
    fmt = cli("assessments", "export", "--config", str(made.config_file), "--format", "csv")
    assert fmt.returncode == 2
    assert "invalid choice" in fmt.stderr
    # A configuration whose store is not there: exit 1, the message names it.
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text(
        made.config_file.read_text().replace(f"{tmp_path}/store", f"{tmp_path}/gone")
    )
    for command in (("assessments", "export"), ("model", "show"), ("model", "reset")):
        missing = cli(*command, "--config", str(elsewhere))
        assert missing.returncode == 1, (command, missing.stderr)
        assert f"{tmp_path}/gone" in missing.stderr
        assert "Traceback" not in missing.stderr
        assert not (tmp_path / "gone" / "events.db").exists()  # never created by a tool
    nope = cli("assessments", "export", "--config", str(tmp_path / "nope.toml"))
    assert nope.returncode == 2
    assert "nope.toml" in nope.stderr
    assert cli("assessments").returncode == 2
    assert cli("model").returncode == 2


def show(made: Made) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(
        ok(cli("model", "show", "--config", str(made.config_file), "--json"))
    )
    return report


def steps_of(report: dict[str, Any], rule: str = RULE) -> dict[str, dict[str, Any]]:
    (found,) = [r for r in report["rules"] if r["rule"] == rule]
    return {s["step"]: s for s in found["steps"]}


def test_model_show_reset_and_the_cortex_reads_the_reset_back(made: Made) -> None:
    report = show(made)
    assert report["verdicts_taught"] == 1
    assert report["model_reset_time"] is None
    (rule,) = [r for r in report["rules"] if r["rule"] == RULE]
    assert rule["verdicts"] == {"true_positive": 0, "false_positive": 1, "benign": 0}
    steps = steps_of(report)
    for name in PRESENT:  # a false positive with the step present lowers its LR
        assert steps[name]["lr"] < steps[name]["seed_lr"], name
        assert steps[name]["present"]["false_positive"] == 1
    # What the command shows is what the book of that store computes.
    with open_store_readonly(made) as store:
        expected = CorrelationRuntime(made.config.correlation)
        asyncio.run(restore_only(expected, store))
        learned = expected.ruleset.get(RULE)
        assert learned is not None
        for step in learned.steps:
            assert steps[step.name]["lr"] == expected.book.model.lr(RULE, step)
    text = ok(cli("model", "show", "--config", str(made.config_file)))
    assert "1 verdict(s) teach the model (never reset)" in text
    assert "0 true positive, 1 false positive, 0 benign" in text

    # A running Cortex holds the writer lock: reset refuses, and says what to do.
    holder = made.writer()
    try:
        refused = cli("model", "reset", "--config", str(made.config_file))
    finally:
        holder.close()
    assert refused.returncode == 1
    assert "stop the Cortex first" in refused.stderr
    assert "Traceback" not in refused.stderr

    reset = ok(cli("model", "reset", "--config", str(made.config_file)))
    assert "1 stored verdict(s) no longer teach it" in reset
    after = show(made)
    assert after["verdicts_taught"] == 0
    assert after["model_reset_time"] is not None
    assert all(s["lr"] == s["seed_lr"] for s in steps_of(after).values())
    # The Cortex's own restore, on the reopened store, starts from the seeds too.
    with open_store_readonly(made) as store:
        runtime = CorrelationRuntime(made.config.correlation)
        asyncio.run(restore_only(runtime, store))
        rule_def = runtime.ruleset.get(RULE)
        assert rule_def is not None
        assert all(runtime.book.model.lr(RULE, s) == s.lr for s in rule_def.steps)
        assert len(list(runtime.book.all())) == 2  # the assessments and verdicts stay
    # A verdict given after the reset teaches the model again.
    store = made.writer()
    try:
        judged = made.book.verdict(made.assessment_of("web-01").id, "true_positive", "", SOAR)
        made.record(store, [judged], at=last_time(store) + 10**9)
    finally:
        store.close()
    again = show(made)
    assert again["verdicts_taught"] == 1
    (rule,) = [r for r in again["rules"] if r["rule"] == RULE]
    assert rule["verdicts"] == {"true_positive": 1, "false_positive": 0, "benign": 0}
    assert all(steps_of(again)[n]["lr"] > steps_of(again)[n]["seed_lr"] for n in PRESENT)
    # The marker is chained and signed like every record: the store still verifies.
    ok(cli("store", "verify", "--config", str(made.config_file)))


def open_store_readonly(made: Made) -> SqliteEventStore:
    return SqliteEventStore.open_with_keyring(
        made.config.store.store_config(),
        made.config.keyring.directory,
        component=COMPONENT,
        readonly=True,
    )


async def restore_only(runtime: CorrelationRuntime, store: SqliteEventStore) -> None:
    try:
        await runtime.restore(store)
    finally:
        await runtime.stop()


def last_time(store: SqliteEventStore) -> int:
    page = store.query(descending=True, limit=1)
    return page.events[0].time.ToNanoseconds()
