"""The wheel as an operator installs it: `python -m build --wheel`, then `pip install
'qsc-*.whl[cortex]'` into a fresh venv outside the repository, and `[alpha,beta,ml]` into that
venv after it (what a host that runs more adds); the installed commands run and find their
default rules, correlations and BPF sources in the wheel, not in a checkout. One venv: each
install costs CI time.
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


@pytest.fixture(scope="module")
def venv_bin(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with `[cortex]` installed from the wheel (the other extras added later)."""
    env_dir = tmp_path_factory.mktemp("venv")
    venv.create(env_dir, with_pip=True)
    _pip(env_dir / "bin", wheel, "cortex")
    return env_dir / "bin"


def _pip(bindir: Path, wheel: Path, extras: str) -> None:
    done = subprocess.run(
        [str(bindir / "pip"), "install", "--quiet", f"{wheel}[{extras}]"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]


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


def test_cortex_extra_installs_and_runs_outside_the_repository(
    tmp_path: Path, venv_bin: Path
) -> None:
    bindir = venv_bin
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


def test_guardian_and_ml_extras_install_and_run(
    tmp_path: Path, wheel: Path, venv_bin: Path
) -> None:
    bindir = venv_bin
    _pip(bindir, wheel, "alpha,beta,ml")
    assert "usage: qsc-alpha" in _run(bindir, "qsc-alpha", "--help", cwd=tmp_path)
    assert "usage: qsc-beta" in _run(bindir, "qsc-beta", "--help", cwd=tmp_path)
    # Alpha's default rules, from the installed package, load and validate.
    code = "from alpha.rules.loader import load_default; print(len(load_default().rules))"
    assert int(_run(bindir, "python", "-c", code, cwd=tmp_path)) > 50
    # The ML service trains from the installed package.
    data = tmp_path / "history.csv"
    _run(bindir, "qsc-ml", "generate", "--out", str(data), "--hosts", "2", "--days", "1",
         cwd=tmp_path)  # fmt: skip
    _run(bindir, "qsc", "keys", "init", "--dir", str(tmp_path / "keys"), "--component", "ml",
         cwd=tmp_path)  # fmt: skip
    _run(bindir, "qsc-ml", "train", "--input", str(data), "--out", str(tmp_path / "models"),
         "--keyring", str(tmp_path / "keys"), "--n-estimators", "10", "--quiet",
         cwd=tmp_path)  # fmt: skip
    assert list((tmp_path / "models").iterdir())
