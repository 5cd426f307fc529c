"""The testbed generator: a complete RPKI, from a trust anchor down to ROAs, on disk.

Theory of operation.

1. **Plan** (pure, seed-determined): the CA tree (``cas`` CAs over ``depth`` levels below the
   TA, each level's CAs attached to the previous level's round-robin after a seeded shuffle),
   resources sub-allocated top-down (each CA splits its IPv4 prefix, IPv6 prefix and AS range
   into one part for its own objects and one part per child, RFC 3779 containment by
   construction), names, serial numbers, ROA prefixes and maxLengths, ASPA providers.  Times
   come from ``now``: everything is valid from ``now - 1 h`` to ``now + days``.
2. **Keys**: one fresh RSA 2048 key per certificate (CA and one-time-use EE, RFC 6487 §3).
   These are the only thing a seed does not fix.
3. **Sign** each CA's publication point: its child CA certificates, its CRL, its ROAs, one ASPA
   and one Ghostbusters record, then the manifest listing all of them.
4. **Write** OUT_DIR/repository/ (rsync module layout; extra publication points in
   OUT_DIR/repositories/HOST[_PORT]/MODULE/), OUT_DIR/ta.cer, OUT_DIR/ta.tal and the
   expected RP output; every file's mtime is its signing-time (RFC 9589) or its thisUpdate /
   notBefore.  OUT_DIR/testbed-state.json and OUT_DIR/keys/ keep what
   :func:`rpkirepo.testbed.advance` needs to continue the testbed (:mod:`.state`).

Scale mode (``TestbedOptions.scale``, benchmarks only): about N objects, the tree's shape derived
from N (:func:`scale_options`), keys from a small pool reused by many CAs and EE certificates
(:class:`_KeyPool`, against RFC 6487 §3), points signed and written one by one in forked worker
processes (:func:`_sign_scaled`), no state for ``advance``.  See docs/testbed.md, *Scale mode*.

Layout below the rsync base (``BASE``): ``BASE/ta/`` is the TA's publication point,
``BASE/ca-N/`` that of CA N (a flat namespace; CA N's certificate is in its parent's point).

Several publication points (``TestbedOptions.pub_points``): besides the main rsync base (and its
RRDP base), each extra point is an rsync base on its own rsync module (another host, or another
module of the same host) with or without an RRDP base.  CA N lives in point ``(N - 1) mod (1 +
extra points)``, point 0 being the main one, which also holds the TA's.  A CA's certificate
carries the SIA of its own point (caRepository, rpkiManifest, rpkiNotify when that point has
RRDP) but is published in its parent's point, as in the real RPKI.  The main module's content is
``OUT_DIR/repository/``; that of an extra point ``OUT_DIR/repositories/HOST[_PORT]/MODULE/``
(:func:`point_directory`).  Paths "below the repository" (:attr:`Testbed.files`,
:class:`rpkirepo.testbed.Advance`) are relative to ``OUT_DIR/repository/``, so those of an extra
point begin with ``../repositories/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import multiprocessing
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Final

from rpkirepo.errors import ConfigError, Reason, RpkiRepoError, StorageError
from rpkirepo.uri import HttpsUri, RsyncUri

from . import cms
from .aspa import ASPA_VERSIONS, encode_aspa
from .certificates import CertKind, CertRequest, issue_certificate
from .crl import issue_crl
from .expected import ExpectedAspa, Vrp, vrps_csv, vrps_json
from .gbr import encode_vcard
from .keys import KeyPair, new_key
from .manifest import encode_manifest
from .resources import AsRange, ResourceSet, split_as_range, split_prefix
from .roa import RoaPrefix, encode_roa
from .state import AspaState, CaState, RoaState, TestbedState, save_key, save_state
from .tal import encode_tal

__all__ = [
    "PublicationPoint",
    "Testbed",
    "TestbedOptions",
    "generate",
    "parse_pub_point",
    "point_directory",
]

#: The TA's resources: RFC 1918 / RFC 3849 space and the RFC 6996 32-bit private ASNs.
TA_IPV4: Final = IPv4Network("10.0.0.0/8")
TA_IPV6: Final = IPv6Network("2001:db8::/32")
TA_ASNS: Final = AsRange(4_200_000_000, 4_294_967_294)
#: ASPA providers come from the RFC 5398 documentation ASNs.
PROVIDER_ASNS: Final = range(64496, 64512)
MAX_ROA_V4_LENGTH: Final = 24
MAX_ROA_V6_LENGTH: Final = 48
TA_NAME: Final = "ta"


@dataclass(frozen=True)
class TestbedOptions:
    """What :func:`generate` makes (the ``rpkirepo testbed`` options)."""

    __test__ = False  # not a pytest test class, whatever its name
    out_dir: Path
    rsync_base: str = "rsync://localhost/repo/"
    rrdp_base: str | None = None
    ta_uris: tuple[str, ...] = ()  # default: (rsync_base + "ta.cer",)
    cas: int = 3
    roas_per_ca: int = 3
    depth: int = 2
    seed: int = 0
    days: float = 7.0
    now: datetime | None = None
    aspa_version: int = 0
    #: Extra publication points, each (rsync base, RRDP base or None), beside ``rsync_base`` /
    #: ``rrdp_base``: each needs an rsync module (host, port, module) of its own.  CAs are spread
    #: over all points round-robin by number (see the module docstring).
    pub_points: tuple[tuple[str, str | None], ...] = ()
    #: Scale mode (benchmarks only): about this many objects, keys from a small pool; see
    #: :func:`scale_options`.  Overrides ``cas``, ``roas_per_ca`` and ``depth``.
    scale: int | None = None
    #: Scale mode: worker processes that sign (0: one per CPU).
    jobs: int = 0


@dataclass
class _Ca:
    name: str
    cn: str
    level: int  # 0 for the TA
    parent: _Ca | None
    serial: int  # of its certificate, chosen by the parent
    children: list[_Ca] = field(default_factory=list)
    #: What its certificate holds.
    ipv4: IPv4Network = TA_IPV4
    ipv6: IPv6Network = TA_IPV6
    asns: AsRange = TA_ASNS
    #: The part of it kept for its own ROAs and ASPA (the rest goes to its children).
    own4: IPv4Network = TA_IPV4
    own6: IPv6Network = TA_IPV6
    own_as: AsRange = TA_ASNS
    key: KeyPair | None = None
    #: The publication point it lives in: 0 the main one, i the i-th of ``pub_points``.
    point: int = 0
    #: The name of its manifest and CRL (``stem.mft``, ``stem.crl``): its name, until a key
    #: roll (``testbed advance``) gives the new key's objects new names, as CAs that name them
    #: after the key do.
    stem: str | None = None

    @property
    def file_stem(self) -> str:
        return self.name if self.stem is None else self.stem

    @property
    def keypair(self) -> KeyPair:
        if self.key is None:
            raise RuntimeError("keys not generated yet")
        return self.key


#: Where the extra publication points' module contents go, below OUT_DIR.
POINTS_DIR: Final = "repositories"


def point_directory(rsync_base: str) -> str:
    """The directory, relative to OUT_DIR, of an extra publication point's rsync module
    content: ``repositories/HOST[_PORT]/MODULE`` (host lower-cased; it is a DNS name or an IPv4
    address, :class:`rpkirepo.uri.RsyncUri`)."""
    uri = RsyncUri.parse(rsync_base)
    host = uri.host if uri.port is None else f"{uri.host}_{uri.port}"
    return f"{POINTS_DIR}/{host}/{uri.module}"


def parse_pub_point(text: str) -> tuple[str, str | None]:
    """``RSYNC_BASE[,RRDP_BASE]`` (the ``--pub-point`` argument) as (rsync base, RRDP base or
    None); the URIs themselves are checked by :func:`generate`."""
    rsync, comma, rrdp = text.partition(",")
    if not rsync or (comma and not rrdp) or "," in rrdp:
        raise _usage(f"--pub-point takes RSYNC_BASE or RSYNC_BASE,RRDP_BASE, not {text!r}")
    return rsync, rrdp if comma else None


@dataclass(frozen=True)
class PublicationPoint:
    """One publication point of a testbed and where its files are."""

    rsync_base: str
    rrdp_base: str | None
    #: ``rsync://HOST[:PORT]/MODULE/``: what ``rpkirepo publish --rsync-base`` takes for it.
    module_uri: str
    #: The module's content (OUT_DIR/repository for the main point): publish's source.
    directory: Path
    #: The CAs whose publication point this is (the TA's is the main one).
    cas: tuple[str, ...]
    #: Path below :attr:`directory` -> kind, as :attr:`Testbed.files`.
    files: dict[str, str]


@dataclass(frozen=True)
class Testbed:
    """What :func:`generate` wrote and what a relying party must conclude from it."""

    __test__ = False

    out_dir: Path
    repository: Path  # the main rsync module's content
    ta_certificate: Path
    tal: Path
    vrps: frozenset[Vrp]
    aspas: frozenset[ExpectedAspa]
    #: Path below the repository -> kind (cer, crl, mft, roa, asa, gbr), every point's files:
    #: an extra point's paths begin with ``../repositories/``.
    files: dict[str, str]
    not_before: datetime
    not_after: datetime
    #: Every publication point, the main one first.
    points: tuple[PublicationPoint, ...] = ()


def _usage(detail: str) -> ConfigError:
    return ConfigError(Reason.USAGE, detail)


def _check(opts: TestbedOptions) -> tuple[RsyncUri, HttpsUri | None]:
    try:
        base = RsyncUri.parse(opts.rsync_base)
        rrdp = None if opts.rrdp_base is None else HttpsUri.parse(opts.rrdp_base)
        for uri in opts.ta_uris:
            (RsyncUri if uri.startswith("rsync://") else HttpsUri).parse(uri)
    except RpkiRepoError as exc:
        raise _usage(f"bad URI: {exc}") from exc
    if not base.is_directory or (rrdp is not None and not rrdp.is_directory):
        raise _usage("--rsync-base and --rrdp-base must end with a slash")
    _check_points(opts, base, rrdp)
    if not 1 <= opts.depth <= opts.cas:
        raise _usage("need 1 <= --depth <= --cas (every level holds at least one CA)")
    if not 1 <= opts.roas_per_ca <= 256:
        raise _usage("--roas-per-ca must be 1..256")
    if opts.cas > 1000 and opts.scale is None:
        raise _usage("--cas must be at most 1000")
    if not 0 < opts.days <= 3650:
        raise _usage("--days must be in (0, 3650]")
    if opts.aspa_version not in ASPA_VERSIONS:
        raise _usage(f"--aspa-version must be one of {ASPA_VERSIONS}")
    for repo in [opts.out_dir / "repository"] + [
        opts.out_dir / point_directory(rsync) for rsync, _ in opts.pub_points
    ]:
        if repo.exists() and any(repo.iterdir()):
            raise _usage(f"{repo} exists and is not empty")
    return base, rrdp


def _check_points(opts: TestbedOptions, base: RsyncUri, rrdp: HttpsUri | None) -> None:
    """Extra publication points: valid directory URIs, an rsync module and an RRDP base of
    their own each, and at least one CA for each (the CAs are spread round-robin)."""
    modules = {base.module_uri.uri}
    notifies = set() if rrdp is None else {rrdp.uri}
    for rsync_text, rrdp_text in opts.pub_points:
        try:
            point = RsyncUri.parse(rsync_text)
            point_rrdp = None if rrdp_text is None else HttpsUri.parse(rrdp_text)
        except RpkiRepoError as exc:
            raise _usage(f"bad --pub-point URI: {exc}") from exc
        if not point.is_directory or (point_rrdp is not None and not point_rrdp.is_directory):
            raise _usage(f"--pub-point URIs must end with a slash: {rsync_text}")
        if point.module_uri.uri in modules:
            raise _usage(
                f"--pub-point {rsync_text}: every publication point needs an rsync module "
                f"(host, port, module) of its own; {point.module_uri.uri} is taken"
            )
        modules.add(point.module_uri.uri)
        if point_rrdp is not None:
            if point_rrdp.uri in notifies:
                raise _usage(f"--pub-point {rsync_text}: RRDP base {point_rrdp.uri} is taken")
            notifies.add(point_rrdp.uri)
    if opts.pub_points and len(opts.pub_points) >= opts.cas:
        raise _usage(
            f"{len(opts.pub_points)} --pub-point need at least {len(opts.pub_points) + 1} CAs "
            "(every publication point holds one)"
        )


def _hexname(rng: random.Random) -> str:
    return f"{rng.getrandbits(160):040X}"


def _plan_tree(opts: TestbedOptions, rng: random.Random) -> list[_Ca]:
    """The TA and its CAs, breadth first, with resources allocated."""
    ta = _Ca(TA_NAME, _hexname(rng), 0, None, serial=1)
    levels: list[list[_Ca]] = [[ta]]
    number = 0
    for level in range(1, opts.depth + 1):
        size = opts.cas // opts.depth + (1 if level - 1 < opts.cas % opts.depth else 0)
        parents = list(levels[-1])
        rng.shuffle(parents)
        current = []
        for i in range(size):
            number += 1
            parent = parents[i % len(parents)]
            ca = _Ca(f"ca-{number}", _hexname(rng), level, parent, rng.randrange(1, 2**63))
            parent.children.append(ca)
            current.append(ca)
        levels.append(current)
    every = [ca for level_cas in levels for ca in level_cas]
    for ca in every:  # parents before children
        parts = len(ca.children) + 1
        try:
            v4, v6 = split_prefix(ca.ipv4, parts), split_prefix(ca.ipv6, parts)
            asns = split_as_range(ca.asns, parts)
        except ValueError as exc:
            raise _usage(f"tree too large for the TA's resources: {exc}") from exc
        for i, child in enumerate(ca.children, start=1):
            child.ipv4, child.ipv6, child.asns = v4[i], v6[i], asns[i]
        ca.own4, ca.own6, ca.own_as = v4[0], v6[0], asns[0]
    return every


@dataclass(frozen=True)
class _RoaPlan:
    file: str
    asn: int
    prefixes: tuple[RoaPrefix, ...]


def _maybe_max(rng: random.Random, length: int, limit: int) -> int | None:
    if length >= limit or rng.random() < 0.5:
        return None
    return rng.randint(length + 1, limit)


def _plan_roas(ca: _Ca, count: int, rng: random.Random) -> list[_RoaPlan]:
    """``count`` ROAs for a CA from the part of its space it keeps: IPv4 and IPv6, with and
    without maxLength (the first ROA always has an IPv4 prefix without maxLength and an IPv6
    prefix with one)."""
    extra = (2 * count).bit_length()
    len4 = max(min(MAX_ROA_V4_LENGTH, ca.own4.prefixlen + extra + 2), ca.own4.prefixlen + extra)
    len6 = max(min(MAX_ROA_V6_LENGTH, ca.own6.prefixlen + extra + 4), ca.own6.prefixlen + extra)
    if len4 > 32 or len6 > 128:
        raise _usage(f"no room for {count} ROAs in {ca.own4} / {ca.own6}")
    pick4 = rng.sample(range(2 ** (len4 - ca.own4.prefixlen)), 2 * count)
    pick6 = rng.sample(range(2 ** (len6 - ca.own6.prefixlen)), 2 * count)
    size4, size6 = 2 ** (32 - len4), 2 ** (128 - len6)
    out = []
    for j in range(count):
        asn = ca.own_as.first + 1 + j % max(1, ca.own_as.last - ca.own_as.first)
        shape = "46" if j == 0 else rng.choice(["4", "6", "46", "44"])
        prefixes: list[RoaPrefix] = []
        for k, family in enumerate(shape):
            if family == "4":
                net4 = IPv4Network((int(ca.own4.network_address) + pick4[2 * j + k] * size4, len4))
                m4 = None if j == 0 else _maybe_max(rng, len4, min(32, len4 + 8))
                prefixes.append(RoaPrefix(net4, m4))
            else:
                net6 = IPv6Network((int(ca.own6.network_address) + pick6[2 * j + k] * size6, len6))
                m6 = len6 + 8 if j == 0 else _maybe_max(rng, len6, min(128, len6 + 16))
                prefixes.append(RoaPrefix(net6, m6))
        out.append(_RoaPlan(f"roa-{j + 1}-AS{asn}.roa", asn, tuple(prefixes)))
    return out


@dataclass(frozen=True)
class _Point:
    """A publication point as the writer sees it."""

    base: str  # rsync base URI
    module: str  # its module's URI
    notify: str | None  # the RRDP notification URI
    directory: str  # the module's content, relative to OUT_DIR/repository/ ("" or "../...")


class _Writer:
    """Signs objects for one run: shared URIs, times and the seeded RNG."""

    def __init__(
        self, opts: TestbedOptions, base: RsyncUri, ta_uris: tuple[str, ...], rng: random.Random
    ) -> None:
        now = (opts.now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        self.rng = rng
        self.base = base.uri
        self.module = base.module_uri.uri
        rsync_ta = [u for u in ta_uris if u.startswith("rsync://")]
        self.ta_uri = rsync_ta[0] if rsync_ta else base.uri + TA_CERT_REL
        self.notify = None if opts.rrdp_base is None else opts.rrdp_base + "notification.xml"
        self.points = [_Point(base.uri, self.module, self.notify, "")]
        for rsync, rrdp in opts.pub_points:
            uri = RsyncUri.parse(rsync)
            notify = None if rrdp is None else rrdp + "notification.xml"
            local = f"../{point_directory(rsync)}/"
            self.points.append(_Point(uri.uri, uri.module_uri.uri, notify, local))
        #: CA name -> index in :attr:`points` of its publication point (absent: the main one).
        self.point_of: dict[str, int] = {}
        self.signing_time = now
        self.not_before = now - timedelta(hours=1)
        self.not_after = now + timedelta(days=opts.days)
        self.objects: dict[str, bytes] = {}  # path below the repository -> DER
        self.mtimes: dict[str, datetime] = {}
        self.ee_serials: dict[str, int] = {}  # path below the rsync base -> its EE's serial
        #: A fresh key per EE certificate; scale mode takes them from a pool (:class:`_KeyPool`).
        self.new_ee_key: Callable[[], KeyPair] = new_key
        #: Scale mode uses :func:`cms.sign_object_der` (the same bytes, faster).
        self.sign_object = cms.sign_object

    def pub_point(self, ca: _Ca) -> str:
        return f"{ca.name}/"

    def point(self, rel: str) -> _Point:
        """The publication point of ``rel``, a path ``NAME/...`` in CA NAME's point."""
        return self.points[self.point_of.get(rel.split("/", 1)[0], 0)]

    def uri(self, rel: str) -> str:
        return self.point(rel).base + rel

    def local(self, rel: str) -> str:
        """Where ``rel`` (``NAME/FILE``) is on disk, relative to OUT_DIR/repository/."""
        point = self.point(rel)
        return point.directory + (point.base + rel)[len(point.module) :]

    def resources(self, ca: _Ca) -> ResourceSet:
        return ResourceSet(ipv4=(ca.ipv4,), ipv6=(ca.ipv6,), asns=(ca.asns,))

    def ca_certificate(self, ca: _Ca, resources: ResourceSet) -> bytes:
        point = self.pub_point(ca)
        req = CertRequest(
            kind=CertKind.TA if ca.parent is None else CertKind.CA,
            subject_cn=ca.cn,
            subject_key=ca.keypair,
            serial=ca.serial,
            not_before=self.not_before,
            not_after=self.not_after,
            resources=resources,
            ca_repository=self.uri(point),
            rpki_manifest=self.uri(f"{point}{ca.file_stem}.mft"),
            rpki_notify=self.points[ca.point].notify,
            ca_issuers=None if ca.parent is None else self.aia_of(ca.parent),
            crl_uri=None if ca.parent is None else self.uri(self.crl_path(ca.parent)),
        )
        if ca.parent is None:
            return issue_certificate(req, ca.cn, ca.keypair)
        return issue_certificate(req, ca.parent.cn, ca.parent.keypair)

    def aia_of(self, issuer: _Ca) -> str:
        """The URI of ``issuer``'s certificate (the caIssuers of what it signs, RFC 6487 §4.8.7)."""
        if issuer.parent is None:
            return self.ta_uri
        return self.uri(f"{self.pub_point(issuer.parent)}{issuer.name}.cer")

    def crl_path(self, ca: _Ca) -> str:
        return f"{self.pub_point(ca)}{ca.file_stem}.crl"

    def signed(
        self, ca: _Ca, rel: str, econtent_type: str, econtent: bytes, resources: ResourceSet
    ) -> bytes:
        """A signed object issued by ``ca`` with a fresh one-time EE key (RFC 6487 §3)."""
        ee_key = self.new_ee_key()
        subject_cn = _hexname(self.rng)
        serial = self.ee_serials[rel] = self.rng.randrange(1, 2**63)
        ee = issue_certificate(
            CertRequest(
                kind=CertKind.EE,
                subject_cn=subject_cn,
                subject_key=ee_key,
                serial=serial,
                not_before=self.not_before,
                not_after=self.not_after,
                resources=resources,
                signed_object=self.uri(rel),
                ca_issuers=self.aia_of(ca),
                crl_uri=self.uri(self.crl_path(ca)),
            ),
            ca.cn,
            ca.keypair,
        )
        return self.sign_object(econtent_type, econtent, ee, ee_key, self.signing_time)

    def put(self, rel: str, data: bytes, mtime: datetime) -> None:
        """Keep an object at ``rel`` below the rsync base."""
        self.put_uri(self.uri(rel), data, mtime)

    def put_uri(self, uri: str, data: bytes, mtime: datetime) -> None:
        for point in self.points:
            if uri.startswith(point.module):
                local = point.directory + uri[len(point.module) :]
                self.objects[local] = data
                self.mtimes[local] = mtime
                return
        raise ValueError(f"{uri} is outside the modules of the publication points")

    def in_modules(self, uri: str) -> bool:
        return any(uri.startswith(point.module) for point in self.points)


