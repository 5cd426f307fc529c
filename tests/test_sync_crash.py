"""kill -9 at random points of `rpkirepo sync`: what the mirror serves stays consistent.

After every kill, what a client can see must be consistent on its own: the notification names
files that exist with the hashes it lists, its snapshot is a state upstream really had, and
``current`` is a complete tree of such a state.  The next run then finishes the job.  Runs take
the delta path and, after an upstream session reset, the snapshot path.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import mutate_objects
from rpkirepo.publish import PublishOptions, publish
from rpkirepo.uri import HttpsUri, RsyncUri
from sync_support import HTTPS_BASE, NOTIFY, RSYNC_BASE, served_snapshot, tree


def _publish(src: Path, up: Path) -> None:
    publish(
        PublishOptions(
            source_dir=src,
            rsync_base=RsyncUri.parse(RSYNC_BASE),
            https_base=HttpsUri.parse(HTTPS_BASE),
            rrdp_dir=up / "rrdp",
            rsync_dir=up / "rsync",
            state_dir=up / "state",
            force=True,
        )
    )


def _served(mirror: Path) -> tuple[dict[str, bytes] | None, dict[str, bytes] | None]:
    rrdp, rsync = mirror / "rrdp", mirror / "rsync"
    snap = served_snapshot(rrdp) if (rrdp / "notification.xml").exists() else None
    current = tree(rsync) if os.path.lexists(rsync / "current") else None
    return snap, current


@pytest.mark.slow
def test_kill_at_random_points_leaves_the_mirror_consistent(
    tmp_path: Path, corpus_dir: Path
) -> None:
    pool = [
        p.read_bytes()
        for p in sorted((corpus_dir / "objects").rglob("*"))
        if p.suffix in (".roa", ".mft", ".crl", ".cer") and p.stat().st_size > 200
    ]
    rng = random.Random(20261123)
    src, up, mirror = tmp_path / "src", tmp_path / "up", tmp_path / "mirror"
    src.mkdir()
    files: dict[str, bytes] = {}
    for i in range(3000):
        name = f"ca{i % 40}/obj{i}.roa"
        files[name] = rng.choice(pool)
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(files[name])
    _publish(src, up)
    cmd = [
        sys.executable, "-m", "rpkirepo", "-q", "sync", NOTIFY,
        "--source-uri-base", str(up / "rrdp"), "--state-dir", str(mirror),
        "--cleanup-after", "0",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    started = time.monotonic()
    subprocess.run(cmd, check=True, env=env, timeout=120)
    snapshot_run = time.monotonic() - started
    assert _served(mirror) == (files, files)
    durations = []
    for _ in range(3):
        mutate_objects(rng, src, files, pool)
        _publish(src, up)
        started = time.monotonic()
        subprocess.run(cmd, check=True, env=env, timeout=120)
        durations.append(time.monotonic() - started)
    delta_run = min(durations)
    assert _served(mirror) == (files, files)
    candidates = [dict(files)]
    kills_mid_run = 0
    for round_ in range(14):
        mutate_objects(rng, src, files, pool)
        duration = delta_run
        if round_ % 5 == 4:
            shutil.rmtree(up / "state")  # upstream session reset: the snapshot path
            duration = snapshot_run
        _publish(src, up)
        candidates.append(dict(files))
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, duration * 0.9))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills_mid_run += 1
        proc.wait(timeout=60)
        snap, current = _served(mirror)
        assert snap in candidates, "served snapshot is not a state upstream had"
        assert current in candidates, "current tree is not a state upstream had"
        subprocess.run(cmd, check=True, env=env, timeout=120)
        assert _served(mirror) == (files, files)
        candidates = [dict(files)]
    assert kills_mid_run >= 5, "the kills should mostly land inside runs"
