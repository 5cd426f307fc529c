"""Revision spools (rsync/tree.py ``RevisionSpool``, the ``_answer_batch`` runs of
rsync/_session.py): a full sync's answers sent as they are from the spool must be byte for byte
what the general path sends, for any request stream; the spool is written in position order at
load, is never visible in its directory, and its absence is never an error.

Interop with the real client through the spool (sendfile) is in test_rsyncd_peer.py.
"""

from __future__ import annotations

import logging
import os
import random
import subprocess
from pathlib import Path

import pytest

from conftest import require_peer
from peers import rpkirepo_rsyncd
from rpkirepo.errors import ConfigError, Reason
from rpkirepo.rsync import Revision, Session, State, _model
from rpkirepo.rsync._model import (
    SPOOL_DIR_SEGMENT,
    SPOOL_FRAME,
    spool_file_offset,
    spool_segment,
)
from rpkirepo.rsync._session import SpoolRange, _stream_bytes
from rpkirepo.rsync.command import parse_spool_dir
from rpkirepo.rsync.tree import DEFAULT_SPOOL_DIR, RevisionSpool, load_revision
from test_rsyncd_session import Client, catalog, make_revision, run, split_output


def spooled(files: dict[str, bytes], where: Path) -> tuple[Revision, Revision]:
    """The same revision without and with a spool in ``where`` (answers in position order)."""
    plain = make_revision(files)
    spool = RevisionSpool.create(where)
    assert spool is not None
    at: dict[bytes, int] = {}
    for pos in range(1, plain.count):
        path = plain.path(pos)
        if plain.is_dir(pos):
            at[path] = spool.add(SPOOL_DIR_SEGMENT)
        else:
            at[path] = spool.add(spool_segment(files[path.decode()]))
    assert spool.finish()
    rev = make_revision(files, spool=spool, spool_at=at)
    assert rev.spool is not None and rev.spool.source is spool
    return plain, rev


def random_files(rng: random.Random) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    for d in range(rng.randint(3, 12)):
        for f in range(rng.randint(0, 30)):
            size = rng.choice([0, 5, 100, 3000, 40000])
            files[f"d{d}/x{f:03d}.roa"] = rng.randbytes(size)
        files[f"d{d}/sub/y.cer"] = b"y" * d
        if d % 3 == 0:
            files[f"d{d}/sub/deep/z.mft"] = b"z" * 70000  # more than one frame
    files["top.crl"] = b"crl"
    return files


def script(client: Client, is_dir: list[bool], rng: random.Random) -> bytes:
    """A full sync as rsync 3.x sends it (each new directory, then each file, in list order),
    with random departures: skipped entries, other flags, block sums, repeats."""
    out = [client.greeting(), client.args(), client.filters()]
    for i in range(1, len(is_dir)):
        r = rng.random()
        if r < 0.05:
            continue
        if is_dir[i]:
            out.append(client.data(client.ndx.encode(i) + b"\x00\x60"))
            continue
        if r < 0.08:
            out.append(client.request(i, (2, 700, 2, 100), junk=bytes(12)))
        elif r < 0.1:
            out.append(client.request(i, (0, 700, 0, 0)))
        elif r < 0.2:
            out.append(client.request(i))  # ITEM_TRANSFER alone
        else:
            out.append(client.data(client.ndx.encode(i) + b"\x00\xa0" + bytes(16)))
        if rng.random() < 0.02:
            out.append(client.request(i))
    out.append(client.dones())
    return b"".join(out)