#: The TA certificate's path below the rsync base, when a TA URI points there.
TA_CERT_REL: Final = "ta.cer"


def generate(opts: TestbedOptions) -> Testbed:
    """Plan, key, sign and write a testbed into ``opts.out_dir``; see the module docstring."""
    opts = scale_options(opts)
    base, _rrdp = _check(opts)
    rng = random.Random(opts.seed)
    cas = _plan_tree(opts, rng)
    ta = cas[0]
    for number, ca in enumerate(cas[1:]):  # ca-1, ca-2, ...: round-robin over the points
        ca.point = number % (1 + len(opts.pub_points))
    roa_plans = {ca.name: _plan_roas(ca, opts.roas_per_ca, rng) for ca in cas[1:]}
    all_customers = [ca.own_as.first for ca in cas[1:]]
    aspa_plans: dict[str, tuple[int, tuple[int, ...]]] = {}
    for ca in cas[1:]:
        pool = [a for a in all_customers if a != ca.own_as.first] + list(PROVIDER_ASNS)
        providers = tuple(sorted(rng.sample(pool, rng.randint(1, 3))))
        aspa_plans[ca.name] = (ca.own_as.first, providers)

    key_pool = None if opts.scale is None else _KeyPool()
    for ca in cas:  # the only non-deterministic step
        if key_pool is None or ca.parent is None:
            ca.key = new_key()
        else:
            ca.key = key_pool.ca_key(ca.parent.keypair)

    ta_uris = opts.ta_uris or (base.uri + TA_CERT_REL,)
    w = _Writer(opts, base, ta_uris, rng)
    w.point_of = {ca.name: ca.point for ca in cas}
    if key_pool is not None:
        w.new_ee_key = key_pool.ee_key
        w.sign_object = cms.sign_object_der
    ta_der = w.ca_certificate(ta, w.resources(ta))
    vrps: set[Vrp] = set()
    aspas: set[ExpectedAspa] = set()
    files: dict[str, str] = {}
    if opts.scale is not None:
        files, vrps, aspas = _sign_scaled(opts, w, cas, roa_plans, aspa_plans)
        return _write(opts, w, ta_der, ta, ta_uris, vrps, aspas, None, cas, files)
    for ca in cas:
        point_vrps, point_aspas = _sign_point(w, ca, roa_plans, aspa_plans, opts.aspa_version)
        vrps |= point_vrps
        aspas |= point_aspas
    state = _initial_state(opts, w, cas, ta_uris, roa_plans, aspa_plans)
    return _write(opts, w, ta_der, ta, ta_uris, vrps, aspas, state, cas, files)


