"""ROAs (RFC 6482, profile as updated by RFC 9582): the eContent.

RouteOriginAttestation ::= SEQUENCE { version [0] INTEGER DEFAULT 0 (omitted, DER), asID,
ipAddrBlocks SEQUENCE (SIZE(1..2)) OF ROAIPAddressFamily { addressFamily OCTET STRING (AFI, no
SAFI), addresses SEQUENCE OF ROAIPAddress { address BIT STRING, maxLength INTEGER OPTIONAL } } }.

Canonical form (RFC 9582 §4.3.3): IPv4 before IPv6, addresses in ascending order, no
duplicates; maxLength is written only when it is larger than the prefix length.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import der
from .resources import IpNetwork

__all__ = ["RoaPrefix", "encode_roa"]


@dataclass(frozen=True, slots=True)
class RoaPrefix:
    prefix: IpNetwork
    max_length: int | None = None

    def __post_init__(self) -> None:
        m = self.max_length
        if m is not None and not self.prefix.prefixlen < m <= self.prefix.max_prefixlen:
            raise ValueError(f"maxLength {m} for {self.prefix} (RFC 9582 §4.3.3)")

    @property
    def effective_max_length(self) -> int:
        return self.prefix.prefixlen if self.max_length is None else self.max_length


def _sort_key(p: RoaPrefix) -> tuple[int, int, int]:
    return (p.prefix.version, int(p.prefix.network_address), p.prefix.prefixlen)


def encode_roa(as_id: int, prefixes: Sequence[RoaPrefix]) -> bytes:
    ordered = sorted(prefixes, key=_sort_key)
    if not ordered:
        raise ValueError("a ROA holds at least one prefix")
    if len({(p.prefix) for p in ordered}) != len(ordered):
        raise ValueError("duplicate ROA prefix (RFC 9582 §4.3.3)")
    families = []
    for version, afi in ((4, b"\x00\x01"), (6, b"\x00\x02")):
        addresses = []
        for p in ordered:
            if p.prefix.version != version:
                continue
            bits = p.prefix.prefixlen
            raw = p.prefix.network_address.packed[: (bits + 7) // 8]
            fields = [der.bit_string(raw, bits)]
            if p.max_length is not None:
                fields.append(der.integer(p.max_length))
            addresses.append(der.sequence(*fields))
        if addresses:
            families.append(der.sequence(der.octet_string(afi), der.sequence(*addresses)))
    return der.sequence(der.integer(as_id), der.sequence(*families))
