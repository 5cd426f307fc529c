"""RPKI objects, read without I/O: what a file is, what it says, and what mtime it should carry.

Two readers over the same bytes:

* the **full reader**, :func:`read_object`, parses certificates, CRLs and CMS signed objects
  with asn1crypto (DER and BER) into frozen typed values (:class:`Certificate`, :class:`Crl`,
  :class:`SignedObject` with a :class:`Manifest`, :class:`RouteOriginAttestation` or
  :class:`AsProviderAttestation` eContent);
* the **fast path**, a tiny TLV walker with no dependency, answers the publish hot path's
  questions in tens of microseconds: :func:`mtime_of` (RFC 9589 file mtime, never raises),
  :func:`fast_signing_time` and :func:`detect_kind`; and the walk's: :func:`read_ca_pointers`
  (a certificate's kind and SIA URIs) and :func:`read_manifest_entries`.

Both start from the same frame checks and apply the same structural rules to the CMS envelope,
and decode times with the same strict decoder, so they agree (the tests check it on the whole
corpus: ``fast_signing_time(b) == read_signing_time(b)`` or both raise).

Object kinds (:class:`ObjectKind`) are decided by content; a file name, when given, is a claim
that is checked (``OBJECT_BAD_CONTENT_TYPE``), except by :func:`mtime_of`, which applies the
rule for the content and reports the disagreement in its ``reason``.  CCR (unsigned) is
recognised by :func:`detect_kind` and refused by :func:`read_object`; geofeed signatures
(RFC 9632, also inside a geofeed CSV file) and RFC 6492/8181 protocol messages are signed
objects of their own kinds; any other eContentType is :attr:`ObjectKind.UNKNOWN_SIGNED`.

Errors: only :class:`~rpkirepo.errors.RpkiRepoError` subclasses leave this package
(:class:`~rpkirepo.errors.RemoteProtocolError` with ``OBJECT_*`` reasons, and
:class:`~rpkirepo.errors.LimitExceeded` over ``Limits.max_object_size``); asn1crypto's
exceptions are translated by :func:`map_exceptions` at the boundary.
"""

from ._boundary import map_exceptions
from ._fast import ObjectTime, TimeSource, detect_kind, fast_signing_time, mtime_of
from ._kinds import ECONTENT_KINDS, EXTENSION_KINDS, ObjectKind, extension_of, name_allows
from ._model import (
    AsProviderAttestation,
    Certificate,
    Crl,
    FileAndHash,
    Manifest,
    RoaIpAddress,
    RouteOriginAttestation,
    RpkiObject,
    SignedObject,
)
from ._pointers import CaPointers, ManifestEntries, read_ca_pointers, read_manifest_entries
from ._reader import read_object, read_signing_time

__all__ = [
    "ECONTENT_KINDS",
    "EXTENSION_KINDS",
    "AsProviderAttestation",
    "CaPointers",
    "Certificate",
    "Crl",
    "FileAndHash",
    "Manifest",
    "ManifestEntries",
    "ObjectKind",
    "ObjectTime",
    "RoaIpAddress",
    "RouteOriginAttestation",
    "RpkiObject",
    "SignedObject",
    "TimeSource",
    "detect_kind",
    "extension_of",
    "fast_signing_time",
    "map_exceptions",
    "mtime_of",
    "name_allows",
    "read_ca_pointers",
    "read_manifest_entries",
    "read_object",
    "read_signing_time",
]