def _sign_point(
    w: _Writer,
    ca: _Ca,
    roa_plans: dict[str, list[_RoaPlan]],
    aspa_plans: dict[str, tuple[int, tuple[int, ...]]],
    aspa_version: int,
) -> tuple[set[Vrp], set[ExpectedAspa]]:
    """Sign ``ca``'s publication point into ``w``: its children's certificates, its CRL, (below
    the TA) its ROAs, ASPA and Ghostbusters record, then its manifest.  Returns the VRPs and
    ASPAs a relying party derives from it."""
    vrps: set[Vrp] = set()
    aspas: set[ExpectedAspa] = set()
    inherit = ResourceSet(inherit_ip=True, inherit_as=True)
    point = w.pub_point(ca)
    files: dict[str, bytes] = {}
    for child in ca.children:
        der_child = w.ca_certificate(child, w.resources(child))
        files[f"{child.name}.cer"] = der_child
    files[f"{ca.name}.crl"] = issue_crl(ca.cn, ca.keypair, 1, w.not_before, w.not_after)
    if ca.parent is not None:
        for plan in roa_plans[ca.name]:
            rel = point + plan.file
            nets = [p.prefix for p in plan.prefixes]
            ee_res = ResourceSet(
                ipv4=tuple(n for n in nets if isinstance(n, IPv4Network)),
                ipv6=tuple(n for n in nets if isinstance(n, IPv6Network)),
            )
            files[plan.file] = w.signed(
                ca, rel, cms.OID_ROA, encode_roa(plan.asn, plan.prefixes), ee_res
            )
            vrps |= {Vrp(plan.asn, str(p.prefix), p.effective_max_length) for p in plan.prefixes}
        customer, providers = aspa_plans[ca.name]
        aspa_file = f"AS{customer}.asa"
        files[aspa_file] = w.signed(
            ca,
            point + aspa_file,
            cms.OID_ASPA,
            encode_aspa(customer, providers, aspa_version),
            ResourceSet(asns=(AsRange(customer, customer),)),
        )
        aspas.add(ExpectedAspa(customer, providers))
        gbr_file = f"{ca.name}.gbr"
        vcard = encode_vcard(
            full_name=f"RPKI operations of {ca.name}",
            org=f"rpkirepo testbed {ca.name}",
            email=f"rpki-{ca.name}@example.net",
            phone=f"+1-555-01{w.rng.randrange(100):02d}",
        )
        files[gbr_file] = w.signed(ca, point + gbr_file, cms.OID_GBR, vcard, inherit)
    mft_file = f"{ca.name}.mft"
    econtent = encode_manifest(1, w.not_before, w.not_after, files)
    mft = w.signed(ca, point + mft_file, cms.OID_MANIFEST, econtent, inherit)
    for file, data in files.items():
        signed = file.rsplit(".", 1)[1] in ("roa", "asa", "gbr")
        w.put(point + file, data, w.signing_time if signed else w.not_before)
    w.put(point + mft_file, mft, w.signing_time)
    return vrps, aspas


