#!/usr/bin/env python3
"""Benchmark the RPKI object readers on the shared corpus, against references from the same run.

What is measured, per object (microseconds), for every object file under the corpus' ``objects/``
that read_object accepts, grouped by kind:

* ``sha256``      -- hashlib.sha256 of the bytes: the floor any publisher pays per object anyway;
* ``mtime_of``    -- the fast path (TLV walker; the publish hot path);
* ``detect_kind`` -- the fast path's kind detection;
* ``read_object`` -- the full asn1crypto reader, typed values out;
* ``asn1crypto``  -- a bare ``ContentInfo.load(b).native`` (``Certificate`` / ``CertificateList``
  for certificates and CRLs): what parsing the same bytes costs with asn1crypto alone.

Geofeed CSV files, and objects asn1crypto alone cannot convert, are left out (no reference).

Each function runs over the whole object set ``--repeat`` times; the best pass counts (the usual
way to keep scheduler noise out).  Ratios compare the functions within this run only, so the
numbers mean something on any machine.

    .venv/bin/python benchmarks/bench_objects.py            # table
    .venv/bin/python benchmarks/bench_objects.py --json     # machine-readable, with ratios

The corpus is $RPKIREPO_CORPUS, else ../shared/corpus next to the repository root.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asn1crypto import cms, crl, x509

from rpkirepo.errors import RpkiRepoError
from rpkirepo.objects import ObjectKind, detect_kind, mtime_of, read_object

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Report groups: kind -> group name.
GROUPS = {
    ObjectKind.ROA: "roa",
    ObjectKind.MANIFEST: "mft",
    ObjectKind.CRL: "crl",
    ObjectKind.TA_CERTIFICATE: "cer",
    ObjectKind.CA_CERTIFICATE: "cer",
    ObjectKind.EE_CERTIFICATE: "cer",
    ObjectKind.ROUTER_CERTIFICATE: "cer",
}


def corpus_root(override: str | None) -> Path:
    path = Path(override or os.environ.get("RPKIREPO_CORPUS") or REPO_ROOT.parent / "shared/corpus")
    if not (path / "INDEX.tsv").is_file():
        sys.exit(f"corpus not found at {path} (use --corpus or RPKIREPO_CORPUS)")
    return path


#: (file name, bytes, the asn1crypto class of the outer type) of one object.
Item = tuple[str, bytes, Any]


def load(root: Path) -> list[tuple[str, Item]]:
    """(group, item) for every object read_object accepts."""
    out = []
    for path in sorted((root / "objects").rglob("*")):
        if not path.is_file() or path.suffix == ".txt":
            continue
        data = path.read_bytes()
        try:
            obj = read_object(data, name=path.name)
        except RpkiRepoError:
            continue
        if obj.kind is ObjectKind.GEOFEED:
            continue  # CSV text, not DER: no asn1crypto reference for it
        if obj.kind is ObjectKind.CRL:
            outer: Any = crl.CertificateList
        elif obj.kind.is_certificate:
            outer = x509.Certificate
        else:
            outer = cms.ContentInfo
        try:
            _ = outer.load(data).native
        except ValueError:
            continue  # asn1crypto alone cannot convert it: no reference
        out.append((GROUPS.get(obj.kind, "other-cms"), (path.name, data, outer)))
    return out


Function = Callable[[bytes, str, Any], object]


def best_pass_us(fn: Function, items: list[Item], repeat: int) -> float:
    """Best-of-``repeat`` time of one pass over ``items``, in microseconds per item."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter_ns()
        for name, data, outer in items:
            fn(data, name, outer)
        best = min(best, time.perf_counter_ns() - start)
    return best / len(items) / 1000


FUNCTIONS: dict[str, Function] = {
    "sha256": lambda data, _, __: hashlib.sha256(data).digest(),
    "mtime_of": lambda data, name, _: mtime_of(data, name),
    "detect_kind": lambda data, _, __: detect_kind(data),
    "read_object": lambda data, name, _: read_object(data, name=name),
    # The reference: load the outer type and convert everything to Python values.
    "asn1crypto": lambda data, _, outer: outer.load(data).native,
}


def ratio(a: float | int, b: float | int) -> float:
    return round(a / b, 2) if b else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", help="corpus directory (default: $RPKIREPO_CORPUS)")
    parser.add_argument("--repeat", type=int, default=5, help="passes per function (best counts)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    objects = load(corpus_root(args.corpus))
    groups: dict[str, list[Item]] = {"all": []}
    for group, item in objects:
        groups.setdefault(group, []).append(item)
        groups["all"].append(item)

    results: dict[str, dict[str, float | int]] = {}
    for group in sorted(groups, key=lambda g: (g == "all", g)):
        items = groups[group]
        row: dict[str, float | int] = {
            "objects": len(items),
            "mean_bytes": round(sum(len(item[1]) for item in items) / len(items)),
        }
        for label, fn in FUNCTIONS.items():
            row[f"{label}_us"] = round(best_pass_us(fn, items, args.repeat), 2)
        row["mtime_of_vs_sha256"] = ratio(row["mtime_of_us"], row["sha256_us"])
        row["mtime_of_vs_asn1crypto"] = ratio(row["mtime_of_us"], row["asn1crypto_us"])
        row["read_object_vs_asn1crypto"] = ratio(row["read_object_us"], row["asn1crypto_us"])
        row["read_object_vs_mtime_of"] = ratio(row["read_object_us"], row["mtime_of_us"])
        results[group] = row

    if args.json:
        print(
            json.dumps(
                {
                    "benchmark": "objects",
                    "python": platform.python_version(),
                    "machine": platform.machine(),
                    "repeat": args.repeat,
                    "unit": "microseconds per object (best pass)",
                    "groups": results,
                },
                indent=2,
            )
        )
        return 0

    columns = ["objects", "mean_bytes", *(f"{label}_us" for label in FUNCTIONS)]
    header = ["group", "n", "bytes", *FUNCTIONS, "fast/sha", "fast/asn1", "full/asn1"]
    print(f"µs per object, best of {args.repeat} passes (Python {platform.python_version()})")
    print("  ".join(f"{h:>11}" for h in header))
    for group, row in results.items():
        cells = [group, *(row[c] for c in columns)]
        cells += [
            row["mtime_of_vs_sha256"],
            row["mtime_of_vs_asn1crypto"],
            row["read_object_vs_asn1crypto"],
        ]
        print("  ".join(f"{c:>11}" for c in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
