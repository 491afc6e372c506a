"""Rollback protection and private files, for real: `qsc-ml` processes over mTLS with certificates
from `qsc pki`, their logs read as JSON lines, `qsc-ml promote` and the other commands run as
processes; and the in-process service (ml_harness.ServiceThread) where a test needs to change the
directory between two looks.

* Deleting the newest model makes neither the running service nor a fresh start serve the older
  one (ERROR in the log, GetModel's `refused_version` / `rollback_refused`); `qsc-ml promote` is
  the way back (WARNING, `promoted_from_version`); the floor only moves forward; a tampered
  `model-revision` stops the start.
* An old, validly sealed card put back is refused the same way. The documented limit: an older
  `model-revision` put back while no service runs is believed (a running one rewrites it).
* Every file `qsc-ml train`, `tune`, `promote` and the service write is 0600 in a 0700
  directory, under umask 022.

Domain validation and the out-of-range flag over the wire are in test_ml_server.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from crypto.keyring import KeyManager
from mesh.config import config_from_dict
from ml.app import MlService
from ml.config import MlConfig
from ml.data import write_windows
from ml.errors import ModelRollbackError
from ml.promote import promote_model
from ml.revision import Revision, read_revision, record_path
from ml.schema import FEATURES, SCHEMA_VERSION
from ml.store import CARD_SUFFIX, MODEL_SUFFIX, PURPOSE, card_path, load_card, model_path
from ml.synthetic import SyntheticConfig, generate
from qsc.ml.v1 import anomaly_service_pb2 as pb
from qsc.ml.v1 import anomaly_service_pb2_grpc as pb_grpc
from tests.integration.ml_harness import (
    HOST,
    NORMAL,
    LogWatch,
    MlProcess,
    Models,
    ServiceThread,
    look_now,
    qsc_ml,
    service_config,
    train_another,
    write_config,
)

TIMEOUT = 10.0
REASON = "the new model pages the on-call every night"


@contextmanager
def _stub(pki: Path, port: int) -> Iterator[pb_grpc.AnomalyServiceStub]:
    """A stub calling as the cortex, over a channel closed after the block."""
    stem = pki / "cortex-c1"
    creds = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.crt").read_bytes(),
        private_key=Path(f"{stem}.key").read_bytes(),
        certificate_chain=Path(f"{stem}.crt").read_bytes(),
    )
    with grpc.secure_channel(f"{HOST}:{port}", creds) as channel:
        yield pb_grpc.AnomalyServiceStub(channel)


def _model(stub: pb_grpc.AnomalyServiceStub) -> pb.GetModelResponse:
    return stub.GetModel(pb.GetModelRequest(), timeout=TIMEOUT)


def _score(stub: pb_grpc.AnomalyServiceStub, version: str = "") -> pb.ScoreResponse:
    request = pb.ScoreRequest(
        feature_schema_version=SCHEMA_VERSION,
        feature_names=list(FEATURES),
        rows=[pb.FeatureRow(key="r0", values=NORMAL)],
        model_version=version,
    )
    return stub.Score(request, timeout=TIMEOUT)


def _keys(models: Models) -> KeyManager:
    return KeyManager.open(models.keyring, "ml")


def _delete(models: Models, version: str) -> None:
    card_path(models.directory, version).unlink()
    model_path(models.directory, version).unlink()


def _floor(models: Models) -> Revision | None:
    return read_revision(models.directory, _keys(models).decryption_keys(PURPOSE))


def _revision(models: Models, version: str) -> Revision:
    return Revision.of(load_card(card_path(models.directory, version), _keys(models)))


def _promote(models: Models, version: str) -> dict[str, str]:
    done = qsc_ml(
        "promote",
        "--models",
        str(models.directory),
        "--keyring",
        str(models.keyring),
        "--version",
        version,
        "--reason",
        REASON,
    )
    assert done.returncode == 0, done.stderr
    out: dict[str, str] = json.loads(done.stdout)
    return out


def _start_fails(config: MlConfig) -> ModelRollbackError:
    """What a fresh start raises (MlService loads the newest model before it listens)."""

    async def build() -> MlService:
        return MlService(config)

    with pytest.raises(ModelRollbackError) as info:
        asyncio.run(build())
    return info.value


def _start_refused(config: Path, port_file: Path) -> str:
    """Start `qsc-ml --config` and expect it to refuse (exit 1, never listening); what it said."""
    proc = MlProcess(config, port_file)
    try:
        assert proc.wait_exit() == 1
    finally:
        proc.close()
    assert not port_file.exists()
    return "\n".join(proc.lines)


@pytest.fixture
def config(ml_pki: Path, ml_models: Models, tmp_path: Path) -> Path:
    """The service's TOML: the directory polled hourly, so only SIGHUP makes it look."""
    return write_config(tmp_path / "ml.toml", service_config(ml_pki, ml_models, poll="1h"))


