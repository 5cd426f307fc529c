"""Benchmark: `rpkirepo sync` cold (snapshot), warm (a 100-object delta) and unchanged, at several
repository sizes, with the machine's raw rates measured in the same run as references.

The upstream is written directly as RRDP files (a snapshot of N real corpus objects, cycled, in
publication points of ~25 objects, then one 100-object delta per warm step with the snapshot of
the new serial), in a local directory given to ``--source-uri-base``, so the network is out of
the picture and what is measured is the mirror's own work.  Each sync is the real CLI in a child
process; wall time and peak RSS come from wait4().

References, same run, same disk:
* raw parse+decode+hash: bare expat over the snapshot, base64-decoding and SHA-256-hashing every
  object (no checks, no limits, nothing kept): the least any mirror must do to read a snapshot;
* raw file creation: os.open/os.write/os.close of N files of the same sizes in ~25-file
  directories, then sync: the least any tool writing an rsync tree must do;
* raw copy+hash: reading the snapshot file, hashing it and writing a copy, then sync: what
  copying one snapshot byte for byte costs.

Goals (issue "sync"): cold sync throughput >= 70 % of the raw references (raw parse + raw
create time over our time), peak RSS <= 256 MB whatever the size; warm 100-object delta under
2 s and within 2x of the same delta on the smallest size; an unchanged run under 0.2 s.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from xml.parsers import expat

import child_rss
from bench_publish import corpus_objects, raw_create_rate

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from rpkirepo.rrdp.model import (  # noqa: E402
    DeltaRef,
    FileKind,
    NotificationFile,
    SessionId,
    Sha256,
    SnapshotRef,
)
from rpkirepo.rrdp.writer import (  # noqa: E402
    delta_start,
    end_tag,
    notification_bytes,
    publish_element,
    snapshot_start,
    withdraw_element,
)
from rpkirepo.uri import HttpsUri, RsyncUri  # noqa: E402

RSYNC_BASE = "rsync://rpki.example.net/repo/"
HTTPS_BASE = "https://rrdp.example.net/rrdp/"
EXTS = [".roa"] * 6 + [".mft", ".crl", ".cer"]


class Upstream:
    """An RRDP repository written directly: snapshot per serial, deltas, notification."""

    def __init__(self, root: Path, n: int, pool: list[bytes], rng: random.Random) -> None:
        self.root = root
        self.rng = rng
        self.pool = pool
        self.session = SessionId(str(uuid.uuid4()))
        self.serial = 1
        self.objects: dict[str, bytes] = {}
        for i in range(n):
            name = f"ca{i // 25:06d}/{rng.getrandbits(120):030x}{EXTS[i % len(EXTS)]}"
            self.objects[name] = pool[i % len(pool)]
        self.deltas: list[DeltaRef] = []
        self.snapshot = self.write_snapshot()
        self.write_notification()

    def _file(self, kind: str) -> tuple[Path, HttpsUri]:
        rel = f"{self.session}/{self.serial}/{self.rng.getrandbits(64):016x}/{kind}.xml"
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        return path, HttpsUri.parse(HTTPS_BASE + rel)

    def write_snapshot(self) -> SnapshotRef:
        path, uri = self._file("snapshot")
        h = hashlib.sha256()
        with open(path, "wb") as f:
            buf: list[bytes] = [snapshot_start(self.session, self.serial)]
            for name, data in self.objects.items():
                buf.append(publish_element(RsyncUri.parse(RSYNC_BASE + name), data))
                if len(buf) >= 4096:
                    chunk = b"".join(buf)
                    h.update(chunk)
                    f.write(chunk)
                    buf.clear()
            buf.append(end_tag(FileKind.SNAPSHOT))
            chunk = b"".join(buf)
            h.update(chunk)
            f.write(chunk)
        return SnapshotRef(uri, Sha256(h.digest()))

    def write_notification(self) -> None:
        n = NotificationFile(self.session, self.serial, self.snapshot, tuple(self.deltas))
        tmp = self.root / "notification.xml.tmp"
        tmp.write_bytes(notification_bytes(n))
        os.replace(tmp, self.root / "notification.xml")

    def step(self, k: int) -> None:
        """A new serial changing k objects: half replaced, a quarter added, a quarter gone."""
        self.serial += 1
        names = sorted(self.objects)
        picked = self.rng.sample(names, k // 2 + k // 4)
        replaced, removed = picked[: k // 2], picked[k // 2 :]
        pieces = [delta_start(self.session, self.serial)]
        for name in removed:
            old = Sha256.of(self.objects.pop(name))
            pieces.append(withdraw_element(RsyncUri.parse(RSYNC_BASE + name), old))
        for name in replaced:
            old = Sha256.of(self.objects[name])
            new = self.rng.choice(self.pool)
            while new == self.objects[name]:
                new = self.rng.choice(self.pool)
            self.objects[name] = new
            pieces.append(publish_element(RsyncUri.parse(RSYNC_BASE + name), new, old))
        for i in range(k - len(picked)):
            name = f"new{self.serial}/{i:04d}{EXTS[i % len(EXTS)]}"
            self.objects[name] = self.rng.choice(self.pool)
            pieces.append(publish_element(RsyncUri.parse(RSYNC_BASE + name), self.objects[name]))
        pieces.append(end_tag(FileKind.DELTA))
        data = b"".join(pieces)
        path, uri = self._file("delta")
        path.write_bytes(data)
        self.deltas.append(DeltaRef(self.serial, uri, Sha256.of(data)))
        self.snapshot = self.write_snapshot()
        self.write_notification()


def raw_parse_seconds(snapshot: Path) -> float:
    """Bare expat + base64 decode + SHA-256 per object over the snapshot file."""
    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.buffer_size = 1 << 20
    text: list[str] = []
    inside = [False]

    def start(name: str, _attrs: dict[str, str]) -> None:
        if name == "publish":
            inside[0] = True
            text.clear()

    def end(name: str) -> None:
        if name == "publish":
            inside[0] = False
            hashlib.sha256(base64.b64decode("".join(text))).digest()

    def chars(data: str) -> None:
        if inside[0]:
            text.append(data)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    t0 = time.perf_counter()
    with open(snapshot, "rb") as f:
        while chunk := f.read(1 << 20):
            parser.Parse(chunk, False)
    parser.Parse(b"", True)
    return time.perf_counter() - t0


def raw_copy_seconds(snapshot: Path, target: Path) -> float:
    t0 = time.perf_counter()
    h = hashlib.sha256()
    with open(snapshot, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(1 << 20):
            h.update(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    elapsed = time.perf_counter() - t0
    target.unlink()
    return elapsed


def run_sync(upstream: Path, mirror: Path) -> dict[str, Any]:
    proc, elapsed, peak = child_rss.run_cli(
        [
            "-q", "sync", HTTPS_BASE + "notification.xml",
            "--source-uri-base", str(upstream), "--state-dir", str(mirror), "--json",
            "--cleanup-after", "0", "--source-link",
        ]
    )  # fmt: skip
    summary = json.loads(proc.stdout)
    return {
        "seconds": round(elapsed, 3),
        "in_process_seconds": summary["seconds"],
        "peak_rss_mb": round(peak, 1),
        "outcome": summary["outcome"],
        "stage_seconds": summary["stage_seconds"],
    }


def interpreter_floor() -> float:
    """Seconds for `python -m rpkirepo --version`: the start-up every CLI run pays."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    best = 1e9
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "rpkirepo", "--version"], env=env, check=True,
                       capture_output=True)  # fmt: skip
        best = min(best, time.perf_counter() - t0)
    return round(best, 3)


