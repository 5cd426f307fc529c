"""``rpkirepo sync``: arguments, the ``[sync]`` configuration, one-shot and daemon modes.

One repository comes from the command line (positional public notification URI) or from the
``[sync]`` table; several from ``[[sync.repository]]`` tables (each key of ``[sync]`` may be set
per repository; the ``[sync]`` values are the defaults).  Daemon mode (``--interval``) runs every
repository in turn, sleeps until the next tick, and serves Prometheus metrics and ``/healthz`` on
``--metrics-listen``.
"""

from __future__ import annotations

import argparse
import http.server
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from rpkirepo.config import Config, parse_duration
from rpkirepo.errors import ConfigError, Reason, RpkiRepoError
from rpkirepo.httpget import HttpOptions
from rpkirepo.metrics import Metric, render, write_textfile
from rpkirepo.progress import TerminalProgress
from rpkirepo.sync.mirror import SyncOptions, SyncResult, read_status, sync_once
from rpkirepo.sync.upstream import DirUpstream, HttpUpstream, Upstream
from rpkirepo.uri import HttpsUri

__all__ = ["EPILOG", "SYNC_KEYS", "add_arguments", "run"]

log = logging.getLogger("rpkirepo.sync")

#: Exit status when another run holds a repository's lock (cron overlap; not a failure).
EXIT_LOCKED: Final = 3

EPILOG = """\
Mirrors a (hidden) RRDP publication server to this node: the upstream snapshot and delta files
are copied byte for byte under --rrdp-dir (hash-checked, with .gz siblings) and named by a
notification of our own, written last; the objects go to an rsync revision tree behind
--rsync-dir/current, swapped atomically, with RFC 9589 file times.  Deltas are applied when they
connect to what we hold (a change of k objects costs O(k)), the snapshot is parsed otherwise.
The upstream being down, or sending anything bad, leaves the last good state served.

output:
  RRDP-DIR/<name of NOTIFICATION_URI>(.gz)   our notification (public URIs)
  RRDP-DIR/<path below the public base>      upstream's snapshot and delta files (+ .gz)
  RSYNC-DIR/current -> revisions/<tree>      point the rsync module at RSYNC-DIR/current

examples:
  # the hidden server is Krill on krill.internal; this node serves https://rrdp.example.net/rrdp/
  rpkirepo sync https://rrdp.example.net/rrdp/notification.xml \\
      --source-uri-base https://krill.internal:3000/rrdp/ --ca-file /etc/krill-ca.pem \\
      --state-dir /var/lib/rpkirepo/sync

  # the publication server's RRDP directory is mounted locally; every minute from cron
  * * * * * rpkirepo -q sync https://rrdp.example.net/rrdp/notification.xml \\
      --source-uri-base /mnt/pubserver/rrdp/ --metrics-file /var/lib/node_exporter/sync.prom

  # as a daemon for every repository of the config file, metrics on :9556
  rpkirepo --config /etc/rpkirepo.toml sync --interval 60 --metrics-listen 127.0.0.1:9556

  rpkirepo --config /etc/rpkirepo.toml sync --status

exit status: 0 synced (or nothing to do), 1 a repository failed (the last good state is still
served; see the reason code), 2 usage, 3 another run holds the lock.
"""

