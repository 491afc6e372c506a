"""`file.*` and `link.*`: file access, permission, ownership, delete, rename, link."""

from __future__ import annotations

from operator import attrgetter

from alpha.rules.fields.extractors import (
    basename_of,
    dirname_of,
    enum_at,
    enum_names,
    int_at,
    optional_int,
    string_at,
)
from alpha.rules.fields.table import BOOL, ENUM, INT, STRING, Event, Value, add_field
from qsc.common.v1 import file_details_pb2

_PATH_OF = {
    "file_access": string_at("file_access.path"),
    "permission_change": string_at("permission_change.path"),
    "ownership_change": string_at("ownership_change.path"),
    "file_delete": string_at("file_delete.path"),
    "file_rename": string_at("file_rename.new_path"),
    "file_link": string_at("file_link.link_path"),
    "file_attribute_change": string_at("file_attribute_change.path"),
    "file_timestamp_change": string_at("file_timestamp_change.path"),
}
add_field(
    "file.path",
    STRING,
    "The path acted on: opened, chmod/chown'ed, deleted, renamed to (new path), or the new link.",
    per_kind=_PATH_OF,
    aliases=("fd.name",),
)
add_field(
    "file.directory",
    STRING,
    "Directory part of file.path.",
    per_kind={k: dirname_of(v) for k, v in _PATH_OF.items()},
    cost=1,
    aliases=("fd.directory",),
)
add_field(
    "file.name",
    STRING,
    "Last component of file.path.",
    per_kind={k: basename_of(v) for k, v in _PATH_OF.items()},
    cost=1,
    aliases=("fd.filename",),
)

add_field(
    "file.requested_path",
    STRING,
    "For an open: the path as the caller wrote it, when it was relative or not canonical (//, "
    "/./, /../) and the kernel named the file from the fd it opened; empty otherwise.",
    per_kind={"file_access": string_at("file_access.requested_path")},
)


def _rename_paths(ev: Event) -> Value:
    r = ev.file_rename
    return (r.old_path, r.new_path)


def _link_paths(ev: Event) -> Value:
    lk = ev.file_link
    return (lk.target, lk.link_path)


add_field(
    "file.paths",
    STRING,
    "Every path involved, as a list: both paths of a rename, the target and the new link.",
    per_kind={
        **{
            k: (lambda g: lambda ev: (g(ev),))(attrgetter(f"{k}.path"))
            for k in (
                "file_access",
                "permission_change",
                "ownership_change",
                "file_delete",
                "file_attribute_change",
                "file_timestamp_change",
            )
        },
        "file_rename": _rename_paths,
        "file_link": _link_paths,
    },
    is_list=True,
    cost=1,
)
add_field(
    "file.oldpath",
    STRING,
    "For a rename: the path before it.",
    per_kind={"file_rename": string_at("file_rename.old_path")},
    aliases=("fd.oldname",),
)
add_field(
    "file.newpath",
    STRING,
    "For a rename: the path after it.",
    per_kind={"file_rename": string_at("file_rename.new_path")},
)
_ACCESS_MODES = enum_names(file_details_pb2.AccessMode.DESCRIPTOR, "ACCESS_MODE_")
add_field(
    "file.access",
    ENUM,
    "How the file was opened: read, write, read_write.",
    per_kind={"file_access": enum_at("file_access.access", _ACCESS_MODES)},
    choices=tuple(_ACCESS_MODES.values()),
)
_WRITE_MODES = (file_details_pb2.ACCESS_MODE_WRITE, file_details_pb2.ACCESS_MODE_READ_WRITE)
_READ_MODES = (file_details_pb2.ACCESS_MODE_READ, file_details_pb2.ACCESS_MODE_READ_WRITE)
add_field(
    "file.write",
    BOOL,
    "True when the file was opened for writing (write or read_write).",
    per_kind={"file_access": lambda ev: ev.file_access.access in _WRITE_MODES},
    aliases=("evt.is_open_write",),
)
add_field(
    "file.read",
    BOOL,
    "True when the file was opened for reading (read or read_write).",
    per_kind={"file_access": lambda ev: ev.file_access.access in _READ_MODES},
    aliases=("evt.is_open_read",),
)
add_field(
    "file.flags",
    INT,
    "Raw flags: open(2) flags for an open, renameat2 flags for a rename.",
    per_kind={
        "file_access": int_at("file_access.flags"),
        "file_rename": int_at("file_rename.flags"),
    },
)
# Names of the open(2) flags an analyst filters on (x86-64 / generic Linux values).
_OPEN_FLAGS = (
    (0o100, "O_CREAT"),
    (0o200, "O_EXCL"),
    (0o1000, "O_TRUNC"),
    (0o2000, "O_APPEND"),
    (0o4000, "O_NONBLOCK"),
    (0o200000, "O_DIRECTORY"),
    (0o400000, "O_NOFOLLOW"),
    (0o2000000, "O_CLOEXEC"),
    (0o20000000, "O_PATH"),
    (0o20200000, "O_TMPFILE"),
)


