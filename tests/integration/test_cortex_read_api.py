"""The read half of CortexService against a real `cortex.app.Cortex` on 127.0.0.1:0 over mTLS.

The store holds 10,000 events of one guardian, appended through the Cortex's own store before it
starts (the same keyring and checkpoint identity). Clients, as integrations would use them:
grpcio over `mesh.channel` (hybrid key exchange), grpcurl 1.8.6 (classical, so a `soar` client
under the default `prefer` policy) and a Node.js @grpc/grpc-js pager that decodes the ErrorInfo
of a refusal. Every refusal is checked for its code and its `google.rpc.ErrorInfo` reason.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from cortex.app import Cortex, open_store
from cortex.config import CortexConfig
from cortex.store import CheckpointSigner
from crypto.keyring import KeyManager
from crypto.pki import init_ca, issue_leaf, write_leaf
from mesh.channel import ChannelConfig, open_channel
from mesh.config import TlsFiles, config_from_dict
from mesh.identity import load_tls
from mesh.stream.cursor import StoredCursor
from qsc.common.v1 import event_pb2
from qsc.cortex.v1 import cortex_service_pb2 as pb
from qsc.cortex.v1 import cortex_service_pb2_grpc as pb_grpc
from qsc.cortex.v1 import guardian_pb2
from tests.integration.clients import PROTO_ROOT, run_grpcurl, run_node, tls_args
from tests.integration.loop_thread import LoopThread
from tests.unit.test_cortex_store import event

T = TypeVar("T")
TD = "cortex.test"
HOST = "127.0.0.1"
GUARDIAN = "alpha-web-1"
SPIFFE = f"spiffe://{TD}/alpha/web-1"
N_EVENTS = 10_000
NODE_SCRIPT = Path(__file__).with_name("node_list_events.js")
GOOGLE_PROTOS = Path(error_details_pb2.__file__).parents[2]  # google/rpc/*.proto ship beside
SELECTIVE = 'process.exe = "/tmp/x" AND rule.id = "alpha.ptrace"'
CLIENT_STEMS = ("soar-s1", "operator-o1", "alpha-web-1", "cortex-c1")


class CortexThread(LoopThread):
    """A Cortex on its own event loop in a thread, so tests call it with blocking clients."""

    def __init__(self, config: CortexConfig) -> None:
        self.config = config
        super().__init__()
        self.cortex = self.run(self._build(config))
        self.port = self.run(self.cortex.start())

    def restart(self) -> None:
        """Stop the Cortex (store closed, last checkpoint signed) and start a new one."""
        self.run(self.cortex.stop())
        self.cortex = self.run(self._build(self.config))
        self.port = self.run(self.cortex.start())

    @staticmethod
    async def _build(config: CortexConfig) -> Cortex:
        return Cortex(config)

    def close(self) -> None:
        try:
            self.run(self.cortex.stop())
        finally:
            self.close_loop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("pki")
    ca = init_ca(base, TD)
    for stem in CLIENT_STEMS:
        role, host = stem.split("-", 1)
        write_leaf(issue_leaf(ca, role, host, ips=[HOST]), base, ca.cert)
    return base


def tls(pki: Path, stem: str) -> TlsFiles:
    return TlsFiles(cert=pki / f"{stem}.crt", key=pki / f"{stem}.key", ca=pki / "ca.crt")


@pytest.fixture(scope="module")
def stored(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> list[event_pb2.Event]:
    """What the store holds: 10,000 events of GUARDIAN (deterministic values per seq)."""
    return [event(seq, GUARDIAN) for seq in range(1, N_EVENTS + 1)]


@pytest.fixture(scope="module")
def server(
    pki: Path, stored: list[event_pb2.Event], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CortexThread]:
    base = tmp_path_factory.mktemp("cortex")
    cert = tls(pki, "cortex-c1")
    table: dict[str, Any] = {
        "server": {
            "listen": f"{HOST}:0",
            "tls": {"cert": str(cert.cert), "key": str(cert.key), "ca": str(cert.ca)},
            "shutdown_grace": "0s",
        },
        "store": {"directory": str(base / "store"), "synchronous": "NORMAL"},
        "keyring": {"directory": str(base / "keys")},
        # Configured but unreachable (ports 1-3): listed by the guardian RPCs, never connected.
        "guardians": [
            {"id": GUARDIAN, "address": f"{HOST}:1", "role": "alpha", "host": "web-1"},
            {"id": "beta-web-1", "address": f"{HOST}:2", "role": "beta", "host": "web-1"},
            {"id": "alpha-db-1", "address": f"{HOST}:3", "role": "alpha", "host": "db-1"},
        ],
        "ingest": {"reconnect_initial": "1s", "reconnect_max": "5s"},
    }
    config = config_from_dict(CortexConfig, table)
    KeyManager.create(base / "keys", "cortex")
    store = open_store(config, CheckpointSigner.from_tls(load_tls(cert)))
    try:
        for first in range(0, N_EVENTS, 1000):
            chunk = stored[first : first + 1000]
            store.append_batch(GUARDIAN, chunk, StoredCursor(SPIFFE, chunk[-1].seq))
    finally:
        store.close()
    srv = CortexThread(config)
    yield srv
    srv.close()


# --- clients ------------------------------------------------------------------------------------


def call(pki: Path, port: int, stem: str, method: str, request: Any) -> Any:
    """One unary call with grpcio over mesh.channel (hybrid key exchange), as `stem`."""

    async def body() -> Any:
        config = ChannelConfig(target=f"{HOST}:{port}", tls=tls(pki, stem))
        async with open_channel(config) as channel:
            return await getattr(pb_grpc.CortexServiceStub(channel), method)(request)

    return asyncio.run(body())


def refusal(pki: Path, port: int, method: str, request: Any, stem: str = "soar-s1") -> Any:
    """The code and ErrorInfo of a call that must fail."""
    with pytest.raises(grpc.RpcError) as caught:
        call(pki, port, stem, method, request)
    err: Any = caught.value
    return err.code(), err.details(), error_info(err.trailing_metadata() or ())


def error_info(trailers: Any) -> error_details_pb2.ErrorInfo | None:
    for key, value in trailers:
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            assert len(status.details) == 1, status
            info = error_details_pb2.ErrorInfo()
            assert status.details[0].Unpack(info)
            return info
    return None


def page_all(
    pki: Path, port: int, token: str = "", **request: Any
) -> tuple[list[event_pb2.Event], int]:
    events: list[event_pb2.Event] = []
    pages = 0
    while True:
        resp = call(
            pki, port, "soar-s1", "ListEvents", pb.ListEventsRequest(page_token=token, **request)
        )
        events.extend(resp.events)
        pages += 1
        token = resp.next_page_token
        if not token:
            return events, pages


def ids(events: list[event_pb2.Event]) -> list[str]:
    return [e.id for e in events]


def newest_first(events: list[event_pb2.Event]) -> list[str]:
    # The store's order: time, then insertion (rowid), descending.
    order = sorted(enumerate(events), key=lambda p: (p[1].time.ToNanoseconds(), p[0]), reverse=True)
    return [e.id for _, e in order]


def matches(events: list[event_pb2.Event]) -> list[event_pb2.Event]:
    return [e for e in events if e.process.exe == "/tmp/x" and e.rule.id == "alpha.ptrace"]


# --- grpcio ---------------------------------------------------------------------------------------


def test_pages_through_every_event_newest_first(
    pki: Path, server: CortexThread, stored: list[event_pb2.Event]
) -> None:
    events, pages = page_all(pki, server.port, page_size=1000)
    assert pages == 10
    assert ids(events) == newest_first(stored)
    # Payloads come back whole: the stored event, decrypted.
    by_id = {e.id: e for e in stored}
    assert all(e == by_id[e.id] for e in events[:50])


def test_total_size_counts_the_matches_on_every_page(
    pki: Path, server: CortexThread, stored: list[event_pb2.Event]
) -> None:
    for filter_, want in (("", N_EVENTS), (SELECTIVE, len(matches(stored)))):
        request = pb.ListEventsRequest(filter=filter_, page_size=10)
        first = call(pki, server.port, "soar-s1", "ListEvents", request)
        request.page_token = first.next_page_token
        second = call(pki, server.port, "soar-s1", "ListEvents", request)
        assert (first.total_size, second.total_size) == (want, want), filter_
    none = call(
        pki, server.port, "soar-s1", "ListEvents", pb.ListEventsRequest(filter='host = "nowhere"')
    )
    assert (len(none.events), none.total_size, none.next_page_token) == (0, 0, "")


def test_selective_filter_on_blind_and_clear_fields(
    pki: Path, server: CortexThread, stored: list[event_pb2.Event]
) -> None:
    expected = matches(stored)
    assert 100 < len(expected) < N_EVENTS // 2
    events, pages = page_all(pki, server.port, page_size=400, filter=SELECTIVE, order_by="time")
    assert pages == -(-len(expected) // 400) + (len(expected) % 400 == 0)
    assert sorted(ids(events)) == sorted(ids(expected))
    times = [e.time.ToNanoseconds() for e in events]
    assert times == sorted(times)  # order_by time: oldest first


def test_get_event_and_its_refusals(
    pki: Path, server: CortexThread, stored: list[event_pb2.Event]
) -> None:
    target = stored[1234]
    resp = call(
        pki, server.port, "operator-o1", "GetEvent", pb.GetEventRequest(name=f"events/{target.id}")
    )
    assert resp.event == target
    missing = "events/00000000-0000-7000-8000-000000000000"
    code, _, info = refusal(pki, server.port, "GetEvent", pb.GetEventRequest(name=missing))
    assert (code, info.reason, info.domain) == (
        grpc.StatusCode.NOT_FOUND,
        "EVENT_NOT_FOUND",
        "cortex.qsc",
    )
    code, _, info = refusal(pki, server.port, "GetEvent", pb.GetEventRequest(name="event/x"))
    assert (code, info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME")


@pytest.mark.parametrize(
    ("request_fields", "reason", "metadata"),
    [
        ({"filter": 'severity >= "HUGE"'}, "INVALID_FILTER", {"argument": "filter"}),
        ({"filter": 'process.exe > "/tmp/x"'}, "INVALID_FILTER", {"argument": "filter"}),
        (
            {"filter": "no_such_field = 1"},
            "INVALID_FILTER",
            {"argument": "filter", "position": "1"},
        ),
        ({"filter": '(rule.id = "a"'}, "INVALID_FILTER", {"argument": "filter"}),
        ({"filter": "x" * 100_000}, "INVALID_FILTER", {"argument": "filter"}),
        ({"order_by": "severity"}, "INVALID_ORDER_BY", {"argument": "order_by"}),
        ({"page_size": -1}, "INVALID_PAGE_SIZE", {}),
        ({"page_token": "not-a-token"}, "INVALID_PAGE_TOKEN", {}),
    ],
)
def test_bad_requests_are_invalid_argument_with_a_reason(
    pki: Path,
    server: CortexThread,
    request_fields: dict[str, Any],
    reason: str,
    metadata: dict[str, str],
) -> None:
    code, details, info = refusal(
        pki, server.port, "ListEvents", pb.ListEventsRequest(**request_fields)
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert info is not None
    assert (info.reason, info.domain) == (reason, "cortex.qsc")
    assert metadata.items() <= dict(info.metadata).items()
    if reason == "INVALID_FILTER":
        assert "position" in info.metadata
        assert info.metadata["position"] in details


def test_a_token_outlives_a_restart_of_the_cortex(
    pki: Path, server: CortexThread, stored: list[event_pb2.Event]
) -> None:
    """A SOAR paging through events while the Cortex restarts carries on where it was: the
    token key comes from the store, not from the process."""
    request: dict[str, Any] = {"filter": SELECTIVE, "page_size": 7}
    page = call(pki, server.port, "soar-s1", "ListEvents", pb.ListEventsRequest(**request))
    assert page.next_page_token
    assert len(page.events) == 7
    server.restart()
    rest, _ = page_all(pki, server.port, token=page.next_page_token, **request)
    want = {e.id for e in matches(stored)}
    assert ids([*page.events, *rest]) == [i for i in newest_first(stored) if i in want]


def test_a_token_works_only_with_its_own_filter_and_order(pki: Path, server: CortexThread) -> None:
    first = call(
        pki,
        server.port,
        "soar-s1",
        "ListEvents",
        pb.ListEventsRequest(page_size=10, filter=SELECTIVE),
    )
    token = first.next_page_token
    assert token
    # The same filter spelt differently means the same thing: the token is accepted.
    respelt = f"({SELECTIVE})"
    again = call(
        pki,
        server.port,
        "soar-s1",
        "ListEvents",
        pb.ListEventsRequest(page_size=10, filter=respelt, page_token=token),
    )
    assert len(again.events) == 10
    for other in (
        pb.ListEventsRequest(page_size=10, filter='rule.id = "alpha.ptrace"', page_token=token),
        pb.ListEventsRequest(page_size=10, filter=SELECTIVE, order_by="time", page_token=token),
        pb.ListEventsRequest(
            page_size=10,
            filter=SELECTIVE,
            page_token=token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1],
        ),
    ):
        code, _, info = refusal(pki, server.port, "ListEvents", other)
        assert (code, info.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")


def test_page_size_default_and_maximum(pki: Path, server: CortexThread) -> None:
    default = call(pki, server.port, "soar-s1", "ListEvents", pb.ListEventsRequest())
    assert len(default.events) == 100
    assert default.next_page_token
    capped = call(pki, server.port, "soar-s1", "ListEvents", pb.ListEventsRequest(page_size=50_000))
    assert len(capped.events) == 1000


def test_only_soar_and_operator_read(pki: Path, server: CortexThread) -> None:
    for stem in ("soar-s1", "operator-o1"):
        resp = call(pki, server.port, stem, "ListEvents", pb.ListEventsRequest(page_size=1))
        assert len(resp.events) == 1
    for stem in ("alpha-web-1", "cortex-c1"):
        code, _, _ = refusal(
            pki, server.port, "ListEvents", pb.ListEventsRequest(page_size=1), stem
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED
        code, _, _ = refusal(pki, server.port, "ListGuardians", pb.ListGuardiansRequest(), stem)
        assert code == grpc.StatusCode.PERMISSION_DENIED


def test_guardians_are_listed_with_their_state(pki: Path, server: CortexThread) -> None:
    listed = call(pki, server.port, "operator-o1", "ListGuardians", pb.ListGuardiansRequest())
    assert [g.name for g in listed.guardians] == [
        "guardians/alpha-db-1",
        f"guardians/{GUARDIAN}",
        "guardians/beta-web-1",
    ]
    assert listed.total_size == 3
    got = call(
        pki,
        server.port,
        "soar-s1",
        "GetGuardian",
        pb.GetGuardianRequest(name=f"guardians/{GUARDIAN}"),
    )
    assert got.guardian.committed_seq == N_EVENTS  # the cursor stored with the last batch
    assert got.guardian.state in (
        guardian_pb2.CONNECTION_STATE_CONNECTING,
        guardian_pb2.CONNECTION_STATE_DISCONNECTED,
    )
    assert got.guardian.address == f"{HOST}:1"
    code, _, info = refusal(
        pki, server.port, "GetGuardian", pb.GetGuardianRequest(name="guardians/nope")
    )
    assert (code, info.reason) == (grpc.StatusCode.NOT_FOUND, "GUARDIAN_NOT_FOUND")


def list_guardians(pki: Path, port: int, **request: Any) -> tuple[list[str], int]:
    names: list[str] = []
    token, total = "", -1
    while True:
        resp = call(
            pki,
            port,
            "soar-s1",
            "ListGuardians",
            pb.ListGuardiansRequest(page_token=token, **request),
        )
        names.extend(g.name.removeprefix("guardians/") for g in resp.guardians)
        total, token = resp.total_size, resp.next_page_token
        if not token:
            return names, total


def test_guardians_filtered_ordered_and_paged(pki: Path, server: CortexThread) -> None:
    port = server.port
    assert list_guardians(pki, port, filter='role = "alpha"') == (["alpha-db-1", GUARDIAN], 2)
    assert list_guardians(pki, port, filter='host = "web-*"', order_by="name desc") == (
        ["beta-web-1", GUARDIAN],
        2,
    )
    assert list_guardians(pki, port, filter='role = "beta" OR guardian_id = "alpha-db-1"') == (
        ["alpha-db-1", "beta-web-1"],
        2,
    )
    # One guardian per page, newest name first: the tokens carry the order.
    assert list_guardians(pki, port, page_size=1, order_by="name desc") == (
        ["beta-web-1", GUARDIAN, "alpha-db-1"],
        3,
    )
    # A committed cursor and nothing received: lag is 0 for all, ties broken by name.
    assert list_guardians(pki, port, order_by="lag_events desc")[0] == [
        "alpha-db-1",
        GUARDIAN,
        "beta-web-1",
    ]
    assert list_guardians(pki, port, filter="state = CONNECTED") == ([], 0)
    first = call(
        pki, port, "soar-s1", "ListGuardians", pb.ListGuardiansRequest(page_size=1)
    ).next_page_token
    for request, reason in (
        (pb.ListGuardiansRequest(filter='colour = "red"'), "INVALID_FILTER"),
        (pb.ListGuardiansRequest(filter="lag_events > x"), "INVALID_FILTER"),
        (pb.ListGuardiansRequest(order_by="address"), "INVALID_ORDER_BY"),
        (pb.ListGuardiansRequest(page_size=-1), "INVALID_PAGE_SIZE"),
        (pb.ListGuardiansRequest(page_token=first, order_by="name desc"), "INVALID_PAGE_TOKEN"),
    ):
        code, _, info = refusal(pki, port, "ListGuardians", request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, request
        assert info is not None, request
        assert info.reason == reason, (request, info)


def test_a_cortex_without_playbooks_lists_no_runs_and_finds_none(
    pki: Path, server: CortexThread
) -> None:
    listed = call(pki, server.port, "soar-s1", "ListPlaybookRuns", pb.ListPlaybookRunsRequest())
    assert not listed.playbook_runs
    assert listed.total_size == 0
    missing = "playbookRuns/01a25129-c07b-7a01-b5e0-d0596d19e456"
    for method, request in (
        ("GetPlaybookRun", pb.GetPlaybookRunRequest(name=missing)),
        ("ReplayPlaybookRun", pb.ReplayPlaybookRunRequest(name=missing)),
        ("ApprovePlaybookRun", pb.ApprovePlaybookRunRequest(name=missing)),
    ):
        code, _, info = refusal(pki, server.port, method, request)
        assert code == grpc.StatusCode.NOT_FOUND, method
        assert info is not None
        assert info.reason == "PLAYBOOK_RUN_NOT_FOUND"


# --- grpcurl ---------------------------------------------------------------------------------


def grpcurl(
    pki: Path, port: int, method: str, request: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    return run_grpcurl(
        tls(pki, "soar-s1"),
        *("-d", json.dumps(request)),
        f"{HOST}:{port}",
        f"qsc.cortex.v1.CortexService/{method}",
        timeout=60,
    )


def test_grpcurl_pages_through_a_filter(
    pki: Path, server: CortexThread, stored: list[event_pb2.Event]
) -> None:
    got: list[str] = []
    token = ""
    while True:
        result = grpcurl(
            pki,
            server.port,
            "ListEvents",
            {"pageSize": 500, "filter": SELECTIVE, "pageToken": token},
        )
        assert result.returncode == 0, result.stderr
        page = json_format.Parse(result.stdout, pb.ListEventsResponse())
        got.extend(e.id for e in page.events)
        token = page.next_page_token
        if not token:
            break
    assert sorted(got) == sorted(ids(matches(stored)))


def test_grpcurl_sees_a_bad_filter_refused(pki: Path, server: CortexThread) -> None:
    result = grpcurl(pki, server.port, "ListEvents", {"filter": "severity >>= HIGH"})
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr
    assert "filter position" in result.stderr


# --- Node.js --------------------------------------------------------------------------------------


def node(pki: Path, port: int, request: dict[str, Any]) -> dict[str, Any]:
    return run_node(
        NODE_SCRIPT,
        *(str(PROTO_ROOT), str(GOOGLE_PROTOS), f"{HOST}:{port}"),
        *(*tls_args(tls(pki, "soar-s1")), json.dumps(request)),
        timeout=120,
    )


def test_node_client_pages_through_all_events(
    pki: Path, server: CortexThread, stored: list[event_pb2.Event]
) -> None:
    out = node(pki, server.port, {"page_size": 1000})
    assert out["ok"], out
    assert out["pages"] == 10
    assert [e[0] for e in out["events"]] == newest_first(stored)
    assert {(g, s) for _, g, s in out["events"]} == {(GUARDIAN, s) for s in range(1, N_EVENTS + 1)}
    assert out["total_size"] == N_EVENTS


def test_node_client_filters_and_reads_the_error_info(
    pki: Path, server: CortexThread, stored: list[event_pb2.Event]
) -> None:
    out = node(pki, server.port, {"page_size": 250, "filter": SELECTIVE, "order_by": "time asc"})
    assert out["ok"], out
    assert sorted(e[0] for e in out["events"]) == sorted(ids(matches(stored)))
    bad = node(pki, server.port, {"filter": 'process.exe = "/tmp/x" AND'})
    assert not bad["ok"]
    assert (bad["code"], bad["reason"], bad["domain"]) == (
        "INVALID_ARGUMENT",
        "INVALID_FILTER",
        "cortex.qsc",
    )
    assert bad["metadata"]["argument"] == "filter"
    assert int(bad["metadata"]["position"]) > 0
    token = node(pki, server.port, {"page_size": 5, "filter": SELECTIVE, "max_pages": 1})[
        "last_token"
    ]
    reused = node(
        pki, server.port, {"page_size": 5, "filter": "severity >= HIGH", "page_token": token}
    )
    assert (reused["ok"], reused["reason"]) == (False, "INVALID_PAGE_TOKEN")
