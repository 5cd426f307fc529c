"""RsyncUri and HttpsUri: URI values that cannot name anything outside where they claim to be.

The rules come from rrdp-checklist (b)18 and (c)28 (rpki-client ``valid_uri``, rpki-rs
``uri::Rsync``, the path-traversal CVEs of OctoRPKI and Routinator):

* the scheme is exactly ``rsync://`` or ``https://`` (lower case);
* printable ASCII only, from the RFC 3986 ``pchar`` set (no space, backslash, quote, ``<>``,
  ``?`` or ``#``), at most ``Limits.max_uri_length`` characters;
* no empty, ``.`` or ``..`` segment anywhere, host and module included, and no segment that starts
  with a dot (hidden files; ``....//`` style bypasses die here too);
* a trailing slash marks a directory; it is the only place an empty segment may appear.

Values are frozen and validated on construction, so holding one is proof that it is safe.
:func:`uri_to_relpath` and :func:`path_under` map a URI to a path under a root and can never
return a path outside that root.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NoReturn

from rpkirepo.errors import Reason, RemoteProtocolError
from rpkirepo.limits import DEFAULT_LIMITS

__all__ = ["HttpsUri", "RsyncUri", "path_under", "uri_to_relpath", "validate_segment"]

# RFC 3986 pchar minus percent-encoding subtleties: unreserved / sub-delims / ":" / "@" / "%".
# The apostrophe is excluded on purpose: it would need quoting in shells and XML attributes.
_PCHAR: Final = frozenset(string.ascii_letters + string.digits + "-._~!$&()*+,;=:@%")
_HOST_CHARS: Final = frozenset(string.ascii_letters + string.digits + "-.")
# Never accept anything longer than this, whatever the configured limit says.
_ABSOLUTE_MAX_LENGTH: Final = 65536


def _fail(reason: Reason, detail: str, uri: str) -> RemoteProtocolError:
    shown = uri if len(uri) <= 200 else uri[:200] + "..."
    return RemoteProtocolError(
        reason, detail, uri=shown.encode("ascii", "backslashreplace").decode()
    )


# Fast path: one regex plus two substring tests accept every valid URI; only a failing URI takes
# the slow path below, which finds the precise reason.
_SEG: Final = r"[A-Za-z0-9\-_~!$&()*+,;=:@%][A-Za-z0-9\-._~!$&()*+,;=:@%]*"
_FAST_RSYNC: Final = re.compile(
    rf"rsync://(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*)(?::(?P<port>[0-9]{{1,5}}))?"
    rf"/(?P<module>{_SEG})(?P<slash>/)?(?P<path>(?:{_SEG}/)*(?:{_SEG})?)"
)
_FAST_HTTPS: Final = re.compile(
    rf"https://(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*)(?::(?P<port>[0-9]{{1,5}}))?"
    rf"/(?P<path>(?:{_SEG}/)*(?:{_SEG})?)"
)


_FAST_SEGMENT: Final = re.compile(_SEG)


def validate_segment(segment: str, *, what: str = "segment", uri: str = "") -> None:
    """Check one path segment (a file or directory name) by the rules above."""
    if _FAST_SEGMENT.fullmatch(segment) is not None:
        return
    if segment == "":
        raise _fail(Reason.URI_EMPTY_SEGMENT, f"empty {what}", uri or segment)
    if segment in (".", ".."):
        raise _fail(Reason.URI_DOT_SEGMENT, f"{what} is a dot segment", uri or segment)
    if segment[0] == ".":
        raise _fail(Reason.URI_HIDDEN_SEGMENT, f"{what} starts with a dot", uri or segment)
    for ch in segment:
        if ch not in _PCHAR:
            raise _fail(
                Reason.URI_BAD_CHARACTER,
                f"character {ch!r} not allowed in a {what}",
                uri or segment,
            )


def _check_common(uri: str, scheme: str, max_length: int) -> str:
    """Common checks; returns the text after ``scheme://``."""
    if len(uri) > min(max_length, _ABSOLUTE_MAX_LENGTH):
        raise _fail(Reason.URI_TOO_LONG, f"longer than {max_length} characters", uri)
    prefix = scheme + "://"
    if not uri.startswith(prefix):
        raise _fail(Reason.URI_SCHEME, f"not a {scheme}:// URI", uri)
    for ch in uri:
        if not (0x21 <= ord(ch) <= 0x7E):
            raise _fail(Reason.URI_BAD_CHARACTER, "control, space or non-ASCII character", uri)
    return uri[len(prefix) :]


