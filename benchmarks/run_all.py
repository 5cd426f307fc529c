"""`make bench`: run every benchmark, keep their JSON in --out, print one summary.

Each benchmark measures its own reference in the same run (raw file creation, bare expat,
hashlib, asn1crypto), so the figures are ratios that survive the drift of shared machines.
docs/performance.md records the latest figures and how to read them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHMARKS = [
    ("rrdp_parse", ["bench_rrdp_parse.py", "--size-mb", "1024", "--json"]),
    ("objects", ["bench_objects.py", "--json"]),
    ("publish", ["bench_publish.py", "--sizes", "1000,100000", "--json"]),
    ("sync", ["bench_sync.py", "--sizes", "10000,100000", "--json"]),
    ("serve", ["bench_serve.py", "--json"]),
    ("rsyncd", ["bench_rsyncd.py", "--quick", "--json"]),
    ("fetch", ["bench_fetch.py", "--objects", "100000", "--json"]),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("bench-out"))
    ap.add_argument("--only", help="comma-separated subset: " + ",".join(n for n, _ in BENCHMARKS))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = set(args.only.split(",")) if args.only else None
    failed = 0
    for name, argv in BENCHMARKS:
        if wanted is not None and name not in wanted:
            continue
        started = time.monotonic()
        print(f"== {name} ...", flush=True)
        proc = subprocess.run(
            [sys.executable, str(HERE / argv[0]), *argv[1:]],
            capture_output=True,
            text=True,
            timeout=3600,
        )
        if proc.returncode != 0:
            print(f"   FAILED ({proc.returncode}):\n{proc.stderr[-2000:]}")
            failed += 1
            continue
        result = json.loads(proc.stdout)
        (args.out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"   {time.monotonic() - started:.0f} s -> {args.out / (name + '.json')}")
        print("   " + json.dumps(result)[:600])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
