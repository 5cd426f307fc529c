"""``rpkirepo fetch`` killed with SIGKILL at random moments: what the cache shows is always one
whole state (the last good one or the new one, never a mix), and the next run completes.

The origin is a testbed over TLS (the scripted server) at state A, fetched once; then it
advances to state B (one delta).  Each round restores the cache of state A, starts the real CLI
in a child process, kills it after a random delay spread over the whole run, checks the output
view, then runs the fetch to the end and checks it shows B.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fetch_support import Origin, fetch, origin, view

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Origin]:
    with origin(tmp_path / "origin", cas=3, depth=2) as o:
        yield o


def _cli(o: Origin, cache: Path) -> list[str]:
    return [sys.executable, "-m", "rpkirepo", "-q", "fetch", "--tal", str(o.tal), "--cache",
            str(cache), "--ca-file", str(o.tls.ca_cert), "--no-progress"]  # fmt: skip


def test_kill_9_at_random_moments_leaves_one_whole_state(repo: Origin, tmp_path: Path) -> None:
    good = tmp_path / "good"
    fetch(repo, good)
    state_a = view(good, repo.module_dir)
    repo.advance()
    state_b = repo.objects()
    assert state_a != state_b
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    # How long a whole run takes here, so that the kills spread over all of it.
    cache = tmp_path / "cache"
    shutil.copytree(good, cache, symlinks=True)
    started = time.monotonic()
    subprocess.run(_cli(repo, cache), env=env, check=True, timeout=120)
    whole = time.monotonic() - started
    assert view(cache, repo.module_dir) == state_b
    rng = random.Random(9)
    for _ in range(8):
        shutil.rmtree(cache)
        shutil.copytree(good, cache, symlinks=True)
        proc = subprocess.Popen(
            _cli(repo, cache), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.2, whole))
        proc.kill()
        proc.wait(timeout=30)
        shown = view(cache, repo.module_dir)
        assert shown in (state_a, state_b), "the view shows a mix of two states"
        done = subprocess.run(_cli(repo, cache), env=env, timeout=120, capture_output=True)
        assert done.returncode == 0, done.stderr.decode()
        assert view(cache, repo.module_dir) == state_b
