"""``rpkirepo testbed advance``: one step of the churn a live repository shows, applied in place.

Theory of operation.  :func:`advance` loads ``OUT_DIR/testbed-state.json`` and the CA keys
(:mod:`.state`), picks what changes with a seeded RNG, signs, and rewrites only the files that
change in ``OUT_DIR/repository/`` (and, for a testbed with several publication points, in
``OUT_DIR/repositories/HOST[_PORT]/MODULE/``: each CA's files are in its own point's directory,
its certificate in its parent's), then ``expected-vrps.*`` and the state.  ``rpkirepo publish``
on each point's directory then sees one set of changes: one RRDP delta.

One step, for a time ``now`` strictly after the previous run (the validity window becomes
``now - 1 h`` to ``now + days``, so thisUpdate and nextUpdate move forward):

1. **Revoke** one ROA of a CA below the TA: its file leaves the publication point (and so the
   manifest), its EE certificate's serial goes on the CRL (RFC 6487 §5) and stays there until
   one CRL issued after the certificate expired has listed it (RFC 5280 §3.3).
2. **Roll a key** (``roll_key``; RFC 6489, simplified to a single step): the CA gets a new key;
   its parent issues a certificate for it with a new serial at the same URI and revokes the old
   one; the CA re-issues, under the new key, the certificates of its children (new serials) and
   every signed object of its point (same eContent, fresh EE).  Its manifest and CRL get new
   names (``NAME-kSTEP.mft``/``.crl``, as CAs that name them after the key do) and the old
   key's are withdrawn: rpki-client 8.2 also parses the previously cached manifest at the
   certificate's rpkiManifest URI, and warns "unknown AKI" when that is the old key's.  The
   TA never rolls (that needs a new TAL, or a TAK: RFC 9691).
3. **Add** one ROA (IPv4, IPv6 or both, prefixes not used by the CA's ROAs before this step)
   as ``roa-J-AS<asn>.roa`` with a J never used in that CA before.
4. **Re-issue** every CA's CRL (cRLNumber + 1, RFC 5280 §5.2.3; the previous manifest's EE
   certificate is revoked too: it is used once, RFC 6487 §3) and manifest (manifestNumber + 1,
   RFC 9286 §4.2.1), each manifest listing exactly the files of its point.

Every new signed object has a fresh one-time EE key and certificate with a new serial, and
signing-time ``now`` (RFC 6487 §3, RFC 9589); every written file's mtime follows the generator's
rule.  The TA certificate is never re-issued, so it still ends first and every VRP's ``expires``
stays what :func:`generate` wrote.  The same seed on the same state makes the same choices;
without a seed the RNG is seeded from the generation's seed and its number.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from typing import Final

from rpkirepo.errors import ConfigError, Reason, StorageError
from rpkirepo.fsutil import atomic_write
from rpkirepo.uri import RsyncUri

from . import cms
from .crl import issue_crl
from .expected import ExpectedAspa, Vrp, vrps_csv, vrps_json
from .generator import (
    MAX_ROA_V4_LENGTH,
    MAX_ROA_V6_LENGTH,
    TA_NAME,
    TestbedOptions,
    _Ca,
    _maybe_max,
    _Writer,
)
from .keys import KeyPair, new_key
from .manifest import encode_manifest
from .resources import AsRange, ResourceSet
from .roa import RoaPrefix, encode_roa
from .state import (
    CaState,
    Revoked,
    RoaState,
    TestbedState,
    load_key,
    load_state,
    save_key,
    save_state,
)

__all__ = ["Advance", "advance"]

_SIGNED: Final = ("roa", "asa", "gbr", "mft")
_INHERIT: Final = ResourceSet(inherit_ip=True, inherit_as=True)


@dataclass(frozen=True)
class Advance:
    """What one :func:`advance` changed; paths are relative to ``OUT_DIR/repository/`` (those of
    an extra publication point begin with ``../repositories/``, see :class:`.Testbed`)."""

    __test__ = False

    out_dir: Path
    generation: int
    written: tuple[str, ...]  # new and replaced files
    removed: tuple[str, ...]
    added_roa: str
    revoked_roa: str | None  # None when no CA had a ROA left
    revoked_serial: int | None  # the revoked ROA's EE certificate serial
    rolled_ca: str | None
    vrps: frozenset[Vrp]
    aspas: frozenset[ExpectedAspa]
    not_before: datetime
    not_after: datetime


def _usage(detail: str) -> ConfigError:
    return ConfigError(Reason.USAGE, detail)


def _when(state: TestbedState, now: datetime | None) -> datetime:
    """The new run's time: after the last run (whole seconds), before the TA expires."""
    if now is None:
        when = max(
            datetime.now(UTC).replace(microsecond=0), state.signing_time + timedelta(seconds=1)
        )
    else:
        when = now.astimezone(UTC).replace(microsecond=0)
        if when <= state.signing_time:
            raise _usage(f"time must move forward: the last run was at {state.signing_time}")
    if when + timedelta(hours=1) >= state.expires:
        raise _usage(f"the testbed's TA certificate expires at {state.expires}: generate anew")
    return when