#: Keys of [sync] and [[sync.repository]]: the long flags, with _ for -.
SYNC_KEYS: Final = frozenset(
    {
        "notification_uri",
        "source_uri_base",
        "state_dir",
        "rrdp_dir",
        "rsync_dir",
        "rrdp_notify_delay",
        "rrdp_max_deltas",
        "rsync_disable",
        "rsync_include_host",
        "rsync_max_revisions",
        "cleanup_after",
        "insecure",
        "ca_file",
        "source_link",
        "max_shrink",
        "force",
        "gzip_level",
        "metrics_file",
        "interval",
        "metrics_listen",
    }
)
#: Keys that describe the whole process, not one repository.
_PROCESS_KEYS: Final = frozenset({"metrics_file", "interval", "metrics_listen"})


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "notification_uri",
        nargs="?",
        help="public notification URI this node serves (https://.../notification.xml)",
    )
    p.add_argument(
        "--source-uri-base",
        "--source_uri_base",
        help="where to read the files instead: the hidden server's base URI (http(s)://.../) "
        "or a local directory (default: the notification's own base)",
    )
    p.add_argument(
        "--state-dir", type=Path, help="state directory (default /var/lib/rpkirepo/sync)"
    )
    p.add_argument("--rrdp-dir", type=Path, help="RRDP output (default STATE_DIR/rrdp)")
    p.add_argument("--rsync-dir", type=Path, help="rsync output (default STATE_DIR/rsync)")
    p.add_argument(
        "--rrdp-notify-delay",
        type=parse_duration,
        help="seconds new snapshot/delta files are in place before the notification names "
        "them (multi-node setups; default 0)",
    )
    p.add_argument(
        "--rrdp-max-deltas", type=int, help="most deltas our notification lists (default: all)"
    )
    p.add_argument(
        "--rsync-disable", action="store_true", default=None, help="no rsync tree, RRDP only"
    )
    p.add_argument(
        "--rsync-include-host",
        action="store_true",
        default=None,
        help="rsync tree layout current/HOST/MODULE/PATH (default current/PATH, one module)",
    )
    p.add_argument(
        "--rsync-max-revisions",
        type=int,
        help="most rsync trees kept; past it the oldest is reused early (default 200)",
    )
    p.add_argument(
        "--cleanup-after",
        type=parse_duration,
        help="keep files and trees this long after they stopped being current (default 2h)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="do not verify the source's TLS certificate (a hidden server on localhost)",
    )
    p.add_argument("--ca-file", type=Path, help="PEM bundle to verify the source's TLS with")
    p.add_argument(
        "--source-link",
        action="store_true",
        default=None,
        help="hard-link files from a local --source-uri-base on the same filesystem instead of "
        "copying them (only if the publisher never rewrites a published file in place)",
    )
    p.add_argument(
        "--max-shrink",
        type=float,
        help="refuse a snapshot dropping more than this share of the objects (default 0.5)",
    )
    p.add_argument("--force", action="store_true", default=None, help="override the shrink guard")
    p.add_argument("--gzip-level", type=int, choices=(0, 1, 2, 3), help=".gz level (default 3)")
    p.add_argument(
        "--interval",
        type=parse_duration,
        help="daemon mode: sync every repository every INTERVAL (e.g. 60, 1m)",
    )
    p.add_argument(
        "--metrics-listen",
        help="daemon mode: serve /metrics and /healthz on ADDR:PORT (e.g. 127.0.0.1:9556)",
    )
    p.add_argument("--metrics-file", type=Path, help="one-shot: write metrics for node_exporter")
    p.add_argument("--status", action="store_true", help="show each repository's state and exit")
    p.add_argument("--json", action="store_true", help="print results as JSON on stdout")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress line (default: when stderr is a terminal)",
    )


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class Repository:
    name: str
    options: SyncOptions


def _check_keys(table: Mapping[str, Any], where: str) -> None:
    for key in table:
        if key not in SYNC_KEYS and key != "repository":
            raise ConfigError(Reason.CONFIG_UNKNOWN_KEY, f"unknown key in {where}", key=key)


def _upstream(source: str | None, public: HttpsUri, http: HttpOptions) -> Upstream:
    if source is None:
        text = public.uri
        return HttpUpstream(text[: text.rfind("/") + 1], http)
    if source.startswith(("https://", "http://")):
        if not source.endswith("/"):
            raise ConfigError(Reason.USAGE, "--source-uri-base must end with a slash", uri=source)
        return HttpUpstream(source, http)
    path = Path(source)
    if not path.is_dir():
        raise ConfigError(Reason.USAGE, "--source-uri-base is neither a URI nor a directory")
    return DirUpstream(path)


