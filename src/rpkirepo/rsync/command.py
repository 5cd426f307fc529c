"""CLI glue for the rsync daemon: ``--rsync-listen ADDR:PORT --module NAME=DIR``.

The lead wires :func:`add_arguments` and :func:`run` into ``rpkirepo serve``; this module owns
only the parsing of its own flags (also read from the ``[serve]`` table of the configuration
file as ``rsync_listen = ["ADDR:PORT", ...]``, ``modules = {NAME = "DIR"}`` and
``rsync_spool_dir = "DIR"`` or ``"off"``).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
from pathlib import Path
from typing import Any

from rpkirepo.config import Config
from rpkirepo.errors import ConfigError, Reason
from rpkirepo.rsync.daemon import serve_rsync
from rpkirepo.rsync.tree import DEFAULT_SPOOL_DIR

__all__ = ["add_arguments", "parse_listen", "parse_module", "parse_spool_dir", "run"]

_MODULE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rsync-listen",
        action="append",
        metavar="ADDR:PORT",
        help="serve rsync on this address (repeatable; [::1]:873 for IPv6)",
    )
    parser.add_argument(
        "--module",
        action="append",
        metavar="NAME=DIR",
        help="rsync module NAME serving DIR/current (DIR is publish's --rsync-dir; repeatable)",
    )
    parser.add_argument(
        "--rsync-spool-dir",
        metavar="DIR|off",
        help="where each loaded revision's spool goes: every file's answer, written once, so "
        "full syncs are sent with sendfile (about the revision's size; an unlinked file; "
        "default: $TMPDIR or /tmp; off: no spool)",
    )


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ConfigError(Reason.CONFIG_INVALID, "expected ADDR:PORT", value=text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def parse_module(text: str) -> tuple[str, Path]:
    name, sep, directory = text.partition("=")
    if not sep or not _MODULE_RE.fullmatch(name) or not directory:
        raise ConfigError(Reason.CONFIG_INVALID, "expected NAME=DIR", value=text)
    return name, Path(directory)


def run(args: argparse.Namespace, config: Config) -> int:
    table: Any = config.table("serve")
    listen_texts = args.rsync_listen or list(table.get("rsync_listen", []))
    module_texts = args.module or [f"{k}={v}" for k, v in dict(table.get("modules", {})).items()]
    if not listen_texts or not module_texts:
        raise ConfigError(Reason.USAGE, "--rsync-listen and --module are required")
    listen = [parse_listen(str(t)) for t in listen_texts]
    modules = dict(parse_module(str(t)) for t in module_texts)
    for name, directory in modules.items():
        if not directory.is_dir():
            raise ConfigError(Reason.CONFIG_INVALID, "module directory missing", module=name)
    spool_text = args.rsync_spool_dir or table.get("rsync_spool_dir")
    spool_dir = parse_spool_dir(None if spool_text is None else str(spool_text))
    asyncio.run(_serve_until_signal(listen, modules, config, spool_dir))
    return 0


def parse_spool_dir(text: str | None) -> Path | None:
    """``--rsync-spool-dir``: a directory, ``off`` (no spool), or unset (the default)."""
    if text is None:
        return DEFAULT_SPOOL_DIR
    if text == "off":
        return None
    path = Path(text)
    if not path.is_dir():
        raise ConfigError(Reason.CONFIG_INVALID, "rsync spool directory missing", value=text)
    return path


async def _serve_until_signal(
    listen: list[tuple[str, int]],
    modules: dict[str, Path],
    config: Config,
    spool_dir: Path | None = DEFAULT_SPOOL_DIR,
) -> None:
    """Serve until SIGTERM or SIGINT, then close listeners and sessions cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve_rsync(listen, modules, config.limits, stop=stop, spool_dir=spool_dir)
