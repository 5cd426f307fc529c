"""Snapshot files from buckets: the gzip sibling made of independent deflate segments is a valid
gzip file for every decoder, and copying clean buckets reproduces their bytes exactly."""

from __future__ import annotations

import gzip
import hashlib
import random
import subprocess
import zlib
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from rpkirepo.publish.snapshot import (
    BucketCopy,
    BucketNew,
    deflate_segment,
    gzip_bytes,
    split_bucket_lines,
    write_snapshot,
)
from rpkirepo.rrdp.model import SessionId
from rpkirepo.rrdp.writer import publish_element
from rpkirepo.uri import RsyncUri

SESSION = SessionId("9df4b597-af9e-4dca-bdda-719cce2c4e28")


def _bucket(rng: random.Random, b: int, n: int) -> bytes:
    return b"".join(
        publish_element(
            RsyncUri(f"rsync://h/m/b{b}/o{i}&x.roa"), rng.randbytes(rng.randrange(100, 3000))
        )
        for i in range(n)
    )


@settings(max_examples=25, deadline=None)
@given(st.lists(st.binary(max_size=5000), max_size=8), st.integers(0, 3))
def test_segments_concatenate_into_one_stream(parts: list[bytes], level: int) -> None:
    body = b"".join(deflate_segment(p, level) for p in parts) + deflate_segment(
        b"end", level, final=True
    )
    assert zlib.decompress(body, -15) == b"".join(parts) + b"end"


def test_gzip_bytes_is_reproducible_and_valid() -> None:
    data = b"<notification/>" * 100
    assert gzip.decompress(gzip_bytes(data, 3)) == data
    assert gzip_bytes(data, 3) == gzip_bytes(data, 3)


def test_snapshot_from_new_and_copied_buckets(tmp_path: Path) -> None:
    rng = random.Random(7)
    buckets = {b: _bucket(rng, b, rng.randrange(1, 20)) for b in range(6)}
    first = write_snapshot(
        tmp_path / "s1.xml",
        tmp_path / "s1.xml.gz",
        SESSION,
        1,
        [BucketNew(b, x, deflate_segment(x, 3)) for b, x in buckets.items()],
        None,
        3,
    )
    xml1 = (tmp_path / "s1.xml").read_bytes()
    assert hashlib.sha256(xml1).digest() == first.hash.digest and len(xml1) == first.size
    assert gzip.decompress((tmp_path / "s1.xml.gz").read_bytes()) == xml1
    # Serial 2: bucket 3 rebuilt, the others copied.
    new3 = _bucket(rng, 3, 4)
    items = [
        BucketNew(3, new3, deflate_segment(new3, 3)) if s.bucket == 3 else BucketCopy(s)
        for s in first.spans
    ]
    second = write_snapshot(
        tmp_path / "s2.xml",
        tmp_path / "s2.xml.gz",
        SESSION,
        2,
        items,
        (tmp_path / "s1.xml", tmp_path / "s1.xml.gz"),
        3,
    )
    xml2 = (tmp_path / "s2.xml").read_bytes()
    assert gzip.decompress((tmp_path / "s2.xml.gz").read_bytes()) == xml2
    assert hashlib.sha256(xml2).digest() == second.hash.digest
    expected_body = b"".join(new3 if b == 3 else buckets[b] for b in range(6))
    assert expected_body in xml2 and b'serial="2"' in xml2.splitlines()[0]
    # The system gzip agrees (a decoder other than Python's).
    out = subprocess.run(
        ["gzip", "-dc", str(tmp_path / "s2.xml.gz")], capture_output=True, check=True
    )
    assert out.stdout == xml2
    # Spans point at the bucket bytes.
    for s in second.spans:
        assert xml2[s.xml_off : s.xml_off + s.xml_len] == (
            new3 if s.bucket == 3 else buckets[s.bucket]
        )


def test_split_bucket_lines_round_trips() -> None:
    rng = random.Random(3)
    span = _bucket(rng, 1, 5)
    lines = split_bucket_lines(span)
    assert len(lines) == 5 and b"".join(lines.values()) == span
    assert all("&x.roa" in uri for uri in lines)
