"""Throughput and memory of RrdpParser on a synthetic snapshot, against this machine's baselines.

The snapshot is generated on the fly (no disk): realistic RRDP publish elements of about 2 KB
random objects, base64 on one line, in the exact form rpkirepo.rrdp.writer emits, with unique
rsync URIs.  It is fed to the parser in 64 KiB chunks and the events are drained after every
chunk, as a fetcher would.  In the same run the same bytes go through two references:

* hashlib.sha256 (every RRDP client hashes what it fetches; the floor for any streaming work);
* a bare expat parser with no handlers at all (the floor for XML tokenising in CPython).

Each pass regenerates the bytes, so a generation-only pass is timed too and subtracted; the
"net" rates are the ones compared.  Peak RSS is ``ru_maxrss`` after the parser pass, which runs
first.  The run is bounded by --size-mb and stops by itself.

    .venv/bin/python benchmarks/bench_rrdp_parse.py --size-mb 256
    .venv/bin/python benchmarks/bench_rrdp_parse.py --size-mb 1024 --json
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import platform
import random
import resource
import sys
import time
from collections.abc import Iterator
from xml.parsers import expat

from rpkirepo.rrdp.model import FileKind, PublishElement, SessionId
from rpkirepo.rrdp.parser import NEED_DATA, EndOfFile, RrdpParser
from rpkirepo.rrdp.writer import end_tag, publish_element, snapshot_start
from rpkirepo.uri import RsyncUri

CHUNK = 64 * 1024
MIB = 1024 * 1024
SESSION = SessionId("3d9e4c1a-7f52-4b8e-9a61-0c2f5d8e7b14")
SERIAL = 4242
POOL = 512  # distinct objects, reused under different URIs
EXTENSIONS = (b"roa", b"mft", b"crl", b"cer")


def _pool(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [base64.b64encode(rng.randbytes(rng.randint(1200, 2900))) for _ in range(POOL)]


def _uri(i: int) -> bytes:
    # Shaped like RIPE NCC's: a bucket, a CA directory, a 27-character name.
    name = hashlib.blake2b(i.to_bytes(8, "big"), digest_size=20).digest()
    stem = base64.urlsafe_b64encode(name)[:27]
    ext = EXTENSIONS[i % len(EXTENSIONS)]
    return b"rsync://rpki.example.net/repository/DEFAULT/%02x/%08d/1/%s.%s" % (
        i % 256,
        i // 64,
        stem,
        ext,
    )


def snapshot_chunks(size: int, pool: list[bytes]) -> Iterator[bytes]:
    """A snapshot of at least ``size`` bytes, in CHUNK-sized pieces, generated lazily."""
    buf = bytearray(snapshot_start(SESSION, SERIAL))
    produced = 0
    i = 0
    while produced + len(buf) < size:
        buf += b'<publish uri="%s">%s</publish>\n' % (_uri(i), pool[i % POOL])
        i += 1
        while len(buf) >= CHUNK:
            chunk = bytes(buf[:CHUNK])
            del buf[:CHUNK]
            produced += CHUNK
            yield chunk
    buf += end_tag(FileKind.SNAPSHOT)
    for pos in range(0, len(buf), CHUNK):
        yield bytes(buf[pos : pos + CHUNK])


def _check_format(pool: list[bytes]) -> None:
    """The generator's element bytes are exactly what the writer emits."""
    uri = RsyncUri(_uri(7).decode())
    ours = b'<publish uri="%s">%s</publish>\n' % (_uri(7), pool[7])
    if ours != publish_element(uri, base64.b64decode(pool[7])):
        raise SystemExit("generator and writer disagree")


def _rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def _time_generation(size: int, pool: list[bytes]) -> tuple[float, int]:
    start = time.perf_counter()
    total = 0
    for chunk in snapshot_chunks(size, pool):
        total += len(chunk)
    return time.perf_counter() - start, total


def _time_sha256(size: int, pool: list[bytes]) -> tuple[float, bytes]:
    start = time.perf_counter()
    h = hashlib.sha256()
    for chunk in snapshot_chunks(size, pool):
        h.update(chunk)
    return time.perf_counter() - start, h.digest()


def _time_bare_expat(size: int, pool: list[bytes]) -> float:
    start = time.perf_counter()
    p = expat.ParserCreate()
    for chunk in snapshot_chunks(size, pool):
        p.Parse(chunk, False)
    p.Parse(b"", True)
    return time.perf_counter() - start


