"""Every snippet of docs/integrator-guide.md, run against a real `qsc-cortex` on 127.0.0.1.

The Cortex is a `python -m cortex run` process configured as an operator would (a TOML file, a
playbook file, a Standard Webhooks endpoint); two Alpha guardians (`mesh.guardian.Guardian`)
stream to it from an event loop on a thread of this test. The receiver of the webhook is the
guide's `webhook_receiver.py`, started before the Cortex so its port goes in the endpoint. An
attack on web-01 (failed-login burst, a login from a new address, a large transfer) becomes one
assessment and one signed delivery, which the receiver must verify; the clients (Python from
code generate-protoc.sh generated, Go built offline with Debian's packages, Node.js with
@grpc/grpc-js) then read it over mTLS with the `soar` certificate issue-soar-cert.sh issued.

The Go build is cached in build/docs-snippets/go (Go's build cache): about 8 s the first time,
well under a second afterwards.
"""

from __future__ import annotations

import base64
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytest

from cortex.playbooks.signing import SigningSecrets
from crypto.keyring import KeyManager
from tests.integration.guardian_node import GuardianNode, issue_guardian_pki
from tests.integration.loop_thread import LoopThread
from tests.integration.playbook_harness import secret_file
from tests.integration.test_cortex_assessment_api import alpha_event

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SNIPPETS = ROOT / "docs" / "snippets"
BUILD = ROOT / "build" / "docs-snippets"
NODE_MODULES = ROOT / "tools" / "npm" / "node_modules"
HOW_TO_FIX = "run `make setup` (tools/install-system-deps.sh installs Go, protoc and plugins)"
TD = "integrator.test"
HOST = "127.0.0.1"
ROLES = {"web-01": "alpha", "db-01": "alpha", "app-01": "alpha"}
WAIT = 30.0
RULE = "cortex.credential_stuffing_exfiltration"
FILTER = f'rule = "{RULE}"'
PLAYBOOKS = """
- playbook: Tell the SOAR about new assessments
  id: notify-soar
  trigger: {filter: 'state = OPEN', on: [created]}
  steps:
    - webhook: soar
"""


class Node(GuardianNode):
    trust_domain = TD
    roles = ROLES


def env() -> dict[str, str]:
    """The environment the snippets run in: the venv's and npm tools' bin first, no QSC_*."""
    path = os.pathsep.join(
        [str(Path(sys.executable).parent), str(NODE_MODULES / ".bin"), os.environ["PATH"]]
    )
    kept = {k: v for k, v in os.environ.items() if not k.startswith(("QSC_", "PYTHON"))}
    return {**kept, "PATH": path, "NODE_PATH": str(NODE_MODULES)}


