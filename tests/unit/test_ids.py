"""mesh.ids: UUIDv7 text that the uuid module reads back with the right version and time."""

from __future__ import annotations

import uuid

from mesh.ids import uuid7, uuid7_many


def test_uuid7_is_rfc9562_version_7_with_the_given_milliseconds() -> None:
    now = 1_733_480_000.123
    for text in uuid7_many(now, 200):
        u = uuid.UUID(text)
        assert str(u) == text
        assert u.version == 7
        assert u.variant == uuid.RFC_4122
        assert u.int >> 80 == int(now * 1000)


def test_ids_are_unique_and_sort_by_time() -> None:
    ids = uuid7_many(1000.0, 1000)
    assert len(set(ids)) == 1000
    assert uuid7(1000.001) > max(ids)
    assert uuid.UUID(uuid7()).version == 7
