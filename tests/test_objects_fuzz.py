"""Hypothesis fuzzing (the h11 invariant): whatever the bytes, only RpkiRepoError subclasses leave
read_object, detect_kind, fast_signing_time, read_signing_time, read_ca_pointers and
read_manifest_entries, and mtime_of never raises.

Inputs: random bytes, random DER-ish trees, and mutations (bit flips, byte overwrites,
insertions, deletions, truncations, splices) of a sample of real corpus objects, BER included.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpkirepo.errors import RpkiRepoError
from rpkirepo.limits import DEFAULT_LIMITS
from rpkirepo.objects import (
    CaPointers,
    Certificate,
    Crl,
    Manifest,
    ManifestEntries,
    ObjectTime,
    SignedObject,
    TimeSource,
    detect_kind,
    fast_signing_time,
    mtime_of,
    read_ca_pointers,
    read_manifest_entries,
    read_object,
    read_signing_time,
)
from rpkirepo.objects._fast import _mtime
from rpkirepo.objects._time import to_datetime

SAMPLES = (
    "objects/roa/rrdp-ripe-prod-2019/0sxGcmPaG5y7-sSKe_aOI28sKBM.roa",  # BER
    "objects/mft/rpki-rs/ta.mft",  # BER
    "objects/roa/rrdp-krill-ui-dev/AS14008.roa",
    "objects/mft/rrdp-krill-ui-dev/B7F604EA4F4D54DEF2BC3740540178C01189EAA3.mft",
    "objects/asa/rpki-client-regress/AS1000.asa",
    "objects/gbr/rpki-prover/ClF4YOBviAEnwFokhNG1NXBZjEA.gbr",
    "objects/tak/rpki-client-regress/05F53BCE4DAA11EDB9AC0C5B9E174E93.tak",
    "objects/spl/rpki-client-regress/9X0AhXWTJDl8lJhfOwvnac-42CA.spl",
    "objects/sig/rpki-rs/koen.sig",
    "objects/cer/rpki-client-regress/ripe-ncc-ta.cer",
    "objects/cer/rpki-rs/router.cer",
    "objects/crl/rrdp-ripe-prod-2019/lzkCc7Myo8KSctQvclH_mRliuNQ.crl",
    "objects/geofeed/rpki-client-regress-history/geofeed.csv",
    "objects/cms-protocol/rpki-rs/issue.der",
    "conformance/bbn/root/badCMSSigInfoAttrs2SigTime.roa",
)
NAMES = ("x.roa", "x.mft", "x.cer", "x.crl", "x.asa", "x.der", "x", "x.csv")
FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(scope="module")
def samples(corpus_dir: Path) -> list[bytes]:
    return [(corpus_dir / rel).read_bytes() for rel in SAMPLES]


def _outcome(read: Callable[[bytes], object], data: bytes) -> object:
    try:
        value = read(data)
    except RpkiRepoError as exc:
        return exc  # only our errors may escape; anything else fails the test
    return to_datetime(value) if isinstance(value, int) else value


def check_all(data: bytes, name: str) -> None:
    """The invariants, for one input."""
    t = mtime_of(data, name)  # never raises
    assert isinstance(t, ObjectTime)
    assert (t.source is TimeSource.NONE) == (t.seconds == -1)
    _outcome(lambda d: _mtime(d, name, DEFAULT_LIMITS), data)  # only our errors, even inside
    obj = _outcome(lambda d: read_object(d, name=name), data)
    kind = _outcome(lambda d: detect_kind(d, name=name), data)
    fast = _outcome(fast_signing_time, data)
    slow = _outcome(read_signing_time, data)
    # The fast signing-time walk is at least as strict as the asn1crypto one, and they agree.
    if not isinstance(fast, RpkiRepoError):
        assert fast == slow
    pointers = _outcome(read_ca_pointers, data)
    entries = _outcome(read_manifest_entries, data)
    # Whatever read_object accepts, the fast path reads the same way.
    if isinstance(obj, RpkiRepoError):
        return
    assert isinstance(obj, Certificate | Crl | SignedObject)
    assert kind is obj.kind
    if isinstance(obj, Certificate) and isinstance(pointers, CaPointers):
        got = (pointers.kind, pointers.ca_repository, pointers.rpki_manifest, pointers.rpki_notify)
        assert got == (obj.kind, obj.ca_repository, obj.rpki_manifest, obj.rpki_notify)
    if (
        isinstance(obj, SignedObject)
        and isinstance(obj.content, Manifest)
        and isinstance(entries, ManifestEntries)
    ):
        assert entries.files == tuple((f.file, f.hash) for f in obj.content.files)
    if isinstance(obj, SignedObject):
        assert fast == obj.signing_time
        if obj.signing_time is not None and obj.signing_time.timestamp() >= 0:
            assert t.source is TimeSource.SIGNING_TIME
            assert t.seconds == obj.signing_time.timestamp()
    elif isinstance(obj, Crl) and obj.this_update.timestamp() >= 0:
        assert (t.source, t.seconds) == (TimeSource.CRL_THIS_UPDATE, obj.this_update.timestamp())
    elif isinstance(obj, Certificate) and obj.not_before.timestamp() >= 0:
        assert (t.source, t.seconds) == (TimeSource.CERT_NOT_BEFORE, obj.not_before.timestamp())


@FUZZ
@given(data=st.binary(max_size=600), name=st.sampled_from(NAMES))
def test_random_bytes(data: bytes, name: str) -> None:
    check_all(data, name)


@FUZZ
@given(data=st.binary(max_size=300), name=st.sampled_from(NAMES))
def test_random_bytes_behind_a_sequence_header(data: bytes, name: str) -> None:
    check_all(b"\x30\x80" + data, name)
    check_all(b"\x30" + bytes([min(len(data), 127)]) + data, name)


def _tree() -> st.SearchStrategy[bytes]:
    """Random TLV trees: plausible enough to get past the first header."""
    tags = st.sampled_from([0x02, 0x03, 0x04, 0x06, 0x17, 0x18, 0x30, 0x31, 0xA0, 0xA3, 0x24])
    leaf = st.builds(lambda t, b: bytes([t & 0x1F, len(b)]) + b, tags, st.binary(max_size=20))

    def wrap(children: st.SearchStrategy[list[bytes]]) -> st.SearchStrategy[bytes]:
        def build(tag: int, kids: list[bytes], indefinite: bool) -> bytes:
            body = b"".join(kids)
            tag |= 0x20
            if indefinite:
                return bytes([tag, 0x80]) + body + b"\x00\x00"
            n = len(body)
            head = bytes([n]) if n < 0x80 else b"\x82" + n.to_bytes(2, "big")
            return bytes([tag]) + head + body

        return st.builds(build, tags, children, st.booleans())

    return st.recursive(leaf, lambda c: wrap(st.lists(c, max_size=5)), max_leaves=30)


@FUZZ
@given(tree=_tree(), name=st.sampled_from(NAMES))
def test_random_trees(tree: bytes, name: str) -> None:
    check_all(b"\x30" + bytes([len(tree)]) + tree if len(tree) < 128 else tree, name)


@st.composite
def mutated(draw: st.DrawFn, samples: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(samples)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "splice"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0x80, 0xFF, 0x30, 0x84, 0x1F, 0x7F]))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[at:]
        elif op == "splice":
            other = draw(st.sampled_from(samples))
            start = draw(st.integers(0, len(other) - 1))
            data[at : at + draw(st.integers(0, 64))] = other[start : start + 64]
    return bytes(data)


@FUZZ
@given(st.data())
def test_mutated_corpus_objects(samples: list[bytes], data: st.DataObject) -> None:
    check_all(data.draw(mutated(samples)), data.draw(st.sampled_from(NAMES)))


@FUZZ
@given(st.data())
def test_mutated_length_octets(samples: list[bytes], data: st.DataObject) -> None:
    """Lengths are where parsers die: rewrite a long-form length field inside a real object."""
    original = data.draw(st.sampled_from(samples))
    spots = [i for i in range(1, len(original) - 3) if original[i] in (0x81, 0x82, 0x83)]
    if not spots:
        return
    at = data.draw(st.sampled_from(spots))
    count = original[at] & 0x7F
    value = data.draw(st.integers(0, 256**count - 1))
    blob = original[: at + 1] + value.to_bytes(count, "big") + original[at + 1 + count :]
    check_all(blob, data.draw(st.sampled_from(NAMES)))


def test_unmutated_samples_read(samples: list[bytes]) -> None:
    """The fuzz seeds themselves are good objects (so mutations start from deep inside)."""
    for rel, blob in zip(SAMPLES, samples, strict=True):
        if "bbn" in rel:
            continue
        assert read_object(blob, name=rel) is not None
        assert mtime_of(blob, rel).source is not TimeSource.NONE
