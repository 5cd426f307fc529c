"""kill -9 at random points of `rpkirepo publish`: what is served stays consistent.

After every kill, what a client can see must be consistent on its own: the notification names
files that exist with the hashes it gives, the snapshot is a complete state the source really had,
and ``current`` is a complete tree of such a state.  The next run then finishes the job.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import mutate_objects
from rpkirepo.rrdp.model import PublishElement
from rpkirepo.rrdp.parser import iter_events, parse_notification

RSYNC_BASE = "rsync://rpki.example.net/repo/"
HTTPS_BASE = "https://rrdp.example.net/rrdp/"


def _snapshot_content(rrdp: Path) -> dict[str, bytes] | None:
    path = rrdp / "notification.xml"
    if not path.exists():
        return None
    n = parse_notification(path.read_bytes())
    snap = rrdp / n.snapshot.uri.uri[len(HTTPS_BASE) :]
    data = snap.read_bytes()
    assert hashlib.sha256(data).digest() == n.snapshot.hash.digest, "snapshot hash mismatch"
    for d in n.deltas:
        dp = rrdp / d.uri.uri[len(HTTPS_BASE) :]
        assert hashlib.sha256(dp.read_bytes()).digest() == d.hash.digest, "delta hash mismatch"
    return {
        e.uri.uri[len(RSYNC_BASE) :]: e.data
        for e in iter_events([data])
        if isinstance(e, PublishElement)
    }


def _tree_content(rsync: Path) -> dict[str, bytes] | None:
    current = rsync / "current"
    if not os.path.lexists(current):
        return None
    out = {}
    for dirpath, _d, files in os.walk(current.resolve()):
        for name in files:
            p = Path(dirpath) / name
            out[p.relative_to(current.resolve()).as_posix()] = p.read_bytes()
    return out


@pytest.mark.slow
def test_kill_at_random_points_leaves_outputs_consistent(tmp_path: Path, corpus_dir: Path) -> None:
    pool = [
        p.read_bytes()
        for p in sorted((corpus_dir / "objects").rglob("*"))
        if p.suffix in (".roa", ".mft", ".crl", ".cer") and p.stat().st_size > 200
    ]
    rng = random.Random(20261122)
    src, state, rrdp, rsync = (tmp_path / n for n in ("src", "state", "rrdp", "rsync"))
    files: dict[str, bytes] = {}
    src.mkdir()
    mutate_objects(rng, src, files, pool)
    for i in range(2500):
        name = f"ca{i % 40}/obj{i}.roa"
        files[name] = rng.choice(pool)
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(files[name])
    cmd = [
        sys.executable,
        "-m",
        "rpkirepo",
        "-q",
        "publish",
        str(src),
        "--rsync-base",
        RSYNC_BASE,
        "--https-base",
        HTTPS_BASE,
        "--state-dir",
        str(state),
        "--rrdp-dir",
        str(rrdp),
        "--rsync-dir",
        str(rsync),
        "--cleanup-after",
        "0",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    subprocess.run(cmd, check=True, env=env, timeout=120)
    assert _snapshot_content(rrdp) == files
    # Calibrate the kill delay on incremental runs (the kind killed below), not on the first
    # full run, which takes much longer: the fastest of three, so kills land inside runs.
    durations = []
    for _ in range(3):
        mutate_objects(rng, src, files, pool)
        started = time.monotonic()
        subprocess.run(cmd, check=True, env=env, timeout=120)
        durations.append(time.monotonic() - started)
    duration = min(durations)
    assert _snapshot_content(rrdp) == files
    candidates = [dict(files)]
    kills_mid_run = 0
    for _ in range(14):
        mutate_objects(rng, src, files, pool)
        candidates.append(dict(files))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, duration * 0.9))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills_mid_run += 1
        proc.wait(timeout=60)
        # What a client sees right now must be a complete state the source really had.
        snap = _snapshot_content(rrdp)
        tree = _tree_content(rsync)
        assert snap in candidates, "served snapshot is not a state the source had"
        assert tree in candidates, "current tree is not a state the source had"
        # The next run completes the work.
        subprocess.run(cmd, check=True, env=env, timeout=120)
        assert _snapshot_content(rrdp) == files
        assert _tree_content(rsync) == files
        candidates = [dict(files)]
    assert kills_mid_run >= 5, "the kills should mostly land inside runs"