def _repository(
    args: argparse.Namespace, values: Mapping[str, Any], config: Config, default_state: Path
) -> Repository:
    def pick(name: str, default: Any = None) -> Any:
        v = getattr(args, name, None)
        if v is not None:
            return v
        return values.get(name, default)

    uri_text = pick("notification_uri")
    if uri_text is None:
        raise ConfigError(Reason.USAGE, "missing: NOTIFICATION_URI (or [sync] notification_uri)")
    limits = config.limits
    public = HttpsUri.parse(str(uri_text), max_length=limits.max_uri_length)
    if public.is_directory:
        raise ConfigError(Reason.USAGE, "NOTIFICATION_URI names a directory", uri=public.uri)
    state_dir = Path(pick("state_dir", default_state))
    ca_file = pick("ca_file")
    http = HttpOptions(
        ca_file=Path(ca_file) if ca_file is not None else None,
        insecure=bool(pick("insecure", False)),
        limits=limits,
    )
    max_deltas = pick("rrdp_max_deltas")
    opts = SyncOptions(
        notification_uri=public,
        upstream=_upstream(pick("source_uri_base"), public, http),
        state_dir=state_dir,
        rrdp_dir=Path(pick("rrdp_dir", state_dir / "rrdp")),
        rsync_dir=Path(pick("rsync_dir", state_dir / "rsync")),
        rrdp_notify_delay=float(pick("rrdp_notify_delay", 0.0)),
        rrdp_max_deltas=int(max_deltas) if max_deltas is not None else None,
        rsync_enabled=not bool(pick("rsync_disable", False)),
        rsync_include_host=bool(pick("rsync_include_host", False)),
        rsync_max_revisions=int(pick("rsync_max_revisions", 200)),
        cleanup_after=float(pick("cleanup_after", 7200.0)),
        max_shrink=float(pick("max_shrink", 0.5)),
        force=bool(pick("force", False)),
        gzip_level=int(pick("gzip_level", 3)),
        link_local=bool(pick("source_link", False)),
        limits=limits,
    )
    return Repository(public.uri, opts)


def repositories(args: argparse.Namespace, config: Config) -> list[Repository]:
    table = config.table("sync")
    _check_keys(table, "[sync]")
    listed = table.get("repository", [])
    if not isinstance(listed, list):
        raise ConfigError(Reason.CONFIG_INVALID, "[sync] repository must be [[sync.repository]]")
    defaults = {k: v for k, v in table.items() if k != "repository"}
    base_state = Path(defaults.get("state_dir", "/var/lib/rpkirepo/sync"))
    if args.notification_uri is not None or not listed:
        return [_repository(args, defaults, config, base_state)]
    repos: list[Repository] = []
    for i, item in enumerate(listed):
        if not isinstance(item, dict):
            raise ConfigError(Reason.CONFIG_INVALID, "[[sync.repository]] must be a table")
        _check_keys(item, f"[[sync.repository]] #{i + 1}")
        merged = {**defaults, **item}
        if "state_dir" not in item:
            uri = HttpsUri.parse(str(merged.get("notification_uri", "")))
            merged["state_dir"] = str(base_state / uri.host)
        # Directories are per repository: never inherited from [sync].
        for key in ("rrdp_dir", "rsync_dir"):
            if key not in item:
                merged.pop(key, None)
        repos.append(_repository(args, merged, config, base_state))
    dirs = [r.options.state_dir.resolve() for r in repos]
    if len(set(dirs)) != len(dirs):
        raise ConfigError(Reason.CONFIG_INVALID, "two repositories share a state_dir")
    return repos


# --------------------------------------------------------------------------- metrics


