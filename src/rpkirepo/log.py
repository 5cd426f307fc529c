"""Logging set-up: one line per event, with the reason code as a field, as text or JSON.

Code logs through the standard library (``logging.getLogger("rpkirepo.<area>")``) and passes the
reason code as ``extra={"reason": Reason.X}``; this module renders it.  Text lines look like::

    2026-11-22T19:00:00Z WARNING publish: skipping a/b.txt: not an RPKI object extension
    reason=source-unsupported-type          (one line in the real output)
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Final

__all__ = ["setup_logging"]

_STD_ATTRS: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()) | {
    "message",
    "asctime",
}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STD_ATTRS}


def _ts(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        name = record.name.removeprefix("rpkirepo.")
        extra = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        line = f"{_ts(record)} {record.levelname} {name}: {record.getMessage()}"
        if extra:
            line += " " + extra
        if record.exc_info and record.levelno >= logging.ERROR:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "ts": _ts(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: str(v) for k, v in _extras(record).items()})
        return json.dumps(doc, sort_keys=False)


def setup_logging(verbosity: int = 0, fmt: str = "text") -> None:
    """-q → errors only, default → warnings and notices, -v → info, -vv → debug."""
    level = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger("rpkirepo")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