def _flag_names(ev: Event) -> Value:
    flags = ev.file_access.flags
    return tuple(name for bit, name in _OPEN_FLAGS if flags & bit == bit)


add_field(
    "file.flag_names",
    ENUM,
    "Names of the open flags set (O_CREAT, O_TRUNC, O_APPEND, ...), as a list.",
    per_kind={"file_access": _flag_names},
    is_list=True,
    choices=tuple(name for _, name in _OPEN_FLAGS),
    cost=1,
)
add_field(
    "file.created",
    BOOL,
    "True when the open created the file.",
    per_kind={"file_access": attrgetter("file_access.created")},
)
add_field(
    "file.truncated",
    BOOL,
    "True when the open truncated the file to zero length (O_TRUNC on a write).",
    per_kind={"file_access": attrgetter("file_access.truncated")},
)
add_field(
    "file.mode",
    INT,
    "The mode requested by chmod (permission and special bits, e.g. 0o4755).",
    per_kind={"permission_change": int_at("permission_change.new_mode")},
    octal=True,
)
add_field(
    "file.old_mode",
    INT,
    "The mode before chmod, when known.",
    per_kind={"permission_change": optional_int("permission_change", "old_mode")},
    octal=True,
)
add_field(
    "file.setuid_added",
    BOOL,
    "True when chmod sets the setuid bit (04000) that was not set before.",
    per_kind={"permission_change": attrgetter("permission_change.setuid_added")},
)
add_field(
    "file.setgid_added",
    BOOL,
    "True when chmod sets the setgid bit (02000) that was not set before.",
    per_kind={"permission_change": attrgetter("permission_change.setgid_added")},
)
add_field(
    "file.world_writable",
    BOOL,
    "True when the new mode lets others write (0002).",
    per_kind={"permission_change": attrgetter("permission_change.world_writable")},
)
for _attr, _text in (
    ("old_uid", "Owner before chown, when known."),
    ("old_gid", "Group before chown, when known."),
    ("new_uid", "New owner; missing when chown left it unchanged."),
    ("new_gid", "New group; missing when chown left it unchanged."),
):
    add_field(
        f"file.{_attr}",
        INT,
        _text,
        per_kind={"ownership_change": optional_int("ownership_change", _attr)},
    )
add_field(
    "file.is_dir",
    BOOL,
    "For a removal: true when a directory was removed.",
    per_kind={"file_delete": attrgetter("file_delete.directory")},
)
add_field(
    "link.target",
    STRING,
    "For a link: the symlink's text or the hard link's existing path.",
    per_kind={"file_link": string_at("file_link.target")},
    aliases=("evt.arg.target",),
)
add_field(
    "link.path",
    STRING,
    "For a link: the path of the new link.",
    per_kind={"file_link": string_at("file_link.link_path")},
    aliases=("evt.arg.linkpath",),
)
add_field(
    "link.symbolic",
    BOOL,
    "For a link: true for a symbolic link, false for a hard link.",
    per_kind={"file_link": attrgetter("file_link.symbolic")},
)
