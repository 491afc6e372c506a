"""The deployment files are what systemd and Compose accept, and as narrow as the docs say.

- Each unit in deploy/systemd passes `systemd-analyze verify` (Debian's systemd 252). verify
  insists that ExecStart's program exists, so the test checks a copy whose install prefix
  (/opt/qsc/bin) names this checkout's virtual environment instead; nothing else is changed.
- `systemd-analyze security --offline=yes` scores each unit; the scores are printed and must be
  the ones docs/deployment.md publishes (re-measure and update the table when a unit changes).
- The privileges each unit grants are read from the unit itself: Alpha's capabilities exactly,
  no capability at all for the Cortex and the ML service, Beta's bounding set.
- deploy/compose.yaml validates against the Compose Specification's JSON schema as
  check-jsonschema vendors it (no network), and a file with a misspelt key does not.

systemd-analyze comes from tools/install-system-deps.sh (the `systemd` package); without it the
tests skip when not root (nothing could install it) and fail as root (the install step is
broken).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
UNITS_DIR = ROOT / "deploy" / "systemd"
COMPOSE = ROOT / "deploy" / "compose.yaml"
DOC = ROOT / "docs" / "deployment.md"
COMPONENTS = ("alpha", "beta", "cortex", "ml")
PREFIX = "/opt/qsc/bin/"
TIMEOUT = 60.0

_SCORE = re.compile(r"Overall exposure level for (\S+): (\d+\.\d+) (\w+)")
_DOC_ROW = re.compile(r"^\|\s*`(qsc-[a-z]+\.service)`\s*\|\s*(\d+\.\d+)\s*\|", re.MULTILINE)


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.geteuid() != 0:
            pytest.skip("systemd-analyze missing and not root: tools/install-system-deps.sh")
        pytest.fail("systemd-analyze missing: tools/install-system-deps.sh installs `systemd`")
    return path


def _unit_text(component: str) -> str:
    return (UNITS_DIR / f"qsc-{component}.service").read_text()


def _directives(text: str) -> dict[str, list[str]]:
    """Directive -> its values in order (a key may repeat), comments and sections dropped."""
    out: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


def _one(d: dict[str, list[str]], key: str) -> str:
    values = d.get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Copies of the units whose ExecStart names this checkout's console scripts."""
    bin_dir = Path(sys.executable).parent
    out_dir = tmp_path_factory.mktemp("units")
    units: dict[str, Path] = {}
    for component in COMPONENTS:
        script = bin_dir / f"qsc-{component}"
        assert script.is_file(), f"{script}: install the project (`make setup`)"
        text = _unit_text(component)
        assert PREFIX in text
        path = out_dir / f"qsc-{component}.service"
        path.write_text(text.replace(PREFIX, f"{bin_dir}/"))
        units[component] = path
    return units


def _documented_scores() -> dict[str, str]:
    return dict(_DOC_ROW.findall(DOC.read_text()))


