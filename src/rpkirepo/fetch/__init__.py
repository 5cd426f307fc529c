"""``rpkirepo fetch``: the relying-party side, RRDP first, rsync fallback, safe against hostile
repositories.

* :mod:`~rpkirepo.fetch.tal` reads trust anchor locators (RFC 8630);
* :mod:`~rpkirepo.fetch.store` keeps one store per notification URI (or rsync module), updated
  by the sync engine in store mode (RRDP) or the native rsync client, committed atomically;
* :mod:`~rpkirepo.fetch.walk` walks from the trust anchors down the CA tree, updates each
  repository once a run, checks each publication point against its manifest, and swaps the
  output view ``CACHE/objects/HOST/MODULE``;
* :mod:`~rpkirepo.fetch.report` renders the run's report; :mod:`~rpkirepo.fetch.command` is the
  CLI glue.
"""

from rpkirepo.fetch.store import RepositoryKey, Store, StoreUpdate
from rpkirepo.fetch.tal import TrustAnchorLocator, parse_tal, read_tal
from rpkirepo.fetch.walk import FetchOptions, FetchReport, PubPointReport, TaReport, run_fetch

__all__ = [
    "FetchOptions",
    "FetchReport",
    "PubPointReport",
    "RepositoryKey",
    "Store",
    "StoreUpdate",
    "TaReport",
    "TrustAnchorLocator",
    "parse_tal",
    "read_tal",
    "run_fetch",
]
