"""Benchmark: `rpkirepo fetch` cold and warm against rpki-client on the same repository, with the
machine's raw parse+hash and file-creation rates measured in the same run as references.

The repository is a scale-mode testbed (``rpkirepo testbed --scale N``: valid structure, keys
reused, so not everything validates) published by ``rpkirepo publish`` and served on loopback
by nginx (TLS; RRDP and the TA certificate) and the real ``rsync --daemon``, the usual production
arrangement.  Needs root (rpki-client's trust store and /etc/hosts are bind-mounted in a private
mount namespace), nginx, rsync and rpki-client.

Measured, each in a child process (wall time; our peak RSS from the child's own VmHWM):
* ours cold: the TAL walk into an empty cache (RRDP snapshot);
* ours warm: after 100 objects changed upstream (one delta; the first such run after the cold
  one, which links a second tree, and the next, which reuses the first tree), and unchanged
  (one request);
* ours rsync-only cold (native client), for the transport comparison;
* rpki-client full run (RRDP) into an empty cache, and its offline run (-n) over the same cache:
  its fetch share is the difference (issue 7's yardstick);
* rpki-client warm after the same 100-object delta;
* raw parse+decode+hash of the snapshot (bare expat, base64, SHA-256) and raw creation of the
  same number of files of the same sizes (bench_sync's and bench_publish's references).

Goals (issue 7): cold fetch at >= 70 % of the raw rates (raw parse + raw create over our time)
with peak RSS <= 256 MB; warm fetch O(delta); our fetch time below rpki-client's fetch share.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import child_rss
from bench_publish import raw_create_rate
from bench_sync import interpreter_floor, raw_parse_seconds

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))

from peers import (  # noqa: E402
    free_port,
    make_readable,
    public_dir,
    run_rpki_client,
    serve_repository,
)
from rpkirepo.publish import PublishOptions, publish  # noqa: E402
from rpkirepo.rrdp.parser import parse_notification  # noqa: E402
from rpkirepo.testbed import TestbedOptions, generate  # noqa: E402
from rpkirepo.uri import HttpsUri, RsyncUri  # noqa: E402


def _publish(src: Path, out: Path, rsync_base: str, https_base: str) -> None:
    publish(
        PublishOptions(
            source_dir=src,
            rsync_base=RsyncUri.parse(rsync_base),
            https_base=HttpsUri.parse(https_base),
            rrdp_dir=out / "rrdp",
            rsync_dir=out / "rsync",
            state_dir=out / "state",
        )
    )
    make_readable(out)


def _change(src: Path, k: int, rng: random.Random) -> None:
    """k ROA files get another ROA's bytes: a delta of k replaced objects."""
    roas = sorted(src.rglob("*.roa"))
    chosen = rng.sample(roas, k)
    contents = [p.read_bytes() for p in rng.sample(roas, k)]
    for p, data in zip(chosen, contents, strict=True):
        p.write_bytes(data)  # (the same bytes now and then: one object fewer in the delta)


def _ours(tal: Path, cache: Path, ca: Path, *extra: str) -> dict[str, Any]:
    proc, elapsed, peak = child_rss.run_cli(
        ["-q", "fetch", "--tal", str(tal), "--cache", str(cache), "--ca-file", str(ca),
         "--json", "--no-progress", *extra]
    )  # fmt: skip
    doc = json.loads(proc.stdout)
    repos = doc["repositories"]
    return {
        "seconds": round(elapsed, 3),
        "in_process_seconds": doc["seconds"],
        "peak_rss_mb": round(peak, 1),
        "transport": [r["transport"] for r in repos],
        "outcome": [r["outcome"] for r in repos],
        "objects": sum(r["objects"] for r in repos),
        "bytes": sum(r["bytes"] for r in repos),
        "rsync_files_fetched": sum(r["rsync_files_fetched"] for r in repos),
    }