@pytest.mark.parametrize("component", COMPONENTS)
def test_systemd_analyze_verify(installed: dict[str, Path], component: str) -> None:
    tool = _systemd_analyze()
    proc = subprocess.run(
        [tool, "verify", "--man=no", str(installed[component])],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    # Warnings (an unknown directive, a bad value that systemd would ignore) count as failures.
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


def test_security_exposure_is_the_documented_one(
    installed: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    tool = _systemd_analyze()
    helptext = subprocess.run(
        [tool, "--help"], capture_output=True, text=True, timeout=TIMEOUT
    ).stdout
    if "--offline" not in helptext:
        pytest.skip("this systemd-analyze has no `security --offline` (systemd < 250)")
    measured: dict[str, str] = {}
    for component in COMPONENTS:
        proc = subprocess.run(
            [tool, "security", "--offline=yes", "--no-pager", str(installed[component])],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )
        # Exit status is 0 unless --threshold is given; the score line is the result.
        match = _SCORE.search(proc.stdout + proc.stderr)
        assert match, proc.stdout + proc.stderr
        measured[match.group(1)] = match.group(2)
        with capsys.disabled():
            print(f"\n{match.group(1)}: exposure {match.group(2)} {match.group(3)}")
    assert measured == _documented_scores(), "re-measure and update docs/deployment.md"


def test_alpha_gets_only_the_capabilities_ebpf_and_proc_need() -> None:
    d = _directives(_unit_text("alpha"))
    want = {"CAP_BPF", "CAP_PERFMON", "CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"}
    assert set(_one(d, "CapabilityBoundingSet").split()) == want
    assert set(_one(d, "AmbientCapabilities").split()) == want
    assert _one(d, "User") == "qsc-alpha"
    assert "bpf" in " ".join(d["SystemCallFilter"]).split()
    # bcc compiles against /lib/modules/$(uname -r): ProtectKernelModules would hide it.
    assert _one(d, "ProtectKernelModules") == "no"
    # The process table and memory scans read every process's /proc entries.
    assert _one(d, "ProtectProc") == "default"


def test_beta_is_root_with_a_narrow_bounding_set() -> None:
    d = _directives(_unit_text("beta"))
    caps = set(_one(d, "CapabilityBoundingSet").split())
    assert caps == {
        "CAP_DAC_READ_SEARCH",
        "CAP_DAC_OVERRIDE",
        "CAP_CHOWN",
        "CAP_FOWNER",
        "CAP_FSETID",
    }
    assert "CAP_SYS_ADMIN" not in caps  # could remount the read-only file system
    assert _one(d, "ProtectSystem") == "strict"
    assert d.get("ReadWritePaths"), "the heal targets' directories"


@pytest.mark.parametrize("component", ["cortex", "ml"])
def test_central_components_are_unprivileged(component: str) -> None:
    d = _directives(_unit_text(component))
    assert _one(d, "User") == f"qsc-{component}"
    assert _one(d, "CapabilityBoundingSet") == ""
    assert _one(d, "AmbientCapabilities") == ""
    for key in ("NoNewPrivileges", "PrivateTmp", "PrivateDevices", "MemoryDenyWriteExecute"):
        assert _one(d, key) == "yes", key
    assert d["SystemCallFilter"][0] == "@system-service"
    assert "~@privileged" in " ".join(d["SystemCallFilter"])


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_unit_runs_its_console_script_on_its_config(component: str) -> None:
    d = _directives(_unit_text(component))
    argv = _one(d, "ExecStart").split()
    assert argv[0] == f"{PREFIX}qsc-{component}"
    assert f"qsc-{component} =" in (ROOT / "pyproject.toml").read_text()
    assert argv[argv.index("--config") + 1] == f"/etc/qsc/{component}.toml"
    assert _one(d, "StateDirectory") == f"qsc/{component}"
    assert _one(d, "StateDirectoryMode") == "0700"
    assert _one(d, "UMask") == "0077"
    assert _one(d, "ProtectSystem") == "strict"
    assert _one(d, "NoNewPrivileges") == "yes"
    assert _one(d, "SystemCallArchitectures") == "native"
    assert _one(d, "RestrictAddressFamilies")


def _check_compose(path: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("check_jsonschema")
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )


def test_compose_file_matches_the_compose_spec_schema(tmp_path: Path) -> None:
    proc = _check_compose(COMPOSE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The validator is not vacuous: a misspelt key in a service is refused.
    broken = tmp_path / "compose.yaml"
    broken.write_text(
        COMPOSE.read_text().replace("    pid: host\n", "    pid: host\n    privilegd: true\n", 1)
    )
    assert "privilegd" in broken.read_text()
    proc = _check_compose(broken)
    assert proc.returncode != 0, proc.stdout
    assert "privilegd" in proc.stdout + proc.stderr


def test_compose_alpha_sees_the_host_read_only() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services = doc["services"]
    assert set(services) == set(COMPONENTS)
    alpha = services["alpha"]
    assert alpha["privileged"] is True
    assert alpha["pid"] == "host"
    mounts = {m["target"]: m for m in alpha["volumes"] if isinstance(m, dict)}
    for target in ("/proc", "/sys"):
        assert mounts[target]["source"] == target
        assert mounts[target]["read_only"] is True
    for name in ("cortex", "ml"):
        assert services[name]["cap_drop"] == ["ALL"]
        assert "privileged" not in services[name]
        assert not str(services[name]["user"]).startswith("0")