def _check_port(port_text: str, uri: str) -> int:
    """RFC 3986 §3.2.3: a port is decimal digits; 0 and anything above 65535 name no TCP port."""
    if not port_text.isdigit() or len(port_text) > 5:
        raise _fail(Reason.URI_BAD_HOST, "bad port", uri)
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise _fail(Reason.URI_BAD_HOST, "bad port", uri)
    return port


def _check_host(host: str, port_text: str | None, uri: str) -> tuple[str, int | None]:
    port = None if port_text is None else _check_port(port_text, uri)
    if host == "":
        raise _fail(Reason.URI_BAD_HOST, "empty host", uri)
    if host in (".", "..") or host.startswith(".") or ".." in host:
        raise _fail(Reason.URI_DOT_SEGMENT, "dot segment in host", uri)
    if any(ch not in _HOST_CHARS for ch in host) or host.startswith("-") or host.endswith("."):
        raise _fail(Reason.URI_BAD_HOST, "host is not a DNS name or IPv4 address", uri)
    return host.lower(), port


def _split_authority(rest: str, uri: str) -> tuple[str, int | None, str, bool]:
    authority, slash, path = rest.partition("/")
    host, colon, port_text = authority.partition(":")
    h, p = _check_host(host, port_text if colon else None, uri)
    return h, p, path, bool(slash)


def _split_path(path: str, uri: str) -> tuple[tuple[str, ...], bool]:
    """Split a path (without the leading slash) into validated segments and a directory flag."""
    if path == "":
        return (), True
    is_dir = path.endswith("/")
    body = path[:-1] if is_dir else path
    segments = tuple(body.split("/"))
    for seg in segments:
        validate_segment(seg, uri=uri)
    return segments, is_dir


# Directory prefixes already seen in a valid rsync URI.  A snapshot names many objects per
# directory, so most URIs repeat a prefix ``rsync://host[:port]/module/dir/.../`` (everything up
# to and including the last slash) that an earlier URI proved valid; for those only the last
# segment is left to check.  The key is the exact prefix text (host case included) without its
# final slash, the value the fields it fixes: (folded host, port, module, offset of the path
# below the module).  Only prefixes that include the slash after the module are stored, so the
# module never depends on the last segment.  The cache only ever *accepts*: a miss, or a last
# segment that is not plainly valid, takes the full check, which gives the precise refusal.
#
# Bounded so that hostile input cannot grow memory: at most _DIR_CACHE_MAX_ENTRIES prefixes of
# at most _DIR_CACHE_MAX_PREFIX characters each, about 9 MiB at the very worst (real prefixes
# are under 150 characters: about 3 MiB when full); when full it is emptied and refills from the
# next URIs.  8192 holds every directory of a large publication point even when its snapshot
# is not ordered by directory.  Thread safety: only single get / set / clear / len calls, each
# atomic under the GIL; the cache is never iterated.
_DIR_CACHE_MAX_ENTRIES: Final = 8192
_DIR_CACHE_MAX_PREFIX: Final = 512
_dir_cache: Final[dict[str, tuple[str, int | None, str, int]]] = {}