@pytest.mark.parametrize("seed", range(40))
def test_spool_answers_are_the_general_paths(
    seed: int, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rng = random.Random(seed)
    if seed % 2:  # the file list from the spool too
        monkeypatch.setattr(_model, "SPOOL_LIST_MIN", 0)
    plain, rev = spooled(random_files(rng), tmp_path)
    for protocol in (31, 30):
        probe = Session(catalog(plain))
        run(
            probe,
            Client(protocol).greeting() + Client(protocol).args() + Client(protocol).filters(),
        )
        assert probe.flist is not None
        is_dir = [probe.flist.is_dir(i) for i in range(len(probe.flist))]
        data = script(Client(protocol), is_dir, rng)
        step = rng.choice([None, 1, 7, 1000])
        want = split_output(run(Session(catalog(plain)), data, step), protocol)
        session = Session(catalog(rev))
        got = split_output(run(session, data, step), protocol)
        assert session.state is State.DONE
        assert (got.stream, got.messages) == (want.stream, want.messages)
        assert session.flist is not None
        assert (session.flist.spool_at >= 0) == bool(seed % 2)


def test_a_clean_full_sync_is_answered_in_ranges(tmp_path: Path) -> None:
    plain, rev = spooled(random_files(random.Random(99)), tmp_path)
    client = Client(31)
    probe = Session(catalog(plain))
    run(probe, client.greeting() + client.args() + client.filters())
    assert probe.flist is not None
    requests = [client.greeting(), client.args(), client.filters()]
    for i in range(1, len(probe.flist)):
        tail = b"\x00\x60" if probe.flist.is_dir(i) else b"\x00\xa0" + bytes(16)
        requests.append(client.data(client.ndx.encode(i) + tail))
    session = Session(catalog(rev))
    session.receive_data(b"".join(requests) + client.dones())
    ranged = 0
    while (out := session.output()) != b"":
        if isinstance(out, SpoolRange):
            ranged += out.count
    assert session.state is State.DONE
    assert rev.spool is not None
    assert ranged > 0.8 * rev.spool.total


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def test_load_writes_the_spool_in_position_order(tmp_path: Path) -> None:
    files = random_files(random.Random(5))
    # Names whose protocol 29 order differs from plain name order: files before directories.
    files.update({"a.b/f": b"1", "a/b": b"2", "a0": b"3", "a/c/d": b"4", "a-": b""})
    write_tree(tmp_path / "tree", files)
    spool_dir = tmp_path / "spool"
    spool_dir.mkdir()
    rev = load_revision(tmp_path / "tree", spool_dir=spool_dir)
    assert rev.spool is not None
    assert os.listdir(spool_dir) == []  # an unlinked file
    offsets = rev.spool.offsets
    for pos in range(1, rev.count):
        answer = _stream_bytes(rev.spool.source, offsets[pos], offsets[pos + 1])
        if rev.is_dir(pos):
            assert answer == SPOOL_DIR_SEGMENT
        else:
            data = files[rev.path(pos).decode()]
            assert answer == spool_segment(data)
    # The stream is framed: 32 KiB frames, the last one shorter.
    raw = rev.spool.source.read(0, spool_file_offset(rev.spool.total - 1) + 1)
    at, seen = 0, 0
    while at < len(raw):
        n = int.from_bytes(raw[at : at + 4], "little") ^ (7 << 24)
        assert n == min(SPOOL_FRAME, rev.spool.total - seen)
        at, seen = at + 4 + n, seen + n
    assert rev.spool.total > sum(len(d) for d in files.values())
    plain = load_revision(tmp_path / "tree")
    assert plain.spool is None and plain.names == rev.names and plain.tails == rev.tails


def test_without_a_spool_the_revision_still_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_tree(tmp_path / "tree", {"a/b.roa": b"x" * 10})
    with caplog.at_level(logging.WARNING, logger="rpkirepo.rsyncd"):
        rev = load_revision(tmp_path / "tree", spool_dir=tmp_path / "missing")
    assert rev.spool is None and rev.file_count == 1
    assert any(getattr(r, "reason", None) == "storage-io" for r in caplog.records)


@pytest.mark.parametrize("protocol", [31, 30, 27])
def test_real_client_full_sync_through_the_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, protocol: int
) -> None:
    """Debian's rsync, a full sync and a no-change re-sync, with the file list and the
    files' answers sent from the spool (sendfile): the same tree, the same mtimes."""
    require_peer("rsync")
    monkeypatch.setattr(_model, "SPOOL_LIST_MIN", 0)
    files = random_files(random.Random(7))
    write_tree(tmp_path / "tree", files)
    dest = tmp_path / "dest"
    with rpkirepo_rsyncd({"repo": tmp_path / "tree"}) as d:
        for _ in range(2):
            proc = subprocess.run(
                ["rsync", "-rt", f"--protocol={protocol}", d.url("repo/"), f"{dest}/"],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr
        spooled = d.daemon.counters.spool_bytes_sent  # type: ignore[attr-defined]
    subprocess.run(["diff", "-r", str(dest), str(tmp_path / "tree")], check=True)
    for rel in files:
        assert int((dest / rel).stat().st_mtime) == int((tmp_path / "tree" / rel).stat().st_mtime)
    assert spooled > 0  # at least the lists; at >= 30 the files' answers too
    if protocol >= 30:
        assert spooled > 0.5 * sum(len(v) for v in files.values())


def test_spool_dir_option(tmp_path: Path) -> None:
    assert parse_spool_dir(None) == DEFAULT_SPOOL_DIR
    assert parse_spool_dir("off") is None
    assert parse_spool_dir(str(tmp_path)) == tmp_path
    with pytest.raises(ConfigError) as exc:
        parse_spool_dir(str(tmp_path / "missing"))
    assert exc.value.reason is Reason.CONFIG_INVALID


def test_a_spool_that_cannot_be_written_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk while loading: the revision loads without a spool.  After the load (an
    encoded file list appended): that list is sent from memory, the rest of the spool serves."""
    import errno

    files = random_files(random.Random(3))
    write_tree(tmp_path / "tree", files)
    real = os.pwritev

    def full(*args: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwritev", full)
    with caplog.at_level(logging.WARNING, logger="rpkirepo.rsyncd"):
        rev = load_revision(tmp_path / "tree", spool_dir=tmp_path)
    assert rev.spool is None and rev.file_count == len(files)
    assert any(getattr(r, "reason", None) == "storage-io" for r in caplog.records)

    monkeypatch.setattr(os, "pwritev", real)
    monkeypatch.setattr(_model, "SPOOL_LIST_MIN", 0)
    rev = load_revision(tmp_path / "tree", spool_dir=tmp_path)
    assert rev.spool is not None
    spool = rev.spool.source
    size = spool.size  # type: ignore[attr-defined]
    monkeypatch.setattr(os, "pwritev", full)
    plain = load_revision(tmp_path / "tree")
    client = Client(31)
    probe = Session(catalog(plain))
    run(probe, client.greeting() + client.args() + client.filters())
    assert probe.flist is not None
    is_dir = [probe.flist.is_dir(i) for i in range(len(probe.flist))]
    data = script(Client(31), is_dir, random.Random(1))
    session = Session(catalog(rev))
    got = split_output(run(session, data), 31)
    want = split_output(run(Session(catalog(plain)), data), 31)
    assert session.flist is not None and session.flist.spool_at == -1  # not appended
    assert spool.size == size  # type: ignore[attr-defined]
    assert (got.stream, got.messages) == (want.stream, want.messages)
