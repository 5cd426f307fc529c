"""What a relying party should output for a testbed: VRPs and ASPAs in rpki-client's shapes.

* ``expected-vrps.csv`` is rpki-client's ``-c`` output: the header
  ``ASN,IP Prefix,Max Length,Trust Anchor,Expires`` and one ``AS<n>,<prefix>,<maxlen>,<ta>,
  <epoch>`` row per VRP.
* ``expected-vrps.json`` holds rpki-client's ``-j`` ``roas`` list (``asn``, ``prefix``,
  ``maxLength``, ``ta``, ``expires``) and, in its ``aspas`` list, one ``{customer_asid,
  providers, expires}`` per ASPA; no ``metadata``.

Rows are ordered as rpki-client orders VRPs (address family, address, prefix length, maxLength,
AS).  ``expires`` is the earliest end of validity of everything the VRP depends on; the
generator gives every certificate, CRL and manifest the same end, so it is that instant.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import ip_network

__all__ = ["ExpectedAspa", "Vrp", "vrps_csv", "vrps_json"]


@dataclass(frozen=True, slots=True, order=True)
class Vrp:
    """One validated ROA payload: (AS, prefix, maxLength)."""

    asn: int
    prefix: str
    max_length: int

    def sort_key(self) -> tuple[int, int, int, int, int]:
        net = ip_network(self.prefix)
        return (net.version, int(net.network_address), net.prefixlen, self.max_length, self.asn)


@dataclass(frozen=True, slots=True)
class ExpectedAspa:
    customer_asid: int
    providers: tuple[int, ...]


def vrps_csv(vrps: Iterable[Vrp], ta: str, expires: int) -> str:
    rows = ["ASN,IP Prefix,Max Length,Trust Anchor,Expires"]
    for v in sorted(vrps, key=Vrp.sort_key):
        rows.append(f"AS{v.asn},{v.prefix},{v.max_length},{ta},{expires}")
    return "\n".join(rows) + "\n"


def vrps_json(vrps: Iterable[Vrp], aspas: Iterable[ExpectedAspa], ta: str, expires: int) -> str:
    doc = {
        "roas": [
            {"asn": v.asn, "prefix": v.prefix, "maxLength": v.max_length, "ta": ta,
             "expires": expires}
            for v in sorted(vrps, key=Vrp.sort_key)
        ],
        "aspas": [
            {"customer_asid": a.customer_asid, "providers": list(a.providers), "expires": expires}
            for a in sorted(aspas, key=lambda a: a.customer_asid)
        ],
    }  # fmt: skip
    return json.dumps(doc, indent=1) + "\n"