def _initial_state(
    opts: TestbedOptions,
    w: _Writer,
    cas: list[_Ca],
    ta_uris: tuple[str, ...],
    roa_plans: dict[str, list[_RoaPlan]],
    aspa_plans: dict[str, tuple[int, tuple[int, ...]]],
) -> TestbedState:
    """What :func:`rpkirepo.testbed.advance` needs to continue from this run."""
    out = []
    for ca in cas:
        point = w.pub_point(ca)
        roas = tuple(
            RoaState(p.file, p.asn, p.prefixes, w.ee_serials[point + p.file], w.not_after)
            for p in roa_plans.get(ca.name, ())
        )
        aspa = None
        if ca.parent is not None:
            customer, providers = aspa_plans[ca.name]
            aspa = AspaState(f"AS{customer}.asa", customer, providers)
        out.append(
            CaState(
                name=ca.name,
                cn=ca.cn,
                stem=ca.file_stem,
                parent=None if ca.parent is None else ca.parent.name,
                children=tuple(c.name for c in ca.children),
                serial=ca.serial,
                not_after=w.not_after,
                ipv4=ca.ipv4,
                ipv6=ca.ipv6,
                asns=ca.asns,
                own4=ca.own4,
                own6=ca.own6,
                own_as=ca.own_as,
                manifest_number=1,
                crl_number=1,
                manifest_ee_serial=w.ee_serials[f"{point}{ca.name}.mft"],
                manifest_ee_not_after=w.not_after,
                revoked=(),
                roas=roas,
                next_roa=len(roas) + 1,
                aspa=aspa,
                gbr=None if ca.parent is None else f"{ca.name}.gbr",
                point=ca.point,
            )
        )
    return TestbedState(
        rsync_base=opts.rsync_base,
        rrdp_base=opts.rrdp_base,
        ta_uris=ta_uris,
        days=opts.days,
        aspa_version=opts.aspa_version,
        seed=opts.seed,
        generation=0,
        signing_time=w.signing_time,
        expires=w.not_after,
        cas=tuple(out),
        pub_points=opts.pub_points,
    )


