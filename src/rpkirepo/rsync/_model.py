"""The in-memory model of one served revision, and the file lists made from it.

A :class:`Revision` is built once per revision of a module (``DIR/current``) by the I/O layer,
which walks the tree and hands every directory and file (name, size, mtime, MD5) to a
:class:`RevisionBuilder`; the builder validates each name (rsync-wire §8 "output safety":
relative, no ``.``/``..`` parts, no empty parts, no NUL/control characters/backslash, component
<= 255 bytes, path <= 1023 bytes) so no client can ever be sent a name that leads outside its
destination directory.

Memory.  A revision holds no file bodies and no Python object per entry: every entry's full path
is in one bytes blob, in the receiver's sort order at protocol >= 29 (files of a directory
first, then each subdirectory followed by its whole subtree), and sizes, mtimes, the directory
flags, the subtree ends and the MD5 digests are packed arrays indexed by that position.  A
subtree is a contiguous range of positions, so scoping and filtering a file list is a scan that
jumps over excluded directories.  File bodies are read when they are sent, through the
:class:`BodySource` the I/O layer hands to :meth:`RevisionBuilder.build` (``tree`` reads the
immutable revision files with ``pread``; :class:`MemorySource` serves tests).  The core itself
never touches a file.

After :meth:`RevisionBuilder.build` the revision is immutable except for caches of values derived
deterministically from it: encoded file lists (per option and filter set; lists that select the
same entries share one encoding), MD4 sums for protocol 27 (computed on first use), and ``-z``
token streams at the default level (an LRU bounded in bytes).  Any number of sessions share it,
and a session keeps the revision it started with until it ends.

File lists (rsync flist.c ``send_file_entry`` for the layout; facts from rsync-wire §4): protocol
27 and 30-31 encodings, never incremental recursion, never hard links or nanoseconds.  The order
is the receiver's sort order, so a request index is a position in our list.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from array import array
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from enum import Enum
from typing import Final, Protocol

import xxhash

from rpkirepo.errors import LimitExceeded, Reason, RemoteProtocolError, StorageError
from rpkirepo.rsync._filters import FilterSet
from rpkirepo.rsync._md4 import md4
from rpkirepo.rsync._wire import Msg, frame, int32, longint, varint, varlong

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "SPOOL_CHECKSUM",
    "BodySource",
    "Checksum",
    "Entry",
    "FileList",
    "FlistOptions",
    "MemorySource",
    "Revision",
    "RevisionBuilder",
    "SpoolIndex",
    "SpoolSource",
    "deflate_tokens",
    "spool_file_offset",
    "spool_segment",
    "validate_name",
    "xxh128",
    "xxh128_bytes",
]

DIR_MODE: Final = 0o040755
FILE_MODE: Final = 0o100644
DIR_SIZE: Final = 4096
MAX_COMPONENT: Final = 255  # NAME_MAX
MAX_PATH: Final = 1023  # BSD PATH_MAX - 1: the strictest receiver's limit

# flist.c transmit flags (rsync.h XMIT_*).
XMIT_TOP_DIR: Final = 0x01
XMIT_SAME_MODE: Final = 0x02
XMIT_EXTENDED_FLAGS: Final = 0x04
XMIT_SAME_UID: Final = 0x08
XMIT_SAME_GID: Final = 0x10
XMIT_SAME_NAME: Final = 0x20
XMIT_LONG_NAME: Final = 0x40
XMIT_SAME_TIME: Final = 0x80
XMIT_NO_CONTENT_DIR: Final = 0x0100

LITERAL_CHUNK: Final = 32768  # rsync's CHUNK_SIZE: longest literal run in one token
DEFLATE_PIECE: Final = 16383  # MAX_DATA_COUNT of token.c
DEFAULT_COMPRESS_LEVEL: Final = 6  # zlib's and rsync's default
DEFLATED_DATA: Final = 0x40
END_FLAG: Final = 0x00
#: Bytes of ``-z`` token streams (default level) one revision keeps, least recently used out.
#: Compressing is on demand; the cache pays off for what many clients fetch, i.e. the files a
#: new revision changed, and is far smaller than the repository.
DEFLATE_CACHE_BYTES: Final = 4 * 1024 * 1024
_NO_MD5: Final = bytes(16)
_ZERO4: Final = bytes(4)
_TAIL_NONE: Final = bytes(20)
_UNSAFE_BYTE: Final = re.compile(rb"[\x00-\x1f\x7f\\]")  # control characters, backslash


class Checksum(Enum):
    """The whole-file checksum a session uses (after each file's tokens, and in ``-c`` file
    lists): MD4 at protocol 27, MD5 at >= 30, or what the client and we negotiated at >= 30
    (rsync compat.c ``negotiate_the_strings``; the names are rsync's)."""

    MD4 = "md4"
    MD5 = "md5"
    XXH128 = "xxh128"


def xxh128(data: bytes | memoryview) -> bytes:
    """rsync's ``xxh128`` digest of ``data``: XXH3-128 without a seed, the low 64 bits then the
    high 64 bits, each little-endian (checksum.c ``sum_end``), i.e. the 128-bit value
    little-endian."""
    return xxh128_bytes(xxhash.xxh3_128_intdigest(data))


def xxh128_bytes(value: int) -> bytes:
    """An XXH3-128 value as rsync sends it (see :func:`xxh128`)."""
    return value.to_bytes(16, "little")


def validate_name(path: bytes) -> None:
    """Raise :class:`StorageError` (``rsync-bad-name``) unless ``path`` is safe to send."""
    if len(path) > MAX_PATH:
        raise StorageError(Reason.RSYNC_BAD_NAME, "path too long", path=path[:80].hex())
    if path.startswith(b"/") or path.endswith(b"/"):
        raise StorageError(Reason.RSYNC_BAD_NAME, "not a relative name", path=repr(path))
    if _UNSAFE_BYTE.search(path) is not None:
        raise StorageError(Reason.RSYNC_BAD_NAME, "control character or backslash", path=repr(path))
    for part in path.split(b"/"):
        if part in (b"", b".", b".."):
            raise StorageError(Reason.RSYNC_BAD_NAME, "empty or dot component", path=repr(path))
        if len(part) > MAX_COMPONENT:
            raise StorageError(Reason.RSYNC_BAD_NAME, "component too long", path=repr(path))


class BodySource(Protocol):
    """Where a revision's file bodies come from: the I/O layer's side of the model."""

    def read(self, path: bytes, offset: int, size: int, total: int) -> bytes:
        """``size`` bytes at ``offset`` of the file ``path`` (relative to the revision root),
        which was ``total`` bytes long when the revision was loaded.  Raises
        :class:`StorageError` (``rsync-revision-unloadable``) when the file is gone or is no
        longer ``total`` bytes long, so a wrong body is never sent."""
        ...


class SpoolSource(Protocol):
    """A revision's spool: every file's :func:`spool_segment`, one after the other in position
    order, written once when the revision was loaded."""

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset``; raises :class:`StorageError` on a short read."""
        ...

    def fileno(self) -> int:
        """A descriptor of the spool file for ``sendfile``, or -1 (read it instead)."""
        ...

    def append(self, data: bytes) -> int:
        """Store ``data`` at the end; where it starts, or -1 when it could not be stored."""
        ...


class MemorySource:
    """Bodies held in memory (tests and small hand-made trees)."""

    def __init__(self, files: dict[bytes, bytes]) -> None:
        self._files = files

    def read(self, path: bytes, offset: int, size: int, total: int) -> bytes:
        data = self._files.get(path)
        if data is None or len(data) != total:
            raise StorageError(
                Reason.RSYNC_REVISION, "file changed under a loaded revision", path=repr(path)
            )
        return data[offset : offset + size]


@dataclass(frozen=True, slots=True)
class SpoolIndex:
    """Where each position's answer (:func:`spool_segment`, :data:`SPOOL_DIR_SEGMENT`) is in a
    revision's spool.  The spool starts with all of them back to back in position order, one
    stream of data cut into MSG_DATA frames of :data:`SPOOL_FRAME` bytes (the last one
    shorter); ``offsets[pos]`` to ``offsets[pos + 1]`` is a position's part of that stream
    (the root's is empty), ``total`` its length.  :func:`spool_file_offset` maps a stream
    offset to a file offset."""

    source: SpoolSource
    offsets: array[int] = field(repr=False)
    total: int = 0


@dataclass(frozen=True, slots=True)
class Entry:
    """A directory or regular file of a revision (a view made on demand); ``path`` is relative
    to the module root (``b""`` is the root itself)."""

    path: bytes
    is_dir: bool
    size: int
    mtime: int
    md5: bytes = b""


@dataclass(frozen=True, slots=True)
class FlistOptions:
    """Everything a file list's bytes depend on: the cache key of an encoded list."""

    protocol: int
    scope: bytes  # the path after the module name, as the client sent it
    recursive: bool
    dirs: bool
    uid: bool
    gid: bool
    checksum: bool
    filters: tuple[bytes, ...]
    #: the flags of each entry as a varint and a two-varint end (CF_VARINT_FLIST_FLAGS, set
    #: when the checksum is negotiated), and the checksum ``-c`` lists carry (MD5 otherwise)
    varint_flags: bool = False
    digest: Checksum = Checksum.MD5


#: What rsync >= 3.2 asks for with ``rsync -rt rsync://host/module/`` (and RPs' variants
#: without filters): the list the daemon builds as soon as a revision is loaded.
COMMON_FLIST: Final = FlistOptions(
    protocol=31,
    scope=b"",
    recursive=True,
    dirs=False,
    uid=False,
    gid=False,
    checksum=False,
    filters=(),
    varint_flags=True,
)


@dataclass(frozen=True, slots=True)
class FileList:
    """A file list ready to send: for each index, the revision position it stands for, and the
    encoding (up to and including the end marker; id lists and, at protocol 27, io_error follow
    separately).  ``dirs`` has one byte per index, 1 for a directory."""

    ids: array[int] = field(repr=False)
    dirs: bytes = field(repr=False)
    encoded: bytes = field(repr=False)
    total_size: int = 0
    missing: bool = False  # the requested path does not exist (rsync exit 23)
    #: how names are made from revision paths: the position sent under ``top_name`` (``.`` or
    #: the requested directory's name; -1: none), the length of the prefix stripped from the
    #: other revision paths, and the prefix put in front instead.
    top: int = -1
    top_name: bytes = b""
    strip: int = 0
    prefix: bytes = b""
    #: what else the encoding depends on (lists equal in this and ``ids`` share ``encoded``).
    shape: tuple[object, ...] = ()
    #: ``encoded`` as MSG_DATA frames in the revision's spool: where, and how many bytes
    #: (-1: not there).  See :data:`SPOOL_LIST_MIN`.
    spool_at: int = -1
    spool_size: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    def is_dir(self, ndx: int) -> bool:
        return self.dirs[ndx] == 1


class RevisionBuilder:
    """Collects a revision's entries, validating names; see the module docstring.

    Entries are packed as they come, in the :class:`Revision`'s own layout (position 0 is
    the root), so a load holds no Python object per entry.  Entries that come in the
    protocol-29 order (what ``tree.load_revision``'s walk gives) are used as they are;
    others are sorted at :meth:`build`."""

    def __init__(self, name: str, *, max_entries: int, seed: int) -> None:
        self.name = name
        self.max_entries = max_entries
        self.seed = seed & 0x7FFFFFFF
        self._reset()

    def _reset(self) -> None:
        # Fresh storage: a built revision owns the previous arrays.
        self._names = bytearray()
        self._ends = array("I", [0])
        self._sizes = array("q", [DIR_SIZE])
        self._mtimes = array("q", [0])
        self._isdir = bytearray(b"\x01")
        self._tails = bytearray(_TAIL_NONE)  # int32 0 + MD5 per position
        self._spool_at = array("q", [0])
        self._dirs: set[bytes] = {b""}
        self._bodies: dict[bytes, bytes] = {}

    def _check(self, path: bytes) -> None:
        validate_name(path)
        if path in self._dirs:
            raise StorageError(Reason.RSYNC_BAD_NAME, "duplicate name", path=repr(path))
        if len(self._ends) >= self.max_entries:
            raise LimitExceeded(Reason.LIMIT, "revision too large", limit="rsync_max_tree_entries")
        if path.rpartition(b"/")[0] not in self._dirs:
            raise StorageError(Reason.RSYNC_BAD_NAME, "parent not added first", path=repr(path))

    def _add(self, path: bytes, is_dir: bool, size: int, mtime: int, md5: bytes, at: int) -> None:
        self._names += path
        self._ends.append(len(self._names))
        self._sizes.append(size)
        self._mtimes.append(mtime)
        self._isdir.append(is_dir)
        self._tails += _ZERO4
        self._tails += md5
        self._spool_at.append(at)

    def set_root_mtime(self, mtime: int) -> None:
        self._mtimes[0] = mtime

    def add_dir(self, path: bytes, mtime: int, spool_at: int = -1) -> None:
        """A directory; ``spool_at``: where its :data:`SPOOL_DIR_SEGMENT` starts in the
        build's :class:`SpoolSource` (-1: not there)."""
        self._check(path)
        self._dirs.add(path)
        self._add(path, True, DIR_SIZE, mtime, _NO_MD5, spool_at)

    def add_file_digest(
        self, path: bytes, mtime: int, size: int, md5: bytes, spool_at: int = -1
    ) -> None:
        """A file whose body the build's :class:`BodySource` will provide; ``spool_at``: where
        its :func:`spool_segment` starts in the build's :class:`SpoolSource` (-1: not
        there)."""
        self._check(path)
        if len(md5) != 16 or size < 0:
            raise StorageError(Reason.RSYNC_REVISION, "bad digest or size", path=repr(path))
        self._add(path, False, size, mtime, md5, spool_at)

    def add_file(self, path: bytes, mtime: int, data: bytes) -> None:
        """A file with its body, kept in memory (a :class:`MemorySource` is built from them)."""
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        self.add_file_digest(path, mtime, len(data), md5)
        self._bodies[path] = data

    def _in_order(self, blob: bytes) -> bool:
        """Whether the positions are in the protocol-29 order (``blob``: the names); a name
        given twice (as two files) is refused here, where it meets its twin."""
        isdir, ends = self._isdir, self._ends
        prev: tuple[tuple[int, bytes], ...] = ()
        for pos in range(1, len(ends)):
            path = blob[ends[pos - 1] : ends[pos]]
            key = _sort_key_29(path, isdir[pos] == 1)
            if key <= prev:
                if key == prev:
                    raise StorageError(Reason.RSYNC_BAD_NAME, "duplicate name", path=repr(path))
                return False
            prev = key
        return True

    def _sort(self, blob: bytes) -> bytes:
        """Put the positions in the protocol-29 order (entries that did not come in it);
        returns the new names blob."""
        isdir, old_ends = self._isdir, self._ends

        def path(p: int) -> bytes:
            return blob[old_ends[p - 1] : old_ends[p]]

        order = sorted(range(1, len(old_ends)), key=lambda p: _sort_key_29(path(p), isdir[p] == 1))
        names, ends = bytearray(), array("I", [0])
        sizes, mtimes = array("q", [DIR_SIZE]), array("q", [self._mtimes[0]])
        dirs, tails, spool_at = bytearray(b"\x01"), bytearray(_TAIL_NONE), array("q", [0])
        for p in order:
            names += path(p)
            ends.append(len(names))
            sizes.append(self._sizes[p])
            mtimes.append(self._mtimes[p])
            dirs.append(isdir[p])
            tails += self._tails[20 * p : 20 * p + 20]
            spool_at.append(self._spool_at[p])
        self._names, self._ends, self._sizes, self._mtimes = names, ends, sizes, mtimes
        self._isdir, self._tails, self._spool_at = dirs, tails, spool_at
        blob = bytes(names)
        if not self._in_order(blob):  # raises on a name given twice
            raise AssertionError("sorting failed")
        return blob

    def build(self, source: BodySource | None = None, spool: SpoolSource | None = None) -> Revision:
        """The revision.  ``spool`` is used only if every file's segment was written to it in
        position order, back to back (what :func:`~rpkirepo.rsync.tree.load_revision`'s walk
        order gives); otherwise the revision has no spool."""
        blob = bytes(self._names)
        if not self._in_order(blob):
            blob = self._sort(blob)
        ends, isdir, sizes = self._ends, self._isdir, self._sizes
        count = len(ends)
        total = 0
        files = 0
        index = _SpoolCheck() if spool is not None else None
        dir_paths, spool_at = self._dirs, self._spool_at
        # The end of each directory's subtree: positions are in depth-first order.
        subtree = array("I", range(1, count + 1))
        stack: list[tuple[int, bytes]] = [(0, b"")]
        for pos in range(1, count):
            path = blob[ends[pos - 1] : ends[pos]]
            is_dir = isdir[pos] == 1
            while stack[-1][1] and not path.startswith(stack[-1][1]):
                subtree[stack.pop()[0]] = pos
            if is_dir:
                stack.append((pos, path + b"/"))
            else:
                if path in dir_paths:
                    raise StorageError(Reason.RSYNC_BAD_NAME, "duplicate name", path=repr(path))
                total += sizes[pos]
                files += 1
            if index is not None and not index.add(is_dir, sizes[pos], spool_at[pos]):
                index = None
        for pos, _prefix in stack:
            subtree[pos] = count
        revision = Revision(
            name=self.name,
            seed=self.seed,
            source=source if source is not None else MemorySource(self._bodies),
            names=blob,
            ends=ends,
            sizes=sizes,
            mtimes=self._mtimes,
            dirs=bytes(isdir),
            tails=bytes(self._tails),
            subtree=subtree,
            file_count=files,
            total_size=total,
            spool=index.done(spool) if index is not None and spool is not None else None,
        )
        self._reset()
        return revision


def _sort_key_29(name: bytes, is_dir: bool) -> tuple[tuple[int, bytes], ...]:
    # flist.c f_name_cmp at protocol >= 29: per directory, files before subdirectories.
    if name in (b".", b""):
        return ()
    parts = name.split(b"/")
    key = [(1, p + b"/") for p in parts[:-1]]
    key.append((1, parts[-1] + b"/") if is_dir else (0, parts[-1]))
    return tuple(key)


@dataclass(slots=True)
class Revision:
    """One immutable revision of a module, shared by every session serving it.  Positions
    (``0`` is the root) index every array; see the module docstring."""

    name: str
    seed: int
    source: BodySource = field(repr=False)
    names: bytes = field(repr=False)
    #: names[ends[i-1]:ends[i]] is the path at position i (the root's is b"")
    ends: array[int] = field(repr=False)
    sizes: array[int] = field(repr=False)
    mtimes: array[int] = field(repr=False)
    dirs: bytes = field(repr=False)  # 1 for a directory
    #: 20 bytes per position: ``int32 0`` (the end of a literal token stream) and the MD5
    #: (zeros for directories), what follows a file's last literal run at protocol >= 30.
    tails: bytes = field(repr=False)
    subtree: array[int] = field(repr=False)  # one past the last position under a directory
    file_count: int = 0
    total_size: int = 0
    #: The files' answers, ready to send (``None`` without a spool): see :func:`spool_segment`.
    spool: SpoolIndex | None = field(default=None, repr=False)
    max_flist_cache: int = 32
    deflate_cache_bytes: int = DEFLATE_CACHE_BYTES
    #: The MD4 implementation (protocol 27): the adapter may hand in a native one.
    md4: Callable[[bytes], bytes] = field(default=md4, repr=False)
    _flists: dict[FlistOptions, FileList] = field(default_factory=dict, repr=False)
    #: held while a file list is built: the I/O layer hands in a lock when it builds lists in
    #: worker threads (they share the list cache and append to the spool)
    flist_lock: AbstractContextManager[object] = field(default_factory=nullcontext, repr=False)
    _md4: bytearray | None = field(default=None, repr=False)
    _md4_seeded: bytearray | None = field(default=None, repr=False)
    _xxh: bytearray | None = field(default=None, repr=False)
    _deflated: OrderedDict[int, bytes] = field(default_factory=OrderedDict, repr=False)
    _deflated_bytes: int = 0

    @property
    def count(self) -> int:
        return len(self.ends)

    def path(self, pos: int) -> bytes:
        return self.names[self.ends[pos - 1] if pos else 0 : self.ends[pos]]

    def is_dir(self, pos: int) -> bool:
        return self.dirs[pos] == 1

    def md5(self, pos: int) -> bytes:
        return self.tails[20 * pos + 4 : 20 * pos + 20]

    def entry(self, pos: int) -> Entry:
        d = self.is_dir(pos)
        md5 = b"" if d else self.md5(pos)
        return Entry(self.path(pos), d, self.sizes[pos], self.mtimes[pos], md5)

    def find(self, path: bytes) -> int | None:
        """The position of ``path`` (``b""``: the root), or ``None``: a binary search on the
        protocol 29 sort key, trying it as a file and as a directory."""
        for is_dir in (False, True):
            key = _sort_key_29(path, is_dir)
            lo, hi = 0, self.count
            while lo < hi:
                mid = (lo + hi) // 2
                if _sort_key_29(self.path(mid), self.is_dir(mid)) < key:
                    lo = mid + 1
                else:
                    hi = mid
            if lo < self.count and self.path(lo) == path and self.is_dir(lo) == is_dir:
                return lo
        return None

    # --- bodies, digests and compressed forms -------------------------------------------

    def content(self, pos: int) -> bytes:
        """A file's bytes, read through the revision's :class:`BodySource`."""
        size = self.sizes[pos]
        return self.source.read(self.path(pos), 0, size, size)

    def flist_sum(self, pos: int, checksum: Checksum) -> bytes:
        """The ``-c`` sum in a file list: MD5(data), XXH128(data) or, at protocol 27,
        MD4(data) (the last two computed on first use, then cached)."""
        if checksum is Checksum.MD5:
            return self.md5(pos)
        if checksum is Checksum.XXH128:
            if self._xxh is None:
                self._xxh = bytearray(16 * self.count)
            return self._cached(self._xxh, pos, xxh128)
        if self._md4 is None:
            self._md4 = bytearray(16 * self.count)
        return self._cached(self._md4, pos, self.md4)

    def _cached(
        self, table: bytearray, pos: int, digest: Callable[[bytes], bytes], prefix: bytes = b""
    ) -> bytes:
        # A zero slot means "not computed yet" (a digest of all zero bytes is 2^-128 likely,
        # and then merely recomputed).
        cached = bytes(table[16 * pos : 16 * pos + 16])
        if cached == _NO_MD5:
            cached = digest(prefix + self.content(pos))
            table[16 * pos : 16 * pos + 16] = cached
        return cached

    def transfer_sum(self, pos: int, checksum: Checksum, seed: int) -> bytes:
        """The whole-file checksum after the tokens: MD5(data); XXH128(data) (computed each
        time: the caller usually holds the data, see :meth:`response_body`); at protocol 27
        MD4(seed_le32 || data) (cached for the revision's own seed)."""
        if checksum is Checksum.MD5:
            return self.md5(pos)
        if checksum is Checksum.XXH128:
            return xxh128(self.content(pos))
        if seed != self.seed:
            return self.md4(int32(seed) + self.content(pos))
        if self._md4_seeded is None:
            self._md4_seeded = bytearray(16 * self.count)
        return self._cached(self._md4_seeded, pos, self.md4, int32(seed))

    def deflated(self, pos: int, level: int, data: bytes | None = None) -> bytes:
        """The ``-z`` token stream for the whole file as literal data, compressed on demand.
        Cached at the default level only (what RPs use), least recently used out beyond
        ``deflate_cache_bytes``: caching every level a client may ask for, or everything, would
        let clients multiply the revision's memory.  ``data``: the file's bytes, when the caller
        has them already."""
        if level != DEFAULT_COMPRESS_LEVEL:
            return deflate_tokens(self.content(pos) if data is None else data, level)
        cache = self._deflated
        cached = cache.get(pos)
        if cached is not None:
            cache.move_to_end(pos)
            return cached
        tokens = deflate_tokens(self.content(pos) if data is None else data, level)
        if len(tokens) <= self.deflate_cache_bytes // 8:
            cache[pos] = tokens
            self._deflated_bytes += len(tokens)
            while self._deflated_bytes > self.deflate_cache_bytes:
                self._deflated_bytes -= len(cache.popitem(last=False)[1])
        return tokens

    def response_parts(
        self, pos: int, checksum: Checksum, level: int, seed: int
    ) -> tuple[bytes, bytes]:
        """What is sent for a file after the sum head echo: its token stream (literal, or
        deflated at ``level`` > 0) and its whole-file checksum (the body is read once)."""
        if checksum is Checksum.XXH128:
            data = self.content(pos)
            tokens = self.deflated(pos, level, data) if level else b"".join(literal_tokens(data))
            return tokens, xxh128(data)
        tokens = self.deflated(pos, level) if level else b"".join(literal_tokens(self.content(pos)))
        return tokens, self.transfer_sum(pos, checksum, seed)

    def response_body(self, pos: int, checksum: Checksum, level: int, seed: int) -> bytes:
        """:meth:`response_parts` as one piece."""
        return b"".join(self.response_parts(pos, checksum, level, seed))

    # --- file lists ---------------------------------------------------------------------

    def file_list(self, opts: FlistOptions, filters: FilterSet, filter_work: int) -> FileList:
        """The encoded list for ``opts`` (cached).  ``filter_work`` caps the pattern-matching
        work of building it (see :meth:`FilterSet.included`)."""
        cached = self._flists.get(opts)
        if cached is not None:
            return cached
        with self.flist_lock:
            cached = self._flists.get(opts)  # built by another thread meanwhile
            if cached is not None:
                return cached
            flist = self._make_file_list(opts, filters, [filter_work])
            if len(self._flists) >= self.max_flist_cache:
                # The oldest goes, never the list most clients ask for (built at load).
                victim = next((k for k in self._flists if k != COMMON_FLIST), None)
                if victim is not None:
                    self._flists.pop(victim)
            self._flists[opts] = flist
        return flist

    def cached_file_list(self, opts: FlistOptions) -> FileList | None:
        """The encoded list for ``opts`` if it was built already (never builds)."""
        return self._flists.get(opts)

    def _make_file_list(
        self, opts: FlistOptions, filters: FilterSet, budget: list[int] | None = None
    ) -> FileList:
        scope = opts.scope
        contents = scope == b"" or scope.endswith(b"/")
        target = scope.rstrip(b"/")
        pos = self.find(target)
        if pos is None or (contents and not self.is_dir(pos)):
            end = b"\x00\x00" if opts.varint_flags and opts.protocol >= 30 else b"\x00"
            return FileList(array("i"), b"", end, missing=True)
        ids = array("i")
        top, top_name, strip, prefix = pos, b".", 0, b""
        if self.is_dir(pos) and contents:
            strip = len(target) + 1 if target else 0
            ids.append(pos)
            if opts.recursive or opts.dirs:
                self._walk(pos, strip, prefix, opts.recursive, filters, ids, budget)
        elif self.is_dir(pos):
            name = target.rpartition(b"/")[2]
            if filters.included(name, True, budget) and (opts.recursive or opts.dirs):
                # flist.c send_file_list: a top-level directory is always a content dir.
                top_name, strip, prefix = name, len(target) + 1, name + b"/"
                ids.append(pos)
                if opts.recursive:
                    self._walk(pos, strip, prefix, True, filters, ids, budget)
        else:
            name = target.rpartition(b"/")[2]
            top, strip = -1, len(target) - len(name)
            if filters.included(name, False, budget):
                ids.append(pos)
        if opts.protocol < 29:
            # Protocol 27 sorts full names bytewise (a top-level "-x.cer" before ".").
            order = sorted(ids, key=lambda p: self._name(p, top, top_name, strip, prefix))
            ids = array("i", order)
        dirs = bytes(self.dirs[p] for p in ids)
        shape = (
            opts.protocol, opts.uid, opts.gid, opts.checksum, opts.recursive,
            opts.varint_flags, opts.digest, top, top_name, strip, prefix,
        )  # fmt: skip
        for other in self._flists.values():
            if other.shape == shape and other.ids == ids:
                return other
        total = sum(self.sizes[p] for p in ids if not self.dirs[p])
        encoded = encode_file_list(self, ids, top, top_name, strip, prefix, opts)
        spool_at, spool_size = -1, 0
        if self.spool is not None and len(encoded) >= SPOOL_LIST_MIN:
            framed = _framed(encoded)
            spool_at = self.spool.source.append(framed)
            spool_size = len(framed) if spool_at >= 0 else 0
        return FileList(
            ids, dirs, encoded, total, False, top, top_name, strip, prefix, shape,
            spool_at, spool_size,
        )  # fmt: skip

    def _name(self, pos: int, top: int, top_name: bytes, strip: int, prefix: bytes) -> bytes:
        return top_name if pos == top else prefix + self.path(pos)[strip:]

    def list_name(self, flist: FileList, ndx: int) -> bytes:
        """The name index ``ndx`` of ``flist`` is sent under."""
        return self._name(flist.ids[ndx], flist.top, flist.top_name, flist.strip, flist.prefix)

    def _walk(
        self,
        top: int,
        strip: int,
        prefix: bytes,
        recursive: bool,
        filters: FilterSet,
        out: array[int],
        budget: list[int] | None,
    ) -> None:
        names, ends, dirs, subtree = self.names, self.ends, self.dirs, self.subtree
        included = filters.included
        pos, end = top + 1, subtree[top]
        while pos < end:
            is_dir = dirs[pos] == 1
            name = prefix + names[ends[pos - 1] + strip : ends[pos]]
            if not included(name, is_dir, budget):
                pos = subtree[pos] if is_dir else pos + 1
                continue
            out.append(pos)
            pos = pos + 1 if recursive or not is_dir else subtree[pos]


def encode_file_list(
    revision: Revision,
    ids: array[int],
    top: int,
    top_name: bytes,
    strip: int,
    prefix: bytes,
    opts: FlistOptions,
) -> bytes:
    """The file list bytes up to and including the end marker (rsync flist.c
    ``send_file_entry`` layout, per rsync-wire §4).  ``top`` is the position of the transfer
    root (flagged TOP_DIR when it is a directory), sent as ``top_name``."""
    out = bytearray()
    proto = opts.protocol
    varint_flags = opts.varint_flags and proto >= 30
    names, ends, dirs, sizes, mtimes = (
        revision.names, revision.ends, revision.dirs, revision.sizes, revision.mtimes,
    )  # fmt: skip
    last_name = b""
    last_mode = -1
    last_time = -1
    first = True
    for pos in ids:
        is_dir = dirs[pos] == 1
        mode = DIR_MODE if is_dir else FILE_MODE
        mtime = mtimes[pos]
        flags = 0
        if pos == top and is_dir:
            flags |= XMIT_TOP_DIR
        if mode == last_mode:
            flags |= XMIT_SAME_MODE
        if mtime == last_time:
            flags |= XMIT_SAME_TIME
        # uid/gid: 0 everywhere, written for the first entry only.
        if not opts.uid or not first:
            flags |= XMIT_SAME_UID
        if not opts.gid or not first:
            flags |= XMIT_SAME_GID
        if pos == top:
            name = top_name
        else:
            name = prefix + names[(ends[pos - 1] if pos else 0) + strip : ends[pos]]
        n = 0
        limit = min(len(name), len(last_name), 255)
        while n < limit and name[n] == last_name[n]:
            n += 1
        if n:
            flags |= XMIT_SAME_NAME
        suffix = name[n:]
        if proto < 30:
            flags |= XMIT_LONG_NAME
            out.append(flags)
        else:
            if len(suffix) > 255:
                flags |= XMIT_LONG_NAME
            if is_dir and pos != top and not opts.recursive:
                flags |= XMIT_NO_CONTENT_DIR
            if varint_flags:
                out += varint(flags or XMIT_EXTENDED_FLAGS)  # never 0: that ends the list
            else:
                if flags == 0 and not is_dir:
                    flags |= XMIT_TOP_DIR
                if flags == 0 or flags & 0xFF00:
                    flags |= XMIT_EXTENDED_FLAGS
                    out += bytes([flags & 0xFF, flags >> 8])
                else:
                    out.append(flags)
        if n:
            out.append(n)
        if proto < 30:
            out += int32(len(suffix))
        elif flags & XMIT_LONG_NAME:
            out += varint(len(suffix))
        else:
            out.append(len(suffix))
        out += suffix
        size = sizes[pos]
        if proto < 30:
            out += longint(size)
            if not flags & XMIT_SAME_TIME:
                out += int32(mtime)
            if not flags & XMIT_SAME_MODE:
                out += int32(mode)
            if not flags & XMIT_SAME_UID:
                out += int32(0)
            if not flags & XMIT_SAME_GID:
                out += int32(0)
            if opts.checksum:
                out += revision.flist_sum(pos, Checksum.MD4) if not is_dir else _NO_MD5
        else:
            out += varlong(size, 3)
            if not flags & XMIT_SAME_TIME:
                out += varlong(mtime, 4)
            if not flags & XMIT_SAME_MODE:
                out += int32(mode)
            if not flags & XMIT_SAME_UID:
                out += varint(0)
            if not flags & XMIT_SAME_GID:
                out += varint(0)
            if opts.checksum and not is_dir:
                out += revision.flist_sum(pos, opts.digest)
        last_name, last_mode, last_time = name, mode, mtime
        first = False
    out += b"\x00\x00" if varint_flags else b"\x00"  # varint flags: 0, then io_error 0
    return bytes(out)


def deflate_tokens(data: bytes, level: int) -> bytes:
    """rsync's compressed token stream (token.c) for a file sent entirely as literal data:
    raw deflate, sync-flushed, the trailing empty stored block's ``00 00 FF FF`` removed (the
    receiver adds it back), cut into ``DEFLATED_DATA`` pieces of at most 16383 bytes, then
    ``END_FLAG``."""
    comp = zlib.compressobj(level, zlib.DEFLATED, -15, 8)
    body = comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)
    if body.endswith(b"\x00\x00\xff\xff"):
        body = body[:-4]
    out = bytearray()
    for off in range(0, len(body), DEFLATE_PIECE):
        piece = body[off : off + DEFLATE_PIECE]
        out += bytes([DEFLATED_DATA | len(piece) >> 8, len(piece) & 0xFF])
        out += piece
    out.append(END_FLAG)
    return bytes(out)


#: What an rsync 3.x client sends after the index when it asks for a file it does not have
#: (a full sync): the item flags ITEM_TRANSFER | ITEM_IS_NEW and an empty sum head.
NEW_FILE_REQUEST: Final = b"\x00\xa0" + bytes(16)
#: ... and for a directory it creates: the item flags ITEM_LOCAL_CHANGE | ITEM_IS_NEW.
NEW_DIR_REQUEST: Final = b"\x00\x60"
#: Encoded file lists at least this long are also put in the revision's spool, so sessions
#: send them with ``sendfile`` (a 100k-object list is ~4.4 MB; smaller ones are sent from
#: memory).
SPOOL_LIST_MIN: Final = 64 * 1024
#: The MSG_DATA frames of a spool's answer stream (what rsync itself sends).
SPOOL_FRAME: Final = 32768


def _framed(payload: bytes) -> bytes:
    view = memoryview(payload)
    return b"".join(
        frame(Msg.DATA, view[off : off + SPOOL_FRAME])
        for off in range(0, len(payload), SPOOL_FRAME)
    )


def spool_file_offset(x: int) -> int:
    """Where byte ``x`` of a spool's answer stream is in the spool file (each frame of
    :data:`SPOOL_FRAME` bytes has a 4-byte header before it)."""
    return x + 4 * (x // SPOOL_FRAME + 1)


#: A directory's answer in a spool: the echo of a full-sync request for it made right after the
#: request for the position before it (index delta 1).
SPOOL_DIR_SEGMENT: Final = b"\x01" + NEW_DIR_REQUEST


#: The checksum the answers in a spool end with.  Every rsync >= 3.2 client (what RPs run)
#: negotiates it; a session with another checksum answers on the general path.
SPOOL_CHECKSUM: Final = Checksum.XXH128


def spool_segment(data: bytes) -> bytes:
    """A file's answer in a revision's spool, when the request for it is a full sync's, made
    right after the request for the position before it: the echo of the request (index delta
    1, :data:`NEW_FILE_REQUEST`), the literal token stream of the whole file, its end
    (``int32 0``) and its :data:`SPOOL_CHECKSUM`, what a protocol >= 30 answer without ``-z``
    sends.

    A full sync asks for every directory and file in list order, so the answers to a run of
    its requests are a contiguous part of the spool's answer stream, sent as it is
    (``sendfile``), with no work per file (see ``rpkirepo.rsync._session``)."""
    return b"\x01" + NEW_FILE_REQUEST + b"".join(literal_tokens(data)) + xxh128(data)


def _spool_payload(size: int) -> int:
    return 1 + len(NEW_FILE_REQUEST) + size + 4 * (-(-size // LITERAL_CHUNK)) + 20


class _SpoolCheck:
    """Builds a :class:`SpoolIndex` while checking that the answers were written in position
    order, back to back."""

    def __init__(self) -> None:
        self.offsets = array("q", [0, 0])  # the root: an empty segment

    def add(self, is_dir: bool, size: int, spool_at: int) -> bool:
        if spool_at != self.offsets[-1]:
            return False
        n = len(SPOOL_DIR_SEGMENT) if is_dir else _spool_payload(size)
        self.offsets.append(spool_at + n)
        return True

    def done(self, source: SpoolSource) -> SpoolIndex:
        return SpoolIndex(source, self.offsets, self.offsets[-1])


def literal_tokens(data: bytes, chunk: int = LITERAL_CHUNK) -> Iterator[bytes | memoryview]:
    """The uncompressed token stream: literal runs ``int32 n`` + n bytes, then ``int32 0``."""
    view = memoryview(data)
    for off in range(0, len(data), chunk):
        piece = view[off : off + chunk]
        yield int32(len(piece))
        yield piece
    yield int32(0)


def check_scope(path: bytes) -> None:
    """Refuse a path argument (after the module name) that is not a plain relative path."""
    if path == b"":
        return
    body = path.rstrip(b"/")
    if path.endswith(b"//") or not body:
        raise RemoteProtocolError(Reason.RSYNC_PATH, "bad path", path=repr(path[:80]))
    try:
        validate_name(body)
    except StorageError as exc:
        raise RemoteProtocolError(Reason.RSYNC_PATH, exc.detail, path=repr(path[:80])) from None
    if any(c in b"*?[" for c in body):
        raise RemoteProtocolError(Reason.RSYNC_PATH, "wildcards in path", path=repr(path[:80]))
