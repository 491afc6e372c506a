"""A real n8n on 127.0.0.1 receiving the Cortex's Standard Webhooks signed POSTs (tests/integration/
test_n8n_receiver.py).

`N8n` runs the n8n that `make test` installs in tools/n8n (npm ci) with its own user folder and
SQLite database in a temporary directory, everything that calls home turned off. Before `n8n start`
it imports, with n8n's own CLI, a Header Auth credential (the header name and token given) and the
workflow tests/n8n/verify_webhook.json, then publishes (activates) the workflow. That workflow is a
Webhook node (POST /webhook/qsc-assessment, header auth, raw body), a Code node that checks the
Standard Webhooks signature over the raw bytes, and a Respond to Webhook node: 200
{"accepted": true, "webhook_id": ...} or 401. The webhook secret is substituted into the Code node
at import (the placeholder __QSC_WEBHOOK_SECRET__ becomes a JS string literal).

`executions()` reads back from n8n's SQLite database what each execution decided.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parent.parent
N8N_BIN = REPO / "tools" / "n8n" / "node_modules" / ".bin" / "n8n"
WORKFLOW = REPO / "tests" / "n8n" / "verify_webhook.json"
WEBHOOK_PATH = "qsc-assessment"
SECRET_PLACEHOLDER = "__QSC_WEBHOOK_SECRET__"
VERIFY_NODE = "Verify signature"
START_TIMEOUT = 180.0
CLI_TIMEOUT = 180.0


class N8nError(RuntimeError):
    pass


@dataclass(frozen=True)
class Execution:
    """One workflow execution: n8n's status, and what the Code node decided (None if it did not
    run, e.g. the execution failed before it)."""

    id: int
    status: str
    webhook_id: str | None
    verdict: str | None
    reason: str | None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unflatten(text: str) -> Any:
    """Decode the `flatted` format n8n stores execution data in: a JSON array whose first element
    is the root; inside objects and arrays every string is the index of another element."""
    table = json.loads(text)
    done: dict[int, Any] = {}

    def resolve(index: int) -> Any:
        value = table[index]
        if not isinstance(value, (dict, list)):
            return value
        if index in done:
            return done[index]
        if isinstance(value, dict):
            obj: dict[str, Any] = {}
            done[index] = obj
            for key, ref in value.items():
                obj[key] = resolve(int(ref)) if isinstance(ref, str) else ref
            return obj
        arr: list[Any] = []
        done[index] = arr
        for ref in value:
            arr.append(resolve(int(ref)) if isinstance(ref, str) else ref)
        return arr

    return resolve(0)


def _verdict(data: Any) -> dict[str, Any] | None:
    try:
        runs = data["resultData"]["runData"][VERIFY_NODE]
        out = runs[-1]["data"]["main"][0][0]["json"]
    except (KeyError, IndexError, TypeError):
        return None
    return out if isinstance(out, dict) else None


class N8n:
    """n8n started with the verifying workflow active; a context manager (stops it on exit).

    Attributes once entered: `port`, `url` (http://127.0.0.1:PORT), `webhook_url` (the production
    URL of the workflow's Webhook node), `log` (n8n's stdout and stderr), `startup_seconds`
    (imports included). `executions()` lists what the workflow recorded, oldest first;
    `wait_executions(n)` waits until there are at least n.
    """

    def __init__(self, tmp_dir: Path, *, secret: str, header_token: tuple[str, str]) -> None:
        if not N8N_BIN.exists():
            raise N8nError(f"{N8N_BIN} missing: run `make test` (npm ci --prefix tools/n8n)")
        self.tmp_dir = tmp_dir
        self.secret = secret
        self.header_token = header_token
        self.user_folder = tmp_dir / "n8n-home"
        self.db_path = self.user_folder / ".n8n" / "database.sqlite"
        self.log = tmp_dir / "n8n.log"
        self.port = 0
        self.url = ""
        self.webhook_url = ""
        self.startup_seconds = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._encryption_key = secrets.token_hex(24)

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> N8n:
        began = time.monotonic()
        try:
            self._import()
            for attempt in range(3):
                self.port, broker = free_port(), free_port()
                if self._start(broker, final=attempt == 2):
                    break
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    # -- setup ----------------------------------------------------------------------------------

    def _env(self, broker_port: int = 0) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.user_folder),
            "N8N_USER_FOLDER": str(self.user_folder),
            "N8N_ENCRYPTION_KEY": self._encryption_key,
            "N8N_ENFORCE_SETTINGS_FILE_PERMISSIONS": "true",
            "DB_TYPE": "sqlite",
            "N8N_LISTEN_ADDRESS": "127.0.0.1",
            "N8N_HOST": "127.0.0.1",
            "N8N_PROTOCOL": "http",
            "N8N_PORT": str(self.port),
            "WEBHOOK_URL": f"http://127.0.0.1:{self.port}/",
            "N8N_DIAGNOSTICS_ENABLED": "false",
            "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
            "N8N_VERSION_NOTIFICATIONS_WHATS_NEW_ENABLED": "false",
            "N8N_TEMPLATES_ENABLED": "false",
            "N8N_PERSONALIZATION_ENABLED": "false",
            "N8N_DYNAMIC_BANNERS_ENABLED": "false",
            "N8N_HIRING_BANNER_ENABLED": "false",
            "N8N_COMMUNITY_PACKAGES_ENABLED": "false",
            "N8N_PUBLIC_API_DISABLED": "true",
            "N8N_LICENSE_AUTO_RENEW_ENABLED": "false",
            "N8N_AI_ENABLED": "false",
            "N8N_SECURE_COOKIE": "false",
            # Code nodes run in n8n's internal JS task runner (the default on 2.x): a child
            # process connecting to a broker on this loopback port.
            "N8N_RUNNERS_MODE": "internal",
            "N8N_RUNNERS_BROKER_LISTEN_ADDRESS": "127.0.0.1",
            "N8N_RUNNERS_BROKER_PORT": str(broker_port or free_port()),
            "NODE_FUNCTION_ALLOW_BUILTIN": "crypto",
            "EXECUTIONS_MODE": "regular",
            "EXECUTIONS_DATA_SAVE_ON_SUCCESS": "all",
            "EXECUTIONS_DATA_SAVE_ON_ERROR": "all",
            "EXECUTIONS_DATA_PRUNE": "false",
            "N8N_DEFAULT_BINARY_DATA_MODE": "filesystem",
            "N8N_LOG_LEVEL": "info",
            "N8N_LOG_OUTPUT": "console",
            "GENERIC_TIMEZONE": "UTC",
            "TZ": "UTC",
            "NO_COLOR": "1",
        }

    def _cli(self, *args: str) -> None:
        with self.log.open("ab") as log:
            log.write(f"\n$ n8n {' '.join(args)}\n".encode())
            log.flush()
            try:
                done = subprocess.run(
                    [str(N8N_BIN), *args],
                    env=self._env(),
                    cwd=self.tmp_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=CLI_TIMEOUT,
                    start_new_session=True,
                )
            except subprocess.TimeoutExpired:
                raise N8nError(f"n8n {args[0]} timed out\n{self.log_tail()}") from None
        if done.returncode != 0:
            raise N8nError(f"n8n {args[0]} exited {done.returncode}\n{self.log_tail()}")

    def _import(self) -> None:
        self.user_folder.mkdir(parents=True, exist_ok=True)
        workflow = json.loads(WORKFLOW.read_text())
        (credential_ref,) = (
            node["credentials"]["httpHeaderAuth"]
            for node in workflow["nodes"]
            if node["type"] == "n8n-nodes-base.webhook"
        )
        name, token = self.header_token
        credentials = [
            {
                "id": credential_ref["id"],
                "name": credential_ref["name"],
                "type": "httpHeaderAuth",
                "data": {"name": name, "value": token},
            }
        ]
        substituted = 0
        for node in workflow["nodes"]:
            code = node["parameters"].get("jsCode")
            if code is not None:
                substituted += code.count(SECRET_PLACEHOLDER)
                node["parameters"]["jsCode"] = code.replace(
                    SECRET_PLACEHOLDER, json.dumps(self.secret)
                )
        if substituted != 1:
            raise N8nError(f"{WORKFLOW}: expected the placeholder {SECRET_PLACEHOLDER} once")
        cred_file = self.tmp_dir / "n8n-credentials.json"
        wf_file = self.tmp_dir / "n8n-workflow.json"
        cred_file.write_text(json.dumps(credentials))
        wf_file.write_text(json.dumps(workflow))
        for path in (cred_file, wf_file):
            path.chmod(0o600)
        self._cli("import:credentials", f"--input={cred_file}")
        self._cli("import:workflow", f"--input={wf_file}")
        self._cli("publish:workflow", f"--id={workflow['id']}")
        # The commands log errors yet exit 0 on some failures: check what the database holds.
        with self._db() as db:
            creds = db.execute(
                "SELECT COUNT(*) FROM credentials_entity WHERE id = ?", (credential_ref["id"],)
            ).fetchone()[0]
            row = db.execute(
                "SELECT activeVersionId FROM workflow_entity WHERE id = ?", (workflow["id"],)
            ).fetchone()
        if creds != 1 or row is None or row[0] is None:
            raise N8nError(
                f"import left credential={creds} workflow={row} in {self.db_path}\n"
                + self.log_tail()
            )

    def _start(self, broker_port: int, *, final: bool) -> bool:
        """Start n8n on self.port; False (process stopped) if a port was taken and not final."""
        self.url = f"http://127.0.0.1:{self.port}"
        self.webhook_url = f"{self.url}/webhook/{WEBHOOK_PATH}"
        mark = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:
            log.write(f"\n$ n8n start (port {self.port}, broker {broker_port})\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [str(N8N_BIN), "start"],
                env=self._env(broker_port),
                cwd=self.tmp_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                since = self.log.read_bytes()[mark:].decode(errors="replace")
                if "EADDRINUSE" in since and not final:
                    self._proc = None
                    return False
                raise N8nError(f"n8n exited {self._proc.returncode}\n{self.log_tail()}")
            if self._healthy() and self._webhook_registered():
                return True
            time.sleep(0.5)
        self.stop()
        raise N8nError(f"n8n not ready within {START_TIMEOUT:.0f}s\n{self.log_tail()}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz/readiness", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _webhook_registered(self) -> bool:
        try:
            with self._db() as db:
                row = db.execute(
                    "SELECT 1 FROM webhook_entity WHERE webhookPath = ? AND method = 'POST'",
                    (WEBHOOK_PATH,),
                ).fetchone()
        except sqlite3.Error:
            return False
        return row is not None

    # -- reading back ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            yield db
        finally:
            db.close()

    def executions(self) -> list[Execution]:
        """Every finished execution of the workflow, oldest first."""
        with self._db() as db:
            rows = db.execute(
                "SELECT e.id, e.status, d.data FROM execution_entity e"
                " LEFT JOIN execution_data d ON d.executionId = e.id"
                " WHERE e.stoppedAt IS NOT NULL ORDER BY e.id"
            ).fetchall()
        out = []
        for exec_id, status, data in rows:
            decided = _verdict(unflatten(data)) if data else None
            out.append(
                Execution(
                    id=int(exec_id),
                    status=str(status),
                    webhook_id=None if decided is None else decided.get("webhook_id"),
                    verdict=None if decided is None else decided.get("verdict"),
                    reason=None if decided is None else decided.get("reason"),
                )
            )
        return out

    def wait_executions(self, count: int, timeout: float = 30.0) -> list[Execution]:
        """The executions once there are at least `count` (n8n saves them after responding)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.executions()
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.2)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no n8n log)"
        return f"--- last lines of {self.log}:\n" + "\n".join(text.splitlines()[-lines:])