def _write(
    opts: TestbedOptions,
    w: _Writer,
    ta_der: bytes,
    ta: _Ca,
    ta_uris: tuple[str, ...],
    vrps: set[Vrp],
    aspas: set[ExpectedAspa],
    state: TestbedState | None,
    cas: list[_Ca],
    files: dict[str, str],
) -> Testbed:
    out = opts.out_dir
    repo = out / "repository"
    for uri in ta_uris:  # a TA URI inside a module: the certificate is published there
        if w.in_modules(uri):
            w.put_uri(uri, ta_der, w.not_before)
    _flush(w, repo, files)
    try:
        ta_cert = out / "ta.cer"
        ta_cert.write_bytes(ta_der)
        tal = out / f"{TA_NAME}.tal"
        comments = [f"rpkirepo testbed, seed {opts.seed}: {hashlib.sha256(ta_der).hexdigest()}"]
        tal.write_bytes(encode_tal(ta_uris, ta.keypair.spki_der(), comments))
        expires = int(w.not_after.timestamp())
        (out / "expected-vrps.csv").write_text(vrps_csv(vrps, TA_NAME, expires))
        (out / "expected-vrps.json").write_text(vrps_json(vrps, aspas, TA_NAME, expires))
    except OSError as exc:
        raise StorageError(Reason.STORAGE_IO, f"cannot write the testbed: {exc}") from exc
    if state is not None:  # what `testbed advance` needs (key rolls, new CRLs and manifests)
        for ca in cas:
            save_key(out, ca.name, ca.keypair)
        save_state(out, state)
    return Testbed(
        out_dir=out,
        repository=repo,
        ta_certificate=ta_cert,
        tal=tal,
        vrps=frozenset(vrps),
        aspas=frozenset(aspas),
        files=files,
        not_before=w.not_before,
        not_after=w.not_after,
        points=_points(opts, w, cas, files),
    )


