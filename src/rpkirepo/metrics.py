"""Prometheus metrics in the text exposition format, for one-shot commands.

One-shot runs (cron) cannot be scraped, so they write a file for node_exporter's textfile
collector (``--metrics-file``), replaced atomically so the collector never reads half a file.
Long-running servers (later: serve, sync --interval) expose the same names over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from rpkirepo.fsutil import atomic_write

__all__ = ["Metric", "render", "write_textfile"]

Metric = tuple[str, str, str, float, dict[str, str]]
"""(name, type, help, value, labels)."""


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in sorted(labels.items())
    )
    return "{" + inner + "}"


def render(metrics: Iterable[Metric]) -> str:
    out: list[str] = []
    seen: set[str] = set()
    for name, kind, help_text, value, labels in metrics:
        if name not in seen:
            out.append(f"# HELP {name} {help_text}")
            out.append(f"# TYPE {name} {kind}")
            seen.add(name)
        out.append(f"{name}{_labels(labels)} {value:g}")
    return "\n".join(out) + "\n"


def write_textfile(path: Path, metrics: Iterable[Metric]) -> None:
    atomic_write(path, render(metrics).encode())