def bench_size(n: int, pool: list[bytes], base: Path, rng: random.Random) -> dict[str, Any]:
    up_dir, mirror = base / f"up-{n}", base / f"mirror-{n}"
    t0 = time.perf_counter()
    up = Upstream(up_dir, n, pool, rng)
    setup = time.perf_counter() - t0
    snap_path = up_dir / up.snapshot.uri.uri[len(HTTPS_BASE) :]
    snap_size = snap_path.stat().st_size
    parse_s = raw_parse_seconds(snap_path)
    sizes = [len(d) for d in up.objects.values()]
    # Nothing is deleted before the end of the run (bench_publish.raw_create_rate says why).
    create_rate = raw_create_rate(base / f"raw-{n}", sizes, max(pool, key=len) * 2)
    create_s = n / create_rate
    copy_s = raw_copy_seconds(snap_path, base / f"copy-{n}")
    cold = run_sync(up_dir, mirror)
    warm = []
    for _ in range(3):
        up.step(100)
        warm.append(run_sync(up_dir, mirror))
    unchanged = run_sync(up_dir, mirror)
    raw_cold = parse_s + create_s
    best_warm = min(warm, key=lambda r: r["seconds"])
    result = {
        "objects": n,
        "snapshot_bytes": snap_size,
        "setup_seconds": round(setup, 1),
        "raw": {
            "parse_decode_hash_seconds": round(parse_s, 3),
            "parse_decode_hash_mb_s": round(snap_size / parse_s / 1e6, 1),
            "create_files_per_s": round(create_rate),
            "create_seconds": round(create_s, 3),
            "copy_hash_seconds": round(copy_s, 3),
        },
        "cold": cold,
        "cold_ratio_of_raw": round(raw_cold / cold["seconds"], 3),
        "cold_objects_per_s": round(n / cold["seconds"]),
        "warm_runs": warm,
        "warm_best_seconds": best_warm["seconds"],
        "unchanged": unchanged,
    }
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000", help="comma-separated object counts")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--dir", type=Path, help="work directory (default: a fresh temp dir)")
    args = ap.parse_args()
    pool = corpus_objects()
    rng = random.Random(20261122)
    base = Path(tempfile.mkdtemp(prefix="bench-sync-", dir=args.dir))
    try:
        sizes = [int(s) for s in args.sizes.split(",")]
        results = [bench_size(n, pool, base, rng) for n in sizes]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    small = results[0]["warm_best_seconds"]
    out = {
        "interpreter_floor_seconds": interpreter_floor(),
        "sizes": results,
        "warm_ratio_largest_to_smallest": round(results[-1]["warm_best_seconds"] / small, 2),
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