@pytest.mark.slow
def test_deleting_the_newest_is_refused_and_promote_is_the_way_back(
    ml_pki: Path, ml_models: Models, config: Path, tmp_path: Path
) -> None:
    old = ml_models.version
    new = train_another(ml_models, seed=7)
    assert new != old
    newest_revision = _revision(ml_models, new)
    service = MlProcess(config, tmp_path / "port")
    try:
        port = service.wait_port()
        with _stub(ml_pki, port) as stub:
            assert _model(stub).version == new

            # The newest model deleted: the running service refuses the older one, at ERROR.
            _delete(ml_models, new)
            seen = service.hangup()
            record = service.wait_log("model rollback refused", "error", after=seen)
            assert record["version"] == old
            assert record["serving"] == new
            assert "refused as a rollback" in record["error"]
            answer = service.wait_log("model directory checked on request", after=seen)
            assert answer["refused"] == old
            info = _model(stub)
            assert info.version == new  # still the newest: it is in memory
            assert info.refused_version == old
            assert info.rollback_refused
            assert "older than" in info.refused_reason
            assert f"promote --models {ml_models.directory}" in info.refused_reason
            assert _score(stub, new).model_version == new
            # Reported once: the next look logs its answer and nothing else.
            seen = service.hangup()
            service.wait_log("model directory checked on request", after=seen)
            ml_lines = [r for r in service.records[seen:] if r["logger"].startswith("qsc.ml")]
            assert [r["message"] for r in ml_lines] == ["model directory checked on request"]
            assert _floor(ml_models) == newest_revision

            # A fresh start refuses it too, and says how to roll back on purpose.
            said = _start_refused(config, tmp_path / "port-fresh")
            assert f"qsc-ml: error: {card_path(ml_models.directory, old)}: is {old}" in said
            assert "refused as a rollback" in said
            assert f"qsc-ml promote --models {ml_models.directory}" in said

            # The deliberate way back: `qsc-ml promote`; the service serves it, at WARNING.
            out = _promote(ml_models, old)
            assert out["version"] == old
            assert out["promoted_from"] == new
            seen = service.hangup()
            record = service.wait_log("model serving after a deliberate rollback", after=seen)
            assert record["level"] == "warning"
            assert record["version"] == old
            assert record["promoted_from"] == new
            assert record["previous"] == new
            assert record["reason"] == REASON
            info = _model(stub)
            assert info.version == old
            assert info.promoted_from_version == new
            assert info.refused_version == ""
            assert not info.rollback_refused
            assert _score(stub).model_version == old
            # The floor moved forward to the promoted card, past the deleted model.
            floor = _floor(ml_models)
            assert floor == _revision(ml_models, old)
            assert floor is not None
            assert floor > newest_revision
        assert service.stop() == 0
    finally:
        service.close()

    # A fresh start serves the promoted model, and says so at WARNING.
    again = MlProcess(config, tmp_path / "port-again")
    try:
        port = again.wait_port()
        assert again.wait_log("model serving after a deliberate rollback")["level"] == "warning"
        with _stub(ml_pki, port) as stub:
            info = _model(stub)
            assert info.version == old
            assert info.promoted_from_version == new
        assert again.stop() == 0
    finally:
        again.close()


