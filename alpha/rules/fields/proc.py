"""`proc.*` (and `container.*`): the acting process, on every kind."""

from __future__ import annotations

from alpha.rules.fields.extractors import (
    ancestor_at,
    ancestor_values,
    process_int,
    sequence_at,
    string_at,
)
from alpha.rules.fields.table import BOOL, INT, STRING, Event, Value, add_field

add_field("proc.pid", INT, "Process ID (host PID namespace).", generic=process_int("pid"))
add_field("proc.ppid", INT, "Parent process ID.", generic=process_int("ppid"))
add_field(
    "proc.uid",
    INT,
    "Real user ID.",
    generic=process_int("uid"),
    aliases=("user.uid",),
)
add_field("proc.gid", INT, "Real group ID.", generic=process_int("gid"), aliases=("group.gid",))
add_field("proc.euid", INT, "Effective user ID.", generic=process_int("euid"))
add_field("proc.egid", INT, "Effective group ID.", generic=process_int("egid"))
add_field(
    "proc.auid",
    INT,
    "Login (audit) user ID, kept across su and sudo; 4294967295 when unset.",
    generic=process_int("auid"),
    aliases=("user.loginuid",),
)
add_field(
    "proc.name",
    STRING,
    "Kernel command name (comm, at most 15 bytes), e.g. `bash`.",
    generic=string_at("process.comm"),
    aliases=("proc.comm",),
)
add_field(
    "proc.exe",
    STRING,
    "Absolute path of the executable, e.g. `/usr/bin/bash`; `/memfd:x (deleted)` for memfd.",
    generic=string_at("process.exe"),
    aliases=("proc.exepath",),
)


def _args(ev: Event) -> Value:
    return " ".join(ev.process.args[1:]) or None


def _cmdline(ev: Event) -> Value:
    proc = ev.process
    if not proc.comm:
        return None
    return " ".join([proc.comm, *proc.args[1:]])


add_field(
    "proc.args",
    STRING,
    "The arguments after argv[0], joined by spaces (Falco's proc.args).",
    generic=_args,
    cost=1,
)
add_field(
    "proc.cmdline",
    STRING,
    "The name and arguments: `proc.name` then argv[1:], joined by spaces (as in Falco).",
    generic=_cmdline,
    cost=1,
)


def _pcmdline(ev: Event) -> Value:
    chain = ev.process.ancestry
    if not chain or not chain[0].comm:
        return None
    return " ".join([chain[0].comm, *chain[0].args[1:]])


add_field(
    "proc.pcmdline",
    STRING,
    "The parent's name and arguments, as proc.cmdline (Falco's proc.pcmdline): a java parent "
    "running Kafka or Elasticsearch shows its main class here.",
    generic=_pcmdline,
    cost=1,
)
add_field(
    "proc.argv",
    STRING,
    "The arguments as a list, argv[0] first; `proc.argv[n]` is one argument.",
    generic=sequence_at("process.args"),
    is_list=True,
    indexed=lambda n: lambda ev: ev.process.args[n] if len(ev.process.args) > n else None,
    cost=1,
)
add_field(
    "proc.argc",
    INT,
    "Number of arguments including argv[0] (0 for an exec with an empty argv).",
    generic=lambda ev: len(ev.process.args) if ev.HasField("process") else None,
)
add_field(
    "proc.args_truncated",
    BOOL,
    "True when the sensor cut the arguments to its limit.",
    generic=lambda ev: ev.process.args_truncated if ev.HasField("process") else None,
)
add_field(
    "proc.cwd", STRING, "Current working directory, when known.", generic=string_at("process.cwd")
)
add_field(
    "proc.tty",
    STRING,
    "Controlling terminal (e.g. `pts/0`); missing when the process has none.",
    generic=string_at("process.tty"),
)
add_field(
    "proc.exec_id",
    STRING,
    "Globally unique ID of this execution.",
    generic=string_at("process.exec_id"),
)
add_field(
    "proc.pexec_id",
    STRING,
    "`exec_id` of the parent's current execution.",
    generic=string_at("process.parent_exec_id"),
)
add_field(
    "proc.cgroup",
    STRING,
    "Path of the process's cgroup v2, e.g. `/system.slice/nginx.service`.",
    generic=string_at("process.cgroup"),
)
add_field(
    "container.id",
    STRING,
    "Container ID (64 hex digits) when the process runs in a container; missing on the host.",
    generic=string_at("process.container_id"),
)
add_field(
    "proc.pname",
    STRING,
    "Parent's command name.",
    generic=ancestor_at("comm")(1),
)
add_field(
    "proc.pexe",
    STRING,
    "Parent's executable path.",
    generic=ancestor_at("exe")(1),
    aliases=("proc.pexepath",),
)
add_field(
    "proc.aname",
    STRING,
    "Ancestors' command names, parent first; `proc.aname[n]`: 0 is the process, 1 its parent...",
    generic=ancestor_values("comm"),
    is_list=True,
    indexed=ancestor_at("comm"),
    cost=1,
)
add_field(
    "proc.aexe",
    STRING,
    "Ancestors' executable paths, parent first; `proc.aexe[n]` as for proc.aname.",
    generic=ancestor_values("exe"),
    is_list=True,
    indexed=ancestor_at("exe"),
    cost=1,
    aliases=("proc.aexepath",),
)
add_field(
    "proc.apid",
    INT,
    "Ancestors' PIDs, parent first; `proc.apid[n]` as for proc.aname.",
    generic=ancestor_values("pid"),
    is_list=True,
    indexed=ancestor_at("pid"),
    cost=1,
)
add_field(
    "proc.depth",
    INT,
    "Number of known ancestors.",
    generic=lambda ev: len(ev.process.ancestry) if ev.HasField("process") else None,
)