@dataclass(frozen=True, slots=True, init=False)
class RsyncUri:
    """An ``rsync://host[:port]/module[/path...]`` URI (RFC 5781), validated on construction.

    Use :meth:`parse` for text from outside: it applies the configured length limit.
    """

    uri: str
    host: str = field(init=False, compare=False, repr=False)
    port: int | None = field(init=False, compare=False, repr=False)
    module: str = field(init=False, compare=False, repr=False)
    path: str = field(init=False, compare=False, repr=False)
    """The path below the module, without leading slash (``""`` for the module itself)."""

    def __init__(self, uri: str) -> None:
        # Written out rather than generated (the constructor is on the RRDP hot path): fields are
        # set through their slot descriptors (_set_*, bound below the class), the same store
        # object.__setattr__ makes on a frozen dataclass, minus the name lookup.
        if type(uri) is str and len(uri) <= _ABSOLUTE_MAX_LENGTH:
            directory, _, last = uri.rpartition("/")
            known = _dir_cache.get(directory)
            # A known directory plus one segment by validate_segment's rule (RFC 3986 pchar, not
            # empty, no leading dot so no dot segment), or nothing: a directory URI.
            if known is not None and (_FAST_SEGMENT.fullmatch(last) or not last):
                host, port, module, start = known
                _set_uri(self, uri)
                _set_host(self, host)
                _set_port(self, port)
                _set_module(self, module)
                # A trailing slash marks a directory; the path field never carries it.
                _set_path(self, uri[start:] if last else uri[start:-1])
                return
        elif not isinstance(uri, str):
            raise _fail(Reason.URI_SYNTAX, "not a string", repr(uri))
        else:
            directory = ""  # a str subclass (its methods may differ) or too long: never stored
        m = _FAST_RSYNC.fullmatch(uri) if len(uri) <= _ABSOLUTE_MAX_LENGTH else None
        # rrdp-checklist (b)18: no dot segment in the host, no trailing dot (see _check_host; the
        # pattern already holds the host to DNS-name / IPv4 characters, not starting with "-").
        if m is None or ".." in m["host"] or m["host"].endswith("."):
            self._slow_parse(uri)  # finds the precise reason and raises it
        port_text = m["port"]
        host = m["host"].lower()
        port = None if port_text is None else _check_port(port_text, uri)
        module, path = m["module"], m["path"]
        # Store the directory unless the module is the last segment (the directory would be just
        # "rsync://host"); "" is never a key, or a string without a slash could hit it.
        if 0 < len(directory) < _DIR_CACHE_MAX_PREFIX and m["slash"] is not None:
            if len(_dir_cache) >= _DIR_CACHE_MAX_ENTRIES:
                _dir_cache.clear()
            _dir_cache[directory] = (host, port, module, m.start("path"))
        _set_uri(self, uri)
        _set_host(self, host)
        _set_port(self, port)
        _set_module(self, module)
        _set_path(self, path.rstrip("/"))

    @staticmethod
    def _slow_parse(uri: str) -> NoReturn:
        """The rule-by-rule check for a URI the fast pattern refused: raises the precise reason."""
        rest = _check_common(uri, "rsync", _ABSOLUTE_MAX_LENGTH)
        _host, _port, path, slash = _split_authority(rest, uri)
        if not slash:
            raise _fail(Reason.URI_SYNTAX, "no module", uri)
        module, _, sub = path.partition("/")
        validate_segment(module, what="module", uri=uri)
        _split_path(sub, uri)
        # Everything above passed, so the fast pattern should have matched.
        raise _fail(Reason.URI_SYNTAX, "not a valid rsync URI", uri)  # pragma: no cover

    @classmethod
    def parse(cls, text: str, *, max_length: int = DEFAULT_LIMITS.max_uri_length) -> RsyncUri:
        if len(text) > max_length:
            raise _fail(Reason.URI_TOO_LONG, f"longer than {max_length} characters", text)
        return cls(text)

    @property
    def segments(self) -> tuple[str, ...]:
        """Path segments below the module."""
        return tuple(self.path.split("/")) if self.path else ()

    @property
    def is_directory(self) -> bool:
        return self.uri.endswith("/")

    @property
    def module_uri(self) -> RsyncUri:
        """``rsync://host[:port]/module/``."""
        port = f":{self.port}" if self.port is not None else ""
        return RsyncUri(f"rsync://{self.host}{port}/{self.module}/")

    def join(self, relative: str) -> RsyncUri:
        """This directory URI plus a relative path of validated segments."""
        if not self.is_directory:
            raise _fail(Reason.URI_SYNTAX, "join() needs a directory URI", self.uri)
        return RsyncUri(self.uri + relative)

    def is_under(self, base: RsyncUri) -> bool:
        """True when this URI lies at or below the directory URI ``base``."""
        return base.is_directory and self.uri.startswith(base.uri)

    def relative_to(self, base: RsyncUri) -> str:
        if not self.is_under(base):
            raise _fail(Reason.URI_OUTSIDE_BASE, f"not under {base.uri}", self.uri)
        return self.uri[len(base.uri) :]

    def __str__(self) -> str:
        return self.uri


_set_uri: Final[Callable[[RsyncUri, str], None]] = RsyncUri.__dict__["uri"].__set__
_set_host: Final[Callable[[RsyncUri, str], None]] = RsyncUri.__dict__["host"].__set__
_set_port: Final[Callable[[RsyncUri, int | None], None]] = RsyncUri.__dict__["port"].__set__
_set_module: Final[Callable[[RsyncUri, str], None]] = RsyncUri.__dict__["module"].__set__
_set_path: Final[Callable[[RsyncUri, str], None]] = RsyncUri.__dict__["path"].__set__


