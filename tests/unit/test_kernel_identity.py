"""Kernel-side identity in the process table, and the start-up self-test's comparison."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from alpha.sensors import selftest
from alpha.sensors.decode import KernelIdentity
from alpha.sensors.proctable import ProcessTable, read_snapshot


def identity(**kw: object) -> KernelIdentity:
    base: dict[str, object] = dict(
        exe="/memfd:x (deleted)", exe_complete=True, euid=0, egid=5, auid=4242,
        sessionid=7, ppid=1, tty="pts/3",
    )  # fmt: skip
    base.update(kw)
    return KernelIdentity(**base)  # type: ignore[arg-type]


def test_identity_describes_a_process_gone_from_proc(tmp_path: Path) -> None:
    table = ProcessTable("boot", proc=tmp_path)  # an empty /proc: the process is gone
    info, snap = table.exec(
        99, 10, filename="/proc/self/fd/3", args=("x",), uid=1000, gid=1000, comm="x",
        identity=identity(),
    )  # fmt: skip
    assert snap is None
    assert (info.exe, info.euid, info.egid, info.auid, info.tty, info.ppid) == (
        "/memfd:x (deleted)", 0, 5, 4242, "pts/3", 1,
    )  # fmt: skip
    assert info.identity == "kernel"


def test_without_identity_only_the_filename_is_left(tmp_path: Path) -> None:
    table = ProcessTable("boot", proc=tmp_path)
    info, _ = table.exec(99, 10, filename="/proc/self/fd/3", args=("x",), uid=1, gid=1, comm="x")
    assert (info.exe, info.euid, info.auid, info.tty, info.identity) == (
        "/proc/self/fd/3", None, None, "", "proc",
    )  # fmt: skip


def test_a_cut_kernel_path_loses_to_proc() -> None:
    table = ProcessTable("boot")
    info, snap = table.exec(
        os.getpid(), 10, filename="x", args=("x",), uid=0, gid=0, comm="x",
        identity=identity(exe="/b/a", exe_complete=False),
    )  # fmt: skip
    assert snap is not None
    assert info.exe == snap.exe == os.readlink("/proc/self/exe")


@pytest.fixture
def child() -> Iterator[selftest.ProbeChild]:
    c = selftest.start_child()
    try:
        yield c
    finally:
        c.end()


def _truth(c: selftest.ProbeChild) -> KernelIdentity:
    snap = read_snapshot(c.pid)
    assert snap is not None
    return identity(exe=snap.exe, euid=snap.euid, auid=snap.auid, ppid=os.getpid(), tty=snap.tty)


def test_self_test_agrees(child: selftest.ProbeChild) -> None:
    assert selftest.compare(_truth(child), child.argv, child, os.getpid()) == []


def test_self_test_names_each_difference(child: selftest.ProbeChild) -> None:
    wrong = _truth(child)
    wrong.exe, wrong.auid = "/nope", 12345
    problems = selftest.compare(wrong, ("x",), child, os.getpid())
    assert problems[0].startswith("exe: kernel '/nope', /proc '")
    assert any(p.startswith("argv:") for p in problems)
    assert any(p.startswith("auid: kernel 12345") for p in problems)
    assert selftest.compare(None, (), child, os.getpid()) == [
        "the exec record carries no kernel-side identity"
    ]


def test_self_test_child_gone(child: selftest.ProbeChild) -> None:
    child.end()
    assert selftest.compare(identity(), child.argv, child, os.getpid()) == [
        f"the self-test child {child.pid} is gone from /proc"
    ]
