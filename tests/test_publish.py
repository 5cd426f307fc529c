"""rpkirepo publish: every run leaves a consistent RRDP repository and rsync tree.

The checks read the output the way a relying party would: parse the notification with our own
parser, check every hash, replay the deltas from an older snapshot, and compare the rsync tree
file by file (content and mtime) with what the source held at that serial.
"""

from __future__ import annotations

import gzip
import os
import random
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from rpkirepo.errors import InputError, Reason, StorageError
from rpkirepo.fsutil import DirLock
from rpkirepo.objects import mtime_of
from rpkirepo.publish import PublishOptions, publish
from rpkirepo.publish.rsync_tree import DIR_MTIME
from rpkirepo.rrdp.model import NotificationFile, PublishElement, RrdpFileHeader, WithdrawElement
from rpkirepo.rrdp.parser import iter_events, parse_notification
from rpkirepo.uri import HttpsUri, RsyncUri

RSYNC_BASE = "rsync://rpki.example.net/repo/"
HTTPS_BASE = "https://rrdp.example.net/rrdp/"
EXTENSIONS = (".roa", ".mft", ".crl", ".cer", ".asa")


class Clock:
    """A settable clock so grace periods can be tested without waiting."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    root: Path
    clock: Clock
    opts: PublishOptions

    @property
    def source(self) -> Path:
        return self.opts.source_dir

    def run(self, **changes: object) -> object:
        return publish(replace(self.opts, **changes) if changes else self.opts)


def load_corpus_objects(corpus_dir: Path) -> list[bytes]:
    """Real objects of several types to use as file contents."""
    files = sorted((corpus_dir / "objects").rglob("*"))
    out = [p.read_bytes() for p in files if p.suffix in EXTENSIONS and p.stat().st_size > 200]
    assert len(out) > 100
    return out


def make_env(tmp_path: Path) -> Env:
    """A source directory and publish options on a settable clock, grace 1 h."""
    clock = Clock()
    opts = PublishOptions(
        source_dir=tmp_path / "src",
        rsync_base=RsyncUri(RSYNC_BASE),
        https_base=HttpsUri(HTTPS_BASE),
        rrdp_dir=tmp_path / "out" / "rrdp",
        rsync_dir=tmp_path / "out" / "rsync",
        state_dir=tmp_path / "state",
        grace=3600,
        clock=clock,
        workers=2,
    )
    (tmp_path / "src").mkdir()
    return Env(tmp_path, clock, opts)


@pytest.fixture
def corpus_objects(corpus_dir: Path) -> list[bytes]:
    return load_corpus_objects(corpus_dir)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


def write_source(src: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        p = src / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def source_files(src: Path) -> dict[str, bytes]:
    return {p.relative_to(src).as_posix(): p.read_bytes() for p in src.rglob("*") if p.is_file()}


def read_rrdp_file(path: Path) -> tuple[RrdpFileHeader, list[PublishElement | WithdrawElement]]:
    data = path.read_bytes()
    assert gzip.decompress((path.parent / (path.name + ".gz")).read_bytes()) == data
    header = None
    elements: list[PublishElement | WithdrawElement] = []
    for ev in iter_events([data[i : i + 65536] for i in range(0, len(data), 65536)]):
        if isinstance(ev, RrdpFileHeader):
            header = ev
        elif isinstance(ev, PublishElement | WithdrawElement):
            elements.append(ev)
    assert header is not None
    return header, elements


def local_path(env: Env, uri: str) -> Path:
    assert uri.startswith(HTTPS_BASE)
    return env.opts.rrdp_dir / uri[len(HTTPS_BASE) :]


def check_published(env: Env, expected: dict[str, bytes]) -> NotificationFile:
    """The notification, its snapshot, its deltas and the rsync tree all agree with ``expected``."""
    ndata = env.opts.rrdp_dir.joinpath("notification.xml").read_bytes()
    assert gzip.decompress(env.opts.rrdp_dir.joinpath("notification.xml.gz").read_bytes()) == ndata
    n = parse_notification(ndata)
    snap_path = local_path(env, n.snapshot.uri.uri)
    import hashlib

    assert hashlib.sha256(snap_path.read_bytes()).digest() == n.snapshot.hash.digest
    header, elements = read_rrdp_file(snap_path)
    assert (header.session_id, header.serial) == (n.session_id, n.serial)
    content = {e.uri.uri[len(RSYNC_BASE) :]: e.data for e in elements}
    assert content == expected
    # Delta sizes never add up to more than the snapshot (RFC 8182 §3.3.2).
    sizes = 0
    for d in n.deltas:
        p = local_path(env, d.uri.uri)
        assert hashlib.sha256(p.read_bytes()).digest() == d.hash.digest
        sizes += p.stat().st_size
    assert sizes <= snap_path.stat().st_size
    if n.deltas:
        serials = sorted(d.serial for d in n.deltas)
        assert serials == list(range(serials[0], n.serial + 1))
    check_tree(env.opts.rsync_dir / "current", expected)
    return n


def check_tree(tree: Path, expected: dict[str, bytes]) -> None:
    found = {}
    for dirpath, _dirs, files in os.walk(tree):
        assert os.stat(dirpath).st_mtime == DIR_MTIME, dirpath
        for name in files:
            p = Path(dirpath) / name
            rel = p.relative_to(tree).as_posix()
            data = p.read_bytes()
            found[rel] = data
            t = mtime_of(data, name)
            if t.seconds >= 0:
                assert int(p.stat().st_mtime) == t.seconds, rel
    assert found == expected


def random_files(rng: random.Random, objects: list[bytes], n: int, prefix: str = "") -> dict:
    out = {}
    for i in range(n):
        ext = rng.choice(EXTENSIONS)
        d = f"ca{rng.randrange(8)}/"
        out[f"{prefix}{d}obj{i}-{rng.randrange(10**6)}{ext}"] = rng.choice(objects)
    return out


# --- basic runs ---------------------------------------------------------------------------------


def test_first_run_publishes_everything(env: Env, corpus_objects: list[bytes]) -> None:
    files = random_files(random.Random(1), corpus_objects, 60)
    write_source(env.source, files)
    result = env.run()
    assert result.changed and result.serial == 1 and result.added == 60  # type: ignore[attr-defined]
    assert result.new_session_reason == Reason.STATE_MISSING  # type: ignore[attr-defined]
    n = check_published(env, files)
    assert n.serial == 1 and n.deltas == ()


def test_nothing_changed_writes_nothing(env: Env, corpus_objects: list[bytes]) -> None:
    write_source(env.source, random_files(random.Random(2), corpus_objects, 30))
    env.run()

    def listing() -> dict[str, tuple[int, int]]:
        out = {}
        for p in (env.root / "out").rglob("*"):
            st = p.lstat()
            out[str(p)] = (st.st_mtime_ns, st.st_ino)
        return out

    before = listing()
    env.clock.now += 60
    result = env.run()
    assert not result.changed and result.serial == 1  # type: ignore[attr-defined]
    assert listing() == before
    # Touching a file without changing its content is not a change either.
    some = next(env.source.rglob("*.roa"), None) or next(
        p for p in env.source.rglob("*") if p.is_file()
    )
    some.write_bytes(some.read_bytes())
    assert not env.run().changed  # type: ignore[attr-defined]
    assert listing() == before


def test_update_writes_a_delta_and_keeps_the_old_tree(
    env: Env, corpus_objects: list[bytes]
) -> None:
    rng = random.Random(3)
    files = random_files(rng, corpus_objects, 40)
    write_source(env.source, files)
    env.run()
    old_tree = (env.opts.rsync_dir / "current").resolve()
    old_files = dict(files)
    names = sorted(files)
    modified, removed = names[0], names[1]
    files[modified] = (
        corpus_objects[-1] if files[modified] != corpus_objects[-1] else corpus_objects[0]
    )
    (env.source / modified).write_bytes(files[modified])
    (env.source / removed).unlink()
    del files[removed]
    added = "new/dir/added.roa"
    files[added] = corpus_objects[5]
    write_source(env.source, {added: files[added]})
    env.clock.now += 60
    result = env.run()
    assert (result.serial, result.added, result.modified, result.removed) == (2, 1, 1, 1)  # type: ignore[attr-defined]
    n = check_published(env, files)
    assert [d.serial for d in n.deltas] == [2]
    header, elements = read_rrdp_file(local_path(env, n.deltas[0].uri.uri))
    assert header.serial == 2
    by_uri = {e.uri.uri[len(RSYNC_BASE) :]: e for e in elements}
    assert set(by_uri) == {modified, removed, added}
    # Withdraws come first (a name may turn from file into directory within one delta).
    kinds = [isinstance(e, WithdrawElement) for e in elements]
    assert kinds == sorted(kinds, reverse=True)
    assert isinstance(by_uri[removed], WithdrawElement)
    import hashlib

    assert by_uri[removed].hash.digest == hashlib.sha256(old_files[removed]).digest()
    m = by_uri[modified]
    assert isinstance(m, PublishElement) and m.hash is not None
    assert m.hash.digest == hashlib.sha256(old_files[modified]).digest()
    assert isinstance(by_uri[added], PublishElement) and by_uri[added].hash is None
    # The previous revision tree is still there, untouched, for clients that started on it.
    assert old_tree.is_dir() and old_tree != (env.opts.rsync_dir / "current").resolve()
    check_tree(old_tree, old_files)


def test_many_runs_stay_consistent_and_deltas_replay(env: Env, corpus_objects: list[bytes]) -> None:
    """Random churn with grace 0 (trees are reused at once) and a repository that grows past
    several bucket splits; after every run a client replaying deltas gets the snapshot."""
    rng = random.Random(4)
    files = random_files(rng, corpus_objects, 20)
    write_source(env.source, files)
    env.run(grace=0)
    first = check_published(env, files)
    replay = {e.uri.uri: e.data for e in read_rrdp_file(local_path(env, first.snapshot.uri.uri))[1]}
    serial = 1
    for round_no in range(12):
        names = sorted(files)
        for name in rng.sample(names, k=min(len(names), rng.randrange(0, 6))):
            if rng.random() < 0.5:
                (env.source / name).unlink()
                del files[name]
            else:
                files[name] = rng.choice(corpus_objects)
                (env.source / name).write_bytes(files[name])
        grow = random_files(rng, corpus_objects, rng.randrange(1, 80), prefix=f"r{round_no}/")
        write_source(env.source, grow)
        files.update(grow)
        env.clock.now += 30
        result = env.run(grace=0)
        assert result.changed  # type: ignore[attr-defined]
        serial += 1
        n = check_published(env, files)
        assert n.serial == serial and n.session_id == first.session_id
        # Apply this serial's delta to the replayed state (RFC 8182 §3.4.2 rules).
        newest = max(n.deltas, key=lambda d: d.serial)
        assert newest.serial == serial
        import hashlib

        for e in read_rrdp_file(local_path(env, newest.uri.uri))[1]:
            if isinstance(e, WithdrawElement):
                assert hashlib.sha256(replay.pop(e.uri.uri)).digest() == e.hash.digest
            elif e.hash is not None:
                assert hashlib.sha256(replay[e.uri.uri]).digest() == e.hash.digest
                replay[e.uri.uri] = e.data
            else:
                assert e.uri.uri not in replay
                replay[e.uri.uri] = e.data
        assert replay == {RSYNC_BASE + k: v for k, v in files.items()}
    # With grace 0 the ring keeps the number of trees small.
    trees = list((env.opts.rsync_dir / "revisions").iterdir())
    assert len(trees) <= 3


def test_grace_period_then_cleanup(env: Env, corpus_objects: list[bytes]) -> None:
    files = random_files(random.Random(5), corpus_objects, 10)
    write_source(env.source, files)
    env.run()
    n1 = parse_notification(env.opts.rrdp_dir.joinpath("notification.xml").read_bytes())
    snap1 = local_path(env, n1.snapshot.uri.uri)
    tree1 = (env.opts.rsync_dir / "current").resolve()
    write_source(env.source, {"x/y.roa": corpus_objects[0]})
    env.clock.now += 60
    env.run()
    # Superseded, but within the grace period: still served.
    assert snap1.exists() and tree1.exists()
    # Retired when the second run replaced it (t0 + 60): kept until t0 + 60 + 3600.
    env.clock.now += 3600 - 2
    write_source(env.source, {"x/z.roa": corpus_objects[1]})
    env.run()
    assert snap1.exists()
    env.clock.now += 3
    write_source(env.source, {"x/w.roa": corpus_objects[2]})
    env.run()
    assert not snap1.exists()
    assert not snap1.with_name("snapshot.xml.gz").exists()


def test_delta_retention_caps(env: Env, corpus_objects: list[bytes]) -> None:
    write_source(env.source, random_files(random.Random(6), corpus_objects, 10))
    env.run(delta_max_count=3)
    for i in range(6):
        write_source(env.source, {f"more/{i}.roa": corpus_objects[i]})
        env.clock.now += 60
        env.run(delta_max_count=3)
    n = parse_notification(env.opts.rrdp_dir.joinpath("notification.xml").read_bytes())
    assert sorted(d.serial for d in n.deltas) == [5, 6, 7]
    env.clock.now += 10 * 86400
    write_source(env.source, {"more/last.roa": corpus_objects[9]})
    env.run(delta_max_count=3)
    n = parse_notification(env.opts.rrdp_dir.joinpath("notification.xml").read_bytes())
    assert [d.serial for d in n.deltas] == [8]  # older ones are past the age cap


def test_include_host_and_base_path(env: Env, corpus_objects: list[bytes]) -> None:
    files = {"a/b.roa": corpus_objects[0]}
    write_source(env.source, files)
    env.run(rsync_base=RsyncUri("rsync://rpki.example.net/repo/sub/"), rsync_include_host=True)
    tree = env.opts.rsync_dir / "current"
    assert (tree / "rpki.example.net/repo/sub/a/b.roa").read_bytes() == corpus_objects[0]


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda s: (s / "ok.roa").symlink_to("/etc/passwd"), Reason.SOURCE_SYMLINK),
        (lambda s: (s / "link").symlink_to("/etc"), Reason.SOURCE_SYMLINK),
        (lambda s: (s / ".hidden.roa").write_bytes(b"x" * 200), Reason.SOURCE_BAD_NAME),
        (lambda s: (s / "sp ace.roa").write_bytes(b"x" * 200), Reason.SOURCE_BAD_NAME),
        (lambda s: (s / "caf\u00e9.roa").write_bytes(b"x" * 200), Reason.SOURCE_BAD_NAME),
        (lambda s: (s / "notes.txt").write_bytes(b"x" * 200), Reason.SOURCE_UNSUPPORTED_TYPE),
        (lambda s: (s / "empty.roa").write_bytes(b""), Reason.OBJECT_EMPTY),
        (lambda s: os.mkfifo(s / "fifo.roa"), Reason.SOURCE_SPECIAL_FILE),
    ],
)
def test_bad_source_files_refuse_the_run_and_change_nothing(
    env: Env, corpus_objects: list[bytes], make: object, reason: Reason
) -> None:
    files = random_files(random.Random(7), corpus_objects, 5)
    write_source(env.source, files)
    env.run()
    before = env.opts.rrdp_dir.joinpath("notification.xml").read_bytes()
    make(env.source)  # type: ignore[operator]
    write_source(env.source, {"good/new.roa": corpus_objects[3]})
    with pytest.raises(InputError) as info:
        env.run()
    assert info.value.reason == reason
    assert env.opts.rrdp_dir.joinpath("notification.xml").read_bytes() == before
    check_published(env, files)
    # --skip-invalid publishes the rest.
    result = env.run(skip_invalid=True)
    assert result.changed and len(result.skipped) == 1  # type: ignore[attr-defined]
    files["good/new.roa"] = corpus_objects[3]
    check_published(env, files)


def test_oversized_file_is_refused(env: Env, corpus_objects: list[bytes]) -> None:
    write_source(env.source, {"big.roa": b"x" * 5000})
    with pytest.raises(InputError) as info:
        env.run(limits=env.opts.limits.override({"max_object_size": 4096}))
    assert info.value.reason == Reason.OBJECT_TOO_LARGE
    assert not env.opts.rrdp_dir.joinpath("notification.xml").exists()


# --- lost, corrupt and mismatched state ---------------------------------------------------------


def test_lost_state_starts_a_new_session_and_retires_old_files(
    env: Env, corpus_objects: list[bytes]
) -> None:
    files = random_files(random.Random(8), corpus_objects, 10)
    write_source(env.source, files)
    env.run()
    n1 = parse_notification(env.opts.rrdp_dir.joinpath("notification.xml").read_bytes())
    shutil.rmtree(env.opts.state_dir)
    env.clock.now += 60
    result = env.run()
    assert result.new_session_reason == Reason.STATE_MISSING  # type: ignore[attr-defined]
    n2 = check_published(env, files)
    assert n2.session_id != n1.session_id and n2.serial == 1
    # The old session's files stay for the grace period (clients may be fetching them) ...
    assert local_path(env, n1.snapshot.uri.uri).exists()
    env.clock.now += 3601
    write_source(env.source, {"later.roa": corpus_objects[0]})
    env.run()
    # ... and are gone after it.
    assert not local_path(env, n1.snapshot.uri.uri).exists()


def test_corrupt_state_starts_a_new_session(env: Env, corpus_objects: list[bytes]) -> None:
    files = random_files(random.Random(9), corpus_objects, 10)
    write_source(env.source, files)
    env.run()
    (env.opts.state_dir / "publish.db").write_bytes(b"this is not a database" * 100)
    result = env.run()
    assert result.new_session_reason in (Reason.STATE_CORRUPT, Reason.STATE_INCOMPATIBLE)  # type: ignore[attr-defined]
    check_published(env, files)


def test_missing_published_file_starts_a_new_session(env: Env, corpus_objects: list[bytes]) -> None:
    files = random_files(random.Random(10), corpus_objects, 10)
    write_source(env.source, files)
    env.run()
    n1 = parse_notification(env.opts.rrdp_dir.joinpath("notification.xml").read_bytes())
    local_path(env, n1.snapshot.uri.uri).unlink()
    result = env.run()
    assert result.new_session_reason == Reason.STATE_OUTPUT_MISMATCH  # type: ignore[attr-defined]
    check_published(env, files)


def test_changed_base_uri_starts_a_new_session(env: Env, corpus_objects: list[bytes]) -> None:
    write_source(env.source, {"a.roa": corpus_objects[0]})
    env.run()
    result = env.run(https_base=HttpsUri("https://other.example.net/rrdp/"))
    assert result.new_session_reason == Reason.STATE_INCOMPATIBLE  # type: ignore[attr-defined]


def test_second_run_is_refused_while_locked(env: Env, corpus_objects: list[bytes]) -> None:
    write_source(env.source, {"a.roa": corpus_objects[0]})
    env.opts.state_dir.mkdir(parents=True)
    with DirLock(env.opts.state_dir), pytest.raises(StorageError) as info:
        env.run()
    assert info.value.reason == Reason.STATE_LOCKED


def test_notification_is_repaired_from_state(env: Env, corpus_objects: list[bytes]) -> None:
    files = {"a.roa": corpus_objects[0]}
    write_source(env.source, files)
    env.run()
    good = env.opts.rrdp_dir.joinpath("notification.xml").read_bytes()
    env.opts.rrdp_dir.joinpath("notification.xml").unlink()
    (env.opts.rsync_dir / "current").unlink()
    result = env.run()
    assert not result.changed  # type: ignore[attr-defined]
    assert env.opts.rrdp_dir.joinpath("notification.xml").read_bytes() == good
    check_published(env, files)


def test_leftover_temporary_files_are_removed(env: Env, corpus_objects: list[bytes]) -> None:
    write_source(env.source, {"a.roa": corpus_objects[0]})
    env.run()
    # What a crash inside replace_symlink / atomic_write leaves behind.
    (env.opts.rsync_dir / ".tmp-current.dead").symlink_to("revisions/nowhere")
    (env.opts.rrdp_dir / ".tmp-notification.xml.dead").write_bytes(b"half")
    env.run()
    assert not os.path.lexists(env.opts.rsync_dir / ".tmp-current.dead")
    assert not (env.opts.rrdp_dir / ".tmp-notification.xml.dead").exists()


def test_shrink_guard_refuses_to_empty_the_repository(
    env: Env, corpus_objects: list[bytes]
) -> None:
    files = random_files(random.Random(12), corpus_objects, 40)
    write_source(env.source, files)
    env.run()
    before = env.opts.rrdp_dir.joinpath("notification.xml").read_bytes()
    # The source directory is "unmounted": empty.
    shutil.rmtree(env.source)
    env.source.mkdir()
    with pytest.raises(InputError) as info:
        env.run()
    assert info.value.reason == Reason.SOURCE_SHRINK
    assert "40 of 40" in str(info.value)
    assert env.opts.rrdp_dir.joinpath("notification.xml").read_bytes() == before
    check_published(env, files)
    # Withdrawing a minority is fine; --force publishes anything.
    write_source(env.source, dict(list(files.items())[:25]))
    assert env.run().removed == 15  # type: ignore[attr-defined]
    assert env.run(force=True, source_dir=env.source).removed == 0  # type: ignore[attr-defined]
    shutil.rmtree(env.source)
    env.source.mkdir()
    assert env.run(force=True).removed == 25  # type: ignore[attr-defined]
    check_published(env, {})


def test_shrink_guard_lets_small_repositories_change_freely(
    env: Env, corpus_objects: list[bytes]
) -> None:
    files = random_files(random.Random(13), corpus_objects, 9)
    write_source(env.source, files)
    env.run()
    shutil.rmtree(env.source)
    env.source.mkdir()
    assert env.run().removed == 9  # type: ignore[attr-defined]
