"""The ``rpkirepo`` command line: thin argument handling around the library.

Exit codes: 0 success, 1 a refusal or failure (the message carries its reason code), 2 usage.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rpkirepo import __version__
from rpkirepo.config import Config, load_config, parse_duration, pick_setting
from rpkirepo.errors import ConfigError, Reason, RpkiRepoError
from rpkirepo.limits import Limits
from rpkirepo.log import setup_logging
from rpkirepo.metrics import Metric, write_textfile
from rpkirepo.progress import TerminalProgress
from rpkirepo.uri import HttpsUri, RsyncUri

__all__ = ["main"]

log = logging.getLogger("rpkirepo.cli")

MAIN_EPILOG = """\
commands:
  fetch     relying-party side: walk TALs, RRDP first, rsync fallback, into a safe cache
  publish   turn a directory of RPKI objects into an RRDP repository and an rsync tree
  inspect   show what the object reader sees in RPKI object files
  limits    list every hard limit, its default and what it protects
  serve     serve an RRDP directory over HTTP(S): RRDP files only, atomic revisions
  sync      mirror a (hidden) RRDP publication server to this node's RRDP and rsync dirs
  testbed   generate a complete, valid RPKI (TA, CAs, ROAs, ASPA, ...) for testing

examples:
  rpkirepo publish ./objects --rsync-base rsync://rpki.example.net/repo/ \\
      --https-base https://rrdp.example.net/rrdp/ --state-dir /var/lib/rpkirepo
  rpkirepo --config /etc/rpkirepo.toml publish
  rpkirepo sync https://rrdp.example.net/rrdp/notification.xml \\
      --source-uri-base https://krill.internal:3000/rrdp/ --state-dir /var/lib/rpkirepo/sync
  rpkirepo fetch --tal /etc/rpki/*.tal --cache /var/cache/rpkirepo --report fetch.json
  rpkirepo inspect objects/*.roa
  rpkirepo limits
  rpkirepo testbed ./tb --rsync-base rsync://localhost/repo/
  rpkirepo testbed advance ./tb --roll-key
"""

TESTBED_EPILOG = """\
Writes a trust anchor and its TAL, a tree of CAs with RFC 3779 resources sub-allocated from their
parents, and in every CA a CRL, a manifest, ROAs (IPv4 and IPv6, with and without maxLength), an
ASPA and a Ghostbusters record, all valid from now-1h to now+DAYS.  The same --seed gives the
same names, resources, ROAs and expected output; keys and signatures differ between runs.

`rpkirepo testbed advance OUT_DIR` moves an existing testbed on by one step, in place, as a live
repository changes: every CRL and manifest is re-issued (numbers + 1, times forward), one ROA is
revoked (file removed, EE serial on the CRL) and one added, and with --roll-key one CA rolls its
key (RFC 6489; the VRPs stay).  Only the files that change are rewritten, so `rpkirepo publish`
then writes one delta.  It takes only --seed and --roll-key.

--pub-point RSYNC_BASE[,RRDP_BASE] (repeatable) adds a publication point on an rsync module of its
own (another host, or another module), with RRDP or rsync only.  CA N lives in point (N-1) mod
(1 + points), point 0 being --rsync-base/--rrdp-base (which keeps the TA); its certificate
carries its own point's SIA and lies in its parent's point.  Publish each point on its own.

output:
  OUT_DIR/repository/         the rsync module's content (publish it with `rpkirepo publish`)
  OUT_DIR/repositories/HOST[_PORT]/MODULE/   that of each --pub-point, published the same way
  OUT_DIR/ta.cer, ta.tal      the trust anchor certificate and its locator (RFC 8630)
  OUT_DIR/expected-vrps.csv   the VRPs in rpki-client's -c format
  OUT_DIR/expected-vrps.json  the VRPs ("roas") and ASPAs ("aspas") in rpki-client's -j shape
  OUT_DIR/testbed-state.json  what advance needs (tree, serials, numbers, revocations, plans)
  OUT_DIR/keys/NAME.pem       the CA keys (mode 0600), for advance

examples:
  rpkirepo testbed ./tb --rsync-base rsync://localhost/repo/ \\
      --rrdp-base https://localhost:3000/rrdp/ --cas 3 --depth 2 --roas-per-ca 3 --seed 1
  rpkirepo publish ./tb/repository --rsync-base rsync://localhost/repo/ \\
      --https-base https://localhost:3000/rrdp/ --state-dir ./tb/publish
  rpkirepo testbed advance ./tb --roll-key      # then the same publish command: one delta
  rpkirepo testbed ./tb2 --cas 4 --pub-point rsync://rpki-a.example/a/,https://a.example/rrdp/
  rpkirepo publish ./tb2/repositories/rpki-a.example/a --rsync-base rsync://rpki-a.example/a/ \\
      --https-base https://a.example/rrdp/ --state-dir ./tb2/publish-a

exit status: 0 written, 1 refused or failed (see the reason code), 2 usage.
"""

PUBLISH_EPILOG = """\
Each run compares the source directory with the previous run.  When anything changed it writes one
delta, a new snapshot and a new notification (RFC 8182), and a new rsync revision tree behind the
`current` symlink; when nothing changed it writes nothing.  A first run, or lost or corrupt state,
starts a new RRDP session.  Files that stop being referenced stay for --cleanup-after seconds.

output:
  RRDP-DIR/notification.xml(.gz)                       served at HTTPS-BASE/notification.xml
  RRDP-DIR/<session>/<serial>/<random>/snapshot.xml(.gz), delta.xml(.gz)
  RSYNC-DIR/current -> revisions/<session8>-<serial>   point the rsync module at RSYNC-DIR/current

examples:
  # publish ./objects; RRDP and rsync output under /var/lib/rpkirepo/{rrdp,rsync}
  rpkirepo publish ./objects --rsync-base rsync://rpki.example.net/repo/ \\
      --https-base https://rrdp.example.net/rrdp/ --state-dir /var/lib/rpkirepo

  # every minute from cron, quiet unless something is wrong, metrics for node_exporter
  * * * * * rpkirepo -q publish --config /etc/rpkirepo.toml \\
      --metrics-file /var/lib/node_exporter/rpkirepo.prom

exit status: 0 published (or nothing to do), 1 refused or failed (see the reason code), 2 usage.
"""


#: Keys of the [publish] table: the long flags of `rpkirepo publish`, with _ for -.
PUBLISH_KEYS = frozenset(
    {
        "source_dir",
        "rsync_base",
        "https_base",
        "state_dir",
        "rrdp_dir",
        "rsync_dir",
        "cleanup_after",
        "rrdp_max_deltas",
        "rrdp_max_delta_age",
        "gzip_level",
        "skip_invalid",
        "rsync_include_host",
        "rsync_max_revisions",
        "metrics_file",
        "max_shrink",
        "force",
    }
)


def _common(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """Options accepted both before and after the command (``rpkirepo -q publish`` and
    ``rpkirepo publish -q``): after the command they default to SUPPRESS so they do not
    overwrite a value given before it."""

    def d(value: object) -> object:
        return value if top else argparse.SUPPRESS

    parser.add_argument(
        "--config", type=Path, default=d(None), help="TOML configuration file (docs/config.md)"
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=d(0), help="more output (-vv for debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", default=d(False), help="errors only")
    parser.add_argument(
        "--log-format", choices=("text", "json"), default=d(None), help="log line format"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpkirepo",
        description="Distribute the RPKI: publish, sync, serve and fetch RRDP and rsync "
        "repositories.",
        epilog=MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rpkirepo {__version__}")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from rpkirepo.fetch import command as fetch_command
    from rpkirepo.sync import command as sync_command

    p = sub.add_parser(
        "sync",
        help="hidden RRDP server -> public RRDP files + rsync tree (a krill-sync successor)",
        description="Mirror an RRDP publication server to this node: its snapshot and delta "
        "files under --rrdp-dir with a notification of our own, and an rsync tree.",
        epilog=sync_command.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    sync_command.add_arguments(p)
    p.set_defaults(func=sync_command.run)

    p = sub.add_parser(
        "fetch",
        help="relying-party side: walk TALs or fetch one repository (RRDP, rsync fallback)",
        description="Fetch RPKI repositories into a cache, safely: RRDP first, rsync when RRDP "
        "fails, the last good copy when both fail.",
        epilog=fetch_command.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    fetch_command.add_arguments(p)
    p.set_defaults(func=fetch_command.run)

    p = sub.add_parser(
        "publish",
        help="directory of objects -> RRDP repository + rsync tree",
        description="Publish a directory of RPKI objects as an RRDP repository (RFC 8182) and a "
        "consistent rsync tree.",
        epilog=PUBLISH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.add_argument("source_dir", nargs="?", type=Path, help="directory of RPKI objects")
    p.add_argument("--rsync-base", help="rsync URI the source directory maps to (ends with /)")
    p.add_argument("--https-base", help="public HTTPS URI of the RRDP directory (ends with /)")
    p.add_argument("--state-dir", type=Path, help="state directory (default /var/lib/rpkirepo)")
    p.add_argument("--rrdp-dir", type=Path, help="RRDP output directory (default STATE/rrdp)")
    p.add_argument("--rsync-dir", type=Path, help="rsync output directory (default STATE/rsync)")
    p.add_argument(
        "--cleanup-after",
        type=parse_duration,
        help="grace period for files and trees no longer referenced (default 2h)",
    )
    p.add_argument(
        "--rrdp-max-deltas", type=int, help="most deltas in the notification (default 100)"
    )
    p.add_argument(
        "--rrdp-max-delta-age", type=parse_duration, help="oldest delta listed (default 24h)"
    )
    p.add_argument(
        "--gzip-level", type=int, choices=range(4), help="ISA-L deflate level 0-3 (default 3)"
    )
    p.add_argument(
        "--skip-invalid",
        action="store_true",
        default=None,
        help="publish the valid files and skip bad ones (default: refuse the whole run)",
    )
    p.add_argument(
        "--rsync-include-host",
        action="store_true",
        default=None,
        help="lay the rsync tree out as HOST/MODULE/PATH (several repositories in one tree)",
    )
    p.add_argument(
        "--rsync-max-revisions", type=int, help="most rsync revision trees kept (default 200)"
    )
    p.add_argument(
        "--max-shrink",
        type=float,
        help="refuse a run that withdraws more than this share of the objects (default 0.5)",
    )
    p.add_argument(
        "--force",
        action="store_true",
        default=None,
        help="publish even when the shrink guard objects",
    )
    p.add_argument("--metrics-file", type=Path, help="write Prometheus metrics to this file")
    p.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )
    p.set_defaults(func=cmd_publish)

    p = sub.add_parser(
        "inspect",
        help="show what the object reader sees in RPKI object files",
        description="Read RPKI objects (certificates, CRLs, manifests, ROAs, ASPA, ...) and "
        "print what repository tools use: type, times, URIs, manifest entries, ROA prefixes.",
        epilog="examples:\n  rpkirepo inspect repo/*.mft\n  rpkirepo inspect --json a.roa",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser(
        "limits",
        help="list every hard limit and its default",
        description="Every hard limit on untrusted input, its default, and what it guards. "
        "Override any of them in the [limits] table of the configuration file.",
    )
    _common(p)
    p.add_argument("--markdown", action="store_true", help="print docs/limits.md")
    p.set_defaults(func=cmd_limits)

    from rpkirepo.rsync import command as rsync_command
    from rpkirepo.serve import command as serve_command

    p = sub.add_parser(
        "serve", help="serve RRDP over HTTP(S) and/or rsync (a read-only daemon) from memory"
    )
    _common(p)
    serve_command.add_arguments(p)
    group = p.add_argument_group(
        "rsync daemon",
        "read-only, sender-only rsync from a shared in-memory model: each module serves "
        "DIR/current (e.g. --rsync-listen 0.0.0.0:873 --module repo=/var/lib/rpkirepo/rsync)",
    )
    rsync_command.add_arguments(group)  # type: ignore[arg-type]
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "testbed",
        help="generate a complete, valid RPKI for testing",
        description="Generate a trust anchor, a tree of CAs and their objects (RFC 6487, 6488, "
        "6482, 9286, 6493, ASPA, RFC 9589 signing-time), a TAL and the expected RP output; "
        "or, with `advance`, move an existing testbed on by one step (new CRLs and manifests, "
        "a ROA revoked and one added, optionally a CA key roll).",
        epilog=TESTBED_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(p)
    # `testbed [advance] OUT_DIR`: an optional positional before OUT_DIR; with one word it is
    # OUT_DIR (argparse matches positionals together, so `?` then takes nothing).
    p.add_argument(
        "action",
        nargs="?",
        choices=("advance",),
        metavar="advance",
        help="move the existing testbed in OUT_DIR on by one step instead of generating one",
    )
    p.add_argument(
        "out_dir",
        type=Path,
        help="output directory (its repository/ must be empty); advance: an existing testbed",
    )
    p.add_argument("--cas", type=int, default=3, help="CAs below the TA (default 3)")
    p.add_argument("--roas-per-ca", type=int, default=3, help="ROAs in each CA (default 3)")
    p.add_argument("--depth", type=int, default=2, help="levels of CAs below the TA (default 2)")
    p.add_argument(
        "--seed",
        type=int,
        help="seed for everything but keys (default 0; advance: the testbed's seed and step)",
    )
    p.add_argument(
        "--rsync-base",
        default="rsync://localhost/repo/",
        help="rsync URI of the repository (default rsync://localhost/repo/)",
    )
    p.add_argument("--rrdp-base", help="HTTPS URI of the RRDP directory (rpkiNotify in CAs)")
    p.add_argument(
        "--ta-uri",
        action="append",
        default=[],
        help="a URI of the TA certificate for the TAL (repeatable; default RSYNC-BASE/ta.cer)",
    )
    p.add_argument(
        "--pub-point",
        action="append",
        default=[],
        metavar="RSYNC_BASE[,RRDP_BASE]",
        help="an extra publication point (repeatable): an rsync base on a module of its own, "
        "and its RRDP base unless rsync only; CAs are spread over the points round-robin",
    )
    p.add_argument("--days", type=float, default=7.0, help="validity after now (default 7)")
    p.add_argument(
        "--aspa-version",
        type=int,
        choices=(0, 1),
        default=0,
        help="ASPA profile: 0 (what rpki-client 8.2 parses, default) or 1 (draft-15 and later)",
    )
    p.add_argument(
        "--roll-key", action="store_true", help="advance: one CA rolls its key (RFC 6489)"
    )
    p.add_argument(
        "--scale",
        type=int,
        metavar="N",
        help="benchmark mode: about N objects (100..2000000; replaces --cas, --roas-per-ca, "
        "--depth), signed on every CPU with a small pool of reused keys. That breaks RFC 6487 "
        "(one-time-use EE keys, one key per CA): for benchmarks only, not for validation tests; "
        "writes no state for `advance`",
    )
    p.set_defaults(func=cmd_testbed)
    return parser


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    """HTTP (--listen), rsync (--rsync-listen), or both: then the rsync daemon runs in a child
    process beside the HTTP server, and stops with it."""
    import os
    import signal

    from rpkirepo.rsync import command as rsync_command
    from rpkirepo.serve import command as serve_command

    table = config.table("serve")
    http = bool(args.listen or table.get("listen"))
    rsync = bool(args.rsync_listen or table.get("rsync_listen"))
    if not rsync:
        return serve_command.run(args, config)
    if not http:
        return rsync_command.run(args, config)
    pid = os.fork()
    if pid == 0:  # the rsync daemon
        code = 1
        try:
            code = rsync_command.run(args, config)
        except RpkiRepoError as exc:
            print(f"rpkirepo: rsync daemon: error {exc}", file=sys.stderr)
        finally:
            os._exit(code)
    try:
        return serve_command.run(args, config)
    finally:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)


def cmd_publish(args: argparse.Namespace, config: Config) -> int:
    from rpkirepo.publish import PublishOptions, publish

    table = config.table("publish")
    for key in table:
        if key not in PUBLISH_KEYS:
            raise ConfigError(Reason.CONFIG_UNKNOWN_KEY, "unknown key in [publish]", key=key)
    source = pick_setting(args, table, "source_dir")
    rsync_base = pick_setting(args, table, "rsync_base")
    https_base = pick_setting(args, table, "https_base")
    missing = [
        n
        for n, v in (
            ("SOURCE_DIR", source),
            ("--rsync-base", rsync_base),
            ("--https-base", https_base),
        )
        if v is None
    ]
    if missing:
        raise ConfigError(Reason.USAGE, "missing: " + ", ".join(missing))
    state_dir = Path(pick_setting(args, table, "state_dir", "/var/lib/rpkirepo"))
    opts = PublishOptions(
        source_dir=Path(source),
        rsync_base=RsyncUri.parse(str(rsync_base), max_length=config.limits.max_uri_length),
        https_base=HttpsUri.parse(str(https_base), max_length=config.limits.max_uri_length),
        state_dir=state_dir,
        rrdp_dir=Path(pick_setting(args, table, "rrdp_dir", state_dir / "rrdp")),
        rsync_dir=Path(pick_setting(args, table, "rsync_dir", state_dir / "rsync")),
        grace=float(pick_setting(args, table, "cleanup_after", 7200.0)),
        delta_max_count=int(pick_setting(args, table, "rrdp_max_deltas", 100)),
        delta_max_age=float(pick_setting(args, table, "rrdp_max_delta_age", 86400.0)),
        gzip_level=int(pick_setting(args, table, "gzip_level", 3)),
        skip_invalid=bool(pick_setting(args, table, "skip_invalid", False)),
        rsync_include_host=bool(pick_setting(args, table, "rsync_include_host", False)),
        rsync_max_revisions=int(pick_setting(args, table, "rsync_max_revisions", 200)),
        max_shrink=float(pick_setting(args, table, "max_shrink", 0.5)),
        force=bool(pick_setting(args, table, "force", False)),
        limits=config.limits,
    )
    if not opts.rsync_base.is_directory or not opts.https_base.is_directory:
        raise ConfigError(Reason.USAGE, "--rsync-base and --https-base must end with a slash")
    progress = TerminalProgress(force=args.progress)
    started = time.monotonic()
    result = publish(opts, progress)
    elapsed = time.monotonic() - started
    summary = {
        "session_id": result.session_id,
        "serial": result.serial,
        "changed": result.changed,
        "new_session_reason": result.new_session_reason,
        "objects": result.objects,
        "added": result.added,
        "modified": result.modified,
        "removed": result.removed,
        "skipped": [str(e) for e in result.skipped],
        "snapshot_size": result.snapshot_size,
        "notification": str(result.notification),
        "rsync_current": str(result.current_tree),
        "seconds": round(elapsed, 3),
        "stage_seconds": {k: round(v, 4) for k, v in result.timings.items()},
    }
    if result.changed:
        log.warning(
            "published serial %d of session %s: +%d ~%d -%d, %d objects",
            result.serial,
            result.session_id,
            result.added,
            result.modified,
            result.removed,
            result.objects,
            extra={"reason": result.new_session_reason or "update"},
        )
    else:
        log.info("nothing changed; serial %d stays", result.serial, extra={"reason": "no-change"})
    if args.json:
        print(json.dumps(summary, indent=2))
    elif not args.quiet:
        state = "published" if result.changed else "unchanged"
        print(
            f"{state}: session {result.session_id} serial {result.serial}, "
            f"{result.objects} objects (+{result.added} ~{result.modified} -{result.removed}), "
            f"snapshot {result.snapshot_size} bytes, {elapsed:.2f}s\n"
            f"  notification: {result.notification}\n  rsync tree:   {result.current_tree}"
        )
    metrics_file = pick_setting(args, table, "metrics_file")
    if metrics_file is not None:
        labels = {"rsync_base": opts.rsync_base.uri}
        metrics: list[Metric] = [
            (
                "rpkirepo_publish_serial",
                "gauge",
                "RRDP serial after the run",
                result.serial,
                labels,
            ),
            ("rpkirepo_publish_objects", "gauge", "Objects published", result.objects, labels),
            (
                "rpkirepo_publish_last_run_timestamp_seconds",
                "gauge",
                "End of the last run",
                time.time(),
                labels,
            ),
            (
                "rpkirepo_publish_duration_seconds",
                "gauge",
                "Duration of the last run",
                elapsed,
                labels,
            ),
            (
                "rpkirepo_publish_snapshot_bytes",
                "gauge",
                "Snapshot size",
                result.snapshot_size,
                labels,
            ),
            (
                "rpkirepo_publish_changed_objects",
                "gauge",
                "Objects changed by the last run",
                result.added + result.modified + result.removed,
                labels,
            ),
            (
                "rpkirepo_publish_skipped_files",
                "gauge",
                "Source files skipped as invalid",
                len(result.skipped),
                labels,
            ),
        ]
        write_textfile(Path(metrics_file), metrics)
    return 0


def cmd_testbed(args: argparse.Namespace, config: Config) -> int:
    from rpkirepo.testbed import TestbedOptions, generate, parse_pub_point

    if args.action == "advance":
        return cmd_testbed_advance(args)
    if args.roll_key:
        raise ConfigError(Reason.USAGE, "--roll-key needs `testbed advance OUT_DIR`")
    if args.out_dir == Path("advance"):
        raise ConfigError(
            Reason.USAGE,
            "`testbed advance` needs OUT_DIR (to generate into ./advance, give its full path)",
        )
    started = time.monotonic()
    bed = generate(
        TestbedOptions(
            out_dir=args.out_dir,
            rsync_base=args.rsync_base,
            rrdp_base=args.rrdp_base,
            ta_uris=tuple(args.ta_uri),
            cas=args.cas,
            roas_per_ca=args.roas_per_ca,
            depth=args.depth,
            seed=0 if args.seed is None else args.seed,
            days=args.days,
            aspa_version=args.aspa_version,
            scale=args.scale,
            pub_points=tuple(parse_pub_point(text) for text in args.pub_point),
        )
    )
    if not args.quiet:
        print(
            f"testbed: {len(bed.files)} objects, {len(bed.vrps)} VRPs, {len(bed.aspas)} ASPAs, "
            f"valid {bed.not_before:%Y-%m-%dT%H:%M:%SZ} to {bed.not_after:%Y-%m-%dT%H:%M:%SZ}, "
            f"{time.monotonic() - started:.2f}s\n  repository: {bed.repository}\n  TAL: {bed.tal}"
            + "".join(f"\n  repository: {point.directory}" for point in bed.points[1:])
        )
    return 0


def cmd_testbed_advance(args: argparse.Namespace) -> int:
    from rpkirepo.testbed import TestbedOptions, advance

    given = [  # generate's options that differ from their defaults
        "--" + f.name.replace("_", "-")
        for f in dataclasses.fields(TestbedOptions)
        if f.name not in ("out_dir", "seed")
        and hasattr(args, f.name)
        and getattr(args, f.name) != f.default
    ]
    if args.ta_uri:
        given.append("--ta-uri")
    if args.pub_point:
        given.append("--pub-point")
    if given:  # the testbed keeps what it was generated with
        raise ConfigError(
            Reason.USAGE, f"testbed advance takes only --seed and --roll-key, not {given[0]}"
        )
    started = time.monotonic()
    step = advance(args.out_dir, seed=args.seed, roll_key=args.roll_key)
    if not args.quiet:
        rolled = f", key rolled: {step.rolled_ca}" if step.rolled_ca else ""
        print(
            f"testbed advance: step {step.generation}, {len(step.written)} files written, "
            f"{len(step.removed)} removed, ROA added: {step.added_roa}, "
            f"ROA revoked: {step.revoked_roa or 'none'}{rolled}, {len(step.vrps)} VRPs, "
            f"valid to {step.not_after:%Y-%m-%dT%H:%M:%SZ}, {time.monotonic() - started:.2f}s"
        )
    return 0


def cmd_inspect(args: argparse.Namespace, config: Config) -> int:
    from rpkirepo.objects import read_object

    status = 0
    for path in args.files:
        try:
            data = path.read_bytes()
            obj = read_object(data, name=path.name, limits=config.limits)
        except OSError as exc:
            print(f"{path}: error: cannot read: {exc.strerror}", file=sys.stderr)
            status = 1
            continue
        except RpkiRepoError as exc:
            print(f"{path}: error {exc}", file=sys.stderr)
            status = 1
            continue
        doc = {k: _plain(v) for k, v in dataclasses.asdict(obj).items()}
        if args.json:
            print(json.dumps({"file": str(path), **doc}, default=str))
        else:
            print(f"{path}:")
            for key, value in doc.items():
                print(f"  {key}: {value}")
    return status


def _plain(value: object) -> object:
    """JSON- and print-friendly form of reader values (bytes as hex, the rest as text)."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def limits_markdown() -> str:
    """docs/limits.md, generated from :class:`Limits` (a test keeps the file in step)."""
    lines = [
        "# Limits",
        "",
        "Every hard limit on untrusted or operator input. Override any of them in the `[limits]`",
        "table of the configuration file; `rpkirepo limits` shows the values in force.",
        "Generated by `rpkirepo limits --markdown`.",
        "",
        "| name | default | what it guards |",
        "|---|---|---|",
    ]
    lines += [f"| `{n}` | {d:,} | {doc} |" for n, d, doc in Limits.documentation()]
    return "\n".join(lines) + "\n"


def cmd_limits(args: argparse.Namespace, config: Config) -> int:
    if args.markdown:
        sys.stdout.write(limits_markdown())
        return 0
    current = config.limits
    for name, default, doc in Limits.documentation():
        value = getattr(current, name)
        note = "" if value == default else f" (configured: {value})"
        print(f"{name} = {default}{note}\n    {doc}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        config = load_config(args.config)
        log_table = config.table("log")
        verbosity = -1 if args.quiet else args.verbose
        if not args.quiet and not args.verbose and "level" in log_table:
            verbosity = {"error": -1, "warning": 0, "info": 1, "debug": 2}.get(
                str(log_table["level"]), 0
            )
        setup_logging(verbosity, args.log_format or str(log_table.get("format", "text")))
        func: Callable[[argparse.Namespace, Config], int] = args.func
        return func(args, config)
    except RpkiRepoError as exc:
        if exc.reason == Reason.USAGE:
            parser.error(str(exc))
        print(f"rpkirepo: error {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("rpkirepo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
