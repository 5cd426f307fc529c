"""The ``rpkirepo serve`` command line: flags and the ``[serve]`` table -> :class:`ServeOptions`.

Precedence as for ``publish``: a flag, then the ``[serve]`` key of the same name (``-`` written
``_``), then the default.  ``listen`` in the table is a string or a list of strings.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any, Final

from rpkirepo.config import Config, parse_duration, pick_setting
from rpkirepo.errors import ConfigError, Reason

__all__ = ["EPILOG", "SERVE_KEYS", "add_arguments", "parse_address", "run"]

EPILOG: Final = """\
Serves an RRDP directory as written by `rpkirepo publish` or `rpkirepo sync`: notification.xml and
the snapshot and delta files it names, at the paths of their URIs (e.g. /rrdp/notification.xml
for https://rrdp.example.net/rrdp/notification.xml).  Nothing else is served (404), except
/healthz.  A new notification is picked up within a second, with all its files at once; files it
no longer names stay served for --grace seconds while they exist.  Small files are served from
memory, snapshots with sendfile; gzip from the .gz siblings; ETag, Last-Modified, 304 and ranges.

signals: SIGTERM/SIGINT stop gracefully; SIGHUP reloads the TLS key and certificate, re-reads the
notification and reopens the access log.

examples:
  # TLS on all IPv4 and IPv6 addresses, metrics for Prometheus on loopback
  rpkirepo serve --rrdp-dir /var/lib/rpkirepo/rrdp --listen 0.0.0.0:443 --listen [::]:443 \\
      --tls-cert /etc/rpkirepo/cert.pem --tls-key /etc/rpkirepo/key.pem \\
      --workers 4 --metrics-listen 127.0.0.1:9180 --access-log /var/log/rpkirepo/access.log

  # plain HTTP on loopback behind nginx or a CDN (docs/serving.md)
  rpkirepo serve --rrdp-dir /var/lib/rpkirepo/rrdp --listen 127.0.0.1:8080

  # RRDP over TLS and the rsync tree of `rpkirepo publish` as module "repo", one command
  rpkirepo serve --rrdp-dir /var/lib/rpkirepo/rrdp --listen 0.0.0.0:443 \\
      --tls-cert /etc/rpkirepo/cert.pem --tls-key /etc/rpkirepo/key.pem \\
      --rsync-listen 0.0.0.0:873 --module repo=/var/lib/rpkirepo/rsync

  # everything from the [serve] table of the configuration file
  rpkirepo --config /etc/rpkirepo.toml serve

limits (header sizes, timeouts, connections per address, request rate): the serve_* names of
`rpkirepo limits`, set in [limits].

exit status: 0 stopped by a signal, 1 could not start (see the reason code), 2 usage.
"""

#: Keys of the [serve] table: the long flags of `rpkirepo serve`, with _ for -.
SERVE_KEYS: Final = frozenset(
    {
        "rrdp_dir",
        "listen",
        "tls_cert",
        "tls_key",
        "workers",
        "metrics_listen",
        "grace",
        "access_log",
        "access_log_format",
        "poll_interval",
        "event_loop",
        # The rsync daemon's (rpkirepo.rsync.command): it may run from the same table.
        "rsync_listen",
        "modules",
        "rsync_spool_dir",
    }
)

_ADDRESS: Final = re.compile(
    r"(?:\[(?P<v6>[0-9A-Fa-f:.%a-zA-Z]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})"
)


def parse_address(text: str) -> tuple[str, int]:
    """``ADDR:PORT`` or ``[IPv6]:PORT`` -> (host, port)."""
    m = _ADDRESS.fullmatch(text.strip())
    if m is None:
        raise ConfigError(Reason.USAGE, f"not ADDR:PORT or [IPv6]:PORT: {text!r}")
    port = int(m["port"])
    if port > 65535:
        raise ConfigError(Reason.USAGE, f"port out of range: {text!r}")
    return (m["v6"] or m["host"], port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``rpkirepo serve`` (all optional here: the [serve] table may give them)."""
    parser.description = (
        "Serve an RRDP repository over HTTP/1.1 (and TLS): only the files its notification\n"
        "names, switched atomically when it changes."
    )
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--rrdp-dir", type=Path, help="RRDP directory holding notification.xml")
    parser.add_argument(
        "--listen",
        action="append",
        metavar="ADDR:PORT",
        help="address to listen on, e.g. 0.0.0.0:443 or [::1]:8443 (repeatable)",
    )
    parser.add_argument("--tls-cert", type=Path, help="TLS certificate chain (PEM)")
    parser.add_argument("--tls-key", type=Path, help="TLS private key (PEM)")
    parser.add_argument(
        "--workers", type=int, help="processes sharing the ports with SO_REUSEPORT (default 1)"
    )
    parser.add_argument(
        "--metrics-listen",
        metavar="ADDR:PORT",
        help="serve Prometheus metrics at /metrics here (worker i: PORT + i)",
    )
    parser.add_argument(
        "--grace",
        type=parse_duration,
        help="serve files the notification dropped for this long (default 2h)",
    )
    parser.add_argument("--access-log", metavar="FILE|-", help="write an access log (- : stdout)")
    parser.add_argument(
        "--access-log-format", choices=("clf", "json"), help="common log format or JSON lines"
    )
    parser.add_argument(
        "--event-loop",
        choices=("auto", "asyncio", "uvloop"),
        help="event loop (default auto: uvloop when installed)",
    )
    parser.add_argument(
        "--poll-interval",
        type=parse_duration,
        help="how often the notification's stat is checked (default 1s)",
    )


def build_options(args: argparse.Namespace, config: Config) -> Any:
    from rpkirepo.serve._server import ServeOptions

    table = config.table("serve")
    for key in table:
        if key not in SERVE_KEYS:
            raise ConfigError(Reason.CONFIG_UNKNOWN_KEY, "unknown key in [serve]", key=key)
    rrdp_dir = pick_setting(args, table, "rrdp_dir")
    if rrdp_dir is None:
        raise ConfigError(Reason.USAGE, "serve needs --rrdp-dir (or rrdp_dir in [serve])")
    listen_raw = pick_setting(args, table, "listen")
    if listen_raw is None:
        raise ConfigError(Reason.USAGE, "serve needs --listen ADDR:PORT (or listen in [serve])")
    if isinstance(listen_raw, str):
        listen_raw = [listen_raw]
    if not isinstance(listen_raw, list) or not all(isinstance(x, str) for x in listen_raw):
        raise ConfigError(Reason.CONFIG_INVALID, "[serve] listen is a string or a list of them")
    metrics = pick_setting(args, table, "metrics_listen")
    tls_cert = pick_setting(args, table, "tls_cert")
    tls_key = pick_setting(args, table, "tls_key")
    try:
        workers = int(pick_setting(args, table, "workers", 1))
        grace = float(pick_setting(args, table, "grace", 7200.0))
        poll = float(pick_setting(args, table, "poll_interval", 1.0))
    except (TypeError, ValueError) as exc:
        raise ConfigError(Reason.CONFIG_INVALID, f"bad number in [serve]: {exc}") from exc
    access_log = pick_setting(args, table, "access_log")
    return ServeOptions(
        rrdp_dir=Path(rrdp_dir),
        listen=tuple(parse_address(x) for x in listen_raw),
        tls_cert=None if tls_cert is None else Path(tls_cert),
        tls_key=None if tls_key is None else Path(tls_key),
        workers=workers,
        metrics_listen=None if metrics is None else parse_address(str(metrics)),
        grace=grace,
        access_log=None if access_log is None else str(access_log),
        access_log_format=str(pick_setting(args, table, "access_log_format", "clf")),
        poll_interval=poll,
        event_loop=str(pick_setting(args, table, "event_loop", "auto")),
        limits=config.limits,
    )


def run(args: argparse.Namespace, config: Config) -> int:
    """``rpkirepo serve``: run until SIGTERM; 0 after a graceful stop."""
    from rpkirepo.serve._server import run_server

    opts = build_options(args, config)
    if not opts.rrdp_dir.is_dir():
        raise ConfigError(Reason.CONFIG_INVALID, "no such directory", rrdp_dir=str(opts.rrdp_dir))
    return run_server(opts)