def _rpki_client(work: Path, tal: Path, ca: Path, *, no_sync: bool = False) -> dict[str, Any]:
    result = run_rpki_client(
        work,
        tal,
        trust=ca,
        hosts={"localhost": "127.0.0.1"},
        no_sync=no_sync,
        verbose=0,
        run_timeout=1800,
        timeout=2000,
    )
    if result.returncode != 0:
        sys.exit(f"rpki-client failed:\n{result.describe()}")
    return {"seconds": round(result.seconds, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=100_000, help="testbed size (scale mode)")
    ap.add_argument("--changed", type=int, default=100, help="objects changed for the warm runs")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_fetch needs root (rpki-client's trust store is bind-mounted)")
    for binary in ("nginx", "rsync", "rpki-client"):
        if shutil.which(binary) is None and shutil.which(binary, path="/usr/sbin") is None:
            sys.exit(f"bench_fetch needs {binary}")
    rng = random.Random(7)
    base = public_dir(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-fetch-"))
    os.chmod(base, 0o755)
    https_port, rsync_port = free_port(), free_port()
    rsync_base = f"rsync://localhost:{rsync_port}/repo/"
    https_base = f"https://localhost:{https_port}/rrdp/"
    try:
        t0 = time.perf_counter()
        bed = generate(
            TestbedOptions(
                base / "testbed",
                rsync_base=rsync_base,
                rrdp_base=https_base,
                ta_uris=(f"https://localhost:{https_port}/ta/ta.cer",),
                scale=args.objects,
            )
        )
        src, out = base / "testbed" / "repository", base / "up"
        _publish(src, out, rsync_base, https_base)
        setup = time.perf_counter() - t0
        note = parse_notification((out / "rrdp" / "notification.xml").read_bytes())
        snap = out / "rrdp" / note.snapshot.uri.uri[len(https_base) :]
        n = sum(1 for p in src.rglob("*") if p.is_file())
        parse_s = raw_parse_seconds(snap)
        sizes = [p.stat().st_size for p in src.rglob("*") if p.is_file()]
        # Nothing is deleted before the end of the run (bench_publish.raw_create_rate says why).
        create_rate = raw_create_rate(base / "raw", sizes, os.urandom(max(sizes)))
        create_s = n / create_rate
        result: dict[str, Any] = {
            "objects": n,
            "snapshot_bytes": snap.stat().st_size,
            "setup_seconds": round(setup, 1),
            "interpreter_floor_seconds": interpreter_floor(),
            "raw": {
                "parse_decode_hash_seconds": round(parse_s, 3),
                "create_files_per_s": round(create_rate),
                "create_seconds": round(create_s, 3),
            },
        }
        with serve_repository(
            public_dir(base / "servers"),
            out / "rrdp",
            out / "rsync",
            bed.out_dir / "ta.cer",
            https_port,
            rsync_port,
        ) as served:
            ca = served.tls.ca_cert
            tal = bed.tal
            cache = public_dir(base / "cache")
            # rpki-client resolves localhost through the bind-mounted hosts file; so do we
            # (the system resolver maps localhost to loopback).
            result["ours_cold"] = _ours(tal, cache, ca)
            result["ours_unchanged"] = _ours(tal, cache, ca)
            result["rpki_client_full"] = _rpki_client(base / "rc", tal, ca)
            result["rpki_client_offline"] = _rpki_client(base / "rc", tal, ca, no_sync=True)
            result["ours_rsync_cold"] = _ours(
                tal, public_dir(base / "cache-rsync"), ca, "--rsync-only"
            )
            # Two changes of k objects.  The first delta after the cold run has no older tree
            # to bring forward, so it hard-links the whole tree once; from the second on (runs
            # spaced by --cleanup-after, here 0) a retired tree is reused: O(k).
            _change(src, args.changed, rng)
            _publish(src, out, rsync_base, https_base)
            result["ours_warm_first"] = _ours(tal, cache, ca, "--cleanup-after", "0")
            result["ours_rsync_warm"] = _ours(tal, base / "cache-rsync", ca, "--rsync-only")
            result["rpki_client_warm_first"] = _rpki_client(base / "rc", tal, ca)
            _change(src, args.changed, rng)
            _publish(src, out, rsync_base, https_base)
            result["ours_warm"] = _ours(tal, cache, ca, "--cleanup-after", "0")
            result["rpki_client_warm"] = _rpki_client(base / "rc", tal, ca)
        cold = result["ours_cold"]["seconds"]
        share = result["rpki_client_full"]["seconds"] - result["rpki_client_offline"]["seconds"]
        result["cold_ratio_of_raw"] = round((parse_s + create_s) / cold, 3)
        result["rpki_client_fetch_share_seconds"] = round(share, 3)
        result["ours_cold_over_rpki_client_fetch_share"] = round(cold / share, 3) if share else None
        result["load_average"] = os.getloadavg()
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