class _Step:
    """The working copy of one advance: CA states, keys, new files, removed files."""

    def __init__(
        self, state: TestbedState, keys: dict[str, KeyPair], w: _Writer, repo: Path
    ) -> None:
        self.repo = repo
        self.previous = state.signing_time  # of the last run
        self.cur = {ca.name: ca for ca in state.cas}
        self.keys = keys
        self.w = w
        self.fresh: dict[str, dict[str, bytes]] = {ca.name: {} for ca in state.cas}
        self.removed: list[str] = []  # below the rsync base

    def as_ca(self, name: str) -> _Ca:
        """The generator's view of CA ``name`` (its chain of parents included)."""
        ca = self.cur[name]
        parent = None if ca.parent is None else self.as_ca(ca.parent)
        return _Ca(
            name=ca.name,
            cn=ca.cn,
            level=0 if parent is None else parent.level + 1,
            parent=parent,
            serial=ca.serial,
            ipv4=ca.ipv4,
            ipv6=ca.ipv6,
            asns=ca.asns,
            own4=ca.own4,
            own6=ca.own6,
            own_as=ca.own_as,
            key=self.keys[name],
            stem=ca.stem,
            point=ca.point,
        )

    def module_rel(self, rel: str) -> str:
        """A path ``NAME/FILE`` in CA NAME's publication point as a path relative to
        ``repository/`` (its point's module directory, :meth:`_Writer.local`)."""
        return self.w.local(rel)

    def current(self, name: str, file: str) -> bytes:
        """A file of ``name``'s point as it will be: new, or as it is on disk."""
        if file in self.fresh[name]:
            return self.fresh[name][file]
        path = Path(os.path.normpath(self.repo / self.module_rel(f"{name}/{file}")))
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StorageError(
                Reason.STATE_OUTPUT_MISMATCH, f"testbed file unreadable: {exc}", path=str(path)
            ) from exc

    def sign_roa(self, name: str, roa: RoaState) -> RoaState:
        nets = [p.prefix for p in roa.prefixes]
        ee = ResourceSet(
            ipv4=tuple(n for n in nets if isinstance(n, IPv4Network)),
            ipv6=tuple(n for n in nets if isinstance(n, IPv6Network)),
        )
        rel = f"{name}/{roa.file}"
        econtent = encode_roa(roa.asn, roa.prefixes)
        self.fresh[name][roa.file] = self.w.signed(self.as_ca(name), rel, cms.OID_ROA, econtent, ee)
        return replace(roa, ee_serial=self.w.ee_serials[rel], ee_not_after=self.w.not_after)

    def revoke_roa(self, name: str, rng: random.Random) -> tuple[str, int]:
        ca = self.cur[name]
        roa = rng.choice(ca.roas)
        entry = Revoked(roa.ee_serial, self.w.not_before, roa.ee_not_after)
        self.cur[name] = replace(
            ca, roas=tuple(r for r in ca.roas if r is not roa), revoked=(*ca.revoked, entry)
        )
        self.removed.append(f"{name}/{roa.file}")
        return f"{name}/{roa.file}", roa.ee_serial

    def roll(self, name: str, stem: str, rng: random.Random) -> None:
        """RFC 6489 in one step: new key, new certificate at the same URI, old one revoked,
        everything below re-issued under the new key, the manifest and CRL under new names."""
        old = self.cur[name]
        assert old.parent is not None
        parent = self.cur[old.parent]
        entry = Revoked(old.serial, self.w.not_before, old.not_after)
        self.cur[parent.name] = replace(parent, revoked=(*parent.revoked, entry))
        self.keys[name] = new_key()
        # The old key's CRL goes with it: the new key has revoked nothing yet.
        self.cur[name] = replace(
            old, stem=stem, serial=rng.randrange(1, 2**63), not_after=self.w.not_after, revoked=()
        )
        self.removed += [f"{name}/{old.stem}.mft", f"{name}/{old.stem}.crl"]
        self.reissue_certificate(name)
        for child in old.children:
            c = self.cur[child]
            self.cur[child] = replace(c, serial=rng.randrange(1, 2**63), not_after=self.w.not_after)
            self.reissue_certificate(child)
        ca = self.cur[name]
        self.cur[name] = replace(ca, roas=tuple(self.sign_roa(name, r) for r in ca.roas))
        others: list[tuple[str, ResourceSet]] = []  # same EE resources as the generator's
        if ca.aspa is not None:
            customer = AsRange(ca.aspa.customer, ca.aspa.customer)
            others.append((ca.aspa.file, ResourceSet(asns=(customer,))))
        if ca.gbr is not None:
            others.append((ca.gbr, _INHERIT))
        for file, resources in others:
            kind, econtent = cms.econtent_of(self.current(name, file))
            self.fresh[name][file] = self.w.signed(
                self.as_ca(name), f"{name}/{file}", kind, econtent, resources
            )

    def reissue_certificate(self, name: str) -> None:
        ca = self.as_ca(name)
        assert ca.parent is not None
        self.fresh[ca.parent.name][f"{name}.cer"] = self.w.ca_certificate(ca, self.w.resources(ca))

    def files_of(self, name: str) -> list[str]:
        """Every file of ``name``'s point but the manifest, from the state."""
        ca = self.cur[name]
        files = [f"{c}.cer" for c in ca.children] + [f"{ca.stem}.crl"]
        files += [r.file for r in ca.roas]
        if ca.aspa is not None:
            files.append(ca.aspa.file)
        if ca.gbr is not None:
            files.append(ca.gbr)
        return files

    def reissue_point(self, name: str, rolled: bool) -> None:
        """A new CRL and a new manifest for ``name`` (RFC 5280 §5.2.3, RFC 9286 §4.2.1)."""
        ca, w = self.cur[name], self.w
        revoked = list(ca.revoked)
        if not rolled:  # the replaced manifest's one-time EE certificate
            revoked.append(Revoked(ca.manifest_ee_serial, w.not_before, ca.manifest_ee_not_after))
        # RFC 5280 §3.3: on every CRL until one issued after the certificate's expiry.
        revoked = [r for r in revoked if r.expires >= self.previous]
        self.fresh[name][f"{ca.stem}.crl"] = issue_crl(
            ca.cn,
            self.keys[name],
            ca.crl_number + 1,
            w.not_before,
            w.not_after,
            [(r.serial, r.revoked_at) for r in revoked],
        )
        listed = {f: self.current(name, f) for f in self.files_of(name)}
        econtent = encode_manifest(ca.manifest_number + 1, w.not_before, w.not_after, listed)
        rel = f"{name}/{ca.stem}.mft"
        mft = w.signed(self.as_ca(name), rel, cms.OID_MANIFEST, econtent, _INHERIT)
        self.fresh[name][f"{ca.stem}.mft"] = mft
        self.cur[name] = replace(
            ca,
            crl_number=ca.crl_number + 1,
            manifest_number=ca.manifest_number + 1,
            manifest_ee_serial=w.ee_serials[rel],
            manifest_ee_not_after=w.not_after,
            revoked=tuple(revoked),
        )


