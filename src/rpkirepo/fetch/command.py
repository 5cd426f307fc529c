"""``rpkirepo fetch``: arguments, the ``[fetch]`` configuration table, exit codes."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Final

from rpkirepo.config import Config, parse_duration
from rpkirepo.errors import ConfigError, Reason, RpkiRepoError
from rpkirepo.fetch.report import report_json, report_metrics, report_text
from rpkirepo.fetch.store import RepositoryKey
from rpkirepo.fetch.tal import read_tal
from rpkirepo.fetch.walk import FetchOptions, run_fetch
from rpkirepo.fsutil import atomic_write
from rpkirepo.httpget import HttpOptions
from rpkirepo.metrics import write_textfile
from rpkirepo.progress import TerminalProgress
from rpkirepo.uri import HttpsUri, RsyncUri

__all__ = ["EPILOG", "FETCH_KEYS", "add_arguments", "run"]

log = logging.getLogger("rpkirepo.fetch")

EXIT_LOCKED: Final = 3

EPILOG = """\
Fetches RPKI repositories as a relying party does, into a cache no hostile repository can
escape: RRDP first (conditional notification request, deltas when they connect, the snapshot
otherwise), rsync when RRDP fails (the native client, or --rsync-external for the rsync binary
with --compare-dest); the last good copy stays when both fail.  With --tal, the walk starts at
the trust anchors and follows every CA certificate's SIA (one repository fetched once a run).

output:
  CACHE/objects/HOST/MODULE/PATH   the clean tree of fetched objects (RFC 9589 mtimes)
  CACHE/ta/NAME.cer                each TAL's TA certificate (last good copy)
  CACHE/stores/                    one store per notification URI (or rsync module)
  --report FILE                    JSON: per repository the transport, why, time, objects, bytes;
                                   per publication point the manifest consistency

examples:
  rpkirepo fetch --tal /etc/rpki/*.tal --cache /var/cache/rpkirepo --report /tmp/fetch.json
  rpkirepo fetch --notify https://rrdp.example.net/notification.xml --cache ./cache
  rpkirepo fetch --rsync rsync://rpki.example.net/repo/ --cache ./cache --rsync-external
  # validate offline with rpki-client (see docs/fetch.md)
  rpki-client -n -d ./cache/objects -t /etc/rpki/ripe.tal /tmp/out

exit status: 0 everything fetched fresh, 1 something failed (its last good copy, if any, is
in the output; see the report's reasons), 2 usage, 3 another run holds the cache's lock.
"""

FETCH_KEYS: Final = frozenset(
    {
        "tal",
        "cache",
        "report",
        "ca_file",
        "insecure",
        "concurrency",
        "rsync_external",
        "rsync_only",
        "rsync_protocol",
        "cleanup_after",
        "metrics_file",
    }
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--tal", type=Path, nargs="+", help="walk from these trust anchor locators (RFC 8630)"
    )
    src.add_argument("--notify", help="fetch one RRDP repository (notification URI)")
    src.add_argument("--rsync", help="fetch one rsync module or directory (rsync://host/module/)")
    p.add_argument("--cache", type=Path, help="cache directory (default /var/cache/rpkirepo)")
    p.add_argument("--report", type=Path, help="write the JSON report here")
    p.add_argument("--ca-file", type=Path, help="PEM bundle to verify RRDP servers' TLS with")
    p.add_argument(
        "--insecure", action="store_true", default=None, help="do not verify TLS (testing only)"
    )
    p.add_argument(
        "--concurrency", type=int, help="repositories fetched at the same time (default 4)"
    )
    p.add_argument(
        "--rsync-external",
        action="store_true",
        default=None,
        help="use the rsync binary (--compare-dest) instead of the native rsync client",
    )
    p.add_argument(
        "--rsync-only", action="store_true", default=None, help="never use RRDP (measurement)"
    )
    p.add_argument(
        "--rsync-protocol",
        type=int,
        choices=(27, 30, 31),
        help="rsync protocol the native client offers (default 31)",
    )
    p.add_argument(
        "--cleanup-after",
        type=parse_duration,
        help="keep a replaced tree this long for validators still reading it; past it the tree "
        "is reused, so a small change costs O(change) (default 10m)",
    )
    p.add_argument("--metrics-file", type=Path, help="write metrics for node_exporter")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress line (default: when stderr is a terminal)",
    )


def run(args: argparse.Namespace, config: Config) -> int:
    table = config.table("fetch")
    for key in table:
        if key not in FETCH_KEYS:
            raise ConfigError(Reason.CONFIG_UNKNOWN_KEY, "unknown key in [fetch]", key=key)

    def pick(name: str, default: Any = None) -> Any:
        v = getattr(args, name, None)
        return v if v is not None else table.get(name, default)

    limits = config.limits
    tals_given = pick("tal")
    tal_paths = [
        Path(t) for t in ([tals_given] if isinstance(tals_given, str) else tals_given or [])
    ]
    if args.notify is None and args.rsync is None and not tal_paths:
        raise ConfigError(Reason.USAGE, "give --tal FILE..., --notify URI or --rsync URI")
    ca_file = pick("ca_file")
    opts = FetchOptions(
        cache=Path(pick("cache", "/var/cache/rpkirepo")),
        limits=limits,
        http=HttpOptions(
            ca_file=Path(ca_file) if ca_file else None,
            insecure=bool(pick("insecure", False)),
            limits=limits,
        ),
        concurrency=int(pick("concurrency", 4)),
        rrdp=not bool(pick("rsync_only", False)),
        rsync_external=bool(pick("rsync_external", False)),
        rsync_protocol=int(pick("rsync_protocol", 31)),
        cleanup_after=float(pick("cleanup_after", 600.0)),
    )
    if opts.concurrency < 1:
        raise ConfigError(Reason.USAGE, "--concurrency must be at least 1")
    repositories: list[tuple[RepositoryKey, RsyncUri | None]] = []
    if args.notify is not None:
        notify = HttpsUri.parse(args.notify, max_length=limits.max_uri_length)
        repositories.append((RepositoryKey.for_notify(notify), None))
    if args.rsync is not None:
        uri = RsyncUri.parse(args.rsync, max_length=limits.max_uri_length)
        repositories.append((RepositoryKey.for_module(uri), uri))
    tals = (
        [read_tal(p, limits=limits) for p in tal_paths]
        if args.notify is None and args.rsync is None
        else []
    )
    progress = TerminalProgress(force=args.progress)
    try:
        report = run_fetch(opts, tals=tals, repositories=repositories, progress=progress)
    except RpkiRepoError as exc:
        progress.close()
        if exc.reason == Reason.STATE_LOCKED:
            print(f"rpkirepo fetch: {exc}", file=sys.stderr)
            return EXIT_LOCKED
        raise
    progress.close()
    doc = report_json(report)
    report_path = pick("report")
    if report_path is not None:
        atomic_write(Path(report_path), json.dumps(doc, indent=1).encode())
    metrics_file = pick("metrics_file")
    if metrics_file is not None:
        write_textfile(Path(metrics_file), report_metrics(report))
    if args.json:
        print(json.dumps(doc, indent=1))
    elif not getattr(args, "quiet", False):
        print(report_text(report))
    fresh = all(t.transport in ("https", "rsync") for t in report.tals) and all(
        r.transport in ("rrdp", "rsync") for r in report.repositories
    )
    return 0 if fresh and not report.refusals else 1
