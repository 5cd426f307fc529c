"""RFC 3779 resources: sets of IP prefixes and AS numbers, their canonical DER, sub-allocation.

A :class:`ResourceSet` is what a certificate holds (or ``inherit`` for one family, RFC 3779
§2.2.3.5, §3.2.3.3).  :meth:`ResourceSet.ip_extension` and :meth:`ResourceSet.as_extension` give
the extnValue contents of sbgp-ipAddrBlock (1.3.6.1.5.5.7.1.7) and sbgp-autonomousSysNum
(1.3.6.1.5.5.7.1.8) in the canonical form RFC 3779 requires: families in AFI order (§2.2.3.3),
addresses sorted, overlapping and adjacent blocks merged, each block a prefix when it is one and a
range otherwise (§2.2.3.6-§2.2.3.9), AS ids and ranges likewise (§3.2.3.4-§3.2.3.8).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar

from . import der

__all__ = [
    "OID_AS_RESOURCES",
    "OID_IP_RESOURCES",
    "AsRange",
    "IpNetwork",
    "ResourceSet",
    "split_as_range",
    "split_prefix",
]

OID_IP_RESOURCES: Final = "1.3.6.1.5.5.7.1.7"  # id-pe-ipAddrBlocks (RFC 3779 §2.2.1)
OID_AS_RESOURCES: Final = "1.3.6.1.5.5.7.1.8"  # id-pe-autonomousSysIds (RFC 3779 §3.2.1)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_AFI: Final = {4: b"\x00\x01", 6: b"\x00\x02"}  # RFC 3779 §2.2.3.3


@dataclass(frozen=True, slots=True, order=True)
class AsRange:
    """An inclusive range of AS numbers (RFC 3779 §3.2.3.7)."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if not 0 <= self.first <= self.last <= 2**32 - 1:
            raise ValueError(f"bad AS range {self.first}-{self.last}")

    def __str__(self) -> str:
        return f"AS{self.first}" if self.first == self.last else f"AS{self.first}-AS{self.last}"


@dataclass(frozen=True, slots=True)
class ResourceSet:
    """The resources of one certificate; ``inherit_*`` stands for RFC 3779 ``inherit``.
    An empty family with no inherit means the extension (or family) is absent."""

    ipv4: tuple[ipaddress.IPv4Network, ...] = ()
    ipv6: tuple[ipaddress.IPv6Network, ...] = ()
    asns: tuple[AsRange, ...] = ()
    inherit_ip: bool = False
    inherit_as: bool = False

    @property
    def has_ip(self) -> bool:
        return self.inherit_ip or bool(self.ipv4 or self.ipv6)

    @property
    def has_as(self) -> bool:
        return self.inherit_as or bool(self.asns)

    def ip_extension(self) -> bytes:
        """IPAddrBlocks (RFC 3779 §2.2.3.1): one IPAddressFamily per family held."""
        families = []
        for version, nets in ((4, self.ipv4), (6, self.ipv6)):
            if self.inherit_ip:
                choice = der.null()  # inherit (§2.2.3.5)
            elif nets:
                choice = der.sequence(*_ip_blocks(nets, 32 if version == 4 else 128))
            else:
                continue
            families.append(der.sequence(der.octet_string(_AFI[version]), choice))
        if not families:
            raise ValueError("no IP resources to encode")
        return der.sequence(*families)

    def as_extension(self) -> bytes:
        """ASIdentifiers (RFC 3779 §3.2.3.1) with asnum only (no RDI)."""
        if self.inherit_as:
            choice = der.null()
        elif self.asns:
            items = []
            for r in _merge_as(self.asns):
                if r.first == r.last:
                    items.append(der.integer(r.first))
                else:
                    items.append(der.sequence(der.integer(r.first), der.integer(r.last)))
            choice = der.sequence(*items)
        else:
            raise ValueError("no AS resources to encode")
        return der.sequence(der.context(0, choice))


def _merge_as(ranges: Iterable[AsRange]) -> list[AsRange]:
    out: list[AsRange] = []
    for r in sorted(ranges):
        if out and r.first <= out[-1].last + 1:
            out[-1] = AsRange(out[-1].first, max(out[-1].last, r.last))
        else:
            out.append(r)
    return out


def _ip_blocks(nets: Sequence[IpNetwork], width: int) -> list[bytes]:
    """IPAddressOrRange values: merged intervals, each a prefix if it is one, else a range."""
    spans: list[list[int]] = []
    for net in sorted(nets, key=lambda n: (int(n.network_address), n.prefixlen)):
        lo, hi = int(net.network_address), int(net.broadcast_address)
        if spans and lo <= spans[-1][1] + 1:
            spans[-1][1] = max(spans[-1][1], hi)
        else:
            spans.append([lo, hi])
    out = []
    for lo, hi in spans:
        size = hi - lo + 1
        if size & (size - 1) == 0 and lo % size == 0:  # exactly one prefix (§2.2.3.8)
            out.append(_prefix_bits(lo, width - (size.bit_length() - 1), width))
        else:  # IPAddressRange (§2.2.3.9): min without trailing 0s, max without trailing 1s
            out.append(der.sequence(_trimmed(lo, width, 0), _trimmed(hi, width, 1)))
    return out


def _prefix_bits(value: int, length: int, width: int) -> bytes:
    data = value.to_bytes(width // 8, "big")
    return der.bit_string(data[: (length + 7) // 8], length)


def _trimmed(value: int, width: int, bit: int) -> bytes:
    length = width
    while length > 0 and (value >> (width - length)) & 1 == bit:
        length -= 1
    if bit:  # the dropped trailing 1s are encoded as zero unused bits
        value &= ~((1 << (width - length)) - 1)
    return _prefix_bits(value, length, width)


_Net = TypeVar("_Net", ipaddress.IPv4Network, ipaddress.IPv6Network)


def split_prefix(parent: _Net, parts: int) -> list[_Net]:
    """The first ``parts`` of the equal subnets of ``parent`` that fit ``parts`` of them."""
    extra = max(0, (parts - 1).bit_length())
    if parent.prefixlen + extra > parent.max_prefixlen:
        raise ValueError(f"{parent} cannot be split into {parts} parts")
    subnets: Iterator[_Net] = parent.subnets(prefixlen_diff=extra)
    return [next(subnets) for _ in range(parts)]


def split_as_range(parent: AsRange, parts: int) -> list[AsRange]:
    """``parent`` cut into ``parts`` contiguous ranges of equal size (the last takes the rest)."""
    size = (parent.last - parent.first + 1) // parts
    if size < 1:
        raise ValueError(f"{parent} cannot be split into {parts} parts")
    out = []
    for i in range(parts):
        first = parent.first + i * size
        last = parent.last if i == parts - 1 else first + size - 1
        out.append(AsRange(first, last))
    return out