def _new_roa(ca: CaState, taken: set[str], rng: random.Random) -> RoaState:
    """One ROA from the CA's own space, on prefixes none of its ROAs used before."""
    len4 = min(32, max(MAX_ROA_V4_LENGTH, ca.own4.prefixlen + 2))
    len6 = min(128, max(MAX_ROA_V6_LENGTH, ca.own6.prefixlen + 2))
    j = ca.next_roa
    asn = ca.own_as.first + 1 + (j - 1) % max(1, ca.own_as.last - ca.own_as.first)
    prefixes: list[RoaPrefix] = []
    for family in rng.choice(["4", "6", "46"]):
        own: IPv4Network | IPv6Network = ca.own4 if family == "4" else ca.own6
        length = len4 if family == "4" else len6
        size = 2 ** (own.max_prefixlen - length)
        for _ in range(64):
            address = int(own.network_address) + rng.randrange(2 ** (length - own.prefixlen)) * size
            net = (IPv4Network if family == "4" else IPv6Network)((address, length))
            if str(net) not in taken:
                break
        else:
            raise _usage(f"no room for another ROA in {ca.name} ({own})")
        taken.add(str(net))
        limit = min(own.max_prefixlen, length + (8 if family == "4" else 16))
        prefixes.append(RoaPrefix(net, _maybe_max(rng, length, limit)))
    return RoaState(f"roa-{j}-AS{asn}.roa", asn, tuple(prefixes), 0, ca.not_after)


