"""sshd authentication: follow the log, parse it, detect bursts and new sources, make events.

Interface for the guardian runtime
----------------------------------

    from alpha.auth import AuthDetector, FileFollower, finding_to_event, load_history

    follower = open_follower(AuthSourceConfig(), state_dir)   # file (tail -F) or journalctl
    detector = AuthDetector(config, history=load_history(state_dir / "auth.history.json"))
    every source_config.poll_interval:
        for finding in detector.observe_lines(follower.poll()):
            outbox/rules <- finding_to_event(finding)
        follower.checkpoint()                       # after the events are appended
        if detector.history.changed: save_history(path, detector.history)

- `follow`: `FileFollower` (tail -F with persisted offset), `JournalFollower`, `LogLine`.
- `sshd`: `parse_line` / `parse_message` -> `Record` (pure).
- `detect`: `AuthDetector.observe(record)` / `observe_line(line)` -> `AuthFinding` (pure,
  clock injected), `LoginHistory` and its file.
- `convert`: `finding_to_event`.
"""

from __future__ import annotations

from alpha.auth.convert import finding_to_event, finding_to_proto
from alpha.auth.detect import (
    AuthDetectConfig,
    AuthDetector,
    AuthFinding,
    LoginHistory,
    Outcome,
    load_history,
    save_history,
)
from alpha.auth.follow import (
    AuthSourceConfig,
    FileFollower,
    FollowError,
    JournalFollower,
    LogLine,
    open_follower,
)
from alpha.auth.sshd import Method, Record, RecordKind, parse_line, parse_message

__all__ = [
    "AuthDetectConfig",
    "AuthDetector",
    "AuthFinding",
    "AuthSourceConfig",
    "FileFollower",
    "FollowError",
    "JournalFollower",
    "LogLine",
    "LoginHistory",
    "Method",
    "Outcome",
    "Record",
    "RecordKind",
    "finding_to_event",
    "finding_to_proto",
    "load_history",
    "open_follower",
    "parse_line",
    "parse_message",
    "save_history",
]