def _points(
    opts: TestbedOptions, w: _Writer, cas: list[_Ca], files: dict[str, str]
) -> tuple[PublicationPoint, ...]:
    out = []
    bases = [(opts.rsync_base, opts.rrdp_base), *opts.pub_points]
    for i, (point, (rsync, rrdp)) in enumerate(zip(w.points, bases, strict=True)):
        if i == 0:  # paths below the main module never begin with "../"
            directory = opts.out_dir / "repository"
            mine = {rel: kind for rel, kind in files.items() if not rel.startswith("../")}
        else:
            directory = opts.out_dir / point_directory(rsync)
            mine = {
                rel[len(point.directory) :]: kind
                for rel, kind in files.items()
                if rel.startswith(point.directory)
            }
        cas_here = tuple(ca.name for ca in cas if ca.point == i)
        out.append(PublicationPoint(rsync, rrdp, point.module, directory, cas_here, mine))
    return tuple(out)


def _flush(w: _Writer, repo: Path, files: dict[str, str]) -> None:
    """Write the objects ``w`` holds below ``repo`` (mtime: :attr:`_Writer.mtimes`), record
    their kinds in ``files`` and forget them."""
    try:
        for rel, data in sorted(w.objects.items()):
            path = Path(os.path.normpath(repo / rel))  # an extra point's rel begins with ../
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            stamp = w.mtimes[rel].timestamp()
            os.utime(path, (stamp, stamp))
            files[rel] = rel.rsplit(".", 1)[1]
    except OSError as exc:
        raise StorageError(Reason.STORAGE_IO, f"cannot write the testbed: {exc}") from exc
    w.objects.clear()
    w.mtimes.clear()


