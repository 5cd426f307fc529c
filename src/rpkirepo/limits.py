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
    # --- serve ---
    serve_max_request_line: int = _limit(
        8192, "Longest HTTP request line `rpkirepo serve` reads (longer: 414)."
    )
    serve_max_header_bytes: int = _limit(
        16384, "Most bytes of request header fields `rpkirepo serve` reads (more: 431)."
    )
    serve_max_header_count: int = _limit(
        64, "Most request header fields `rpkirepo serve` accepts (more: 431)."
    )
    serve_max_pipelined: int = _limit(
        16,
        "Most pipelined requests `rpkirepo serve` holds parsed per connection; past this it "
        "stops reading until responses have gone out.",
    )
    serve_max_connections: int = _limit(
        20000, "Most open client connections per `rpkirepo serve` worker (more: closed at once)."
    )
    serve_max_connections_per_address: int = _limit(
        1000,
        "Most open connections from one client IP address per worker (more: closed at once).",
    )
    serve_header_timeout: int = _limit(
        10,
        "Seconds a client may take to send a whole request head, from its first byte (slowloris).",
    )
    serve_idle_timeout: int = _limit(
        60, "Seconds a keep-alive connection may stay idle between requests."
    )
    serve_send_timeout: int = _limit(
        60, "Seconds a response may make no progress because the client does not read."
    )
    serve_memory_file_max: int = _limit(
        16 * 1024 * 1024,
        "Largest notification or delta file `rpkirepo serve` holds in memory; larger ones and "
        "every snapshot are sent from disk with sendfile.",
    )
    serve_rate_per_address: int = _limit(
        0,
        "Requests per second one client IP address may make per worker, bursts of 4 s allowed "
        "(0: no rate limit; more: 429).",
    )
    # --- rsync daemon ---
    rsync_max_greeting: int = _limit(
        256, "Longest `@RSYNCD:` greeting or module line the rsync daemon reads (rsync-wire §8)."
    )
    rsync_max_args: int = _limit(
        64,
        "Most server arguments an rsync client may send (rsyncd had no cap until 3.5.0: the "
        "APNIC argument flood).",
    )
    rsync_max_arg_length: int = _limit(4096, "Longest single rsync server argument, in bytes.")
    rsync_max_args_bytes: int = _limit(16384, "Most bytes of rsync server arguments in total.")
    rsync_max_filter_rules: int = _limit(256, "Most filter rules an rsync client may send.")
    rsync_max_filter_rule_length: int = _limit(1024, "Longest single rsync filter rule, in bytes.")
    rsync_max_filter_bytes: int = _limit(65536, "Most bytes of rsync filter rules in total.")
    rsync_max_filter_work: int = _limit(
        20_000_000,
        "Most pattern-matching work (1 per simple rule test, tokens x characters per wildcard "
        "automaton run) building one rsync file list may take: bounds the CPU a client's "
        "filter rules can cost (~3 s at worst; the RPs' rules are simple ones: ~1 per file).",
    )
    rsync_max_data_frame: int = _limit(
        256 * 1024, "Largest multiplexed MSG_DATA frame accepted from an rsync client."
    )
    rsync_max_message_frame: int = _limit(
        4096, "Largest multiplexed non-data frame (INFO, ERROR, ...) accepted from an rsync client."
    )
    rsync_max_sum_count: int = _limit(
        1 << 20, "Most block checksums in one rsync sum head (they are read and discarded)."
    )
    rsync_max_sum_bytes: int = _limit(
        32 * 1024 * 1024, "Most bytes of block checksums one rsync session may send in total."
    )
    rsync_max_block_length: int = _limit(
        1 << 17, "Largest block length in an rsync sum head at protocol >= 30 (rsync's own cap)."
    )
    rsync_max_block_length_27: int = _limit(
        1 << 29, "Largest block length in an rsync sum head at protocol 27 (rsync's old cap)."
    )
    rsync_max_requests_per_file: int = _limit(
        2,
        "How often one rsync session may request the same file (rsync redoes a file once); "
        "a file below the highest one asked for in order counts as asked for once.",
    )
    rsync_max_del_stats: int = _limit(
        16, "Most NDX_DEL_STATS records one rsync session may send (protocol 31)."
    )
    rsync_max_tree_entries: int = _limit(
        10_000_000, "Most files and directories in one served rsync revision."
    )
    rsync_max_flist_cache: int = _limit(
        32,
        "Most encoded rsync file lists kept per revision (one per distinct protocol, path, "
        "options and filter set).",
    )
    rsync_handshake_timeout: int = _limit(
        20, "Seconds an rsync client has from connecting to the end of its filter list."
    )
    rsync_idle_timeout: int = _limit(
        60, "Seconds an rsync connection may make no progress in either direction."
    )
    rsync_session_timeout: int = _limit(1800, "Seconds one rsync session may last in total.")
    rsync_max_connections: int = _limit(
        2000, "Most concurrent rsync daemon connections (more: refused with an @ERROR line)."
    )
    rsync_max_connections_per_address: int = _limit(
        50, "Most concurrent rsync daemon connections from one client IP address."
    )
    rsync_deflate_cache_bytes: int = _limit(
        4 * 1024 * 1024,
        "Most bytes of `-z` (deflated) file bodies the rsync daemon keeps per revision, least "
        "recently used out (caching every body compressed would cost ~the repository's size).",
    )
    rsync_revision_poll: int = _limit(
        2, "Seconds between checks of a module's `current` symlink for a new revision."
    )
    # --- rsync client (rpkirepo fetch's native rsync) ---
    rsync_client_max_files: int = _limit(
        5_000_000, "Most files and directories an rsync server may list for one module fetch."
    )
    rsync_client_max_bytes: int = _limit(
        16 * 1024 * 1024 * 1024,
        "Most bytes of file data one rsync module fetch may receive in total.",
    )
    rsync_client_max_path_length: int = _limit(
        1023, "Longest file name (whole relative path) accepted from an rsync server (PATH_MAX)."
    )
    rsync_client_max_component_length: int = _limit(
        255, "Longest path component accepted from an rsync server (NAME_MAX)."
    )
    rsync_client_max_depth: int = _limit(
        32, "Deepest directory nesting accepted from an rsync server."
    )
    rsync_client_max_message_frame: int = _limit(
        65536,
        "Largest multiplexed non-data frame (INFO, ERROR, ...) accepted from an rsync server.",
    )
    rsync_client_connect_timeout: int = _limit(
        15, "Seconds to connect to an rsync server (rpki-client: --contimeout=15)."
    )
    rsync_client_io_timeout: int = _limit(
        30, "Seconds an rsync server may stay silent (rpki-client: --timeout=30)."
    )
    # --- fetch (the relying-party side; rrdp-checklist (b)24, (c)31-32) ---
    max_repository_objects: int = _limit(
        10_000_000,
        "Most objects one repository (an RRDP snapshot, a mirrored or fetched store) may hold.",
    )
    fetch_max_depth: int = _limit(
        32, "Deepest CA certificate chain `rpkirepo fetch` follows below a trust anchor (rt: 32)."
    )
    fetch_max_repositories: int = _limit(
        1000, "Most repositories `rpkirepo fetch` visits per trust anchor (rpki-client: 1000)."
    )
    fetch_max_cas: int = _limit(
        1_000_000, "Most CA certificates `rpkirepo fetch` follows in one run, all TALs together."
    )
    fetch_repository_deadline: int = _limit(
        900,
        "Seconds one repository may take in one fetch run, RRDP and rsync together "
        "(fort: 900; Stalloris).",
    )
    fetch_run_deadline: int = _limit(
        3600,
        "Seconds one `rpkirepo fetch` run may take; repositories not done by then keep their "
        "last good copy.",
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
