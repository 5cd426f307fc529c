"""Where a mirror reads from: the hidden publication server, over HTTP(S) or from a directory.

The notification we mirror names its files by their *public* URIs (the publication server is
configured with the public base).  ``--source-uri-base`` says where the same files can be read
instead: a URI under the public base maps to the same relative path under the source base
(krill-sync's rule).  Only files under the public base are ever fetched (rrdp-checklist (b)1,
RFC 9674); their relative path is validated by :class:`~rpkirepo.uri.HttpsUri` (no dot segments,
no hidden names), so it is also safe as a local path.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, Protocol

from rpkirepo.errors import LimitExceeded, Reason, RemoteProtocolError, StorageError
from rpkirepo.httpget import HttpOptions, Validators, http_get
from rpkirepo.uri import HttpsUri

__all__ = ["DirUpstream", "Fetched", "HttpUpstream", "Upstream", "relative_to_base"]

CHUNK: Final = 256 * 1024


def relative_to_base(uri: HttpsUri, base: HttpsUri) -> str:
    """The path of ``uri`` below ``base`` (a directory URI), or RemoteProtocolError."""
    text, prefix = uri.uri, base.uri
    # Scheme and host compare case-insensitively (RFC 3986 §6.2.2.1), the path exactly.
    cut = prefix.find("/", len("https://"))
    inside = (
        cut > 0
        and text[:cut].lower() == prefix[:cut].lower()
        and text[cut : len(prefix)] == prefix[cut:]
    )
    if not inside or len(text) <= len(prefix) or text.endswith("/"):
        raise RemoteProtocolError(
            Reason.SYNC_URI_OUTSIDE_BASE,
            "file is not under the public base URI",
            uri=text,
            base=prefix,
        )
    return text[len(prefix) :]


class Fetched(Protocol):
    """One file being read: decoded chunks, then the byte counts."""

    @property
    def not_modified(self) -> bool: ...
    @property
    def validators(self) -> Validators: ...
    @property
    def wire_bytes(self) -> int: ...
    @property
    def content_encoding(self) -> str: ...

    raw_sink: Callable[[bytes], None] | None

    def chunks(self) -> Iterator[bytes]: ...


class Upstream(Protocol):
    def open(
        self,
        rel: str,
        *,
        max_size: int,
        validators: Validators | None = None,
        deadline: float | None = None,
    ) -> contextlib.AbstractContextManager[Fetched]: ...

    def describe(self, rel: str) -> str: ...


class HttpUpstream:
    """Files under an http(s) base URI."""

    def __init__(self, base: str, options: HttpOptions) -> None:
        self.base = base if base.endswith("/") else base + "/"
        self.options = options

    def describe(self, rel: str) -> str:
        return self.base + rel

    @contextlib.contextmanager
    def open(
        self,
        rel: str,
        *,
        max_size: int,
        validators: Validators | None = None,
        deadline: float | None = None,
    ) -> Iterator[Fetched]:
        with http_get(
            self.base + rel,
            options=self.options,
            max_size=max_size,
            validators=validators,
            deadline=deadline,
        ) as resp:
            yield resp


class _DirFile:
    def __init__(self, path: Path, fd: int | None, validators: Validators, max_size: int) -> None:
        self.path = path
        self._fd = fd
        self.validators = validators
        self.not_modified = fd is None
        self.content_encoding = "identity"
        self.raw_sink: Callable[[bytes], None] | None = None  # never called: nothing is encoded
        self.wire_bytes = 0
        self._max = max_size

    def chunks(self) -> Iterator[bytes]:
        if self._fd is None:
            return
        while True:
            try:
                data = os.read(self._fd, CHUNK)
            except OSError as exc:
                raise StorageError(
                    Reason.STORAGE_IO, str(exc.strerror), path=str(self.path)
                ) from exc
            if not data:
                return
            self.wire_bytes += len(data)
            if self.wire_bytes > self._max:
                raise LimitExceeded(
                    Reason.FILE_TOO_LARGE, "file larger than allowed", path=str(self.path)
                )
            yield data


class DirUpstream:
    """Files in a local directory (the publication server's output, e.g. over NFS).

    The validator is the file's identity and change time, so an unchanged notification costs
    one ``stat``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root

    def describe(self, rel: str) -> str:
        return str(self.root / rel)

    def link(self, rel: str, target: Path) -> bool:
        """Hard-link the regular file ``rel`` to ``target``; False when it cannot be linked
        (another filesystem, missing ``.gz``): the caller copies instead."""
        path = self.root / rel
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                return False
            os.link(path, target, follow_symlinks=False)
        except OSError:
            return False
        return True

    @contextlib.contextmanager
    def open(
        self,
        rel: str,
        *,
        max_size: int,
        validators: Validators | None = None,
        deadline: float | None = None,  # a local file: the run's deadline is checked per chunk
    ) -> Iterator[Fetched]:
        path = self.root / rel
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise RemoteProtocolError(
                Reason.HTTP_STATUS, f"cannot open: {exc.strerror}", path=str(path)
            ) from exc
        try:
            st = os.fstat(fd)
            tag = f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}-{st.st_ctime_ns:x}"'
            mine = Validators(etag=tag)
            if validators is not None and validators.etag == tag:
                yield _DirFile(path, None, mine, max_size)
            else:
                yield _DirFile(path, fd, mine, max_size)
        finally:
            os.close(fd)
