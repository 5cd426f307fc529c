"""The TOML configuration file: read once, checked once, merged under the command-line flags.

Layout (every table optional)::

    [log]
    level = "info"            # error | warning | info | debug
    format = "text"           # text | json

    [limits]                  # any name from `rpkirepo limits`
    max_object_size = 8388608

    [publish]                 # any long flag of `rpkirepo publish`, with _ for -
    source_dir = "/var/lib/ca/out"
    rsync_base = "rsync://rpki.example.net/repo/"
    https_base = "https://rrdp.example.net/rrdp/"
    state_dir = "/var/lib/rpkirepo"
    cleanup_after = 7200

    [sync]                    # `rpkirepo sync`; several repositories as [[sync.repository]]
    [serve]                   # `rpkirepo serve`
    [fetch]                   # `rpkirepo fetch`

Precedence: command-line flag, then the file, then the built-in default.  Unknown tables or keys
are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rpkirepo.errors import ConfigError, Reason
from rpkirepo.limits import DEFAULT_LIMITS, Limits

__all__ = ["Config", "load_config", "parse_duration", "pick_setting"]

KNOWN_TABLES = frozenset({"fetch", "log", "limits", "publish", "serve", "sync"})


class Config:
    """The parsed file: tables as plain mappings, limits as a checked :class:`Limits`."""

    def __init__(self, tables: Mapping[str, Mapping[str, Any]], source: Path | None) -> None:
        self.tables = tables
        self.source = source
        self.limits: Limits = DEFAULT_LIMITS.override(dict(tables.get("limits", {})))

    def table(self, name: str) -> Mapping[str, Any]:
        return self.tables.get(name, {})


def load_config(path: Path | None) -> Config:
    if path is None:
        return Config({}, None)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(
            Reason.CONFIG_INVALID, f"cannot read: {exc.strerror}", path=str(path)
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(Reason.CONFIG_INVALID, f"not valid TOML: {exc}", path=str(path)) from exc
    for key, value in data.items():
        if key not in KNOWN_TABLES:
            raise ConfigError(Reason.CONFIG_UNKNOWN_KEY, "unknown table", key=key, path=str(path))
        if not isinstance(value, dict):
            raise ConfigError(Reason.CONFIG_INVALID, "expected a table", key=key, path=str(path))
    return Config(data, path)


def parse_duration(text: str) -> float:
    """Seconds from ``7200``, ``2h``, ``30m``, ``45s`` or ``1d`` (the type of duration flags)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip()
    try:
        if t and t[-1] in units:
            return float(t[:-1]) * units[t[-1]]
        return float(t)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 7200, 2h, 30m)") from exc


def pick_setting(
    args: argparse.Namespace, table: Mapping[str, Any], name: str, default: Any = None
) -> Any:
    """A command's setting: its flag when given, else the config table's key, else ``default``."""
    value = getattr(args, name, None)
    if value is not None:
        return value
    if name in table:
        return table[name]
    return default
