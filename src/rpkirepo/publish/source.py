"""Reading a publish source directory: a scan by stat signature, then careful reads.

The scan visits every entry once with ``os.scandir`` and one ``lstat`` per file; nothing is read.
A file whose stat signature (size, mtime, ctime, inode) equals the one recorded in the state is
taken as unchanged (rsync's quick check, made stricter by ctime and inode).  Files are read with
``O_NOFOLLOW`` and checked against the signature seen by the scan, so a file replaced between scan
and read is noticed instead of published half-new.

Refused (an :class:`InputError` each, collected, never fatal inside the scan): symlinks, sockets
and other special files, names that are not valid rsync URI segments (dot files, spaces,
non-ASCII, ...), extensions that are not RPKI object types, empty files and files over
``Limits.max_object_size``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Container
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NamedTuple

from rpkirepo.errors import InputError, LimitExceeded, Reason, RemoteProtocolError
from rpkirepo.limits import Limits
from rpkirepo.publish.state import SIGNATURE
from rpkirepo.uri import validate_segment

__all__ = ["OBJECT_EXTENSIONS", "ScanResult", "SourceEntry", "read_source", "scan_source"]

#: File name extensions of RPKI repository objects (RFC 6481 §2.1 and later object types).
OBJECT_EXTENSIONS: Final = frozenset(
    {".cer", ".crl", ".mft", ".roa", ".asa", ".gbr", ".tak", ".spl", ".sig"}
)


class SourceEntry(NamedTuple):
    """One regular file of the source directory: its relative path and stat signature."""

    path: str
    st_size: int
    st_mtime_ns: int
    st_ino: int
    #: The packed signature (size, mtime_ns, ctime_ns, inode) compared with the state's.
    sig: bytes


_pack = SIGNATURE.pack


@dataclass(slots=True)
class ScanResult:
    entries: dict[str, SourceEntry] = field(default_factory=dict)
    problems: list[InputError] = field(default_factory=list)


def scan_source(root: Path, limits: Limits, known: Container[str] = ()) -> ScanResult:
    """Every acceptable file below ``root`` and every problem found on the way.

    Names in ``known`` (files published before) were validated then and are not checked again.
    """
    result = ScanResult()
    try:
        root_stat = os.lstat(root)
    except OSError as exc:
        raise InputError(Reason.SOURCE_UNREADABLE, str(exc.strerror), path=str(root)) from exc
    if not stat.S_ISDIR(root_stat.st_mode):
        raise InputError(Reason.SOURCE_UNREADABLE, "not a directory", path=str(root))
    stack: list[tuple[str, str, int]] = [(os.fspath(root), "", 0)]
    entries = result.entries
    problems = result.problems
    while stack:
        directory, prefix, depth = stack.pop()
        try:
            it = os.scandir(directory)
        except OSError as exc:
            problems.append(
                InputError(Reason.SOURCE_UNREADABLE, str(exc.strerror), path=prefix or ".")
            )
            continue
        with it:
            for entry in it:
                rel = prefix + entry.name
                is_known = rel in known
                if not is_known:
                    try:
                        validate_segment(entry.name, what="file name", uri=rel)
                    except RemoteProtocolError as exc:
                        problems.append(InputError(Reason.SOURCE_BAD_NAME, exc.detail, path=rel))
                        continue
                if entry.is_symlink():
                    problems.append(InputError(Reason.SOURCE_SYMLINK, "symbolic link", path=rel))
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if depth + 1 > limits.max_source_depth:
                        problems.append(
                            InputError(
                                Reason.LIMIT,
                                "directory nesting too deep",
                                path=rel,
                                limit="max_source_depth",
                            )
                        )
                        continue
                    stack.append((entry.path, rel + "/", depth + 1))
                    continue
                if not entry.is_file(follow_symlinks=False):
                    problems.append(InputError(Reason.SOURCE_SPECIAL_FILE, "not a file", path=rel))
                    continue
                if not is_known and entry.name[-4:].lower() not in OBJECT_EXTENSIONS:
                    problems.append(
                        InputError(
                            Reason.SOURCE_UNSUPPORTED_TYPE, "not an RPKI object extension", path=rel
                        )
                    )
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError as exc:
                    problems.append(
                        InputError(Reason.SOURCE_UNREADABLE, str(exc.strerror), path=rel)
                    )
                    continue
                if st.st_size == 0:
                    problems.append(InputError(Reason.OBJECT_EMPTY, "empty file", path=rel))
                    continue
                if st.st_size > limits.max_object_size:
                    problems.append(
                        InputError(
                            Reason.OBJECT_TOO_LARGE,
                            "file over the object size limit",
                            path=rel,
                            limit="max_object_size",
                        )
                    )
                    continue
                entries[rel] = SourceEntry(
                    rel,
                    st.st_size,
                    st.st_mtime_ns,
                    st.st_ino,
                    _pack(st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino),
                )
                if len(entries) > limits.max_source_objects:
                    raise LimitExceeded(
                        Reason.TOO_MANY_OBJECTS,
                        "too many files in the source directory",
                        limit="max_source_objects",
                    )
    return result


_READ_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY | os.O_NONBLOCK


def read_source(root: Path, entry: SourceEntry, limits: Limits) -> bytes:
    """The bytes of ``entry``; InputError when it vanished, changed or became something else."""
    path = os.path.join(root, entry.path)
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        raise InputError(Reason.SOURCE_UNREADABLE, str(exc.strerror), path=entry.path) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InputError(Reason.SOURCE_SPECIAL_FILE, "not a file", path=entry.path)
        if (st.st_size, st.st_mtime_ns, st.st_ino) != (
            entry.st_size,
            entry.st_mtime_ns,
            entry.st_ino,
        ):
            raise InputError(
                Reason.SOURCE_CHANGED_DURING_READ, "file changed since the scan", path=entry.path
            )
        if st.st_size > limits.max_object_size:
            raise LimitExceeded(
                Reason.OBJECT_TOO_LARGE,
                "file over the object size limit",
                path=entry.path,
                limit="max_object_size",
            )
        data = os.read(fd, st.st_size + 1)
        while len(data) < st.st_size + 1:
            more = os.read(fd, st.st_size + 1 - len(data))
            if not more:
                break
            data += more
    except OSError as exc:
        raise InputError(Reason.SOURCE_UNREADABLE, str(exc.strerror), path=entry.path) from exc
    finally:
        os.close(fd)
    if len(data) != entry.st_size:
        raise InputError(
            Reason.SOURCE_CHANGED_DURING_READ, "file size changed while reading", path=entry.path
        )
    return data