def run(*args: str | Path, **extra: str) -> str:
    """Run a snippet command; its stdout, or a failure with both outputs."""
    result = subprocess.run(
        [str(a) for a in args],
        cwd=ROOT,
        env={**env(), **extra},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (
        f"{args}: exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def read_line(stream: IO[str], what: str, timeout: float = WAIT) -> dict[str, Any]:
    """The next JSON line of a running snippet, within `timeout`."""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise AssertionError(f"timed out waiting for {what}")
    line = stream.readline()
    assert line, f"the process ended while waiting for {what}"
    parsed: dict[str, Any] = json.loads(line)
    return parsed


def attack(node: Node, user: str, source: str) -> None:
    node.emit_one(alpha_event("alpha.credential_stuffing", "auth_event", user=user, source=source))
    node.emit_one(alpha_event("alpha.login_new_source", "auth_event", user=user, source=source))
    node.emit_one(alpha_event("alpha.large_outbound_transfer", "transfer_volume"))


@dataclass
class Mesh:
    loop: LoopThread
    nodes: dict[str, Node]
    pki: Path
    config: Path
    address: str
    secret: str
    receiver: subprocess.Popen[str]
    receiver_port: int
    first_delivery: dict[str, Any]

    @property
    def soar(self) -> tuple[str, str, str]:
        """CA, certificate and key of the `soar` identity issue-soar-cert.sh made."""
        stem = self.pki / "soar-soar-01"
        return str(self.pki / "ca.crt"), f"{stem}.crt", f"{stem}.key"

    def next_delivery(self) -> dict[str, Any]:
        assert self.receiver.stdout is not None
        return read_line(self.receiver.stdout, "a webhook delivery")


def config_toml(base: Path, pki: Path, nodes: list[Node], port: int, secret: Path) -> str:
    text = f"""
[server]
listen = "{HOST}:0"
shutdown_grace = "1s"
[server.tls]
cert = "{pki / "cortex-c1.crt"}"
key = "{pki / "cortex-c1.key"}"
ca = "{pki / "ca.crt"}"
[store]
directory = "{base / "store"}"
synchronous = "NORMAL"
[keyring]
directory = "{base / "keys"}"
[ingest]
heartbeat_interval = "200ms"
idle_timeout = "1s"
reconnect_initial = "50ms"
reconnect_max = "300ms"
[playbooks]
files = ["{base / "playbooks.yaml"}"]
poll_interval = "100ms"
[[playbooks.endpoints]]
name = "soar"
url = "http://{HOST}:{port}/hooks/qsc"
auth = "standard-webhooks"
secret_files = ["{secret}"]
timeout = "5s"
"""
    for n in nodes:
        text += f"""
[[guardians]]
id = "{n.id}"
address = "{HOST}:{n.port}"
role = "{n.role}"
host = "{n.host}"
"""
    return text


def start_cortex(config: Path, base: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = base / "port"
    log = (base / "cortex.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cortex",
            "run",
            "--config",
            str(config),
            "--port-file",
            str(port_file),
        ],
        cwd=ROOT,
        env=env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text().strip():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"the Cortex did not start: {(base / 'cortex.log').read_text()}")
        time.sleep(0.05)
    return proc, int(port_file.read_text())


@pytest.fixture(scope="module")
def generated() -> Path:
    """generate-protoc.sh's output (Python, Go, TypeScript), regenerated for this run."""
    out = BUILD / "gen"
    shutil.rmtree(out, ignore_errors=True)
    for tool in ("protoc", "protoc-gen-go", "protoc-gen-go-grpc"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not on PATH; {HOW_TO_FIX}")
    run("sh", SNIPPETS / "generate-protoc.sh", OUT=str(out))
    return out


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    base = tmp_path_factory.mktemp("integrator")
    pki = issue_guardian_pki(base / "pki", TD, ROLES, cortex_ips=[HOST])
    run("sh", SNIPPETS / "issue-soar-cert.sh", PKI=str(pki))
    secret_path, secret = secret_file(base / "secrets", "soar.whsec")
    receiver = subprocess.Popen(
        [sys.executable, str(SNIPPETS / "webhook_receiver.py"), str(secret_path), "0"],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    loop = LoopThread()
    nodes = {h: Node(pki, h, base / h) for h in ROLES}
    cortex: subprocess.Popen[bytes] | None = None
    try:
        assert receiver.stdout is not None
        receiver_port = read_line(receiver.stdout, "the receiver's port")["listening"]
        for node in nodes.values():
            loop.run(node.start())
        KeyManager.create(base / "keys", "cortex")
        (base / "playbooks.yaml").write_text(PLAYBOOKS)
        config = base / "cortex.toml"
        config.write_text(config_toml(base, pki, list(nodes.values()), receiver_port, secret_path))
        cortex, port = start_cortex(config, base)
        attack(nodes["web-01"], "alice", "127.0.0.2")
        first = read_line(receiver.stdout, "the first webhook delivery")
        yield Mesh(
            loop, nodes, pki, config, f"{HOST}:{port}", secret, receiver, receiver_port, first
        )
    finally:
        if cortex is not None:
            cortex.send_signal(signal.SIGTERM)
            try:
                cortex.wait(15)
            except subprocess.TimeoutExpired:
                cortex.kill()
        receiver.kill()
        receiver.wait(10)
        for node in nodes.values():
            loop.run(node.stop())
        loop.close_loop()


def test_the_soar_certificate_names_its_role(mesh: Mesh) -> None:
    _, cert, key = mesh.soar
    assert Path(cert).is_file()
    assert Path(key).stat().st_mode & 0o077 == 0
    shown = run("qsc", "pki", "show", cert)
    assert f"spiffe://{TD}/soar/soar-01" in shown


def test_the_webhook_receiver_verifies_a_real_signed_delivery(mesh: Mesh) -> None:
    first = mesh.first_delivery
    assert first["type"] == "assessment.created"
    assert first["name"].startswith("assessments/")
    assert first["id"].startswith(first["name"].removeprefix("assessments/") + ".1.notify-soar.")

    url = f"http://{HOST}:{mesh.receiver_port}/hooks/qsc"
    body = json.dumps({"type": "assessment.created", "data": {"name": "assessments/x"}}).encode()

    def post(headers: dict[str, str]) -> int:
        request = urllib.request.Request(url, body, {**headers, "content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as answer:
                return int(answer.status)
        except urllib.error.HTTPError as error:
            return error.code

    # Signed as the Cortex signs, but with another secret, or an hour old: refused.
    other = secret_file(BUILD / "tmp", "other.whsec")[0]
    now = int(time.time())
    forged = SigningSecrets.from_files([other]).headers("forged.1", now, body)
    assert post(forged) == 401
    assert "no valid signature" in mesh.next_delivery()["refused"]
    ours = base64.b64decode(mesh.secret.removeprefix("whsec_"))
    assert len(ours) == 32
    own = secret_file(BUILD / "tmp", "own.whsec")
    own[0].write_text(mesh.secret + "\n")
    stale = SigningSecrets.from_files([own[0]]).headers("stale.1", now - 3600, body)
    assert post(stale) == 401
    assert "tolerance" in mesh.next_delivery()["refused"]
    # With our secret and a fresh timestamp it is accepted once, then only acknowledged.
    good = SigningSecrets.from_files([other, own[0]]).headers("fresh.1", now, body)
    assert post(good) == 204
    assert mesh.next_delivery() == {
        "id": "fresh.1",
        "type": "assessment.created",
        "name": "assessments/x",
    }
    assert post(good) == 204


def test_buf_generates_go_and_python(tmp_path: Path) -> None:
    run("buf", "generate", "--template", SNIPPETS / "buf.gen.yaml", "--output", tmp_path)
    service = tmp_path / "go" / "qsc" / "cortex" / "v1" / "cortex_service_grpc.pb.go"
    assert "package cortexv1" in service.read_text()
    assert (tmp_path / "python" / "qsc" / "cortex" / "v1" / "cortex_service_pb2.py").is_file()


def test_protoc_generates_python_go_and_typescript(generated: Path) -> None:
    assert (generated / "python" / "qsc" / "cortex" / "v1" / "cortex_service_pb2_grpc.py").is_file()
    assert (generated / "python" / "qsc" / "__init__.py").is_file()
    go = (generated / "go" / "qsc" / "cortex" / "v1" / "cortex_service_grpc.pb.go").read_text()
    assert "func NewCortexServiceClient" in go
    ts = (generated / "ts" / "qsc" / "cortex" / "v1" / "CortexService.ts").read_text()
    assert "SubscribeAssessments" in ts


def test_the_python_client_lists_and_resumes(mesh: Mesh, generated: Path, tmp_path: Path) -> None:
    client = (sys.executable, SNIPPETS / "python_client.py", mesh.address, *mesh.soar)
    pythonpath = str(generated / "python")
    listed = run(*client, "list", FILTER, PYTHONPATH=pythonpath)
    # grpcio's BoringSSL negotiates the hybrid group.
    assert re.match(r"page: (\d+) of \1, key exchange X25519MLKEM768\n", listed), listed
    assert f"assessment {mesh.first_delivery['name']} revision 1" in listed

    refused = subprocess.run(
        [*map(str, client), "list", "confidence >>= 1"],
        env={**env(), "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 1, refused.stderr
    assert refused.stdout.startswith("refused: INVALID_ARGUMENT INVALID_FILTER"), refused.stdout

    token = tmp_path / "token"
    first = run(*client, "follow", FILTER, token, "1", PYTHONPATH=pythonpath)
    (existing,) = first.splitlines()
    assert re.fullmatch(r"change CHANGE_TYPE_EXISTING assessments/\S+ revision 1", existing), first
    assert token.read_text()
    # While it is away another host is attacked; resumed with its token it gets exactly that.
    attack(mesh.nodes["db-01"], "bob", "127.0.0.3")
    second = mesh.next_delivery()["name"]
    resumed = run(*client, "follow", FILTER, token, "1", PYTHONPATH=pythonpath)
    assert resumed.splitlines() == [f"change CHANGE_TYPE_CREATED {second} revision 1"]


def test_the_go_client_built_from_debian_packages(mesh: Mesh, generated: Path) -> None:
    if shutil.which("go") is None:
        pytest.fail(f"go is not on PATH; {HOW_TO_FIX}")
    build = BUILD / "go"
    run(
        "sh",
        SNIPPETS / "build-go-client.sh",
        GEN=str(generated / "go"),
        SRC=str(SNIPPETS / "go-client"),
        BUILD=str(build),
    )
    out = run(build / "go-client", mesh.address, *mesh.soar, FILTER).splitlines()
    # Debian 12's Go 1.19 offers classical X25519 only; `soar` is `prefer`: allowed, counted.
    assert out[0].startswith("page: "), out
    assert out[0].endswith("key exchange [X25519]"), out
    names = [line.split()[1] for line in out if line.startswith("assessment ")]
    assert mesh.first_delivery["name"] in names
    assert "refused: InvalidArgument INVALID_FILTER position 13" in out, out
    changes = [line for line in out if line.startswith("change CHANGE_TYPE_EXISTING")]
    assert len(changes) == len(names)
    assert out[-1].startswith("snapshot complete, resume token ")


def test_the_node_client_lists_and_resumes(mesh: Mesh) -> None:
    if shutil.which("node") is None:
        pytest.fail("Node.js (`node`) is not on PATH; run `make setup`")
    client = ("node", SNIPPETS / "node_client.js", ROOT / "proto", mesh.address, *mesh.soar, FILTER)
    lines = [json.loads(line) for line in run(*client).splitlines()]
    listed = [line["assessment"] for line in lines if "assessment" in line and "change" not in line]
    assert mesh.first_delivery["name"] in listed
    groups = {line["key_exchange"] for line in lines if "key_exchange" in line}
    assert groups, lines
    assert groups <= {"X25519", "X25519MLKEM768"}, lines  # Node 20: X25519
    (refused,) = [line for line in lines if "refused" in line]
    assert refused["refused"] == "INVALID_ARGUMENT"
    assert refused["error_info"]["reason"] == "INVALID_FILTER"
    assert refused["error_info"]["domain"] == "cortex.qsc"
    assert lines[-1]["snapshot_complete"]
    existing = [line for line in lines if line.get("change") == "CHANGE_TYPE_EXISTING"]
    assert len(existing) == len(listed)

    # Resumed with the snapshot's token: the next change is one made after the snapshot.
    attack(mesh.nodes["app-01"], "carol", "127.0.0.4")
    third = mesh.next_delivery()["name"]
    resumed = [json.loads(line) for line in run(*client, lines[-1]["resume_token"]).splitlines()]
    assert resumed[-1]["change"] == "CHANGE_TYPE_CREATED"
    assert resumed[-1]["assessment"] == third


def test_the_ocsf_export(mesh: Mesh, tmp_path: Path) -> None:
    out = tmp_path / "open-findings.jsonl"
    run("sh", SNIPPETS / "export-ocsf.sh", CONFIG=str(mesh.config), OUT=str(out))
    findings = [json.loads(line) for line in out.read_text().splitlines()]
    assert findings
    assert {f["class_uid"] for f in findings} == {2004}
    assert {f["finding_info"]["analytic"]["uid"] for f in findings} == {RULE}
    assert mesh.first_delivery["name"] in {f["unmapped"]["assessment"] for f in findings}
    assert out.stat().st_mode & 0o077 == 0
