"""The condition language: tokens, grammar, every operator, field types, macros and lists, the
per-kind compilation, the field table and output templates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from alpha.rules import ConditionError, RuleError, compile_condition
from alpha.rules import fields as fieldtab
from alpha.rules.compiler import BConst, BOr, Condition, parse_int, prefilter
from alpha.rules.lang import And, Compare, MacroRef, Not, Or, SourceText, parse, tokenize
from alpha.rules.output import MAX_VALUE_CHARS, parse_output
from qsc.common.v1 import (
    auth_details_pb2,
    event_pb2,
    file_details_pb2,
    memory_details_pb2,
    network_details_pb2,
    process_details_pb2,
)

Event = event_pb2.Event


def proc_event(
    comm: str = "bash",
    exe: str = "/usr/bin/bash",
    args: Sequence[str] = ("bash", "-c", "echo hi"),
    uid: int = 1000,
    ancestors: Sequence[str] = ("sshd", "systemd"),
) -> Event:
    e = Event()
    p = e.process
    p.pid, p.ppid, p.uid, p.euid, p.comm, p.exe, p.cwd = 42, 41, uid, uid, comm, exe, "/home/alice"
    p.args.extend(args)
    for i, name in enumerate(ancestors):
        p.ancestry.add(pid=41 - i, comm=name, exe=f"/usr/sbin/{name}")
    return e


def exec_event(**kw: object) -> Event:
    e = proc_event(**kw)  # type: ignore[arg-type]
    e.process_exec.filename = e.process.exe
    e.process_exec.stdin.kind = process_details_pb2.DESCRIPTOR_KIND_PIPE
    e.process_exec.stdout.kind = process_details_pb2.DESCRIPTOR_KIND_INET_SOCKET
    return e


def open_event(path: str, write: bool = False) -> Event:
    e = proc_event("cat", "/usr/bin/cat", ["cat", path])
    e.file_access.path = path
    e.file_access.access = (
        file_details_pb2.ACCESS_MODE_WRITE if write else file_details_pb2.ACCESS_MODE_READ
    )
    e.file_access.flags = 0o1101 if write else 0
    return e


def connect_event(raddr: str, rport: int) -> Event:
    e = proc_event("curl", "/usr/bin/curl", ["curl", "http://x"])
    nc = e.network_connection
    nc.operation = network_details_pb2.CONNECTION_OPERATION_CONNECT
    nc.protocol = network_details_pb2.TRANSPORT_PROTOCOL_TCP
    nc.local.address, nc.local.port = "10.0.0.5", 40000
    nc.remote.address, nc.remote.port = raddr, rport
    return e


def check(
    condition: str,
    event: Event,
    lists: Mapping[str, Sequence[str]] | None = None,
    macros: Mapping[str, str] | None = None,
) -> bool:
    return compile_condition(condition, lists, macros).matches(event)


# --- tokens and grammar -----------------------------------------------------------------------


def test_tokenizer_reads_words_strings_and_operators() -> None:
    toks = tokenize('proc.aname[2]="a \\"b\\"" and x!=y or \'q\'<=3 (a,b)')
    assert [(t.kind, t.text) for t in toks] == [
        ("word", "proc.aname[2]"),
        ("op", "="),
        ("str", 'a "b"'),
        ("word", "and"),
        ("word", "x"),
        ("op", "!="),
        ("word", "y"),
        ("word", "or"),
        ("str", "q"),
        ("op", "<="),
        ("word", "3"),
        ("(", "("),
        ("word", "a"),
        (",", ","),
        ("word", "b"),
        (")", ")"),
        ("eof", ""),
    ]
    assert tokenize("a == b")[1].text == "="


def test_tokenizer_rejects_an_unterminated_string_at_its_offset() -> None:
    with pytest.raises(ConditionError) as err:
        tokenize('proc.name = "bash')
    assert err.value.offset == 12
    assert "unterminated" in err.value.reason


def test_precedence_is_not_then_and_then_or() -> None:
    tree = parse("a or not b and c")
    assert isinstance(tree, Or)
    assert isinstance(tree.children[0], MacroRef)
    conj = tree.children[1]
    assert isinstance(conj, And)
    assert isinstance(conj.children[0], Not)
    tree2 = parse("(a or b) and c")
    assert isinstance(tree2, And)
    assert isinstance(tree2.children[0], Or)


def test_predicates_parse_with_values_lists_and_indexes() -> None:
    tree = parse("proc.aname[3] in (a, 'b c', d) and fd.name exists and x.y pmatch lst")
    assert isinstance(tree, And)
    first, second, third = tree.children
    assert isinstance(first, Compare)
    assert (first.field, first.index, first.op) == ("proc.aname", 3, "in")
    assert [(v.text, v.quoted) for v in first.values] == [("a", False), ("b c", True), ("d", False)]
    assert isinstance(second, Compare)
    assert (second.op, second.values) == ("exists", ())
    assert isinstance(third, Compare)
    assert [v.text for v in third.values] == ["lst"]


def test_a_bare_boolean_field_means_true() -> None:
    tree = parse("file.write and m", frozenset({"file.write"}))
    assert isinstance(tree, And)
    first = tree.children[0]
    assert isinstance(first, Compare)
    assert first.implicit
    assert (first.op, first.values[0].text) == ("=", "true")


@pytest.mark.parametrize(
    ("text", "reason", "offset"),
    [
        ("", "empty condition", 0),
        ("proc.name =", "expected a value", 11),
        ("proc.name = x and", "expected a field, a macro or '('", 17),
        ("(proc.name = x", "expected ')'", 14),
        ("proc.name = x)", "unexpected ')'", 13),
        ("proc.name in (a b)", "expected ',' or ')'", 16),
        ("proc.name in (a,)", "expected a value", 16),
        ("proc.name = x y", "unexpected 'y'", 14),
        ("and", "expected a field, a macro or '('", 0),
        ("a ! b", "unexpected '!'", 2),
    ],
)
def test_syntax_errors_name_the_problem_and_where(text: str, reason: str, offset: int) -> None:
    with pytest.raises(ConditionError) as err:
        parse(text)
    assert reason in err.value.reason
    assert err.value.offset == offset


# --- operators ----------------------------------------------------------------------------------

E = exec_event()


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("proc.name = bash", True),
        ("proc.name == bash", True),
        ("proc.name = sh", False),
        ("proc.name != sh", True),
        ("proc.name != bash", False),
        ("proc.pid = 42", True),
        ("proc.pid < 43 and proc.pid <= 42 and proc.pid > 41 and proc.pid >= 42", True),
        ("proc.pid > 42", False),
        ("proc.uid in (0, 1000)", True),
        ("proc.name in (sh, zsh)", False),
        ("proc.exe startswith /usr/", True),
        ("proc.exe endswith /bash", True),
        ("proc.cmdline contains 'echo hi'", True),
        ("proc.cmdline = 'bash -c echo hi'", True),
        ("proc.args = '-c echo hi'", True),
        ("proc.cmdline icontains 'ECHO'", True),
        ("proc.cmdline contains 'ECHO'", False),
        ("proc.exe glob '/usr/*/ba?h'", True),
        ("proc.exe glob '/usr/*/zsh'", False),
        ("proc.exe iglob '/USR/BIN/*'", True),
        ("proc.cmdline regex 'bash -c .*'", True),
        ("proc.cmdline regex 'echo'", False),  # the whole value must match
        ("proc.exe pmatch (/usr/bin, /opt)", True),
        ("proc.exe pmatch (/usr/bi)", False),
        ("proc.exe pmatch (/usr/bin/bash)", True),
        ("proc.exe pmatch (/usr/bin/)", True),
        ("proc.exe pmatch (/)", True),
        ("proc.tty exists", False),
        ("proc.cwd exists", True),
        ("not proc.tty exists", True),
        ("proc.aname in (systemd)", True),
        ("proc.aname intersects (init, systemd)", True),
        ("proc.aname = sshd", True),
        ("proc.aname[0] = bash and proc.aname[1] = sshd and proc.aname[2] = systemd", True),
        ("proc.aname[3] exists", False),
        ("proc.pname = sshd and proc.pexe = /usr/sbin/sshd", True),
        ("proc.apid[2] = 40", True),
        ("proc.argv[1] = -c and proc.argc = 3", True),
        ("proc.argv startswith -", True),
        ("exec.stdio.kinds intersects (inet_socket)", True),
        ("exec.stdin.kind = pipe and exec.stdout.kind = inet_socket", True),
        ("exec.memfd = false and exec.memfd != true", True),
        ("exec.memfd", False),
        ("evt.kind = process_exec", True),
        ("evt.kind in (file_access, ptrace)", False),
        ("evt.kind != file_access", True),
        # comparisons on a field this kind does not have are false, their negation true
        ("fd.name = /etc/shadow", False),
        ("fd.name != /etc/shadow", False),
        ("not fd.name startswith /etc", True),
        ("fd.name exists", False),
    ],
)
def test_operators(condition: str, expected: bool) -> None:
    assert check(condition, E) is expected


def test_address_fields_take_addresses_and_networks() -> None:
    ev = connect_event("10.1.2.3", 443)
    assert check("net.daddr = 10.1.2.3 and net.dport = 443", ev)
    assert check("net.daddr in (192.168.0.0/16, 10.0.0.0/8)", ev)
    assert not check("net.daddr in (192.168.0.0/16, 172.16.0.0/12)", ev)
    assert check("net.saddr = 10.0.0.5 and net.sport = 40000 and fd.sip = 10.1.2.3", ev)
    assert check("net.daddr != 10.1.2.4", ev)
    mapped = connect_event("::ffff:10.1.2.3", 443)
    assert check("net.daddr in (10.0.0.0/8)", mapped)
    assert check("net.daddr = ::ffff:10.1.2.3", connect_event("10.1.2.3", 443))
    v6 = connect_event("2001:db8::7", 443)
    assert check("net.daddr in (2001:db8::/32)", v6)
    assert not check("net.daddr in (10.0.0.0/8)", v6)


def test_server_and_client_sides_follow_the_operation() -> None:
    ev = connect_event("10.1.2.3", 443)
    ev.network_connection.operation = network_details_pb2.CONNECTION_OPERATION_ACCEPT
    assert check("net.dport = 40000 and net.sport = 443 and net.lport = 40000", ev)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("42", 42),
        ("-115", -115),
        ("0x1f", 31),
        ("0o755", 0o755),
        ("04755", 0o4755),
        ("0", 0),
        ("1_000", 1000),
        ("100MiB", 100 * 2**20),
        ("2GiB", 2 * 2**30),
        ("5k", 5000),
        ("1G", 10**9),
        ("08", None),
        ("x", None),
        ("12XB", None),
    ],
)
def test_integer_literals(text: str, value: int | None) -> None:
    assert parse_int(text) == value


def test_file_fields() -> None:
    ev = open_event("/etc/ssh/sshd_config", write=True)
    assert check(
        "file.write and not file.read and file.access = write and fd.directory = /etc/ssh"
        " and fd.filename = sshd_config and file.flag_names intersects (O_TRUNC)"
        " and file.flags = 0o1101",
        ev,
    )
    assert check("file.paths pmatch (/etc)", ev)
    r = proc_event()
    r.file_rename.old_path, r.file_rename.new_path = "/var/log/auth.log", "/tmp/x"
    assert check("file.oldpath pmatch (/var/log) and file.path = /tmp/x", r)
    assert check("file.paths pmatch (/var/log) and file.paths pmatch (/tmp)", r)


def test_optional_proto_fields_read_as_missing_when_unset() -> None:
    ev = proc_event()
    ev.ownership_change.path = "/etc/shadow"
    ev.ownership_change.new_uid = 0
    assert check("file.new_uid = 0 and not file.new_gid exists and not file.old_uid exists", ev)


def test_missing_process_reads_as_unknown_not_as_root() -> None:
    ev = Event()
    ev.auth_event.outcome = auth_details_pb2.AUTH_OUTCOME_FAILED
    assert not check("proc.uid = 0", ev)
    assert check("not proc.uid exists and not proc.name exists", ev)
    assert check("auth.outcome = failed", ev)


# --- binding errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "reason"),
    [
        ("proc.nmae = bash", "unknown field 'proc.nmae' (did you mean 'proc.name'?)"),
        ("proc.pid startswith x", "operator 'startswith' does not apply to proc.pid (int field)"),
        ("proc.pid = abc", "proc.pid is an integer field; 'abc' is not an integer"),
        ("exec.memfd = maybe", "exec.memfd is a boolean field; use true or false"),
        ("exec.memfd glob x", "operator 'glob' does not apply to exec.memfd (bool field)"),
        ("ptrace.request = atach", "'atach' is not a value of ptrace.request; use one of attach"),
        ("evt.kind = file_acces", "'file_acces' is not a value of evt.kind"),
        ("net.daddr = localhost", "net.daddr is an address field; 'localhost' is not an IP"),
        ("net.daddr startswith 10.", "operator 'startswith' does not apply to net.daddr"),
        ("proc.name intersects (a)", "operator 'intersects' does not apply to proc.name"),
        ("proc.name[1] = x", "field 'proc.name' takes no [index]"),
        ("proc.cmdline regex '('", "bad regular expression"),
        ("no_such_macro", "unknown macro 'no_such_macro'"),
        ("proc.name", "field 'proc.name' needs an operator"),
        ("proc", "unknown macro 'proc'"),
        (
            "proc.name in (shell_binarys)",
            "unknown list 'shell_binarys' (did you mean 'shell_binaries'?)",
        ),
    ],
)
def test_binding_errors(condition: str, reason: str) -> None:
    with pytest.raises(ConditionError) as err:
        compile_condition(condition, lists={"shell_binaries": ["bash"]})
    assert reason in err.value.reason


def test_a_quoted_list_like_value_is_a_value() -> None:
    assert not check("proc.name in ('shell_binarys')", E, lists={"shell_binaries": ["bash"]})


# --- macros and lists ---------------------------------------------------------------------------


def test_lists_expand_inside_in_and_quotes_keep_values() -> None:
    lists = {"shells": ["zsh", "bash"], "quoted": ['"bash"']}
    assert check("proc.name in (shells)", E, lists)
    assert check("proc.name in (quoted)", E, lists)  # Falco-style quoted items lose their quotes
    assert not check("proc.name in ('shells')", E, lists)
    assert check("proc.name in (sh, shells)", E, lists)
    assert check("proc.name in shells", E, lists)
    assert check("proc.exe pmatch (dirs)", E, {"dirs": ["/usr/bin"]})
    assert not check("proc.name in (empty)", E, {"empty": []})
    assert check("not proc.name in (empty)", E, {"empty": []})


def test_macros_nest_and_are_bound_once() -> None:
    macros = {"shell": "proc.name in (bash, sh)", "interactive": "shell and proc.pname = sshd"}
    assert check("interactive and not never", E, macros={**macros, "never": "evt.kind in ()"})
    assert not check("interactive", proc_event(ancestors=("cron",)), macros=macros)


def test_circular_macros_are_refused_with_the_cycle() -> None:
    with pytest.raises(ConditionError) as err:
        compile_condition("a", macros={"a": "b and proc.pid > 1", "b": "proc.pid > 0 or a"})
    assert "circular macro reference: a -> b -> a" in err.value.reason


def test_errors_inside_a_macro_point_into_the_macro() -> None:
    with pytest.raises(ConditionError) as err:
        compile_condition("m", macros={"m": "proc.pid = 1 and bad.field = 2"})
    assert "unknown field 'bad.field'" in err.value.reason
    assert err.value.offset == 17


# --- compilation per kind -----------------------------------------------------------------------


def test_kinds_are_derived_from_evt_kind_and_from_fields() -> None:
    assert compile_condition("evt.kind = ptrace").kinds == {"ptrace"}
    assert compile_condition("ptrace.request = attach").kinds == {"ptrace"}
    both = compile_condition("fd.name pmatch (/etc) and proc.name = vim").kinds
    assert both == {
        "file_access",
        "permission_change",
        "ownership_change",
        "file_delete",
        "file_rename",
        "file_link",
        "file_attribute_change",
        "file_timestamp_change",
    }
    assert compile_condition("evt.kind = file_access or net.dport = 22").kinds == {
        "file_access",
        "network_connection",
    }
    assert compile_condition("proc.name = bash").kinds == fieldtab.ALL_KINDS
    assert compile_condition("evt.kind = ptrace and fd.name = x").kinds == frozenset()


def test_constant_parts_fold_away_per_kind() -> None:
    cond = compile_condition("evt.kind = process_exec and proc.name = bash")
    assert cond.for_kind("ptrace") is False
    pred = cond.for_kind("process_exec")
    assert callable(pred)
    assert compile_condition("evt.kind in (ptrace, gap)").for_kind("gap") is True


def test_alternatives_on_one_field_merge_into_one_test() -> None:
    cond = compile_condition(
        "proc.name = a or proc.name = b or proc.name in (c) or proc.exe startswith /x"
        " or proc.exe startswith /y or proc.pid = 1"
    )
    tree = cond.tree
    assert isinstance(tree, BOr)
    assert len(tree.children) == 3
    for comm in ("a", "b", "c"):
        assert cond.matches(exec_event(comm=comm, exe="/usr/bin/z"))
    assert cond.matches(exec_event(comm="q", exe="/y/q"))
    assert not cond.matches(exec_event(comm="q", exe="/z/q"))


def test_substring_alternatives_merge_and_keep_their_meaning() -> None:
    cond = compile_condition(
        "proc.args icontains 'ID_RSA' or proc.args icontains '.pem' or proc.args contains 'x'"
    )
    assert isinstance(cond.tree, BOr)
    assert len(cond.tree.children) == 2
    assert cond.matches(exec_event(args=["find", "/", "-name", "id_rsa"]))
    assert cond.matches(exec_event(args=["find", "/", "-name", "*.PEM"]))
    assert cond.matches(exec_event(args=["ls", "x"]))
    assert not cond.matches(exec_event(args=["ls", "X"]))


def test_prefilters_pick_a_necessary_test_on_one_field() -> None:
    tree = compile_condition(
        "evt.kind = file_access and file.write and fd.name pmatch (/etc) and not proc.name = vim"
    ).tree
    pf = prefilter(tree, "file_access")
    assert pf is not None
    assert (pf.key, pf.rank) == (("file.path", None), 1)
    assert pf.test("/etc/hosts")
    assert not pf.test("/etcetera")
    assert not pf.test(None)
    either = compile_condition("proc.name in (a) or proc.name startswith b").tree
    pf2 = prefilter(either, "process_exec")
    assert pf2 is not None
    assert pf2.test("a")
    assert pf2.test("bx")
    assert not pf2.test("c")
    assert prefilter(compile_condition("proc.name = a or proc.pid = 1").tree, "ptrace") is None
    assert prefilter(compile_condition("not proc.name = a").tree, "ptrace") is None


def test_empty_sets_fold_to_constants() -> None:
    assert isinstance(compile_condition("proc.name in ()").tree, BConst)


def test_conditions_without_detail_never_match() -> None:
    cond: Condition = compile_condition("not proc.name = x")
    assert not cond.matches(Event())


# --- the field table ----------------------------------------------------------------------------


def _full_event(kind: str) -> Event:
    """An event of `kind` with every field of its detail set to something non-default."""
    e = proc_event()
    e.id, e.guardian.host = "01900000-0000-7000-8000-000000000000", "h"
    e.process.exec_id, e.process.parent_exec_id = "e1", "e0"
    e.time.seconds = 1_700_000_000
    e.process.tty, e.process.cgroup, e.process.container_id = "pts/0", "/x", "c" * 64
    detail = getattr(e, kind)
    _fill(detail)
    return e


def _fill(msg: object) -> None:
    from google.protobuf.message import Message

    assert isinstance(msg, Message)
    for fd in msg.DESCRIPTOR.fields:
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            continue
        if fd.message_type is not None:
            if fd.is_repeated:
                _fill(getattr(msg, fd.name).add())
            else:
                _fill(getattr(msg, fd.name))
        elif fd.is_repeated:
            getattr(msg, fd.name).append("/x/y" if fd.type == fd.TYPE_STRING else 1)
        elif fd.enum_type is not None:
            setattr(msg, fd.name, fd.enum_type.values[-1].number)
        elif fd.type == fd.TYPE_STRING:
            setattr(msg, fd.name, "10.0.0.1" if fd.name == "address" else "/x/y")
        elif fd.type == fd.TYPE_BOOL:
            setattr(msg, fd.name, True)
        elif fd.type in (fd.TYPE_INT64, fd.TYPE_INT32, fd.TYPE_SINT64):
            setattr(msg, fd.name, -1)
        elif fd.type in (fd.TYPE_UINT32, fd.TYPE_UINT64):
            setattr(msg, fd.name, 7)


_PY_TYPES = {
    fieldtab.FieldType.STRING: str,
    fieldtab.FieldType.INT: int,
    fieldtab.FieldType.BOOL: bool,
    fieldtab.FieldType.ENUM: str,
    fieldtab.FieldType.ADDR: str,
}


@pytest.mark.parametrize("name", sorted(fieldtab.FIELDS))
def test_every_field_extracts_its_declared_type(name: str) -> None:
    fld = fieldtab.FIELDS[name]
    assert fld.description[0].isupper() or fld.description[0] == "`", fld.description
    kinds = sorted(fld.kinds) if fld.generic is None else ["process_exec", "file_access"]
    for kind in kinds:
        ev = _full_event(kind)
        value = fld.extract(ev)
        assert value is not None, f"{name} on {kind}"
        items = value if fld.is_list else (value,)
        assert isinstance(items, tuple)
        for item in items:
            assert isinstance(item, _PY_TYPES[fld.type]), (name, kind, value)
            if fld.type is fieldtab.FieldType.ENUM:
                assert item in fld.choices, (name, item)
        if fld.indexed is not None:
            fld.extract(ev, 1)
    # a kind the field does not cover has no value
    others = fieldtab.ALL_KINDS - fld.kinds
    if others:
        assert fld.extract(_full_event(sorted(others)[0])) is None


def test_aliases_resolve_to_canonical_fields() -> None:
    assert fieldtab.lookup("fd.name") is fieldtab.FIELDS["file.path"]
    assert fieldtab.lookup("user.uid") is fieldtab.FIELDS["proc.uid"]
    assert fieldtab.lookup("fd.sport") is fieldtab.FIELDS["net.dport"]
    assert fieldtab.lookup("nope") is None
    assert all(fieldtab.lookup(a) is not None for a in fieldtab.ALIASES)
    described = {d["name"]: d for d in fieldtab.describe()}
    assert "fd.name" in described["file.path"]["aliases"]
    assert described["proc.aname"]["indexed"]


def test_memory_list_fields() -> None:
    ev = proc_event()
    mt = ev.memory_threat
    mt.kind = memory_details_pb2.MEMORY_THREAT_KIND_WRITABLE_EXECUTABLE
    mt.regions.add(permissions="rwxp", path="")
    mt.regions.add(permissions="r-xp", path="/memfd:x (deleted)")
    assert check("mem.kind = writable_executable and mem.regions = 2 and mem.perms in (rwxp)", ev)
    assert check("mem.paths startswith /memfd:", ev)


# --- outputs ------------------------------------------------------------------------------------


def test_output_templates_render_fields() -> None:
    tpl = parse_output(
        "%proc.name ran %proc.cmdline (parent %proc.aname[1], 100%% sure, tty=%proc.tty)."
    )
    assert tpl.fields == ("proc.name", "proc.cmdline", "proc.aname", "proc.tty")
    assert tpl.render(E) == "bash ran bash -c echo hi (parent sshd, 100% sure, tty=<NA>)."


def test_output_values_are_escaped_and_bounded() -> None:
    ev = exec_event(comm="x", args=["x", "a\nFAKE LOG LINE\x1b[31m", "y" * 2000])
    out = parse_output("%proc.args").render(ev)
    assert "\n" not in out
    assert "\\x0aFAKE LOG LINE\\x1b[31m" in out
    assert len(out) <= MAX_VALUE_CHARS + 3
    assert parse_output("%proc.argv").render(proc_event(args=["a", "b"])) == "a,b"


def test_output_with_an_unknown_field_is_refused() -> None:
    with pytest.raises(RuleError, match=r"unknown field %proc.nmae \(did you mean 'proc.name'\?\)"):
        parse_output("x %proc.nmae")
    with pytest.raises(RuleError, match="takes no"):
        parse_output("%proc.name[2]")


def test_source_text_maps_offsets_to_lines_across_appended_segments() -> None:
    a = SourceText.plain("x and\ny", "a.yaml", 3, [3, 3, 3, 3, 4])
    b = SourceText.plain("and z", "b.yaml", 9, [9, 9, 9, 9])
    joined = a.append(b)
    assert joined.text == "x and\ny and z"
    assert joined.locate(0) == ("a.yaml", 3)
    assert joined.locate(6) == ("a.yaml", 4)
    assert joined.locate(12) == ("b.yaml", 9)
