"""`qsc-alpha`'s command line through mesh.service.serve: messages and exit codes, without
starting a guardian (the serving path is tests/bpf/test_alpha_e2e.py's, the bare guardian's
tests/integration/test_guardian_service.py's)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from alpha.__main__ import main
from crypto.pki import init_ca, issue_leaf, write_leaf

CONFIG = """
[guardian]
role = "alpha"

[server.tls]
cert = "{pki}/{stem}.crt"
key = "{pki}/{stem}.key"
ca = "{pki}/ca.crt"

[outbox]
directory = "{base}/outbox"

[rules]
files = [{rules}]
{extra}
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("pki")
    ca = init_ca(base, "main.test")
    for role in ("alpha", "beta"):
        write_leaf(issue_leaf(ca, role, "h1"), base, ca.cert)
    return base


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("QSC_ALPHA_CONFIG", raising=False)
    # main() points the root logger at this test's captured stderr: put it back after, or
    # later tests log into a closed file.
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    logging.captureWarnings(False)


def config(
    pki: Path, tmp_path: Path, *, stem: str = "alpha-h1", rules: str = "", extra: str = ""
) -> Path:
    files = ""
    if rules:
        (tmp_path / "site.yaml").write_text(rules)
        files = f'"{tmp_path / "site.yaml"}"'
    path = tmp_path / "alpha.toml"
    path.write_text(CONFIG.format(pki=pki, stem=stem, base=tmp_path, rules=files, extra=extra))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse's own exits
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_check_config_ok(pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--config", str(config(pki, tmp_path)), "--check-config")
    assert (code, err) == (0, "")
    assert out.startswith("qsc-alpha: configuration OK: identity spiffe://main.test/alpha/h1")


def test_config_from_the_environment(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QSC_ALPHA_CONFIG", str(config(pki, tmp_path)))
    assert run(capsys, "--check-config")[0] == 0


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("no config", 2, "--config is required (or set QSC_ALPHA_CONFIG)"),
        ("bad value", 2, "sensor.ring_buffer_pages"),
        ("bad rule", 2, "memfd.nmae"),
        ("wrong role", 2, "certifies role 'beta'"),
        ("no key", 1, "h1.key"),
    ],
)
def test_errors_and_exit_codes(
    pki: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
    code: int,
    needle: str,
) -> None:
    argv: list[str] = ["--check-config"]
    if case == "bad value":
        argv += ["--config", str(config(pki, tmp_path, extra="[sensor]\nring_buffer_pages = 3"))]
    elif case == "bad rule":
        bad = (
            "- rule: Broken\n  id: site.broken\n  desc: d\n"
            "  condition: evt.kind = memfd_create and memfd.nmae = x\n  output: o\n"
            "  priority: ERROR\n"
        )
        argv += ["--config", str(config(pki, tmp_path, rules=bad))]
    elif case == "wrong role":
        argv += ["--config", str(config(pki, tmp_path, stem="beta-h1"))]
    elif case == "no key":
        keyless = tmp_path / "keyless"
        keyless.mkdir()
        for name in ("alpha-h1.crt", "ca.crt"):
            (keyless / name).write_bytes((pki / name).read_bytes())
        argv += ["--config", str(config(keyless, tmp_path))]
    got, out, err = run(capsys, *argv)
    assert got == code, err
    assert out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("qsc-alpha: error: ")
    assert needle in last
    assert "Traceback" not in err
