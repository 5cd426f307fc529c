"""Generate a complete, valid RPKI for testing relying parties and repositories.

:func:`generate` writes a trust anchor and its TAL (RFC 8630), a tree of CAs with RFC 3779
resources sub-allocated from their parents (RFC 6487), and in each CA's publication point a CRL,
a manifest (RFC 9286), ROAs (RFC 6482/9582), an ASPA and a Ghostbusters record (RFC 6493), all
signed objects being RFC 6488 CMS with signing-time (RFC 9589); plus the VRPs and ASPAs a relying
party must output (rpki-client's CSV and JSON shapes).  :func:`advance` then moves it on in
place, as a live repository changes: new manifests and CRLs, a ROA revoked and one added, and
optionally a CA key roll.  See docs/testbed.md.

Unlike the rest of rpkirepo this package needs ``cryptography`` (keys and signatures).
"""

from .advance import Advance, advance
from .expected import ExpectedAspa, Vrp
from .generator import PublicationPoint, Testbed, TestbedOptions, generate, parse_pub_point

__all__ = [
    "Advance",
    "ExpectedAspa",
    "PublicationPoint",
    "Testbed",
    "TestbedOptions",
    "Vrp",
    "advance",
    "generate",
    "parse_pub_point",
]