# --- Scale mode (benchmarks only) ---------------------------------------------------------------

#: ROAs in each CA of a scale testbed; with its certificate, CRL, manifest, ASPA and GBR a CA
#: brings ``SCALE_ROAS_PER_CA + 5`` objects (75 % ROAs).
SCALE_ROAS_PER_CA: Final = 15
SCALE_MIN: Final = 100
SCALE_MAX: Final = 2_000_000
#: Keys generated per run in scale mode: this many for CAs and as many for EE certificates.
KEY_POOL_SIZE: Final = 8
#: At most this many CAs are signed per task handed to a worker process.
_SCALE_CHUNK: Final = 16


def scale_options(opts: TestbedOptions) -> TestbedOptions:
    """``opts`` with ``cas``, ``roas_per_ca`` and ``depth`` derived from ``opts.scale`` (the
    approximate number of objects); ``opts`` itself when it has no scale."""
    if opts.scale is None:
        return opts
    if not SCALE_MIN <= opts.scale <= SCALE_MAX:
        raise _usage(f"--scale must be {SCALE_MIN}..{SCALE_MAX}")
    cas = max(2, round((opts.scale - 2) / (SCALE_ROAS_PER_CA + 5)))
    return dataclasses.replace(opts, cas=cas, roas_per_ca=SCALE_ROAS_PER_CA, depth=2)


