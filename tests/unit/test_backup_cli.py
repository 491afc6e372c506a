"""`qsc-beta manifest create|verify`: exit codes, output, progress on a terminal, JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from beta.backups.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, EXIT_VERIFY_FAILED, main
from crypto.keyring import KeyManager


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    keys = tmp_path / "keys"
    KeyManager.create(keys, "beta")
    root = tmp_path / "set"
    (root / "sub").mkdir(parents=True)
    (root / "a.bin").write_bytes(os.urandom(3000))
    (root / "sub" / "b.bin").write_bytes(os.urandom(5000))
    return keys, root, tmp_path / "set.manifest"


def test_create_then_verify(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    keys, root, manifest = setup
    common = [str(root), "-m", str(manifest), "--keys", str(keys)]
    assert main(["manifest", "create", *common, "--name", "nightly"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "backup set nightly, 2 files, 8000 bytes" in out
    assert main(["manifest", "verify", *common]) == EXIT_OK
    assert "PASSED" in capsys.readouterr().out
    assert main(["manifest", "verify", *common, "--depth", "structural"]) == EXIT_OK
    (root / "sub" / "b.bin").write_bytes(b"short")
    (root / "stray").write_bytes(b"?")
    assert main(["manifest", "verify", *common]) == EXIT_VERIFY_FAILED
    out = capsys.readouterr().out
    assert "FAILED (2 failures)" in out
    assert "truncated" in out
    assert "sub/b.bin" in out
    assert "unexpected-file" in out


def test_json_output_is_the_proto_result(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    keys, root, manifest = setup
    common = [str(root), "-m", str(manifest), "--keys", str(keys)]
    assert main(["manifest", "create", *common]) == EXIT_OK
    capsys.readouterr()
    (root / "a.bin").unlink()
    assert main(["manifest", "verify", *common, "--json"]) == EXIT_VERIFY_FAILED
    doc = json.loads(capsys.readouterr().out)
    assert doc["backupSet"] == "set"
    assert doc["failures"][0]["kind"] == "BACKUP_FAILURE_KIND_MISSING"
    assert doc["failureCount"] == "1"


def test_progress_goes_to_stderr(
    setup: tuple[Path, Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    keys, root, manifest = setup
    common = [str(root), "-m", str(manifest), "--keys", str(keys), "--progress"]
    assert main(["manifest", "create", *common]) == EXIT_OK
    assert "hashing: 2/2 files" in capsys.readouterr().err
    assert main(["manifest", "verify", *common]) == EXIT_OK
    err = capsys.readouterr().err
    assert "\r" in err
    assert "hashing: 2/2 files" in err


def test_rotation_and_errors(
    setup: tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, root, manifest = setup
    common = [str(root), "-m", str(manifest), "--keys", str(keys)]
    assert main(["manifest", "create", *common]) == EXIT_OK
    assert main(["manifest", "create", *common]) == EXIT_FAILURE  # exists, no --force
    assert "already exists" in capsys.readouterr().err
    assert main(["manifest", "verify", *common, "--subset-fraction", "0.5"]) == EXIT_FAILURE
    cursor = str(tmp_path / "cursor")
    args = ["manifest", "verify", *common, "--subset-fraction", "0.5", "--cursor", cursor]
    assert main(args) == EXIT_OK
    assert "subset 1/2" in capsys.readouterr().out
    assert main(args) == EXIT_OK
    assert "subset 2/2" in capsys.readouterr().out
    bad_keys = [str(root), "-m", str(manifest), "--keys", str(tmp_path / "nokeys")]
    assert main(["manifest", "verify", *bad_keys]) == EXIT_FAILURE
    with pytest.raises(SystemExit) as exc:
        main(["manifest", "verify", *common, "--subset-fraction", "2"])
    assert exc.value.code == EXIT_USAGE
    assert main(["manifest"]) == EXIT_USAGE
