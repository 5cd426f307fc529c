"""Every hard limit of the toolkit, in one place, with its default and the reason for it.

Limits are API: each has a stable name (the field name), a documented default, and can be
overridden in the ``[limits]`` table of the TOML configuration file.  Code never hard-codes a
cap; it reads it from a :class:`Limits` value handed down from the caller (``DEFAULT_LIMITS``
when nothing was configured).  docs/limits.md is generated from the ``doc`` metadata below
(``rpkirepo limits`` prints it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Final

from rpkirepo.errors import ConfigError, Reason

__all__ = ["DEFAULT_LIMITS", "Limits"]


def _limit(default: int, doc: str) -> Any:
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True, slots=True)
class Limits:
    """Hard limits on untrusted or operator input.  All sizes in bytes, times in seconds."""

    # --- URIs ---
    max_uri_length: int = _limit(
        2048, "Longest accepted rsync or https URI, in characters (rrdp-checklist (b)18)."
    )
    # --- RRDP parsing ---
    max_object_size: int = _limit(
        8 * 1024 * 1024,
        "Largest decoded object in an RRDP publish element or a publish source directory "
        "(rpki-client uses 8 MiB).",
    )
    min_object_size: int = _limit(
        100, "Smallest decoded object accepted from RRDP (rpki-client rejects < 100 bytes)."
    )
    max_xml_element_depth: int = _limit(3, "Deepest XML nesting accepted in an RRDP file.")
    max_xml_attribute_length: int = _limit(
        4096, "Longest XML attribute value accepted in an RRDP file."
    )
    max_xml_markup_size: int = _limit(
        1024 * 1024,
        "Most bytes the RRDP parser lets the XML tokenizer hold without an event: bounds one "
        "start tag, end tag or comment, and whitespace outside the root (gzip bombs, (c)4).",
    )
    max_notification_size: int = _limit(
        16 * 1024 * 1024, "Largest accepted notification file (decoded bytes)."
    )
    max_rrdp_file_size: int = _limit(
        4 * 1024 * 1024 * 1024,
        "Largest accepted snapshot or delta file (decoded bytes; rpki-client uses 2 GiB).",
    )
    max_deltas_listed: int = _limit(
        10_000, "Most delta references accepted in one notification before it is refused."
    )
    max_delta_steps: int = _limit(
        300,
        "Most deltas the planner will apply in one update; more means take the snapshot "
        "(rpki-client: 300).",
    )
    # --- publish ---
    max_source_objects: int = _limit(
        10_000_000, "Most files accepted in a publish source directory."
    )
    max_source_depth: int = _limit(32, "Deepest directory nesting in a publish source directory.")

    # --- sync (and every HTTP fetch) ---
    http_read_timeout: int = _limit(
        60,
        "Seconds an HTTP(S) connection may stay silent (connect, headers, or body) before "
        "the fetch fails.",
    )
    http_file_deadline: int = _limit(
        1800,
        "Seconds one HTTP(S) download may take in total, however steadily bytes arrive "
        "(slow-drip servers, (c)7).",
    )
    http_max_redirects: int = _limit(
        3, "Most HTTP redirects followed for one file (same origin only, RFC 9674)."
    )
    sync_run_deadline: int = _limit(
        3600,
        "Seconds one sync run of one repository may spend fetching, all files together "
        "(many slow files, (c)31); the last good state stays served.",
    )
    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(
                    Reason.CONFIG_INVALID,
                    "a limit must be a non-negative integer",
                    limit=f.name,
                    value=str(value),
                )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def documentation(cls) -> list[tuple[str, int, str]]:
        """(name, default, doc) for every limit, for docs and ``rpkirepo limits``."""
        return [(f.name, int(f.default), str(f.metadata["doc"])) for f in fields(cls)]  # type: ignore[arg-type]

    def override(self, values: Mapping[str, object]) -> Limits:
        """A copy with ``values`` applied; unknown names are a :class:`ConfigError`."""
        known = set(self.names())
        for key in values:
            if key not in known:
                raise ConfigError(Reason.CONFIG_UNKNOWN_KEY, "unknown limit", limit=key)
        return replace(self, **values)  # type: ignore[arg-type]


DEFAULT_LIMITS: Final = Limits()
