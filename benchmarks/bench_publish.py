"""Benchmark: `rpkirepo publish` from scratch and for a 100-object change, at 1k and 100k objects.

Each publish is the real CLI in a child process (what an operator's cron job runs); its wall time
and peak RSS come from wait4().  The reference, measured in the same run on the same disk, is the
machine's raw file-creation rate: creating the same number of files of the same sizes with
os.open/os.write/os.close, the least any tool that writes an rsync tree must do.

Goals (issue "Foundations"): first run at >= 70 % of the raw file-creation rate; the 100-object
change on the 100k repository within 2x of the same change on the 1k one.

Object contents are real objects from the shared corpus (cycled), so type detection and the
RFC 9589 mtime rule do real work; gzip ratios are optimistic because contents repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import child_rss

REPO = Path(__file__).resolve().parents[1]
RSYNC_BASE = "rsync://rpki.example.net/repo/"
HTTPS_BASE = "https://rrdp.example.net/rrdp/"


def corpus_objects() -> list[bytes]:
    root = Path(os.environ.get("RPKIREPO_CORPUS", REPO.parent / "shared" / "corpus"))
    out = [
        p.read_bytes()
        for p in sorted((root / "objects").rglob("*"))
        if p.suffix in (".roa", ".mft", ".crl", ".cer") and 200 < p.stat().st_size < 20000
    ]
    if not out:
        sys.exit(f"no corpus objects under {root}")
    return out


def make_source(src: Path, n: int, pool: list[bytes], rng: random.Random) -> list[str]:
    """n objects in directories of ~25 (a CA's publication point), names like real ones."""
    names = []
    exts = [".roa"] * 6 + [".mft", ".crl", ".cer"]
    for i in range(n):
        d = src / f"ca{i // 25:06d}"
        if i % 25 == 0:
            d.mkdir(parents=True)
        ext = exts[i % len(exts)]
        name = f"ca{i // 25:06d}/{rng.getrandbits(120):030x}{ext}"
        (src / name).write_bytes(pool[i % len(pool)])
        names.append(name)
    return names


def raw_create_rate(target: Path, sizes: list[int], payload: bytes) -> float:
    """Files per second for plain create+write+close of the same sizes in ~25-file dirs.

    Benchmarks delete nothing between this reference and the runs it is compared with: on an
    ext4 without a journal (this machine's root filesystem) inode allocation skips every inode
    freed in the last 60 s (300 s while its inode table block is dirty), looking each one up,
    so creating files right after a mass deletion costs several times more kernel time (seen
    here: 12,000 files/s just after deleting 100k files, 40,000 otherwise).
    """
    target.mkdir()
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    t0 = time.perf_counter()
    for i, size in enumerate(sizes):
        if i % 25 == 0:
            d = target / f"d{i // 25}"
            os.mkdir(d)
        fd = os.open(d / f"f{i}", flags, 0o644)
        os.write(fd, payload[:size])
        os.close(fd)
    os.sync()
    elapsed = time.perf_counter() - t0
    return len(sizes) / elapsed


def run_cli(src: Path, work: Path, grace: str = "2h") -> dict[str, Any]:
    """One CLI run in a child process: wall seconds, its own peak RSS, stage seconds."""
    proc, elapsed, peak = child_rss.run_cli(
        [
            "-q", "publish", str(src),
            "--rsync-base", RSYNC_BASE, "--https-base", HTTPS_BASE,
            "--state-dir", str(work / "state"), "--rrdp-dir", str(work / "rrdp"),
            "--rsync-dir", str(work / "rsync"), "--cleanup-after", grace,
            "--no-progress", "--json",
        ]
    )  # fmt: skip
    stages = json.loads(proc.stdout)["stage_seconds"]
    return {"seconds": elapsed, "peak_rss_mb": peak, "stages": stages}


def change(src: Path, names: list[str], k: int, pool: list[bytes], rng: random.Random) -> None:
    for name in rng.sample(names, k):
        p = src / name
        data = p.read_bytes()
        p.write_bytes(next(o for o in (rng.choice(pool) for _ in range(100)) if o != data))


def bench_size(n: int, pool: list[bytes], base: Path, rng: random.Random) -> dict[str, object]:
    work = base / f"n{n}"
    src = work / "src"
    names = make_source(src, n, pool, rng)
    sizes = [(src / nm).stat().st_size for nm in names]
    # The disks of shared virtual machines drift: measure the reference right before and right
    # after our first run, deleting nothing in between (deletions slow the next writes).
    os.sync()
    payload = max(pool, key=len) * 2
    raw_before = raw_create_rate(work / "raw1", sizes, payload)
    first = run_cli(src, work, grace="0")
    raw_after = raw_create_rate(work / "raw2", sizes, payload)
    raw = (raw_before + raw_after) / 2
    nochange = run_cli(src, work, grace="0")
    change(src, names, 100, pool, rng)
    change1 = run_cli(src, work, grace="0")  # makes the second rsync tree (links every file)
    steady = []
    for _ in range(3):
        change(src, names, 100, pool, rng)
        steady.append(run_cli(src, work, grace="0"))  # reuses an expired tree from the ring
    snapshot_bytes = sum(p.stat().st_size for p in (work / "rrdp").rglob("snapshot.xml")) / max(
        1, len(list((work / "rrdp").rglob("snapshot.xml")))
    )
    shutil.rmtree(work)  # (the smaller size first: its deletion is small)
    return {
        "objects": n,
        "raw_files_per_s": raw,
        "raw_files_per_s_before_after": [raw_before, raw_after],
        "first_seconds": first["seconds"],
        "first_objects_per_s": n / first["seconds"],
        "first_vs_raw": (n / first["seconds"]) / raw,
        "first_peak_rss_mb": first["peak_rss_mb"],
        "nochange_seconds": nochange["seconds"],
        "change100_first_seconds": change1["seconds"],
        "change100_steady_seconds": statistics.median(s["seconds"] for s in steady),
        "first_stages": first["stages"],
        "nochange_stages": nochange["stages"],
        "change100_steady_stages": min(steady, key=lambda s: s["seconds"])["stages"],
        "change100_peak_rss_mb": max(s["peak_rss_mb"] for s in steady),
        "snapshot_mb": snapshot_bytes / 1e6,
    }


def interpreter_floor() -> float:
    """Seconds to start Python and import the CLI: the fixed cost every run pays."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import rpkirepo.cli, rpkirepo.publish"], env=env, check=True
        )
        runs.append(time.perf_counter() - t0)
    return min(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,100000", help="comma-separated repository sizes")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    pool = corpus_objects()
    rng = random.Random(42)
    base = Path(tempfile.mkdtemp(prefix="bench-publish-", dir=args.dir))
    try:
        results = [bench_size(int(s), pool, base, rng) for s in args.sizes.split(",")]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    floor = interpreter_floor()
    by_n = {r["objects"]: r for r in results}
    summary: dict[str, object] = {
        "benchmark": "publish",
        "runs": results,
        "interpreter_floor_seconds": floor,
    }
    if 1000 in by_n and 100000 in by_n:
        small, big = by_n[1000], by_n[100000]
        summary["change100_100k_vs_1k"] = (
            big["change100_steady_seconds"] / small["change100_steady_seconds"]  # type: ignore[operator]
        )
        summary["change100_first_100k_vs_1k"] = (
            big["change100_first_seconds"] / small["change100_first_seconds"]  # type: ignore[operator]
        )
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"interpreter + imports floor: {floor:.3f} s")
    for r in results:
        print(
            f"n={r['objects']:>7}: raw create {r['raw_files_per_s']:,.0f} files/s | first run "
            f"{r['first_seconds']:.2f} s = {r['first_objects_per_s']:,.0f} obj/s "
            f"({100 * r['first_vs_raw']:.0f} % of raw), peak {r['first_peak_rss_mb']:.0f} MB | "
            f"no change {r['nochange_seconds']:.2f} s | 100 changed: first "
            f"{r['change100_first_seconds']:.2f} s, steady {r['change100_steady_seconds']:.2f} s"
        )
    for key in ("change100_100k_vs_1k", "change100_first_100k_vs_1k"):
        if key in summary:
            print(f"{key}: {summary[key]:.2f}x")


if __name__ == "__main__":
    main()
