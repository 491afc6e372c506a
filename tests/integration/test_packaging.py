"""The wheel as an operator installs it: `python -m build --wheel`, then `pip install
'qsc-*.whl[cortex]'` (and `[ml]`) into a fresh venv outside the repository, and the installed
commands run: each finds its default rules, correlations and BPF sources in the wheel, not in
a checkout.
"""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("qsc-*-py3-none-any.whl")
    return built


def _installed(tmp_path: Path, wheel: Path, extra: str) -> Path:
    env_dir = tmp_path / f"venv-{extra}"
    venv.create(env_dir, with_pip=True)
    done = subprocess.run(
        [str(env_dir / "bin" / "pip"), "install", "--quiet", f"{wheel}[{extra}]"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return env_dir / "bin"


def _run(bindir: Path, *argv: str, cwd: Path) -> str:
    done = subprocess.run(
        [str(bindir / argv[0]), *argv[1:]],
        cwd=cwd,  # outside the repository: nothing may come from a checkout
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, (argv, done.stderr[-3000:])
    return done.stdout


def test_the_wheel_carries_the_data_files(wheel: Path) -> None:
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "alpha/bpf/sensor.bpf.c",
        "alpha/bpf/records.h",
        "alpha/rules/default/00_base.yaml",
        "cortex/correlate/default/10_intrusion.yaml",
        "qsc/cortex/v1/cortex_service_pb2.py",
        "qsc/cortex/v1/cortex_service.proto",
        "alpha/py.typed",
    ):
        assert needed in names, needed
    assert not [n for n in names if n.startswith("tests/")]


def test_cortex_extra_installs_and_runs_outside_the_repository(tmp_path: Path, wheel: Path) -> None:
    bindir = _installed(tmp_path, wheel, "cortex")
    assert "ingest, store, correlation" in _run(bindir, "qsc-cortex", "--help", cwd=tmp_path)
    assert "pki" in _run(bindir, "qsc", "--help", cwd=tmp_path)
    # The built-in correlations load from the installed package.
    code = "from cortex.correlate.loader import load_files; print(len(load_files().rules))"
    assert int(_run(bindir, "python", "-c", code, cwd=tmp_path)) > 5
    # A CA and a certificate from the installed `qsc`.
    _run(bindir, "qsc", "pki", "init", "--dir", str(tmp_path / "pki"),
         "--trust-domain", "pkg.test", cwd=tmp_path)  # fmt: skip
    _run(bindir, "qsc", "pki", "issue", "cortex", "127.0.0.1", "--dir", str(tmp_path / "pki"),
         cwd=tmp_path)  # fmt: skip
    assert (tmp_path / "pki" / "cortex-127.0.0.1.key").stat().st_mode & 0o777 == 0o600


def test_ml_extra_installs_and_trains(tmp_path: Path, wheel: Path) -> None:
    bindir = _installed(tmp_path, wheel, "ml")
    data = tmp_path / "history.csv"
    _run(bindir, "qsc-ml", "generate", "--out", str(data), "--hosts", "2", "--days", "1",
         cwd=tmp_path)  # fmt: skip
    _run(bindir, "qsc", "keys", "init", "--dir", str(tmp_path / "keys"), "--component", "ml",
         cwd=tmp_path)  # fmt: skip
    _run(bindir, "qsc-ml", "train", "--input", str(data), "--out", str(tmp_path / "models"),
         "--keyring", str(tmp_path / "keys"), "--n-estimators", "10", "--quiet",
         cwd=tmp_path)  # fmt: skip
    assert list((tmp_path / "models").iterdir())