@dataclass
class _Stats:
    """What daemon mode exposes per repository (updated by the sync thread only)."""

    results: dict[str, SyncResult] = field(default_factory=dict)
    last_success: dict[str, float] = field(default_factory=dict)
    last_duration: dict[str, float] = field(default_factory=dict)
    runs: dict[tuple[str, str], int] = field(default_factory=dict)
    failures: dict[tuple[str, str], int] = field(default_factory=dict)
    fetched: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, name: str, result: SyncResult | None, error: str | None, took: float) -> None:
        with self.lock:
            self.last_duration[name] = took
            if result is not None:
                self.results[name] = result
                self.last_success[name] = time.time()
                key = (name, result.outcome)
                self.runs[key] = self.runs.get(key, 0) + 1
                self.fetched[name] = self.fetched.get(name, 0) + result.bytes_fetched
            if error is not None:
                key = (name, error)
                self.failures[key] = self.failures.get(key, 0) + 1

    def metrics(self) -> list[Metric]:
        out: list[Metric] = []
        with self.lock:
            for name, r in self.results.items():
                labels = {"repository": name}
                out.append(
                    ("rpkirepo_sync_serial", "gauge", "Upstream serial held", r.serial, labels)
                )
                if r.objects:
                    out.append(
                        ("rpkirepo_sync_objects", "gauge", "Objects held", r.objects, labels)
                    )
            for name, t in self.last_success.items():
                out.append(
                    (
                        "rpkirepo_sync_last_success_timestamp_seconds",
                        "gauge",
                        "End of the last successful run",
                        t,
                        {"repository": name},
                    )
                )
            for name, t in self.last_duration.items():
                out.append(
                    (
                        "rpkirepo_sync_duration_seconds",
                        "gauge",
                        "Duration of the last run",
                        t,
                        {"repository": name},
                    )
                )
            for (name, outcome), n in self.runs.items():
                out.append(
                    (
                        "rpkirepo_sync_runs_total",
                        "counter",
                        "Successful runs by outcome",
                        n,
                        {"repository": name, "outcome": outcome},
                    )
                )
            for (name, reason), n in self.failures.items():
                out.append(
                    (
                        "rpkirepo_sync_failures_total",
                        "counter",
                        "Failed runs by reason code",
                        n,
                        {"repository": name, "reason": reason},
                    )
                )
            for name, n in self.fetched.items():
                out.append(
                    (
                        "rpkirepo_sync_fetched_bytes_total",
                        "counter",
                        "Bytes fetched from upstream",
                        n,
                        {"repository": name},
                    )
                )
        return out


def _serve_metrics(listen: str, stats: _Stats) -> http.server.ThreadingHTTPServer:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit():
        raise ConfigError(Reason.USAGE, "--metrics-listen must be ADDR:PORT", value=listen)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                body = render(stats.metrics()).encode()
                ctype = "text/plain; version=0.0.4"
            elif self.path == "/healthz":
                body, ctype = b"ok\n", "text/plain"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server_class = http.server.ThreadingHTTPServer
    if ":" in host:

        class V6(http.server.ThreadingHTTPServer):
            address_family = socket.AF_INET6

        server_class = V6
    server = server_class((host, int(port)), Handler)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server


# --------------------------------------------------------------------------- running


def _summary(name: str, r: SyncResult, took: float) -> dict[str, Any]:
    return {
        "repository": name,
        "outcome": r.outcome,
        "reason": r.reason.value if r.reason is not None else None,
        "session_id": r.session_id,
        "serial": r.serial,
        "objects": r.objects,
        "added": r.added,
        "modified": r.modified,
        "removed": r.removed,
        "deltas_applied": r.deltas_applied,
        "deltas_listed": r.deltas_listed,
        "bytes_fetched": r.bytes_fetched,
        "seconds": round(took, 3),
        "stage_seconds": {k: round(v, 4) for k, v in r.timings.items()},
    }


