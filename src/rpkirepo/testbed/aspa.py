"""ASPA (draft-ietf-sidrops-aspa-profile): the eContent, in one of two profile versions.

* version 0 (drafts up to -14): ``SEQUENCE { customerASID, providers SEQUENCE OF ProviderAS {
  providerASID, afiLimit OCTET STRING OPTIONAL } }`` with ``version [0] DEFAULT 0`` omitted.
  This is the only profile rpki-client 8.2 (Debian 12) parses; it rejects version 1 with
  "ASPA: failed to parse ASProviderAttestation".  afiLimit is never written (the provider is
  authorised for both address families).
* version 1 (drafts -15 and later): ``SEQUENCE { version [0] EXPLICIT 1, customerASID,
  providers SEQUENCE OF ASID }``.  rpki-client 8.5+, Routinator and rpkirepo's own object reader
  parse this one.

Either way providers are unique, in ascending order, and exclude the customer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from . import der

__all__ = ["ASPA_VERSIONS", "encode_aspa"]

ASPA_VERSIONS: Final = (0, 1)


def encode_aspa(customer: int, providers: Sequence[int], version: int) -> bytes:
    ordered = sorted(set(providers))
    if not ordered or len(ordered) != len(providers) or customer in ordered:
        raise ValueError("ASPA providers: unique, at least one, not the customer")
    if version == 0:
        return der.sequence(
            der.integer(customer),
            der.sequence(*(der.sequence(der.integer(p)) for p in ordered)),
        )
    if version == 1:
        return der.sequence(
            der.context(0, der.integer(1)),
            der.integer(customer),
            der.sequence(*(der.integer(p) for p in ordered)),
        )
    raise ValueError(f"unknown ASPA profile version {version}")