def advance(
    out_dir: Path,
    *,
    seed: int | None = None,
    roll_key: bool = False,
    now: datetime | None = None,
) -> Advance:
    """Advance the testbed in ``out_dir`` by one step; see the module docstring."""
    state = load_state(out_dir)
    when = _when(state, now)
    rng = random.Random(seed if seed is not None else f"{state.seed}:{state.generation + 1}")
    keys = {ca.name: load_key(out_dir, ca.name) for ca in state.cas}
    opts = TestbedOptions(
        out_dir=out_dir,
        rsync_base=state.rsync_base,
        rrdp_base=state.rrdp_base,
        ta_uris=state.ta_uris,
        days=state.days,
        now=when,
        seed=state.seed,
        aspa_version=state.aspa_version,
        pub_points=state.pub_points,
    )
    w = _Writer(opts, RsyncUri.parse(state.rsync_base), state.ta_uris, rng)
    w.point_of = {ca.name: ca.point for ca in state.cas}
    step = _Step(state, keys, w, out_dir / "repository")

    below_ta = [ca.name for ca in state.cas if ca.parent is not None]
    with_roas = [ca.name for ca in state.cas if ca.parent is not None and ca.roas]
    revoke_in = rng.choice(with_roas) if with_roas else None
    add_in = rng.choice(below_ta)
    roll_in = None
    if roll_key:
        others = [n for n in below_ta if n not in (revoke_in, add_in)]
        roll_in = rng.choice(others or below_ta)

    revoked_roa = revoked_serial = None
    if revoke_in is not None:
        revoked_roa, revoked_serial = step.revoke_roa(revoke_in, rng)
    if roll_in is not None:
        step.roll(roll_in, f"{roll_in}-k{state.generation + 1}", rng)
    ca = step.cur[add_in]
    taken = {str(p.prefix) for r in state.ca(add_in).roas for p in r.prefixes}
    new = step.sign_roa(add_in, _new_roa(ca, taken, rng))
    step.cur[add_in] = replace(ca, roas=(*ca.roas, new), next_roa=ca.next_roa + 1)
    for name in (c.name for c in state.cas):
        step.reissue_point(name, rolled=name == roll_in)

    for name, files in step.fresh.items():
        for file, data in files.items():
            signed = file.rsplit(".", 1)[1] in _SIGNED
            w.put(f"{name}/{file}", data, w.signing_time if signed else w.not_before)
    new_state = replace(
        state,
        generation=state.generation + 1,
        signing_time=w.signing_time,
        cas=tuple(step.cur[c.name] for c in state.cas),
    )
    removed = tuple(step.module_rel(rel) for rel in step.removed)
    vrps = frozenset(
        Vrp(r.asn, str(p.prefix), p.effective_max_length)
        for c in new_state.cas
        for r in c.roas
        for p in r.prefixes
    )
    aspas = frozenset(
        ExpectedAspa(c.aspa.customer, c.aspa.providers) for c in new_state.cas if c.aspa is not None
    )
    _write(out_dir, w, removed, new_state, vrps, aspas, roll_in, step.keys)
    return Advance(
        out_dir=out_dir,
        generation=new_state.generation,
        written=tuple(sorted(w.objects)),
        removed=removed,
        added_roa=step.module_rel(f"{add_in}/{new.file}"),
        revoked_roa=None if revoked_roa is None else step.module_rel(revoked_roa),
        revoked_serial=revoked_serial,
        rolled_ca=roll_in,
        vrps=vrps,
        aspas=aspas,
        not_before=w.not_before,
        not_after=w.not_after,
    )


def _write(
    out_dir: Path,
    w: _Writer,
    removed: Sequence[str],
    state: TestbedState,
    vrps: frozenset[Vrp],
    aspas: frozenset[ExpectedAspa],
    rolled: str | None,
    keys: dict[str, KeyPair],
) -> None:
    """Repository files first, then the new key, then the state (written last: until then a
    rerun starts from the previous state and its keys)."""
    repo = out_dir / "repository"

    def path(rel: str) -> Path:  # an extra publication point's rel begins with ../
        return Path(os.path.normpath(repo / rel))

    for rel, data in sorted(w.objects.items()):
        atomic_write(path(rel), data, mode=0o644, mtime=int(w.mtimes[rel].timestamp()))
    for rel in removed:
        try:
            path(rel).unlink()
        except OSError as exc:
            raise StorageError(Reason.STORAGE_IO, f"cannot remove: {exc}", path=rel) from exc
    expires = int(state.expires.timestamp())
    atomic_write(out_dir / "expected-vrps.csv", vrps_csv(vrps, TA_NAME, expires).encode())
    atomic_write(out_dir / "expected-vrps.json", vrps_json(vrps, aspas, TA_NAME, expires).encode())
    if rolled is not None:
        save_key(out_dir, rolled, keys[rolled])
    save_state(out_dir, state)
