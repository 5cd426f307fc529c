"""rpki-client -R (rsync only) validating a repository served by rpkirepo's rsync daemon.

The Krill repository of the shared corpus is published with `rpkirepo publish` and served by our
daemon on localhost:873 (fixed by the TAL and the TA certificate: rsync://localhost/ta/ta.cer,
rsync://localhost/repo/); rpki-client must accept every object and output exactly the expected
VRPs, as it does against the real rsync daemon in test_peer_rpki_client.py.  Needs root (port
873, rpki-client's namespace and privilege drop), like that module.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import require_peer
from peers import port_is_free, public_dir, rpkirepo_rsyncd, run_rpki_client, unexpected_lines
from test_peer_rpki_client import (  # fixtures and expectations shared with the rsyncd control
    EXPECTED_STDERR,
    KRILL_TAL,
    RSYNC_PORT,
    Repository,
    krill,
    peer_root,
    publish,
    ta_dir,
)

pytestmark = pytest.mark.peer
__all__ = ["krill", "peer_root", "ta_dir"]  # fixtures used by name


def test_rpki_client_validates_over_our_rsync_daemon(
    krill: Repository, ta_dir: Path, corpus_dir: Path, peer_root: Path
) -> None:
    require_peer("rsync")
    if not port_is_free("127.0.0.1", RSYNC_PORT):
        pytest.fail(f"port {RSYNC_PORT} is busy: another rsync daemon is running")
    out = public_dir(peer_root / "ours")
    _rrdp, current = publish(krill.source, out)
    modules = {"repo": current.parent, "ta": ta_dir}
    with rpkirepo_rsyncd(modules, port=RSYNC_PORT) as d:
        result = run_rpki_client(
            peer_root / "rpki-client-ours",
            corpus_dir / KRILL_TAL,
            binary=require_peer("rpki-client"),
            hosts={"localhost": "127.0.0.1"},
            evaluation_time=krill.window.middle,
            rsync_only=True,
            shortlist=("localhost",),
        )
        counters = d.daemon.counters  # type: ignore[attr-defined]
    ctx = f"stderr:\n{result.stderr}"
    assert result.returncode == 0, ctx
    assert unexpected_lines(result.stderr, EXPECTED_STDERR) == [], ctx
    assert re.search(
        r"^rpki-client: \S+: pulling from rsync://localhost/repo$", result.stderr, re.M
    )
    assert result.vrps() == krill.vrps, ctx
    meta = result.metadata()
    assert meta.get("roas") == krill.counts.get(".roa", 0), ctx
    assert meta.get("invalidroas") == 0 and meta.get("failedmanifests") == 0, ctx
    repo_cache = result.cachedir / "localhost" / "repo"
    cached = {str(p.relative_to(repo_cache)) for p in repo_cache.rglob("*") if p.is_file()}
    assert cached == set(krill.files), ctx
    # The TA and every object came from us, and nothing was refused.
    assert counters.files_sent == len(krill.files) + 1, counters
    assert counters.refusals == {}, counters
