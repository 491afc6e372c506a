"""Every default correlation, hit and miss, with events shaped as the guardians emit them."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest

from cortex.correlate import CorrelationRule, Correlator, Hit, Step, load_files, score
from cortex.correlate.engine import Evidence
from qsc.common.v1 import event_pb2
from tests.unit.correlate_events import ev

RULES = load_files()
Scenario = Callable[[], list[event_pb2.Event]]


def run(events: Iterable[event_pb2.Event]) -> list[Hit]:
    engine = Correlator(RULES)
    return [hit for e in events for hit in engine.observe(e)]


def opened(hits: list[Hit], rule_id: str) -> list[Hit]:
    return [h for h in hits if h.rule.id == rule_id and h.change == "opened"]


# --- credential stuffing, new-address login, exfiltration -------------------------------------


def stuffing(
    *,
    burst: bool = True,
    login: bool = True,
    transfer: bool = True,
    gap: float = 60,
    backup: bool = False,
    host2: str = "web-1",
) -> list[event_pb2.Event]:
    out = []
    if burst:
        out.append(
            ev("alpha.credential_stuffing", "auth_event", at=0, source="127.0.0.2", user="alice")
        )
    if login:
        out.append(
            ev("alpha.login_new_source", "auth_event", at=gap, source="127.0.0.2", user="alice")
        )
    if backup:
        out.append(ev("", "backup_integrity", at=gap + 30, severity="high", role="beta"))
    if transfer:
        out.append(
            ev(
                "alpha.large_outbound_transfer",
                "transfer_volume",
                host=host2,
                at=2 * gap,
                severity="high",
            )
        )
    return out


def test_credential_stuffing_hit_scores_above_threshold_with_its_factors() -> None:
    hits = opened(run(stuffing()), "cortex.credential_stuffing_exfiltration")
    assert len(hits) == 1
    s = score(hits[0])
    assert s.raised, s
    assert [f.step for f in s.factors][:1] == ["failed_login_burst"]  # strongest first
    assert {f.step for f in s.factors} == {
        "failed_login_burst",
        "login_from_new_address",
        "large_outbound_transfer",
    }


def test_credential_stuffing_a_corrupted_backup_adds_confidence() -> None:
    without = score(opened(run(stuffing()), "cortex.credential_stuffing_exfiltration")[0])
    with_backup = run(stuffing(backup=True))
    hit = [h for h in with_backup if h.rule.id == "cortex.credential_stuffing_exfiltration"][-1]
    assert score(hit).posterior > without.posterior


@pytest.mark.parametrize(
    "variant",
    [
        {"burst": False},  # no failed logins: a login and a transfer are ordinary
        {"login": False},
        {"transfer": False},
        {"gap": 1000},  # 2 x 1000 s > 30 min: outside the window
        {"host2": "db-1"},  # the transfer is on another host
    ],
)
def test_credential_stuffing_misses(variant: dict[str, object]) -> None:
    assert not opened(run(stuffing(**variant)), "cortex.credential_stuffing_exfiltration")  # type: ignore[arg-type]


def test_credential_stuffing_steps_out_of_order_miss() -> None:
    events = stuffing()
    assert not opened(
        run([events[2], events[1], events[0]]), "cortex.credential_stuffing_exfiltration"
    )


def test_the_same_activity_without_the_failed_logins_scores_below_the_threshold() -> None:
    # The sequence cannot form without its first step; scored as evidence alone it stays low.
    rule = RULES.get("cortex.credential_stuffing_exfiltration")
    assert rule is not None
    partial = Hit(
        rule=rule,
        key=(("host", "web-1"),),
        change="opened",
        evidence=(
            Evidence("login_from_new_address", 1, 0, ("a",), (), 0, 0),
            Evidence("large_outbound_transfer", 1, 0, ("b",), (), 0, 0),
        ),
        first_ns=0,
        last_ns=0,
        revision=1,
    )
    assert not score(partial).raised


# --- ransomware-like --------------------------------------------------------------------------


def ransomware(
    changes: int = 25, *, backup: bool = True, process: bool = True, spread: float = 5
) -> list[event_pb2.Event]:
    out = [
        ev(
            "beta.fim.content_changed",
            "file_integrity",
            at=i * spread / max(changes, 1),
            path=f"/srv/data/f{i}",
            role="beta",
        )
        for i in range(changes)
    ]
    if backup:
        out.append(ev("", "backup_integrity", at=30, severity="high", role="beta"))
    if process:
        out.append(ev("alpha.exec_from_tmp", "process_exec", at=10, exec_id="x1", severity="high"))
    return out


def test_ransomware_hit() -> None:
    hits = opened(run(ransomware()), "cortex.ransomware_pattern")
    assert len(hits) == 1
    assert score(hits[0]).raised
    counts = {e.step: e.count for e in hits[0].evidence}
    assert counts["mass_integrity_changes"] >= 20


@pytest.mark.parametrize(
    "variant",
    [{"changes": 10}, {"backup": False}, {"process": False}, {"spread": 1200}],
)
def test_ransomware_misses(variant: dict[str, object]) -> None:
    assert not opened(run(ransomware(**variant)), "cortex.ransomware_pattern")  # type: ignore[arg-type]


# --- fileless and injected code -------------------------------------------------------------


def test_fileless_chain_joins_a_descendants_connection() -> None:
    events = [
        ev(
            "alpha.memfd_exec",
            "process_exec",
            at=0,
            exec_id="m1",
            ancestry=("bash1", "sshd1"),
            severity="high",
        ),
        ev(
            "alpha.reverse_shell",
            "network_connection",
            at=20,
            exec_id="c1",
            ancestry=("m1", "bash1"),
            severity="critical",
        ),
    ]
    hits = opened(run(events), "cortex.fileless_chain")
    assert len(hits) == 1
    assert dict(hits[0].key) == {"host": "web-1", "process_tree": "m1"}
    assert score(hits[0]).raised


def test_fileless_chain_misses_another_tree_an_exit_and_the_reverse_order() -> None:
    memfd = ev("alpha.memfd_exec", "process_exec", at=0, exec_id="m1", ancestry=("bash1",))
    other_tree = ev("", "network_connection", at=5, exec_id="c9", ancestry=("bash2",))
    assert not opened(run([memfd, other_tree]), "cortex.fileless_chain")
    exit_ = ev("", "process_exit", at=3, exec_id="m1", ancestry=("bash1",))
    later = ev("", "network_connection", at=5, exec_id="m1", ancestry=("bash1",))
    assert not opened(run([memfd, exit_, later]), "cortex.fileless_chain")
    # A child's exit does not end its parent's sequence.
    child_exit = ev("", "process_exit", at=3, exec_id="k1", ancestry=("m1", "bash1"))
    assert opened(run([memfd, child_exit, later]), "cortex.fileless_chain")
    assert not opened(run([later, memfd]), "cortex.fileless_chain")


def test_fileless_the_memory_scanner_seeing_the_same_exec_counts_once() -> None:
    memfd = ev("alpha.memfd_exec", "process_exec", at=0, exec_id="m1")
    scan = ev("alpha.anonymous_executable_memory", "memory_threat", at=1, exec_id="m1")
    conn = ev("", "network_connection", at=5, exec_id="m1")
    hit = [h for h in run([memfd, scan, conn]) if h.rule.id == "cortex.fileless_chain"][-1]
    factors = {f.step: f for f in score(hit).factors}
    assert factors["memory_threat"].weight == 0.0  # the same execution, second sensor
    assert factors["fileless_execution"].weight == 1.0


def test_injected_code_chain_hit_and_miss() -> None:
    rwx = ev("alpha.rwx_memory", "memory_threat", at=0, exec_id="j1", severity="high")
    conn = ev("", "network_connection", at=60, exec_id="j1")
    assert opened(run([rwx, conn]), "cortex.injected_code_chain")
    late = ev("", "network_connection", at=16 * 60, exec_id="j1")
    assert not opened(run([rwx, late]), "cortex.injected_code_chain")


# --- persistence ------------------------------------------------------------------------------


def test_persistence_after_a_suspicious_login() -> None:
    login = ev("alpha.login_new_source", "auth_event", at=0, user="bob", source="127.0.0.2")
    sudo = ev("alpha.sudoers_modified", "file_access", at=600, path="/etc/sudoers", severity="high")
    fim = ev("beta.fim.content_changed", "file_integrity", at=620, path="/etc/sudoers", role="beta")
    hits = run([login, sudo, fim])
    opened_ = opened(hits, "cortex.persistence_after_login")
    assert len(opened_) == 1
    assert score(opened_[0]).raised
    # Alpha and Beta saw one change: the weaker counts half (no exec ids to prove it the same).
    last = [h for h in hits if h.rule.id == "cortex.persistence_after_login"][-1]
    weights = {f.step: f.weight for f in score(last).factors}
    assert weights["persistence_file_changed"] == 0.5


def test_persistence_misses_without_the_login_or_after_the_window() -> None:
    sudo = ev("alpha.sudoers_modified", "file_access", at=600, path="/etc/sudoers")
    assert not opened(run([sudo]), "cortex.persistence_after_login")
    login = ev("alpha.login_new_source", "auth_event", at=0, user="bob", source="127.0.0.2")
    late = ev("alpha.cron_job_scheduled", "file_access", at=3700, path="/etc/crontab")
    assert not opened(run([login, late]), "cortex.persistence_after_login")
    benign = ev("beta.fim.content_changed", "file_integrity", at=60, path="/etc/motd", role="beta")
    assert not opened(run([login, benign]), "cortex.persistence_after_login")


# --- defence evasion --------------------------------------------------------------------------


def test_defence_evasion_with_a_silenced_guardian() -> None:
    clear = ev("alpha.log_clearing", "file_access", at=0, path="/var/log/auth.log", severity="high")
    other = ev("alpha.exec_from_tmp", "process_exec", at=60, exec_id="e1", severity="high")
    lost = ev(
        "cortex.guardian_lost",
        host="cortex-1",
        at=120,
        severity="high",
        role="cortex",
        labels={"guardian.host": "web-1", "guardian.id": "beta-web-1"},
    )
    hits = run([clear, other, lost])
    first = opened(hits, "cortex.defence_evasion")
    assert len(first) == 1
    updates = [h for h in hits if h.rule.id == "cortex.defence_evasion" and h.change == "updated"]
    assert updates, "the silenced guardian updates the assessment"
    assert score(updates[-1]).posterior > score(first[0]).posterior


def test_defence_evasion_misses_alone_or_on_another_host() -> None:
    clear = ev("alpha.log_clearing", "file_access", at=0, path="/var/log/auth.log", severity="high")
    assert not opened(run([clear]), "cortex.defence_evasion")
    elsewhere = ev(
        "alpha.exec_from_tmp", "process_exec", host="db-1", at=60, exec_id="e1", severity="high"
    )
    assert not opened(run([clear, elsewhere]), "cortex.defence_evasion")
    # Two evasion acts are not "other activity".
    history = ev("alpha.shell_history_cleared", "file_access", at=30, severity="medium")
    assert not opened(run([clear, history]), "cortex.defence_evasion")


# --- distributed brute force ------------------------------------------------------------------


def test_one_source_failing_on_three_hosts() -> None:
    events = [
        ev(
            "alpha.credential_stuffing",
            "auth_event",
            host=h,
            at=i * 300,
            source="203.0.113.9",
            user="root",
        )
        for i, h in enumerate(("web-1", "web-2", "db-1"))
    ]
    hits = opened(run(events), "cortex.distributed_brute_force")
    assert len(hits) == 1
    assert dict(hits[0].key) == {"source_address": "203.0.113.9"}
    assert hits[0].evidence[0].distinct == 3


def test_brute_force_misses_two_hosts_many_times_or_spread_over_hours() -> None:
    two = [
        ev("alpha.credential_stuffing", "auth_event", host=h, at=i, source="203.0.113.9")
        for i, h in enumerate(["web-1", "web-2"] * 5)
    ]
    assert not opened(run(two), "cortex.distributed_brute_force")
    spread = [
        ev("alpha.credential_stuffing", "auth_event", host=h, at=i * 3600, source="203.0.113.9")
        for i, h in enumerate(("web-1", "web-2", "db-1"))
    ]
    assert not opened(run(spread), "cortex.distributed_brute_force")
    sources = [
        ev("alpha.credential_stuffing", "auth_event", host=h, at=i, source=f"203.0.113.{i}")
        for i, h in enumerate(("web-1", "web-2", "db-1"))
    ]
    assert not opened(run(sources), "cortex.distributed_brute_force")


# --- anomaly-led ------------------------------------------------------------------------------


def test_an_anomaly_with_a_medium_alert_in_either_order() -> None:
    anomaly = ev("", "anomaly_score", at=0, severity="medium", role="cortex")
    alert = ev("alpha.outbound_port_scan", "port_scan", at=600, severity="medium")
    assert opened(run([anomaly, alert]), "cortex.anomaly_with_alert")
    assert opened(run([alert, anomaly]), "cortex.anomaly_with_alert")


def test_anomaly_misses_a_low_alert_or_another_host() -> None:
    anomaly = ev("", "anomaly_score", at=0, severity="medium", role="cortex")
    low = ev("alpha.ssh_nonstandard_port", "network_connection", at=60, severity="low")
    assert not opened(run([anomaly, low]), "cortex.anomaly_with_alert")
    other = ev("alpha.outbound_port_scan", "port_scan", host="db-1", at=60, severity="high")
    assert not opened(run([anomaly, other]), "cortex.anomaly_with_alert")


def test_the_default_rules_read_at_least_five_sources() -> None:
    sources = set().union(*(r.sources for r in RULES.rules))
    assert len(sources) >= 5, sources
    assert {"alpha.auth", "beta.integrity", "ml.anomaly", "cortex.guardians"} <= sources


@pytest.mark.parametrize("rule", RULES.rules, ids=lambda r: r.id)
def test_each_rule_complete_at_its_minimum_is_raised(rule: CorrelationRule) -> None:
    # Calibration: every required step at the least it needs puts the seed confidence over the
    # rule's threshold; one required step alone does not.
    def evidence(steps: tuple[Step, ...]) -> tuple[Evidence, ...]:
        return tuple(
            Evidence(s.name, max(s.count, s.distinct), s.distinct, (s.name,), (), 0, 0)
            for s in steps
        )

    def hit(steps: tuple[Step, ...]) -> Hit:
        return Hit(rule, (), "opened", evidence(steps), 0, 0, 1)

    assert score(hit(rule.required)).raised, rule.id
    if len(rule.required) > 1:
        for step in rule.required:
            assert not score(hit((step,))).raised, (rule.id, step.name)
