"""What a testbed needs to live on: ``OUT_DIR/testbed-state.json`` and ``OUT_DIR/keys/``.

:func:`rpkirepo.testbed.generate` writes both, :func:`rpkirepo.testbed.advance` reads and
rewrites them.  The state holds every decision that later objects depend on: the CA tree and its
RFC 3779 resources, the serial and end of validity of each CA certificate, the manifest and CRL
numbers (RFC 9286 §4.2.1, RFC 5280 §5.2.3: both only grow), the certificates each CA has revoked
and until when they must stay on its CRL (RFC 6487 §5, RFC 5280 §3.3), the ROA and ASPA
plans with the serial and end of the EE certificate of each ROA, and the time of the last run.

Keys are RSA PKCS#8 PEM files, unencrypted, ``keys/<CA name>.pem``, mode 0600 in a 0700
directory: they are test keys, but a testbed directory should not hand them to other users.
Both files are written atomically (:func:`rpkirepo.fsutil.atomic_write`).

The JSON document is ``{"format": "rpkirepo-testbed-state", "version": 1, ...}``; anything else
is refused with ``state-incompatible``, a missing file with ``state-missing`` and an unreadable or
inconsistent one with ``state-corrupt``.  The extra publication points (``pub_points``, a list
of ``[rsync base, RRDP base or null]``) and each CA's ``point`` (0: the main one, i: the i-th
extra one) came later: a state without them has one publication point.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from rpkirepo.errors import Reason, RpkiRepoError, StorageError
from rpkirepo.fsutil import atomic_write
from rpkirepo.uri import HttpsUri, RsyncUri

from .keys import KeyPair
from .resources import AsRange
from .roa import RoaPrefix

__all__ = [
    "FORMAT",
    "KEYS_DIR",
    "STATE_FILE",
    "VERSION",
    "AspaState",
    "CaState",
    "Revoked",
    "RoaState",
    "TestbedState",
    "load_key",
    "load_state",
    "save_key",
    "save_state",
]

STATE_FILE: Final = "testbed-state.json"
KEYS_DIR: Final = "keys"
FORMAT: Final = "rpkirepo-testbed-state"
VERSION: Final = 1
#: CA names, stems and file names: one path segment, never hidden (the state names files).
_SEGMENT: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


@dataclass(frozen=True, slots=True)
class Revoked:
    """One entry of a CA's CRL: kept until it has appeared on one CRL issued after the
    certificate it names expired (RFC 5280 §3.3)."""

    serial: int
    revoked_at: datetime  # the CRL entry's revocationDate
    expires: datetime  # the certificate's notAfter


@dataclass(frozen=True, slots=True)
class RoaState:
    file: str  # name in its CA's publication point
    asn: int
    prefixes: tuple[RoaPrefix, ...]
    ee_serial: int
    ee_not_after: datetime


@dataclass(frozen=True, slots=True)
class AspaState:
    file: str
    customer: int
    providers: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CaState:
    """One CA (or the TA, ``parent`` None) and its publication point ``<name>/``."""

    name: str
    cn: str
    stem: str  # of its manifest and CRL file names: the name, or a new one per key roll
    parent: str | None
    children: tuple[str, ...]
    serial: int  # of its certificate, chosen by the parent
    not_after: datetime  # of its certificate
    ipv4: IPv4Network
    ipv6: IPv6Network
    asns: AsRange
    own4: IPv4Network
    own6: IPv6Network
    own_as: AsRange
    manifest_number: int
    crl_number: int
    manifest_ee_serial: int
    manifest_ee_not_after: datetime
    revoked: tuple[Revoked, ...]
    roas: tuple[RoaState, ...]
    next_roa: int  # the J of the next roa-J-AS<asn>.roa (names are never reused)
    aspa: AspaState | None
    gbr: str | None
    point: int = 0  # its publication point: 0 the main one, i the i-th of ``pub_points``


@dataclass(frozen=True, slots=True)
class TestbedState:
    __test__ = False

    rsync_base: str
    rrdp_base: str | None
    ta_uris: tuple[str, ...]
    days: float
    aspa_version: int
    seed: int
    generation: int  # 0 after generate, +1 per advance
    signing_time: datetime  # of the last run; the next one must be later
    expires: datetime  # the TA certificate's notAfter: the earliest end along every chain
    cas: tuple[CaState, ...]  # the TA first, parents before children
    #: The extra publication points: (rsync base, RRDP base or None) each.
    pub_points: tuple[tuple[str, str | None], ...] = ()

    def ca(self, name: str) -> CaState:
        for ca in self.cas:
            if ca.name == name:
                return ca
        raise KeyError(name)


def _time(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: Any) -> datetime:
    if not isinstance(text, str):
        raise TypeError("time must be a string")
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _range(r: AsRange) -> list[int]:
    return [r.first, r.last]


def _ca_doc(ca: CaState) -> dict[str, Any]:
    return {
        "name": ca.name,
        "cn": ca.cn,
        "stem": ca.stem,
        "parent": ca.parent,
        "children": list(ca.children),
        "serial": ca.serial,
        "not_after": _time(ca.not_after),
        "ipv4": str(ca.ipv4),
        "ipv6": str(ca.ipv6),
        "asns": _range(ca.asns),
        "own4": str(ca.own4),
        "own6": str(ca.own6),
        "own_as": _range(ca.own_as),
        "manifest_number": ca.manifest_number,
        "crl_number": ca.crl_number,
        "manifest_ee_serial": ca.manifest_ee_serial,
        "manifest_ee_not_after": _time(ca.manifest_ee_not_after),
        "revoked": [
            {"serial": r.serial, "revoked_at": _time(r.revoked_at), "expires": _time(r.expires)}
            for r in ca.revoked
        ],
        "roas": [
            {
                "file": r.file,
                "asn": r.asn,
                "prefixes": [[str(p.prefix), p.max_length] for p in r.prefixes],
                "ee_serial": r.ee_serial,
                "ee_not_after": _time(r.ee_not_after),
            }
            for r in ca.roas
        ],
        "next_roa": ca.next_roa,
        "aspa": None
        if ca.aspa is None
        else {
            "file": ca.aspa.file,
            "customer": ca.aspa.customer,
            "providers": list(ca.aspa.providers),
        },
        "gbr": ca.gbr,
        "point": ca.point,
    }


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"not an integer: {value!r}")
    return value


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"not a string: {value!r}")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _segment(value: Any) -> str:
    text = _str(value)
    if not _SEGMENT.fullmatch(text):
        raise ValueError(f"not a plain file or directory name: {text!r}")
    return text


def _opt_segment(value: Any) -> str | None:
    return None if value is None else _segment(value)


def _as_range(value: Any) -> AsRange:
    first, last = value
    return AsRange(_int(first), _int(last))


def _v4(value: Any) -> IPv4Network:
    return IPv4Network(_str(value))


def _v6(value: Any) -> IPv6Network:
    return IPv6Network(_str(value))


def _ca_from(doc: dict[str, Any]) -> CaState:
    aspa = doc["aspa"]
    return CaState(
        name=_segment(doc["name"]),
        cn=_str(doc["cn"]),
        stem=_segment(doc["stem"]),
        parent=_opt_segment(doc["parent"]),
        children=tuple(_segment(c) for c in doc["children"]),
        serial=_int(doc["serial"]),
        not_after=_parse_time(doc["not_after"]),
        ipv4=_v4(doc["ipv4"]),
        ipv6=_v6(doc["ipv6"]),
        asns=_as_range(doc["asns"]),
        own4=_v4(doc["own4"]),
        own6=_v6(doc["own6"]),
        own_as=_as_range(doc["own_as"]),
        manifest_number=_int(doc["manifest_number"]),
        crl_number=_int(doc["crl_number"]),
        manifest_ee_serial=_int(doc["manifest_ee_serial"]),
        manifest_ee_not_after=_parse_time(doc["manifest_ee_not_after"]),
        revoked=tuple(
            Revoked(_int(r["serial"]), _parse_time(r["revoked_at"]), _parse_time(r["expires"]))
            for r in doc["revoked"]
        ),
        roas=tuple(
            RoaState(
                file=_segment(r["file"]),
                asn=_int(r["asn"]),
                prefixes=tuple(
                    RoaPrefix(ip_network(_str(p)), None if m is None else _int(m))
                    for p, m in r["prefixes"]
                ),
                ee_serial=_int(r["ee_serial"]),
                ee_not_after=_parse_time(r["ee_not_after"]),
            )
            for r in doc["roas"]
        ),
        next_roa=_int(doc["next_roa"]),
        aspa=None
        if aspa is None
        else AspaState(
            _segment(aspa["file"]),
            _int(aspa["customer"]),
            tuple(_int(p) for p in aspa["providers"]),
        ),
        gbr=_opt_segment(doc["gbr"]),
        point=_int(doc.get("point", 0)),
    )


def _pub_point(value: Any) -> tuple[str, str | None]:
    rsync, rrdp = value
    point = (_str(rsync), _opt_str(rrdp))
    try:
        if not RsyncUri.parse(point[0]).is_directory:
            raise ValueError(f"not a directory URI: {point[0]}")
        if point[1] is not None and not HttpsUri.parse(point[1]).is_directory:
            raise ValueError(f"not a directory URI: {point[1]}")
    except RpkiRepoError as exc:
        raise ValueError(f"publication point: {exc}") from exc
    return point


def save_state(out_dir: Path, state: TestbedState) -> Path:
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "rsync_base": state.rsync_base,
        "rrdp_base": state.rrdp_base,
        "ta_uris": list(state.ta_uris),
        "days": state.days,
        "aspa_version": state.aspa_version,
        "seed": state.seed,
        "generation": state.generation,
        "signing_time": _time(state.signing_time),
        "expires": _time(state.expires),
        "cas": [_ca_doc(ca) for ca in state.cas],
        "pub_points": [list(point) for point in state.pub_points],
    }
    path = out_dir / STATE_FILE
    atomic_write(path, (json.dumps(doc, indent=1) + "\n").encode(), mode=0o644)
    return path


def load_state(out_dir: Path) -> TestbedState:
    path = out_dir / STATE_FILE
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise StorageError(
            Reason.STATE_MISSING, "no testbed state: run `rpkirepo testbed OUT_DIR` first",
            path=str(path),
        ) from exc  # fmt: skip
    except OSError as exc:
        raise StorageError(Reason.STORAGE_IO, f"cannot read: {exc}", path=str(path)) from exc
    try:
        doc = json.loads(text)
        if not isinstance(doc, dict):
            raise TypeError("not a JSON object")
        if doc.get("format") != FORMAT or doc.get("version") != VERSION:
            raise StorageError(
                Reason.STATE_INCOMPATIBLE,
                f"expected format {FORMAT} version {VERSION}",
                path=str(path),
            )
        days = doc["days"]
        if not isinstance(days, int | float) or isinstance(days, bool):
            raise TypeError("days must be a number")
        state = TestbedState(
            rsync_base=_str(doc["rsync_base"]),
            rrdp_base=_opt_str(doc["rrdp_base"]),
            ta_uris=tuple(_str(u) for u in doc["ta_uris"]),
            days=float(days),
            aspa_version=_int(doc["aspa_version"]),
            seed=_int(doc["seed"]),
            generation=_int(doc["generation"]),
            signing_time=_parse_time(doc["signing_time"]),
            expires=_parse_time(doc["expires"]),
            cas=tuple(_ca_from(c) for c in doc["cas"]),
            pub_points=tuple(_pub_point(p) for p in doc.get("pub_points", ())),
        )
    except StorageError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise _corrupt(path, str(exc)) from exc
    names = {ca.name for ca in state.cas}
    if not state.cas or state.cas[0].parent is not None or len(names) != len(state.cas):
        raise _corrupt(path, "CA tree")
    for ca in state.cas:
        if (ca.parent is not None and ca.parent not in names) or not set(ca.children) <= names:
            raise _corrupt(path, f"CA {ca.name}")
        if not 0 <= ca.point <= len(state.pub_points) or (ca.parent is None and ca.point):
            raise _corrupt(path, f"publication point of CA {ca.name}")
    return state


def _corrupt(path: Path, detail: str) -> StorageError:
    return StorageError(Reason.STATE_CORRUPT, f"bad testbed state: {detail}", path=str(path))


def _key_path(out_dir: Path, name: str) -> Path:
    return out_dir / KEYS_DIR / f"{name}.pem"


def save_key(out_dir: Path, name: str, key: KeyPair) -> None:
    """``keys/<name>.pem``, PKCS#8, mode 0600 (the directory 0700)."""
    directory = out_dir / KEYS_DIR
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
    except OSError as exc:
        raise StorageError(Reason.STORAGE_IO, f"cannot create: {exc}", path=str(directory)) from exc
    pem = key.private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write(_key_path(out_dir, name), pem, mode=0o600)


def load_key(out_dir: Path, name: str) -> KeyPair:
    path = _key_path(out_dir, name)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise StorageError(Reason.STATE_MISSING, "CA key missing", path=str(path)) from exc
    except OSError as exc:
        raise StorageError(Reason.STORAGE_IO, f"cannot read: {exc}", path=str(path)) from exc
    except ValueError as exc:
        raise StorageError(Reason.STATE_CORRUPT, f"bad key: {exc}", path=str(path)) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise StorageError(Reason.STATE_CORRUPT, "not an RSA key", path=str(path))
    return KeyPair(key)
