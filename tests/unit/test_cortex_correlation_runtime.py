"""The correlation runtime: events after storage, SIGHUP reloads that keep the old rules on a
bad file, a failing engine that never stops ingest."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from cortex.assessments import Assessment
from cortex.config import CorrelationSection
from cortex.correlation import CorrelationRuntime
from cortex.errors import CorrelationRuleError
from tests.unit.correlate_events import ev
from tests.unit.test_cortex_assessment_book import RULE


def test_events_become_assessments_and_a_bad_reload_keeps_the_rules(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(RULE)

    async def body() -> None:
        runtime = CorrelationRuntime(CorrelationSection(rules=(good,)))
        stored: list[str] = []

        async def persist(changes: Sequence[Assessment]) -> None:
            stored.extend(f"{a.state} {a.revision}" for a in changes)

        runtime.persist_with(persist)
        await runtime.start()
        try:
            await runtime.observe([ev("alpha.x", at=i * 0.1) for i in range(64)])
            assert stored[0] == "open 1"  # every change handed to the store, in order
            assert stored == [f"open {i}" for i in range(1, len(stored) + 1)]
            listed = await runtime.call(lambda: list(runtime.book.all()))
            assert len(listed) == 1
            bad = tmp_path / "bad.yaml"
            bad.write_text("- correlation: x\n  id: y\n")
            with pytest.raises(CorrelationRuleError, match=r"bad\.yaml:1: "):
                await runtime.reload((bad,))
            assert [r.id for r in runtime.ruleset.rules] == ["test.burst"]
            await runtime.reload(())  # the defaults
            assert runtime.ruleset.get("cortex.fileless_chain") is not None
            assert len(await runtime.call(lambda: list(runtime.book.all()))) == 1  # kept
        finally:
            await runtime.stop()

    asyncio.run(body())


def test_a_failing_engine_is_counted_not_raised(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(RULE)

    async def body() -> None:
        runtime = CorrelationRuntime(CorrelationSection(rules=(good,)))

        def broken(event: object) -> list[object]:
            raise RuntimeError("a bug")

        runtime.engine.observe = broken  # type: ignore[method-assign,assignment]
        await runtime.observe([ev("alpha.x")])
        assert runtime.failures == 1
        await runtime.stop()

    asyncio.run(body())