def test_a_tampered_revision_record_stops_the_start(
    ml_models: Models, config: Path, tmp_path: Path
) -> None:
    path = record_path(ml_models.directory)
    sealed = bytearray(path.read_bytes())
    sealed[len(sealed) // 2] ^= 0x01
    path.write_bytes(bytes(sealed))
    said = _start_refused(config, tmp_path / "port")
    assert f"qsc-ml: error: {path}: does not verify" in said
    assert "a rollback would go unnoticed" in said
    assert path.read_bytes() == bytes(sealed)  # reported, never reset


def test_an_old_card_put_back_is_refused_running_and_at_start(
    ml_pki: Path, ml_models: Models
) -> None:
    old = ml_models.version
    old_card = card_path(ml_models.directory, old).read_bytes()
    new = train_another(ml_models, seed=7)
    promote_model(ml_models.directory, old, _keys(ml_models), reason=REASON)
    promoted = _revision(ml_models, old)
    cfg = config_from_dict(MlConfig, service_config(ml_pki, ml_models, poll="1h"))
    with LogWatch() as logs:
        svc = ServiceThread(cfg)
        try:
            level, fields = logs.wait("model serving after a deliberate rollback")
            assert (level, fields["version"], fields["promoted_from"]) == ("warning", old, new)
            # The card of `old` from before the promotion, validly sealed, put back: the newest
            # card on disk is `new` again, older than the floor.
            card_path(ml_models.directory, old).write_bytes(old_card)
            mark, answer = look_now(svc, logs)
            assert answer["serving"] == old
            assert answer["refused"] == new
            assert next((lv, m) for lv, m, _ in logs.since(mark)) == (
                "error",
                "model rollback refused; still serving the newest model",
            )
            with _stub(ml_pki, svc.port) as stub:
                info = _model(stub)
                assert (info.version, info.refused_version) == (old, new)
                assert info.rollback_refused
                assert info.promoted_from_version == new
            assert _floor(ml_models) == promoted
        finally:
            svc.close()
    failed = _start_fails(cfg)
    assert f"{card_path(ml_models.directory, new)}: is {new}" in str(failed)


def test_an_older_revision_record_put_back_is_the_documented_limit(
    ml_pki: Path, ml_models: Models
) -> None:
    old = ml_models.version
    path = record_path(ml_models.directory)
    old_record = path.read_bytes()  # validly sealed, naming `old`
    new = train_another(ml_models, seed=7)
    newest = _revision(ml_models, new)
    cfg = config_from_dict(MlConfig, service_config(ml_pki, ml_models, poll="1h"))
    with LogWatch() as logs:
        svc = ServiceThread(cfg)
        try:
            assert svc.service.registry.require().version == new
            # Put back while the service runs: it knows better, and rewrites the record.
            path.write_bytes(old_record)
            mark, _ = look_now(svc, logs)
            (level, message, fields), *_ = logs.since(mark)
            assert level == "warning"
            assert message.startswith("model revision record missing or older")
            assert message.endswith("rewritten")
            assert fields["found"] == _revision(ml_models, old).describe()
            assert _floor(ml_models) == newest
            # ... and its in-memory floor refuses the older model when the newest goes.
            _delete(ml_models, new)
            path.write_bytes(old_record)
            _, answer = look_now(svc, logs)
            assert answer == {"swapped": False, "serving": new, "refused": old}
            assert _floor(ml_models) == newest
        finally:
            svc.close()

    # The limit: the same two changes made while no service runs cannot be told from an
    # honest history (the older record is validly sealed, nothing else remembers the newer
    # model), so a fresh start serves the older model. Documented in the README.
    path.write_bytes(old_record)
    svc = ServiceThread(cfg)
    try:
        with _stub(ml_pki, svc.port) as stub:
            info = _model(stub)
            assert info.version == old
            assert info.refused_version == ""
    finally:
        svc.close()


def _modes(directory: Path) -> dict[str, int]:
    return {
        entry.name: stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
        for entry in os.scandir(directory)
    }


@pytest.mark.slow
def test_every_file_the_commands_and_the_service_write_is_private(
    ml_pki: Path, tmp_path: Path
) -> None:
    KeyManager.create(tmp_path / "keys", "ml")
    keys, models = tmp_path / "keys", tmp_path / "models"
    train, feedback = tmp_path / "train.csv", tmp_path / "feedback.csv"
    write_windows(train, generate(SyntheticConfig(hosts=2, days=2, seed=1, anomaly_rate=0.01)))
    write_windows(feedback, generate(SyntheticConfig(hosts=2, days=2, seed=2, anomaly_rate=0.05)))
    models.mkdir()
    os.chmod(models, 0o755)  # as an older version left it
    versions = []
    for n in ("1", "2"):
        done = qsc_ml("train", "--input", str(train), "--out", str(models), "--keyring",
                      str(keys), "--n-estimators", "10", "--seed", n, "--quiet",
                      umask=0o022)  # fmt: skip
        assert done.returncode == 0, done.stderr
        versions.append(json.loads(done.stdout)["version"])
    done = qsc_ml("tune", "--input", str(feedback), "--models", str(models), "--keyring",
                  str(keys), umask=0o022)  # fmt: skip
    assert done.returncode == 0, done.stderr
    tuned = json.loads(done.stdout)
    assert tuned["changed"]
    versions.append(tuned["version"])
    done = qsc_ml("promote", "--models", str(models), "--keyring", str(keys), "--version",
                  versions[0], "--reason", REASON, umask=0o022)  # fmt: skip
    assert done.returncode == 0, done.stderr
    # The service writes the record when there is none: remove it, then let it serve.
    record_path(models).unlink()
    config = write_config(
        tmp_path / "ml.toml",
        service_config(ml_pki, Models(models, keys, versions[0]), poll="1h"),
    )
    service = MlProcess(config, tmp_path / "port", umask=0o022)
    try:
        service.wait_port()
        assert service.wait_log("no model revision record")["level"] == "warning"
        service.wait_log("model serving after a deliberate rollback")
        assert service.stop() == 0
    finally:
        service.close()
    assert _floor(Models(models, keys, versions[0])) is not None
    expected = {f"{v}{suffix}" for v in versions for suffix in (MODEL_SUFFIX, CARD_SUFFIX)}
    modes = _modes(models)
    assert set(modes) == expected | {record_path(models).name}  # no temporary file left over
    assert modes == dict.fromkeys(modes, 0o600)
    assert stat.S_IMODE(models.stat().st_mode) == 0o700
