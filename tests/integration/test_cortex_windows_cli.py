"""`qsc-cortex export-windows|export-labels` on a real store; `qsc-ml train|tune` on the files.

The store is a real, encrypted one made from a Cortex configuration: two Alpha guardians'
`host_telemetry` windows (a minute each, four hours per host two days ago, one more 40 days
ago), some of which cannot be rows (unmeasured features, another schema version, a value out
of its domain); an attack on web-01 shows in five windows. Beside them, the Cortex's own
assessment records: a true positive over the attack, a false positive on web-02, a benign
verdict on an assessment keyed by user (its hosts are its events'), and one still open. The
commands run as subprocesses, and the ML service's own commands read what they wrote.
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cortex import assessment_records as records
from cortex.assessments import Assessment, State, Verdict, VerdictRecord
from cortex.config import COMPONENT, load_cortex_config
from cortex.ingest import OwnIdentity
from cortex.store import CheckpointSigner, SqliteEventStore
from crypto.keyring import KeyManager
from crypto.pki import init_ca, issue_leaf, write_leaf
from mesh.identity import load_tls, load_tls_of_role
from mesh.ids import uuid7
from mesh.stream.cursor import StoredCursor
from ml import schema
from ml.data import read_windows
from qsc.common.v1 import event_pb2, identity_pb2
from tests.integration.test_cortex_store_cli import CONFIG

S = 10**9
MINUTE = 60 * S
WINDOWS = 240  # per host
HOSTS = ("web-01", "web-02")
ATTACK = range(100, 105)  # web-01's windows with the attack in them
FALSE_POSITIVE = range(50, 60)  # web-02's windows a false alarm covered
BENIGN = range(200, 202)  # web-01's windows of the benign verdict (keyed by user)
OPEN = range(150, 156)  # web-02's windows of an assessment nobody judged
UNMEASURED = range(230, 235)  # web-02: exec_rate unmeasured
OTHER_SCHEMA = 235  # web-02
OUT_OF_DOMAIN = 239  # web-01: cpu 150 %
SKIPPED = len(UNMEASURED) + 2
HEADER = ["time", "host", *schema.FEATURES]


def values(rng: random.Random, attack: bool) -> dict[str, float]:
    v = {
        "cpu_percent": rng.uniform(5, 30),
        "memory_percent": rng.uniform(40, 60),
        "network_bytes_out": float(rng.randint(100_000, 1_000_000)),
        "network_bytes_in": float(rng.randint(200_000, 2_000_000)),
        "failed_logins": float(rng.randint(0, 2)),
        "process_count": float(rng.randint(150, 200)),
        "exec_rate": rng.uniform(0.1, 1.0),
        "distinct_destination_addresses": float(rng.randint(1, 10)),
        "file_changes": float(rng.randint(0, 5)),
        "successful_logins": float(rng.randint(0, 1)),
        "new_listening_ports": 0.0,
        "privilege_changes": float(rng.randint(0, 1)),
    }
    if attack:
        v |= {
            "cpu_percent": 95.0,
            "network_bytes_out": 5e9,
            "failed_logins": 400.0,
            "exec_rate": 40.0,
            "distinct_destination_addresses": 500.0,
            "privilege_changes": 12.0,
        }
    return v


def window_event(host: str, start: int, v: dict[str, float]) -> event_pb2.Event:
    e = event_pb2.Event(id=uuid7())
    e.guardian.id = f"alpha-{host}"
    e.guardian.role = identity_pb2.ROLE_ALPHA
    e.guardian.host = host
    e.time.FromNanoseconds(start + MINUTE)
    t = e.host_telemetry
    t.host = host
    t.window_start.FromNanoseconds(start)
    t.window_end.FromNanoseconds(start + MINUTE)
    t.feature_schema_version = 1
    for name, value in v.items():
        t.features.add(name=name, value=value)
    t.events_counted = 100
    return e


@dataclass
class Made:
    config_file: Path
    base: int  # start of the first window of each host (ns)
    ids: dict[tuple[str, int], str]  # (host, window index) -> event id

    def start(self, i: int) -> int:
        return self.base + i * MINUTE


def judged(
    own: OwnIdentity,
    span: tuple[int, int],
    key: tuple[tuple[str, str], ...],
    verdict: Verdict | None,
    event_ids: tuple[str, ...] = (),
    rule: str = "cortex.credential_stuffing_exfiltration",
) -> Assessment:
    first, last = span
    state: State = "open" if verdict is None else "resolved"
    return Assessment(
        id=uuid7(),
        rule_id=rule,
        title="Credential stuffing then exfiltration",
        description="",
        severity="high",
        mitre=("T1110.004",),
        correlation_key=f"{rule}/" + ",".join(f"{k}={v}" for k, v in key),
        key=key,
        state=state,
        revision=1 if verdict is None else 2,
        confidence=0.9,
        prior=0.05,
        confidence_id=3,
        factors=(),
        steps_present=frozenset(),
        event_ids=event_ids,
        event_count=len(event_ids),
        first_event_ns=first,
        last_event_ns=last,
        create_ns=last,
        update_ns=last + S,
        close_ns=0 if verdict is None else last + S,
        verdict=None if verdict is None else VerdictRecord(verdict, "", own.spiffe_id, last + S),
    )


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    base_dir = tmp_path_factory.mktemp("windows")
    pki = base_dir / "pki"
    ca = init_ca(pki, "windows.test")
    write_leaf(issue_leaf(ca, "cortex", "c1"), pki, ca.cert)
    config_file = base_dir / "cortex.toml"
    config_file.write_text(CONFIG.format(pki=pki, base=base_dir))
    KeyManager.create(base_dir / "keys", "cortex")
    config = load_cortex_config(config_file)
    own = OwnIdentity.of(load_tls_of_role(config.server.tls, COMPONENT).identity)
    now = time.time_ns() // MINUTE * MINUTE
    base = now - 2 * 86_400 * S
    rng = random.Random(12)
    store = SqliteEventStore.open_with_keyring(
        config.store.store_config(),
        config.keyring.directory,
        component=COMPONENT,
        signer=CheckpointSigner.from_tls(load_tls(config.server.tls)),
        create=True,
    )
    ids: dict[tuple[str, int], str] = {}
    try:
        for host in HOSTS:
            old = window_event(host, now - 40 * 86_400 * S, values(rng, False))  # before 30d
            events = [old]
            for i in range(WINDOWS):
                e = window_event(
                    host, base + i * MINUTE, values(rng, host == "web-01" and i in ATTACK)
                )
                t = e.host_telemetry
                if host == "web-02" and i in UNMEASURED:
                    t.unmeasured.append("exec_rate")
                    next(f for f in t.features if f.name == "exec_rate").value = 0.0
                if host == "web-02" and i == OTHER_SCHEMA:
                    t.feature_schema_version = 2
                if host == "web-01" and i == OUT_OF_DOMAIN:
                    next(f for f in t.features if f.name == "cpu_percent").value = 150.0
                ids[(host, i)] = e.id
                events.append(e)
            for seq, e in enumerate(events, 1):
                e.seq = seq
            cursor = StoredCursor(f"spiffe://windows.test/alpha/{host}", len(events))
            store.append_batch(f"alpha-{host}", events, cursor)

        def span(r: range, into_first: int = 10, into_last: int = 30) -> tuple[int, int]:
            return base + r[0] * MINUTE + into_first * S, base + r[-1] * MINUTE + into_last * S

        assessments = [
            judged(own, span(ATTACK), (("host", "web-01"),), "true_positive"),
            judged(own, span(FALSE_POSITIVE), (("host", "web-02"),), "false_positive"),
            judged(
                own,
                span(BENIGN),
                (("user", "backup"),),
                "benign",
                event_ids=(ids[("web-01", BENIGN[0])],),
                rule="cortex.off_hours_login",
            ),
            judged(own, span(OPEN), (("host", "web-02"),), None),
        ]
        out = []
        for seq, a in enumerate(assessments, 1):
            e = records.to_event(a)
            e.id = uuid7()
            e.seq = seq
            e.guardian.CopyFrom(
                identity_pb2.GuardianRef(
                    id=own.guardian_id, role=identity_pb2.ROLE_CORTEX, host=own.host
                )
            )
            e.time.FromNanoseconds(a.update_ns)
            out.append(e)
        store.append_batch(own.guardian_id, out, StoredCursor(own.spiffe_id, len(out)))
    finally:
        store.close()
    return Made(config_file, base, ids)


def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def cortex(made: Made, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run("cortex", command, "--config", str(made.config_file), *args)


def ok(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def refused(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in result.stderr, (needle, result.stderr)


def iso(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // S))


def csv_rows(path: Path) -> Iterator[dict[str, str]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames is not None
        yield from reader


@pytest.fixture(scope="module")
def ml_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    keys = tmp_path_factory.mktemp("ml") / "keys"
    KeyManager.create(keys, "ml")
    return keys


def test_export_windows_trains_a_model_and_labels_tune_it(
    made: Made, ml_keys: Path, tmp_path: Path
) -> None:
    out = tmp_path / "windows.csv"
    result = cortex(made, "export-windows", "--since", "30d", "--out", str(out), "--progress")
    summary = ok(result)
    expected = 2 * WINDOWS - SKIPPED
    assert f"export-windows: {2 * WINDOWS}/{2 * WINDOWS} windows" in result.stderr
    assert result.stderr.count(f"{2 * WINDOWS}/{2 * WINDOWS}") == 1
    assert f"exported {expected} window(s) of 2 host(s) between " in result.stderr
    assert "skipped 7 window(s)" in result.stderr
    assert summary["rows"] == expected
    assert summary["windows_read"] == 2 * WINDOWS
    assert summary["hosts"] == list(HOSTS)
    assert summary["skipped"] == {"other_schema_version": 1, "out_of_domain": 1, "unmeasured": 5}
    assert summary["unmeasured_features"] == {"exec_rate": 5}
    assert out.stat().st_mode & 0o777 == 0o600
    assert not list(tmp_path.glob(".*.tmp"))
    with out.open(newline="") as f:
        assert next(csv.reader(f)) == HEADER
    rows = list(csv_rows(out))
    assert len(rows) == expected
    assert rows[0]["time"].endswith("Z")
    # The ML service's reader takes it as it is, and sees what was stored.
    windows = read_windows([out])
    assert windows.features == schema.FEATURES
    assert windows.rows == expected
    assert windows.hosts is not None
    assert set(windows.hosts) == set(HOSTS)
    assert windows.times is not None
    assert windows.times.min() == made.base / S

    models = tmp_path / "models"
    train = run(
        "ml",
        "train",
        "--input",
        str(out),
        "--out",
        str(models),
        "--keyring",
        str(ml_keys),
        "--n-estimators",
        "60",
        "--seed",
        "1",
        "--quiet",
    )
    trained = ok(train)
    assert Path(trained["model"]).is_file()
    card = json.loads(run("ml", "show", "--models", str(models), "--keyring", str(ml_keys)).stdout)
    assert card["training"]["rows"] == expected
    assert card["features"]["names"] == list(schema.FEATURES)

    labels = tmp_path / "labels.csv"
    labelled = ok(cortex(made, "export-labels", "--since", "30d", "--out", str(labels)))
    assert labelled["assessments"] == 3  # the open one has no verdict
    assert (labelled["malicious"], labelled["benign"]) == (
        len(ATTACK),
        len(FALSE_POSITIVE) + len(BENIGN),
    )
    assert labels.stat().st_mode & 0o777 == 0o600
    rows = list(csv_rows(labels))
    by_window = {(r["host"], r["time"]): r for r in rows}
    assert len(by_window) == len(rows)
    malicious = [r for r in rows if r["label"] == "1"]
    assert {r["host"] for r in malicious} == {"web-01"}
    assert all(float(r["failed_logins"]) == 400.0 for r in malicious)
    assert {r["kind"] for r in malicious} == {"cortex.credential_stuffing_exfiltration"}
    benign = [r for r in rows if r["label"] == "0"]
    assert sorted((r["host"], r["kind"]) for r in benign) == sorted(
        [("web-02", "cortex.credential_stuffing_exfiltration")] * len(FALSE_POSITIVE)
        + [("web-01", "cortex.off_hours_login")] * len(BENIGN)
    )

    tune = run(
        "ml", "tune", "--input", str(labels), "--models", str(models), "--keyring", str(ml_keys)
    )
    tuned = ok(tune)
    assert tuned["changed"] is True
    assert tuned["parent_version"] == trained["version"]
    assert tuned["after"]["tp"] == len(ATTACK)
    assert tuned["after"]["f1"] == 1.0
    assert f"{len(rows)} labelled rows ({len(ATTACK)} anomalous)" in tune.stderr


def test_export_jsonl_one_host_and_unmeasured_kept_on_request(made: Made, tmp_path: Path) -> None:
    out = tmp_path / "web-02.jsonl"
    summary = ok(
        cortex(
            made,
            "export-windows",
            "--since",
            "30d",
            "--host",
            "WEB-02",
            "--out",
            str(out),
            "--include-unmeasured",
        )
    )
    assert summary["format"] == "jsonl"
    assert summary["hosts"] == ["web-02"]
    assert summary["rows"] == WINDOWS - 1  # only the other schema version is skipped
    first = json.loads(out.read_text().splitlines()[0])
    assert list(first) == HEADER
    windows = read_windows([out])
    assert windows.rows == WINDOWS - 1
    assert set(windows.hosts or ()) == {"web-02"}
    # --until bounds the windows by their end: the first ten windows of each host.
    until = iso(made.start(10) + 30 * S)
    head = tmp_path / "head.csv"
    summary = ok(
        cortex(made, "export-windows", "--since", "3d", "--until", until, "--out", str(head))
    )
    assert summary["rows"] == 2 * 10
    labels = tmp_path / "labels-web-02.jsonl"
    only = ok(
        cortex(made, "export-labels", "--since", "30d", "--host", "web-02", "--out", str(labels))
    )
    assert (only["malicious"], only["benign"]) == (0, len(FALSE_POSITIVE))
    assert read_windows([labels], require_labels=True).rows == len(FALSE_POSITIVE)


def test_export_refuses_clearly(made: Made, tmp_path: Path) -> None:
    out = tmp_path / "w.csv"
    for command in ("export-windows", "export-labels"):
        refused(cortex(made, command, "--since", "30x", "--out", str(out)), 2, "30x", "duration")
        refused(
            cortex(made, command, "--since", "1d", "--until", "2d", "--out", str(out)),
            2,
            "must be before --until",
        )
        refused(
            cortex(made, command, "--since", "1d", "--host", "bad host", "--out", str(out)),
            2,
            "bad host",
        )
        refused(cortex(made, command, "--out", str(out)), 2, "--since")
        refused(
            cortex(made, command, "--since", "1d", "--out", str(tmp_path / "no" / "w.csv")),
            1,
            str(tmp_path / "no"),
        )
    assert not out.exists()
    # An existing file is never overwritten.
    out.write_text("keep me\n")
    for command in ("export-windows", "export-labels"):
        refused(
            cortex(made, command, "--since", "30d", "--out", str(out)),
            1,
            "exists already",
            str(out),
        )
    assert out.read_text() == "keep me\n"
    # Nothing stored in the span: exit 3, said so, no file.
    empty = tmp_path / "empty.csv"
    old = ("--since", "2020-01-01T00:00:00Z", "--until", "2020-02-01T00:00:00Z")
    refused(
        cortex(made, "export-windows", *old, "--out", str(empty)),
        3,
        "no host_telemetry windows stored between 2020-01-01T00:00:00Z and 2020-02-01T00:00:00Z",
        "nothing written",
    )
    refused(
        cortex(made, "export-labels", *old, "--out", str(empty)),
        3,
        "no resolved assessment with a verdict",
    )
    refused(
        cortex(made, "export-windows", "--since", "30d", "--host", "db-01", "--out", str(empty)),
        3,
        "on host db-01",
    )
    # Windows there, but none usable: the message says why and how to keep them.
    span = (  # the windows ending from the first to the last unmeasured one's end
        "--since",
        iso(made.start(UNMEASURED[0]) + MINUTE),
        "--until",
        iso(made.start(UNMEASURED[-1]) + MINUTE + S),
    )
    refused(
        cortex(made, "export-windows", *span, "--host", "web-02", "--out", str(empty)),
        3,
        "5 host_telemetry window(s)",
        "unmeasured (exec_rate 5)",
        "--include-unmeasured",
    )
    assert not empty.exists()
    assert not list(tmp_path.glob(".*.tmp"))
    # A configuration whose store is not there: exit 1, naming it; nothing created.
    elsewhere = tmp_path / "elsewhere.toml"
    base = made.config_file.parent
    elsewhere.write_text(made.config_file.read_text().replace(f"{base}/store", f"{base}/gone"))
    for command in ("export-windows", "export-labels"):
        refused(
            run(
                "cortex", command, "--config", str(elsewhere), "--since", "30d", "--out", str(empty)
            ),
            1,
            f"{base}/gone",
        )
    assert not (base / "gone" / "events.db").exists()
    assert not empty.exists()
    refused(
        run(
            "cortex",
            "export-windows",
            "--config",
            str(tmp_path / "nope.toml"),
            "--since",
            "1d",
            "--out",
            str(empty),
        ),
        2,
        "nope.toml",
    )
    # The top-level help lists the commands.
    top = run("cortex", "--help")
    assert "export-windows" in top.stdout
    assert "export-labels" in top.stdout