def _sync_all(
    repos: list[Repository], args: argparse.Namespace, stats: _Stats
) -> tuple[int, list[dict[str, Any]]]:
    status = 0
    out: list[dict[str, Any]] = []
    for repo in repos:
        progress = TerminalProgress(force=args.progress)
        started = time.monotonic()
        try:
            result = sync_once(repo.options, progress)
        except RpkiRepoError as exc:
            progress.close()
            took = time.monotonic() - started
            stats.record(repo.name, None, exc.reason.value, took)
            if exc.reason == Reason.STATE_LOCKED:
                log.warning(
                    "%s: another run holds the lock", repo.name, extra={"reason": exc.reason}
                )
                status = max(status, EXIT_LOCKED) if status != 1 else 1
            else:
                log.error("%s: sync failed: %s", repo.name, exc, extra={"reason": exc.reason})
                status = 1
            out.append({"repository": repo.name, "error": str(exc), "reason": exc.reason.value})
            continue
        except Exception as exc:
            # A defect of ours: logged with its traceback; the other repositories (and, in
            # daemon mode, the next runs) go on.  What is served is the last committed state.
            progress.close()
            log.exception("%s: internal error", repo.name, extra={"reason": "internal-error"})
            stats.record(repo.name, None, "internal-error", time.monotonic() - started)
            out.append({"repository": repo.name, "error": repr(exc), "reason": "internal-error"})
            status = 1
            continue
        progress.close()
        took = time.monotonic() - started
        stats.record(repo.name, result, None, took)
        out.append(_summary(repo.name, result, took))
    return status, out


def _print(args: argparse.Namespace, rows: list[dict[str, Any]]) -> None:
    if args.json:
        print(json.dumps(rows if len(rows) != 1 else rows[0], indent=2))
        return
    if args.quiet:
        return
    for row in rows:
        if "error" in row:
            print(f"{row['repository']}: FAILED {row['error']}")
        else:
            print(
                f"{row['repository']}: {row['outcome']} -> serial {row['serial']}"
                f" ({row['reason'] or 'unchanged'}), +{row['added']} ~{row['modified']}"
                f" -{row['removed']}, {row['deltas_listed']} deltas listed,"
                f" {row['bytes_fetched']} bytes fetched, {row['seconds']:.2f}s"
            )


def _status(repos: list[Repository], args: argparse.Namespace) -> int:
    rows = []
    for repo in repos:
        info = read_status(repo.options.state_dir)
        rows.append({"repository": repo.name, **info})
    if args.json:
        print(json.dumps(rows if len(rows) != 1 else rows[0], indent=2))
    else:
        for row in rows:
            print(row["repository"])
            for key, value in row.items():
                if key == "repository":
                    continue
                if key in ("last_success", "last_attempt") and value:
                    value = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(value)))
                print(f"  {key:16} {value if value not in (None, '') else '-'}")
    return 0


def run(args: argparse.Namespace, config: Config) -> int:
    repos = repositories(args, config)
    table = config.table("sync")
    if args.status:
        return _status(repos, args)
    interval = args.interval if args.interval is not None else table.get("interval")
    listen = args.metrics_listen or table.get("metrics_listen")
    stats = _Stats()
    if interval is None:
        if listen:
            raise ConfigError(Reason.USAGE, "--metrics-listen needs --interval (daemon mode)")
        status, rows = _sync_all(repos, args, stats)
        _print(args, rows)
        metrics_file = args.metrics_file or table.get("metrics_file")
        if metrics_file is not None:
            write_textfile(Path(metrics_file), stats.metrics())
        return status
    interval = float(interval)
    if interval <= 0:
        raise ConfigError(Reason.USAGE, "--interval must be positive")
    server = _serve_metrics(str(listen), stats) if listen else None
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.warning("signal %d: stopping after this run", signum, extra={"reason": "shutdown"})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("daemon mode: %d repositories every %.0f s", len(repos), interval)
    try:
        while not stop.is_set():
            tick = time.monotonic()
            _status_code, rows = _sync_all(repos, args, stats)
            if not args.quiet and not args.json:
                _print(args, rows)
                sys.stdout.flush()
            stop.wait(max(0.0, interval - (time.monotonic() - tick)))
    finally:
        if server is not None:
            server.shutdown()
            server.server_close()
    return 0
