"""Bodies read from the revision files (rsync/tree.py): a loaded revision keeps serving its own
files across a switch of ``current``, and a file gone or changed under it is a clean error for
the session that asked, never a wrong body.

The sessions here are the sans-I/O ones of test_rsyncd_session.py, fed by a scripted client, over
revisions loaded from disk the way the daemon loads them.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from rpkirepo.errors import Reason, StorageError
from rpkirepo.rsync import Revision, Session, State
from rpkirepo.rsync._model import xxh128
from rpkirepo.rsync._wire import Buffer, Msg, NdxReader
from rpkirepo.rsync.tree import ModuleWatcher, RevisionFiles, load_revision
from test_rsyncd_session import (
    Client,
    catalog,
    decode_flist_31,
    read_file_response,
    run,
    split_output,
)

R1 = {
    "a.cer": b"one" * 700,
    "sub/b.roa": b"r1-b" * 300,
    "sub/c.mft": b"",
    "big.crl": b"B" * 300_000,
}
R2 = {"a.cer": b"two!" * 20, "sub/b.roa": b"r2-b" * 10, "sub/c.mft": b"x", "big.crl": b"C" * 5}


def write_revision(module: Path, name: str, files: dict[str, bytes]) -> None:
    rev = module / "revisions" / name
    for rel, data in files.items():
        (rev / rel).parent.mkdir(parents=True, exist_ok=True)
        (rev / rel).write_bytes(data)
    tmp = module / "current.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(f"revisions/{name}", tmp)
    os.replace(tmp, module / "current")


def start(rev: Revision) -> tuple[Session, Client, list[int], list[bytes], bytes]:
    """A protocol 31 session that has sent its file list; the regular files' indexes, the
    names, and the output so far."""
    client = Client(31)
    session = Session(catalog(rev))
    head = run(session, client.greeting() + client.args() + client.filters())
    assert session.flist is not None and session.state is State.TRANSFER
    names = [rev.list_name(session.flist, i) for i in range(len(session.flist))]
    regular = [i for i in range(len(session.flist)) if not session.flist.is_dir(i)]
    return session, client, regular, names, head


def bodies(out: bytes, regular: list[int], names: list[bytes]) -> dict[str, bytes]:
    d = split_output(out, 31)
    buf = Buffer()
    buf.feed(d.stream)
    decode_flist_31(buf)
    got: dict[str, bytes] = {}
    reader = NdxReader()
    for _ in regular:
        ndx, data, checksum = read_file_response(buf, 31, reader)
        assert checksum == xxh128(data)
        got[names[ndx].decode()] = data
    return got


def test_revision_switch_mid_transfer_serves_the_old_files(tmp_path: Path) -> None:
    module = tmp_path / "m"
    write_revision(module, "r1", R1)
    watcher = ModuleWatcher("repo", module)
    target = watcher.changed()
    assert target is not None
    r1 = watcher.load(target)
    assert r1 is not None
    watcher.install(target, r1)
    session, client, regular, names, head = start(r1)
    # A new revision goes live, and the old directory is even moved away (not deleted).
    write_revision(module, "r2", R2)
    target2 = watcher.changed()
    assert target2 is not None
    r2 = watcher.load(target2)
    assert r2 is not None
    watcher.install(target2, r2)
    os.rename(module / "revisions" / "r1", module / "revisions" / "r1.old")
    out = run(session, b"".join(client.request(i) for i in regular) + client.dones())
    assert session.state is State.DONE
    assert bodies(head + out, regular, names) == R1
    # New sessions get r2.
    fresh, client2, regular2, names2, head2 = start(watcher.get() or r1)
    out2 = run(fresh, b"".join(client2.request(i) for i in regular2) + client2.dones())
    assert bodies(head2 + out2, regular2, names2) == R2


@pytest.mark.parametrize("change", ["removed", "truncated", "grown"])
@pytest.mark.parametrize("name", ["a.cer", "big.crl"])
def test_a_file_changed_under_a_loaded_revision_is_a_clean_error(
    tmp_path: Path, change: str, name: str
) -> None:
    module = tmp_path / "m"
    write_revision(module, "r1", R1)
    rev = load_revision(module / "revisions" / "r1")
    session, client, _regular, names, _head = start(rev)
    path = module / "revisions" / "r1" / name
    if change == "removed":
        path.unlink()
    elif change == "truncated":
        path.write_bytes(R1[name][:-1])
    else:
        path.write_bytes(R1[name] + b"!")
    ndx = names.index(name.encode())
    with pytest.raises(StorageError) as exc:
        run(session, client.request(ndx) + client.dones())
    assert exc.value.reason is Reason.RSYNC_REVISION
    out = session.data_to_send()
    assert session.state is State.FAILED and session.finished
    # The client is told in an rsync error message.  A small file's body is checked before any
    # of it goes out; a large one is read a chunk at a time and the size is checked at its end,
    # so the client gets part of it, then the error, and never a complete file.
    frames = []
    while out:
        head = int.from_bytes(out[:4], "little")
        frames.append(((head >> 24) - 7, out[4 : 4 + (head & 0xFFFFFF)]))
        out = out[4 + (head & 0xFFFFFF) :]
    assert frames[-1][0] == Msg.ERROR and frames[-1][1].startswith(b"rsync: ")
    assert b"revision" in frames[-1][1]
    sent = b"".join(p for tag, p in frames if tag == Msg.DATA)
    assert R1[name][:100] not in sent


def test_other_files_still_serve_when_one_is_gone(tmp_path: Path) -> None:
    module = tmp_path / "m"
    write_revision(module, "r1", R1)
    rev = load_revision(module / "revisions" / "r1")
    (module / "revisions" / "r1" / "a.cer").unlink()
    session, client, regular, names, head = start(rev)
    keep = [i for i in regular if names[i] != b"a.cer"]
    out = run(session, b"".join(client.request(i) for i in keep) + client.dones())
    assert session.state is State.DONE
    assert bodies(head + out, keep, names) == {k: v for k, v in R1.items() if k != "a.cer"}


def test_the_directory_descriptor_closes_with_the_revision(tmp_path: Path) -> None:
    module = tmp_path / "m"
    write_revision(module, "r1", R1)
    rev = load_revision(module / "revisions" / "r1")
    source = rev.source
    assert isinstance(source, RevisionFiles)
    fd = source._dir
    assert os.fstat(fd)
    del rev, source
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_revision_holds_no_bodies_and_no_object_per_entry(tmp_path: Path) -> None:
    module = tmp_path / "m"
    files = {f"d{i // 50}/f{i}.roa": bytes([i % 256]) * 1000 for i in range(2000)}
    write_revision(module, "r1", files)
    rev = load_revision(module / "revisions" / "r1")
    assert rev.file_count == 2000 and rev.total_size == 2_000_000
    held = sum(
        sys.getsizeof(x) for x in (rev.names, rev.ends, rev.sizes, rev.mtimes, rev.dirs, rev.tails)
    )
    assert held < 100 * rev.count  # names, sizes, mtimes, digests: no bodies
    pos = rev.find(b"d3/f150.roa")
    assert pos is not None and rev.content(pos) == files["d3/f150.roa"]
    assert rev.find(b"d3") is not None and rev.find(b"nope") is None


def test_the_load_adds_entries_in_position_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk visits entries in the protocol-29 order (names chosen so that it differs from
    name order), so the builder packs them as they come: it never sorts, and holds no row
    per entry while the load runs."""
    from rpkirepo.rsync._model import RevisionBuilder

    def no_sort(self: RevisionBuilder, blob: bytes) -> bytes:
        raise AssertionError("the load's entries were not in position order")

    monkeypatch.setattr(RevisionBuilder, "_sort", no_sort)
    module = tmp_path / "m"
    files = {"a-c/q.roa": b"q" * 200, "a/b.crl": b"b" * 200, "a/x/y.mft": b"y" * 200,
             "a.cer": b"c" * 200, "top.roa": b"t" * 200, "a/-.cer": b"-" * 200}  # fmt: skip
    write_revision(module, "r1", files)
    rev = load_revision(module / "revisions" / "r1")
    paths = [rev.path(pos).decode() for pos in range(1, rev.count)]
    assert paths == [
        "a.cer", "top.roa", "a-c", "a-c/q.roa", "a", "a/-.cer", "a/b.crl", "a/x", "a/x/y.mft",
    ]  # fmt: skip