def _time_ours(size: int, pool: list[bytes]) -> tuple[float, int, int, EndOfFile]:
    start = time.perf_counter()
    parser = RrdpParser(FileKind.SNAPSHOT, expected_session=SESSION, expected_serial=SERIAL)
    published = 0
    object_bytes = 0
    for chunk in snapshot_chunks(size, pool):
        parser.feed(chunk)
        while (event := parser.next_event()) is not NEED_DATA:
            if isinstance(event, PublishElement):
                published += 1
                object_bytes += len(event.data)
    parser.close()
    end = None
    while (event := parser.next_event()) is not NEED_DATA:
        if isinstance(event, PublishElement):  # the last ones may only be parsed at close()
            published += 1
            object_bytes += len(event.data)
        end = event
    assert isinstance(end, EndOfFile)
    return time.perf_counter() - start, published, object_bytes, end


def run(size_mib: int) -> dict[str, object]:
    size = size_mib * MIB
    pool = _pool(seed=8182)
    _check_format(pool)
    rss_before = _rss_mib()
    t_ours, published, object_bytes, end = _time_ours(size, pool)
    rss_peak = _rss_mib()
    t_gen, total = _time_generation(size, pool)
    t_sha, digest = _time_sha256(size, pool)
    t_expat = _time_bare_expat(size, pool)
    if end.sha256.digest != digest or end.size != total or end.elements != published:
        raise SystemExit("parser disagrees with the reference pass")

    def net(t: float) -> float:
        return max(t - t_gen, 1e-9)

    rate = {
        "rrdp_parser": total / MIB / net(t_ours),
        "bare_expat": total / MIB / net(t_expat),
        "sha256": total / MIB / net(t_sha),
        "generation": total / MIB / t_gen,
    }
    return {
        "size_mib": round(total / MIB, 2),
        "objects": published,
        "mean_object_bytes": round(object_bytes / max(published, 1)),
        "chunk_bytes": CHUNK,
        "seconds": {
            "generation": round(t_gen, 3),
            "sha256_gross": round(t_sha, 3),
            "bare_expat_gross": round(t_expat, 3),
            "rrdp_parser_gross": round(t_ours, 3),
        },
        "mib_per_s_net": {k: round(v, 1) for k, v in rate.items()},
        "ratio_ours_to_bare_expat": round(rate["rrdp_parser"] / rate["bare_expat"], 3),
        "ratio_ours_to_sha256": round(rate["rrdp_parser"] / rate["sha256"], 3),
        "rss_mib_before_parse": round(rss_before, 1),
        "peak_rss_mib": round(rss_peak, 1),
        "python": platform.python_version(),
        "expat": expat.EXPAT_VERSION,
    }


def _table(r: dict[str, object]) -> str:
    sec = r["seconds"]
    rate = r["mib_per_s_net"]
    assert isinstance(sec, dict) and isinstance(rate, dict)
    lines = [
        f"RRDP parse benchmark: {r['size_mib']} MiB synthetic snapshot, {r['objects']:,} objects "
        f"(~{r['mean_object_bytes']} B each), {CHUNK // 1024} KiB chunks; "
        f"Python {r['python']}, {r['expat']}",
        "",
        f"{'pass':<26}{'seconds':>10}{'MiB/s (net)':>14}",
        f"{'generation only':<26}{sec['generation']:>10.2f}{rate['generation']:>14.1f}",
        f"{'hashlib.sha256':<26}{sec['sha256_gross']:>10.2f}{rate['sha256']:>14.1f}",
        f"{'bare expat (no handlers)':<26}{sec['bare_expat_gross']:>10.2f}"
        f"{rate['bare_expat']:>14.1f}",
        f"{'RrdpParser':<26}{sec['rrdp_parser_gross']:>10.2f}{rate['rrdp_parser']:>14.1f}",
        "",
        f"ours / bare expat: {r['ratio_ours_to_bare_expat']:.3f}",
        f"ours / sha256:     {r['ratio_ours_to_sha256']:.3f}",
        f"peak RSS:          {r['peak_rss_mib']} MiB "
        f"(before the parse: {r['rss_mib_before_parse']} MiB)",
        "(net = gross seconds minus the generation-only pass; every pass regenerates the bytes)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--size-mb", type=int, default=1024, help="snapshot size in MiB (1024)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead")
    args = ap.parse_args(argv)
    if not 1 <= args.size_mb <= 16384:
        ap.error("--size-mb must be between 1 and 16384")
    result = run(args.size_mb)
    print(json.dumps(result, sort_keys=True) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
