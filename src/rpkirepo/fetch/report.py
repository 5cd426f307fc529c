"""The fetch report: JSON (``--report FILE``) and a human summary, both from one
:class:`~rpkirepo.fetch.walk.FetchReport`.  docs/fetch.md documents every field."""

from __future__ import annotations

import json
from typing import Any

from rpkirepo.fetch.walk import FetchReport
from rpkirepo.metrics import Metric

__all__ = ["REPORT_VERSION", "report_json", "report_metrics", "report_text"]

#: Bumped when a field changes meaning or disappears (new fields do not bump it).
REPORT_VERSION = 1


def report_json(report: FetchReport) -> dict[str, Any]:
    repos = [
        {
            "repository": r.key.uri,
            "notify": r.key.notify or None,
            "rsync_module": r.key.module or None,
            "store": r.store_id,
            "offers_rrdp": r.offers_rrdp,
            "transport": r.transport,
            "outcome": r.outcome,
            "reasons": r.reasons,
            "errors": r.errors,
            "seconds": round(r.seconds, 3),
            "objects": r.objects,
            "bytes": r.bytes,
            "added": r.added,
            "modified": r.modified,
            "removed": r.removed,
            "rsync_modules": r.rsync_modules,
            "rsync_files_fetched": r.files_fetched_rsync,
            "session_id": r.session_id or None,
            "serial": r.serial or None,
        }
        for r in report.repositories
    ]
    points = [
        {
            "ca": p.ca,
            "ca_repository": p.ca_repository,
            "manifest": p.manifest,
            "repository": p.repository,
            "depth": p.depth,
            "manifest_number": p.manifest_number or None,
            "files": p.files,
            "consistent": p.consistent,
            "missing": p.missing,
            "extra": p.extra,
            "hash_mismatch": p.hash_mismatch,
            "reasons": p.reasons,
        }
        for p in report.publication_points
    ]
    offering = [r for r in report.repositories if r.offers_rrdp]
    return {
        "version": REPORT_VERSION,
        "started": round(report.started, 3),
        "seconds": round(report.seconds, 3),
        "ok": report.ok,
        "trust_anchors": [
            {
                "tal": t.tal,
                "uri": t.uri or None,
                "transport": t.transport,
                "reasons": t.reasons,
                "errors": t.errors,
            }
            for t in report.tals
        ],
        "repositories": repos,
        "publication_points": points,
        "refusals": report.refusals,
        "summary": {
            "repositories": len(report.repositories),
            "offering_rrdp": len(offering),
            "rrdp_share": round(len(offering) / len(report.repositories), 4)
            if report.repositories
            else None,
            "by_transport": _count(r.transport for r in report.repositories),
            "objects": sum(r.objects for r in report.repositories),
            "bytes": sum(r.bytes for r in report.repositories),
            "publication_points": len(points),
            "inconsistent_publication_points": sum(
                1 for p in report.publication_points if not p.consistent
            ),
            "refusals": len(report.refusals),
        },
    }


def _count(values: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return dict(sorted(out.items()))


def report_text(report: FetchReport) -> str:
    doc = report_json(report)
    s = doc["summary"]
    lines = [
        f"fetch: {s['repositories']} repositories ({s['offering_rrdp']} offer RRDP), "
        f"{s['objects']:,} objects, {s['bytes']:,} bytes fetched, {report.seconds:.1f} s"
    ]
    for t in report.tals:
        why = f" ({', '.join(t.reasons)})" if t.reasons else ""
        lines.append(f"  TA {t.tal}: {t.transport} {t.uri}{why}")
    for r in report.repositories:
        why = f" [{', '.join(r.reasons)}]" if r.reasons else ""
        lines.append(
            f"  {r.transport:<6} {r.outcome:<12} {r.key.uri}: {r.objects:,} objects, "
            f"{r.bytes:,} B, {r.seconds:.2f} s{why}"
        )
    bad = [p for p in report.publication_points if not p.consistent]
    lines.append(
        f"  publication points: {len(report.publication_points)}, "
        f"{len(bad)} not matching their manifest"
    )
    for p in bad[:20]:
        parts = []
        if p.missing:
            parts.append(f"{len(p.missing)} missing")
        if p.extra:
            parts.append(f"{len(p.extra)} extra")
        if p.hash_mismatch:
            parts.append(f"{len(p.hash_mismatch)} hash mismatch")
        parts += p.reasons
        lines.append(f"    {p.ca_repository}: {', '.join(parts)}")
    if len(bad) > 20:
        lines.append(f"    ... and {len(bad) - 20} more (see --report)")
    for refusal in report.refusals[:20]:
        lines.append(f"  refused [{refusal['reason']}] {refusal['uri']}: {refusal['detail']}")
    return "\n".join(lines)


def report_metrics(report: FetchReport) -> list[Metric]:
    out: list[Metric] = []
    for r in report.repositories:
        labels = {"repository": r.key.uri, "transport": r.transport}
        out.append(("rpkirepo_fetch_objects", "gauge", "Objects held", r.objects, labels))
        out.append(("rpkirepo_fetch_bytes", "gauge", "Bytes fetched this run", r.bytes, labels))
        out.append(("rpkirepo_fetch_seconds", "gauge", "Seconds this run", r.seconds, labels))
    out.append(("rpkirepo_fetch_run_seconds", "gauge", "Seconds of the run", report.seconds, {}))
    out.append(
        (
            "rpkirepo_fetch_ok",
            "gauge",
            "1 when every repository has a usable copy",
            1.0 if report.ok else 0.0,
            {},
        )
    )
    return out


def dumps(report: FetchReport) -> str:
    return json.dumps(report_json(report), indent=1)