@dataclass(frozen=True, slots=True)
class HttpsUri:
    """An ``https://host[:port]/path`` URI, validated on construction (no query, no fragment)."""

    uri: str
    host: str = field(init=False, compare=False, repr=False)
    port: int = field(init=False, compare=False, repr=False)
    path: str = field(init=False, compare=False, repr=False)
    """The path with its leading slash."""

    def __post_init__(self) -> None:
        uri = self.uri
        if not isinstance(uri, str):
            raise _fail(Reason.URI_SYNTAX, "not a string", repr(uri))
        m = _FAST_HTTPS.fullmatch(uri) if len(uri) <= _ABSOLUTE_MAX_LENGTH else None
        if m is not None and ".." not in m["host"] and not m["host"].endswith("."):
            host, port = _check_host(m["host"], m["port"], uri)
            path = m["path"]
        else:
            rest = _check_common(uri, "https", _ABSOLUTE_MAX_LENGTH)
            _host, _port, path, slash = _split_authority(rest, uri)
            if not slash:
                raise _fail(Reason.URI_SYNTAX, "no path", uri)
            _split_path(path, uri)
            raise _fail(Reason.URI_SYNTAX, "not a valid https URI", uri)  # pragma: no cover
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "port", 443 if port is None else port)
        object.__setattr__(self, "path", "/" + path)

    @classmethod
    def parse(cls, text: str, *, max_length: int = DEFAULT_LIMITS.max_uri_length) -> HttpsUri:
        if len(text) > max_length:
            raise _fail(Reason.URI_TOO_LONG, f"longer than {max_length} characters", text)
        return cls(text)

    @property
    def origin(self) -> tuple[str, str, int]:
        """(scheme, host, port): two URIs are same-origin (RFC 9674) when these are equal."""
        return ("https", self.host, self.port)

    @property
    def segments(self) -> tuple[str, ...]:
        body = self.path.strip("/")
        return tuple(body.split("/")) if body else ()

    @property
    def is_directory(self) -> bool:
        return self.path.endswith("/")

    def join(self, relative: str) -> HttpsUri:
        if not self.is_directory:
            raise _fail(Reason.URI_SYNTAX, "join() needs a directory URI", self.uri)
        return HttpsUri(self.uri + relative)

    def is_under(self, base: HttpsUri) -> bool:
        return base.is_directory and self.uri.startswith(base.uri)

    def same_origin(self, other: HttpsUri) -> bool:
        return self.origin == other.origin

    def __str__(self) -> str:
        return self.uri


def uri_to_relpath(uri: RsyncUri, *, include_host: bool = True) -> str:
    """``host[:port]/module/path`` (or ``module/path``) for a validated rsync URI, as a relative
    path.

    Every segment was validated (no ``..``, no separators, no leading dot), so the result is a
    plain relative path; :func:`path_under` re-checks it against the root anyway.
    """
    # The port is part of the name: rsync://h:873/m and rsync://h:8873/m are different servers.
    host = uri.host if uri.port is None else f"{uri.host}:{uri.port}"
    parts = [host] if include_host else []
    parts.append(uri.module)
    if uri.path:
        parts.append(uri.path)
    return "/".join(parts)


def path_under(root: Path, relpath: str) -> Path:
    """``root / relpath``, refusing anything that would land outside ``root``.

    ``relpath`` must be a ``/``-separated relative path of validated segments.  The check is
    lexical (no filesystem access): the caller opens files with ``O_NOFOLLOW`` where links matter.
    """
    if relpath == "" or relpath.startswith("/") or "\x00" in relpath or "\\" in relpath:
        raise _fail(Reason.URI_OUTSIDE_BASE, "not a relative path", relpath)
    for seg in relpath.split("/"):
        validate_segment(seg, what="path segment", uri=relpath)
    root_text = os.path.normpath(os.fspath(root))
    joined = os.path.normpath(os.path.join(root_text, relpath))
    if os.path.commonpath([root_text, joined]) != root_text or joined == root_text:
        raise _fail(Reason.URI_OUTSIDE_BASE, "path escapes the root", relpath)
    return Path(joined)
