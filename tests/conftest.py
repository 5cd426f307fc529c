"""Shared fixtures: where the shared corpus lives, and how peer tests find their peers."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def corpus_root() -> Path:
    """../shared/corpus beside the checkout (CI clones main with shared/ beside it).

    RPKIREPO_CORPUS overrides.  A missing corpus is an error, not a skip: the corpus tests are
    part of what `make test` proves.
    """
    override = os.environ.get("RPKIREPO_CORPUS")
    path = Path(override) if override else REPO_ROOT.parent / "shared" / "corpus"
    if not (path / "INDEX.tsv").is_file():
        raise RuntimeError(f"shared corpus not found at {path} (set RPKIREPO_CORPUS)")
    return path


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    return corpus_root()


def require_peer(binary: str) -> str:
    """Path of a peer program: skips when missing, fails in CI (RPKIREPO_REQUIRE_PEERS=1)."""
    path = shutil.which(binary) or (
        f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None
    )
    if path is None:
        message = f"peer program {binary!r} is not installed (make test installs it as root)"
        if os.environ.get("RPKIREPO_REQUIRE_PEERS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def mutate_objects(
    rng: random.Random, src: Path, files: dict[str, bytes], pool: list[bytes]
) -> None:
    """Churn for the kill -9 tests: replace or remove 50-300 objects of ``files`` (mirrored in
    ``src``) and add up to 400 new ones, contents drawn from ``pool``."""
    names = sorted(files)
    for name in rng.sample(names, k=min(len(names), rng.randrange(50, 300))):
        if rng.random() < 0.4:
            (src / name).unlink()
            del files[name]
        else:
            files[name] = rng.choice(pool)
            (src / name).write_bytes(files[name])
    for i in range(rng.randrange(0, 400)):
        name = f"ca{rng.randrange(20)}/n{rng.randrange(10**9)}-{i}.roa"
        files[name] = rng.choice(pool)
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(files[name])