class _KeyPool:
    """Scale mode's keys: ``KEY_POOL_SIZE`` CA keys and as many EE keys, generated once and
    reused.  This breaks RFC 6487 §3 (one-time-use EE keys) and makes many CAs share a key:
    fine for reading and publishing benchmarks, wrong for validation tests."""

    def __init__(self, size: int = KEY_POOL_SIZE) -> None:
        self.ca_keys = [new_key() for _ in range(size)]
        self._ee = itertools.cycle([new_key() for _ in range(size)])
        self._next_ca = 0

    def ca_key(self, parent: KeyPair) -> KeyPair:
        """The next CA key, never its parent's (a shared SKI/AKI would look self-signed)."""
        key = self.ca_keys[self._next_ca % len(self.ca_keys)]
        self._next_ca += 1
        if key is parent:
            return self.ca_key(parent)
        return key

    def ee_key(self) -> KeyPair:
        return next(self._ee)


_ScaleJob = tuple[
    _Writer,
    list[_Ca],
    dict[str, list[_RoaPlan]],
    dict[str, tuple[int, tuple[int, ...]]],
    TestbedOptions,
]
#: What the forked workers sign (set by :func:`_sign_scaled` before the pool starts).
_scale_job: _ScaleJob | None = None


#: What a worker returns: the files it wrote (path -> kind), VRPs, ASPAs, and why it stopped
#: writing (rpkirepo's errors do not survive pickling, so only their text crosses back).
_ChunkResult = tuple[dict[str, str], set[Vrp], set[ExpectedAspa], str | None]


def _scale_chunk(indices: list[int]) -> _ChunkResult:
    """Sign and write the publication points of ``cas[i]`` for ``i`` in ``indices``; each CA
    gets an RNG of its own (seed and name), so the output does not depend on the workers."""
    if _scale_job is None:
        raise RuntimeError("no scale job")
    w, cas, roa_plans, aspa_plans, opts = _scale_job
    files: dict[str, str] = {}
    vrps: set[Vrp] = set()
    aspas: set[ExpectedAspa] = set()
    try:
        for i in indices:
            ca = cas[i]
            w.rng = random.Random(f"{opts.seed}/{ca.name}")
            point_vrps, point_aspas = _sign_point(w, ca, roa_plans, aspa_plans, opts.aspa_version)
            vrps |= point_vrps
            aspas |= point_aspas
            _flush(w, opts.out_dir / "repository", files)
    except StorageError as exc:
        return files, vrps, aspas, str(exc.__cause__ or exc)
    return files, vrps, aspas, None


def _sign_scaled(
    opts: TestbedOptions,
    w: _Writer,
    cas: list[_Ca],
    roa_plans: dict[str, list[_RoaPlan]],
    aspa_plans: dict[str, tuple[int, tuple[int, ...]]],
) -> tuple[dict[str, str], set[Vrp], set[ExpectedAspa]]:
    """Sign and write every publication point, point by point (memory stays flat), in
    ``opts.jobs`` forked worker processes (0: one per CPU)."""
    global _scale_job
    jobs = opts.jobs or len(os.sched_getaffinity(0))
    size = max(1, min(_SCALE_CHUNK, -(-len(cas) // (4 * jobs))))  # >= 4 tasks per worker
    chunks = [list(range(i, min(i + size, len(cas)))) for i in range(0, len(cas), size)]
    files: dict[str, str] = {}
    vrps: set[Vrp] = set()
    aspas: set[ExpectedAspa] = set()
    _scale_job = (w, cas, roa_plans, aspa_plans, opts)
    try:
        if jobs <= 1 or len(chunks) == 1:
            results = [_scale_chunk(chunk) for chunk in chunks]
        else:
            context = multiprocessing.get_context("fork")  # the workers inherit the keys
            with context.Pool(min(jobs, len(chunks))) as workers:
                results = list(workers.imap_unordered(_scale_chunk, chunks))
    finally:
        _scale_job = None
    for chunk_files, chunk_vrps, chunk_aspas, failure in results:
        if failure is not None:
            raise StorageError(Reason.STORAGE_IO, f"cannot write the testbed: {failure}")
        files.update(chunk_files)
        vrps |= chunk_vrps
        aspas |= chunk_aspas
    return files, vrps, aspas
