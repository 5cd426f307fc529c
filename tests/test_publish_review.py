"""Review of `rpkirepo publish`: the corners of the ring of rsync trees, re-bucketing, new
sessions, delta trimming and the memory budget, each checked the way a relying party reads it.

Besides the checks of tests/test_publish.py, these tests keep the expected content of every
serial and check that every rsync revision tree still on disk holds exactly its serial's content
with constant directory mtimes (a tree clients may still be reading must never change).
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from rpkirepo.errors import InputError, Reason
from rpkirepo.publish import publish
from rpkirepo.rrdp.model import NotificationFile, PublishElement, WithdrawElement
from rpkirepo.rrdp.parser import parse_notification
from rpkirepo.uri import RsyncUri
from test_publish import (
    RSYNC_BASE,
    Env,
    check_published,
    check_tree,
    load_corpus_objects,
    local_path,
    make_env,
    random_files,
    read_rrdp_file,
    write_source,
)


@pytest.fixture
def corpus_objects(corpus_dir: Path) -> list[bytes]:
    return load_corpus_objects(corpus_dir)


@pytest.fixture
def env(tmp_path: Path) -> Env:
    return make_env(tmp_path)


def notification(env: Env) -> NotificationFile:
    return parse_notification(env.opts.rrdp_dir.joinpath("notification.xml").read_bytes())


def check_all_trees(env: Env, history: dict[int, dict[str, bytes]], prefix: str = "") -> int:
    """Every tree of the current session still on disk holds its serial's content exactly."""
    session = parse_notification(
        env.opts.rrdp_dir.joinpath("notification.xml").read_bytes()
    ).session_id.value
    checked = 0
    for tree in (env.opts.rsync_dir / "revisions").iterdir():
        head, _, serial = tree.name.rpartition("-")
        if head != session[:8]:
            continue
        expected = {prefix + k: v for k, v in history[int(serial)].items()}
        check_tree(tree, expected)
        checked += 1
    return checked


class Churn:
    """Random changes to the source, remembering the content of every serial."""

    def __init__(self, env: Env, objects: list[bytes], seed: int) -> None:
        self.env = env
        self.objects = objects
        self.rng = random.Random(seed)
        self.files: dict[str, bytes] = {}
        self.history: dict[int, dict[str, bytes]] = {}

    def mutate(self, grow: int = 10) -> None:
        rng, files, src = self.rng, self.files, self.env.source
        names = sorted(n for n in files if not n.startswith("flip/"))
        for name in rng.sample(names, k=min(len(names), rng.randrange(0, 8))):
            if rng.random() < 0.5:
                (src / name).unlink()
                del files[name]
            else:
                data = rng.choice(self.objects)
                if data == files[name]:
                    continue
                files[name] = data
                (src / name).write_bytes(data)
        new = random_files(
            rng, self.objects, rng.randrange(1, grow + 1), prefix=f"g{rng.randrange(1000)}/"
        )
        write_source(src, new)
        files.update(new)

    def publish(self, **opts: object) -> object:
        result = self.env.run(**opts)
        self.history[result.serial] = dict(self.files)  # type: ignore[attr-defined]
        return result


# --- a directory replaced by a file of the same name, and back, in reused trees -----------------


def test_file_and_directory_of_the_same_name_swap_in_reused_trees(
    env: Env, corpus_objects: list[bytes]
) -> None:
    """``x.cer`` a file, then a directory ``x.cer/`` holding ``x.cer/y.roa``, then a file again.
    With grace 0 every run after the second brings an old tree forward in place: the old name
    must be gone (file unlinked, directory emptied and removed) before the new one is created,
    both for this run's changes and for changes replayed from the change log."""
    churn = Churn(env, corpus_objects, 11)
    churn.files.update(random_files(churn.rng, corpus_objects, 12))
    churn.files["x.cer"] = corpus_objects[0]
    write_source(env.source, churn.files)
    churn.publish(grace=0)
    steps = [
        lambda: None,  # an unrelated change so that serial 1's tree is reused next
        lambda: ((env.source / "x.cer").unlink(), churn.files.pop("x.cer")),
        lambda: None,
        lambda: (
            shutil.rmtree(env.source / "x.cer"),
            [churn.files.pop(k) for k in list(churn.files) if k.startswith("x.cer/")],
        ),
        lambda: None,
        lambda: None,
    ]
    dir_content = {"x.cer/y.roa": corpus_objects[1], "x.cer/z/w.roa": corpus_objects[2]}
    for i, step in enumerate(steps):
        step()
        if i == 1:
            write_source(env.source, dir_content)
            churn.files.update(dir_content)
        if i == 3:
            write_source(env.source, {"x.cer": corpus_objects[3]})
            churn.files["x.cer"] = corpus_objects[3]
        churn.mutate(grow=3)
        env.clock.now += 10
        churn.publish(grace=0)
        check_published(env, churn.files)
        assert check_all_trees(env, churn.history) >= 1


# --- the published base directory exists even when it holds nothing -----------------------------


@pytest.mark.parametrize(
    ("include_host", "prefix"),
    [
        (False, "sub/dir/"),
        (True, "rpki.example.net/repo/sub/dir/"),
        (True, "rpki.example.net/repo/"),
    ],
)
def test_base_directory_survives_an_empty_repository(
    env: Env, corpus_objects: list[bytes], include_host: bool, prefix: str
) -> None:
    """rsync://host/repo/sub/dir/ must stay an (empty) directory when there is nothing to
    publish, at the first run and after every object was withdrawn: a missing directory makes
    rsync fail ("change_dir ... failed"), and a relying party that fails to fetch keeps using its
    cached copy of the withdrawn objects."""
    base = "rsync://rpki.example.net/repo/sub/dir/" if "sub" in prefix else RSYNC_BASE
    opts = {"rsync_base": RsyncUri(base), "rsync_include_host": include_host, "grace": 0}
    env.run(**opts)  # an empty source directory
    current = env.opts.rsync_dir / "current"
    assert (current / prefix).is_dir()
    check_tree(current, {})
    files = {"ca/a.roa": corpus_objects[0], "ca/deep/b.cer": corpus_objects[1]}
    for _ in range(3):  # withdraw everything, in a fresh tree and then in reused ones
        write_source(env.source, files)
        env.clock.now += 10
        env.run(**opts)
        check_tree(current, {prefix + k: v for k, v in files.items()})
        shutil.rmtree(env.source / "ca")
        env.clock.now += 10
        env.run(**opts)
        assert (current / prefix).is_dir()
        check_tree(current, {})


# --- a new session: the old files' grace starts when the new notification replaces the old -----


def test_new_session_after_failed_attempts_keeps_old_files_for_the_grace_period(
    env: Env, corpus_objects: list[bytes]
) -> None:
    """State lost, and the first runs of the new session fail (a bad source file).  The old
    notification, its snapshot and the old tree are served all that time; their grace period
    starts when the first successful run replaces them, not at the first failed attempt."""
    files = random_files(random.Random(21), corpus_objects, 10)
    write_source(env.source, files)
    env.run()
    n1 = notification(env)
    snap1 = local_path(env, n1.snapshot.uri.uri)
    tree1 = (env.opts.rsync_dir / "current").resolve()
    shutil.rmtree(env.opts.state_dir)
    (env.source / "bad.txt").write_bytes(b"x" * 300)
    for _ in range(3):
        env.clock.now += 3000
        with pytest.raises(InputError):
            env.run()
        # Still served, so still there.
        assert snap1.exists() and tree1.is_dir()
        assert notification(env) == n1
    (env.source / "bad.txt").unlink()
    env.clock.now += 60
    result = env.run()
    assert result.new_session_reason == Reason.STATE_MISSING  # type: ignore[attr-defined]
    check_published(env, files)
    # Replaced just now: a client that read the old notification a moment ago can still fetch.
    assert snap1.exists() and snap1.with_name("snapshot.xml.gz").exists() and tree1.is_dir()
    check_tree(tree1, files)
    env.clock.now += 3601
    write_source(env.source, {"later.roa": corpus_objects[0]})
    env.run()
    assert not snap1.exists() and not tree1.exists()


# --- a relying party following along --------------------------------------------------------------


class Follower:
    """A relying party that applies each new delta (RFC 8182 §3.4.2 rules) when it can, and
    checks that the result equals the snapshot; it re-reads the snapshot when it cannot."""

    def __init__(self, env: Env) -> None:
        self.env = env
        self.session = ""
        self.serial = 0
        self.objects: dict[str, bytes] = {}
        self.deltas_applied = 0

    def snapshot(self, n: NotificationFile) -> dict[str, bytes]:
        header, elements = read_rrdp_file(local_path(self.env, n.snapshot.uri.uri))
        assert (header.session_id, header.serial) == (n.session_id, n.serial)
        return {e.uri.uri: e.data for e in elements if isinstance(e, PublishElement)}

    def follow(self) -> None:
        n = notification(self.env)
        snap = self.snapshot(n)
        wanted = [d for d in n.deltas if d.serial > self.serial]
        if n.session_id.value != self.session or not wanted or wanted[0].serial != self.serial + 1:
            self.session, self.serial, self.objects = n.session_id.value, n.serial, snap
            return
        for d in sorted(wanted, key=lambda d: d.serial):
            path = local_path(self.env, d.uri.uri)
            assert hashlib.sha256(path.read_bytes()).digest() == d.hash.digest
            header, elements = read_rrdp_file(path)
            assert (header.session_id, header.serial) == (n.session_id, d.serial)
            for e in elements:
                if isinstance(e, WithdrawElement):
                    assert hashlib.sha256(self.objects.pop(e.uri.uri)).digest() == e.hash.digest
                elif e.hash is not None:
                    assert hashlib.sha256(self.objects[e.uri.uri]).digest() == e.hash.digest
                    self.objects[e.uri.uri] = e.data
                else:
                    assert e.uri.uri not in self.objects
                    self.objects[e.uri.uri] = e.data
            self.deltas_applied += 1
        self.serial = n.serial
        assert self.objects == snap


# --- an error in the middle of a run ------------------------------------------------------------


def test_source_changing_during_the_run_fails_cleanly_and_the_next_run_recovers(
    env: Env, corpus_objects: list[bytes]
) -> None:
    """memory_budget 0: changed objects are read again while writing; one changed since the scan
    raises InputError in the middle of new_serial (after a ring tree was taken out of service).
    Nothing served changes, and the next run publishes the newer content."""
    churn = Churn(env, corpus_objects, 31)
    follower = Follower(env)
    churn.mutate(grow=30)
    churn.publish(grace=0, memory_budget=0)
    follower.follow()
    long_ = sorted(corpus_objects, key=len)
    for round_no in range(4):
        churn.mutate(grow=5)
        names = sorted(churn.files)[:3]
        for name in names:
            data = long_[round_no] if churn.files[name] != long_[round_no] else long_[-1]
            churn.files[name] = data
            (env.source / name).write_bytes(data)
        before = env.opts.rrdp_dir.joinpath("notification.xml").read_bytes()
        current_before = os.readlink(env.opts.rsync_dir / "current")
        env.clock.now += 10

        def meddle(
            stage: str, done: int, total: int, names: list[str] = names, k: int = round_no
        ) -> None:
            if stage == "objects" and done == 0 and total > 1:
                for name in names:  # different sizes: the scan's stat signature no longer fits
                    data = long_[-1 - k] + b"\0" * (k + 1)
                    churn.files[name] = data
                    (env.source / name).write_bytes(data)

        opts = replace(env.opts, grace=0, memory_budget=0)
        with pytest.raises(InputError) as info:
            publish(opts, meddle)
        assert info.value.reason == Reason.SOURCE_CHANGED_DURING_READ
        assert env.opts.rrdp_dir.joinpath("notification.xml").read_bytes() == before
        assert os.readlink(env.opts.rsync_dir / "current") == current_before
        check_published(env, churn.history[max(churn.history)])
        # The next run recovers (removes the leftovers) and publishes the newest content.
        env.clock.now += 10
        churn.publish(grace=0, memory_budget=0)
        check_published(env, churn.files)
        check_all_trees(env, churn.history)
        follower.follow()
    assert follower.deltas_applied == 4
    leftovers = [p for p in (env.opts.rsync_dir / "revisions").iterdir() if p.name[0] == "."]
    assert leftovers == []


# --- memory budget and re-bucketing -------------------------------------------------------------


@pytest.mark.parametrize("budget", [0, 3000])
def test_small_memory_budget_through_bucket_splits(
    env: Env, corpus_objects: list[bytes], budget: int
) -> None:
    """Objects read back from the tree (budget exceeded) while the repository grows past several
    bucket splits (64, 128, 256 objects at 0, 1, 2 bits ...), with modifications and removals."""
    churn = Churn(env, corpus_objects, 41)
    follower = Follower(env)
    churn.mutate(grow=10)
    churn.publish(grace=0, memory_budget=budget)
    follower.follow()
    bits_seen = {"0"}  # the first run: under 16 objects
    for _ in range(10):
        churn.mutate(grow=150)
        env.clock.now += 10
        churn.publish(grace=0, memory_budget=budget)
        check_published(env, churn.files)
        check_all_trees(env, churn.history)
        follower.follow()
        db = sqlite3.connect(env.opts.state_dir / "publish.db")
        bits_seen.add(db.execute("SELECT value FROM meta WHERE key='bucket_bits'").fetchone()[0])
        buckets = dict(db.execute("SELECT path, bucket FROM objects"))
        db.close()
        assert set(buckets) == set(churn.files)
    assert len(bits_seen) >= 3
    assert follower.deltas_applied == 10


# --- the ring of rsync trees ---------------------------------------------------------------------


@pytest.mark.parametrize(("grace", "max_revisions"), [(25, 200), (3600, 3), (3600, 1), (0, 200)])
def test_ring_reuse_keeps_every_live_tree_intact(
    env: Env, corpus_objects: list[bytes], grace: int, max_revisions: int
) -> None:
    """Runs 10 s apart; trees are reused after their grace (25 s: after 3 runs, replaying 3
    serials of the change log) or early once ``rsync_max_revisions`` trees exist.  Objects move
    between modified, removed and re-added across consecutive runs.  Every tree on disk keeps
    exactly its serial's content; the newest retired tree (the one clients most likely still
    read) is never the one reused."""
    churn = Churn(env, corpus_objects, 51)
    follower = Follower(env)
    flip = {"flip/a.roa": corpus_objects[0], "flip/b.cer": corpus_objects[1]}
    churn.files.update(flip)
    churn.mutate(grow=20)
    write_source(env.source, churn.files)
    opts = {"grace": grace, "rsync_max_revisions": max_revisions}
    churn.publish(**opts)
    for i in range(14):
        churn.mutate(grow=6)
        # flip/a.roa: removed, re-added identical, modified, removed, ...
        match i % 3:
            case 0:
                (env.source / "flip/a.roa").unlink()
                churn.files.pop("flip/a.roa")
            case 1:
                write_source(env.source, {"flip/a.roa": corpus_objects[0]})
                churn.files["flip/a.roa"] = corpus_objects[0]
            case _:
                write_source(env.source, {"flip/a.roa": corpus_objects[2]})
                churn.files["flip/a.roa"] = corpus_objects[2]
        previous = (env.opts.rsync_dir / "current").resolve()
        env.clock.now += 10
        churn.publish(**opts)
        check_published(env, churn.files)
        follower.follow()
        assert check_all_trees(env, churn.history) >= 1
        if grace > 0 and i > 0:
            assert previous.is_dir()  # the tree just replaced stays for its clients
        trees = [p for p in (env.opts.rsync_dir / "revisions").iterdir()]
        if max_revisions < 200:
            assert len(trees) <= max(max_revisions, 2)
        elif grace == 25:
            assert len(trees) <= 5


# --- delta trimming ------------------------------------------------------------------------------


def test_a_delta_bigger_than_its_snapshot_is_not_listed(
    env: Env, corpus_objects: list[bytes]
) -> None:
    """Withdrawing nearly everything makes a delta bigger than the (nearly empty) snapshot: it
    is not listed (RFC 8182 §3.3.2), the list stays contiguous afterwards, and clients take the
    snapshot."""
    small = min(corpus_objects, key=len)
    files = {f"ca/o{i}.roa": corpus_objects[i] for i in range(40)}
    write_source(env.source, files)
    env.run()
    follower = Follower(env)
    follower.follow()
    env.clock.now += 10
    write_source(env.source, {"ca/o0.roa": small})
    files["ca/o0.roa"] = small
    env.run()
    assert [d.serial for d in notification(env).deltas] == [2]
    follower.follow()
    shutil.rmtree(env.source / "ca")
    write_source(env.source, {"keep.roa": small})
    env.clock.now += 10
    env.run(force=True)  # withdraws 40 of 40: past the shrink guard, on purpose
    n = check_published(env, {"keep.roa": small})
    assert n.serial == 3 and n.deltas == ()
    # The unlisted delta was written, then retired at once: gone after the grace period.
    unlisted = list(env.opts.rrdp_dir.joinpath(n.session_id.value, "3").rglob("delta.xml"))
    assert len(unlisted) == 1
    follower.follow()
    for serial in (4, 5):
        write_source(env.source, {f"new{serial}.roa": small})
        env.clock.now += 10
        env.run()
        n = notification(env)
        assert sorted(d.serial for d in n.deltas) == list(range(4, serial + 1))
        follower.follow()
    assert follower.deltas_applied == 3
    env.clock.now += 3601
    write_source(env.source, {"new6.roa": small})
    env.run()
    assert not unlisted[0].exists()
    check_published(env, {"keep.roa": small, **{f"new{s}.roa": small for s in (4, 5, 6)}})


# --- several paths, one content -----------------------------------------------------------------


def test_same_content_at_several_paths_and_hard_linked_sources(
    env: Env, corpus_objects: list[bytes]
) -> None:
    """Identical objects at several paths, some of them hard links to one source inode; an
    in-place rewrite changes all the linked paths at once; one is removed, then re-added."""
    obj, other = corpus_objects[3], corpus_objects[4]
    files = {f"d{i}/same.roa": obj for i in range(4)} | {"x/base.cer": corpus_objects[5]}
    write_source(env.source, files)
    for i in range(3):
        os.link(env.source / "d0/same.roa", env.source / f"h{i}.roa")
        files[f"h{i}.roa"] = obj
    history = {env.run(grace=0).serial: dict(files)}  # type: ignore[attr-defined]
    follower = Follower(env)
    follower.follow()
    steps = [
        lambda: (env.source / "d0/same.roa").write_bytes(other),  # in place: h0..h2 too
        lambda: (env.source / "h1.roa").unlink(),
        lambda: os.link(env.source / "h0.roa", env.source / "h1.roa"),
        lambda: None,
    ]
    for step in steps:
        step()
        files = {
            p.relative_to(env.source).as_posix(): p.read_bytes()
            for p in env.source.rglob("*")
            if p.is_file()
        }
        files["x/more.roa"] = corpus_objects[len(history) + 6]
        write_source(env.source, {"x/more.roa": files["x/more.roa"]})
        env.clock.now += 10
        history[env.run(grace=0).serial] = dict(files)  # type: ignore[attr-defined]
        check_published(env, files)
        check_all_trees(env, history)
        follower.follow()
    assert follower.deltas_applied == len(steps)


# --- lost state with old trees and files --------------------------------------------------------


def test_new_session_with_old_trees_and_files_present(
    env: Env, corpus_objects: list[bytes]
) -> None:
    """Lost state while several trees and RRDP files of the old session exist: the new session
    never reuses or changes an old tree, removes them all after the grace period, and its own
    ring works as usual."""
    churn = Churn(env, corpus_objects, 61)
    churn.mutate(grow=20)
    churn.publish(grace=60)
    for _ in range(3):
        churn.mutate()
        env.clock.now += 10
        churn.publish(grace=60)
    old_session = notification(env).session_id.value
    old_trees = {
        p: churn.history[int(p.name.rpartition("-")[2])]
        for p in (env.opts.rsync_dir / "revisions").iterdir()
    }
    assert len(old_trees) == 4
    shutil.rmtree(env.opts.state_dir)
    churn.history.clear()
    for i in range(10):
        churn.mutate()
        env.clock.now += 10
        result = churn.publish(grace=60)
        if i == 0:
            assert result.new_session_reason == Reason.STATE_MISSING  # type: ignore[attr-defined]
        check_published(env, churn.files)
        check_all_trees(env, churn.history)
        for tree, content in old_trees.items():
            if i < 5:  # within 60 s of the new session's first run
                check_tree(tree, content)
    assert not any(tree.exists() for tree in old_trees)
    assert not env.opts.rrdp_dir.joinpath(old_session).exists()


# --- withdrawing everything, then publishing again ---------------------------------------------


def test_withdraw_everything_then_publish_again(env: Env, corpus_objects: list[bytes]) -> None:
    files = random_files(random.Random(71), corpus_objects, 30)
    write_source(env.source, files)
    env.run(grace=0)
    follower = Follower(env)
    follower.follow()
    for _ in range(2):
        for name in files:
            (env.source / name).unlink()
        env.clock.now += 10
        result = env.run(grace=0, force=True)  # past the shrink guard, on purpose
        assert result.removed == 30 and result.objects == 0  # type: ignore[attr-defined]
        check_published(env, {})
        follower.follow()
        env.clock.now += 10
        assert not env.run(grace=0).changed  # type: ignore[attr-defined]
        write_source(env.source, files)
        env.clock.now += 10
        result = env.run(grace=0)
        assert result.added == 30  # type: ignore[attr-defined]
        n = check_published(env, files)
        # Re-added after a withdraw: published without a hash (nothing to replace).
        _header, elements = read_rrdp_file(local_path(env, n.deltas[-1].uri.uri))
        assert all(isinstance(e, PublishElement) and e.hash is None for e in elements)
        follower.follow()


# --- made visible late: a crash after the commit point -------------------------------------------


def test_outputs_made_visible_late_keep_what_was_served_for_the_grace_period(
    env: Env, corpus_objects: list[bytes]
) -> None:
    """A run commits, then dies before it swaps ``current`` and writes the notification (kill,
    full disk ...), and the next run comes long after the grace period.  Until that run's
    recover step, clients were still given the old notification and tree: those must stay for
    the grace period counted from then, not vanish in the same run."""
    files = random_files(random.Random(81), corpus_objects, 10)
    write_source(env.source, files)
    env.run()
    old_notification = env.opts.rrdp_dir.joinpath("notification.xml").read_bytes()
    old_snapshot = local_path(env, parse_notification(old_notification).snapshot.uri.uri)
    old_link = os.readlink(env.opts.rsync_dir / "current")
    old_tree = env.opts.rsync_dir / old_link
    write_source(env.source, {"new.roa": corpus_objects[0]})
    env.clock.now += 60
    env.run()
    # As if the second run had died right after its commit point.
    env.opts.rrdp_dir.joinpath("notification.xml").write_bytes(old_notification)
    (env.opts.rsync_dir / "current").unlink()
    (env.opts.rsync_dir / "current").symlink_to(old_link)
    env.clock.now += 3 * 3600
    assert not env.run().changed  # type: ignore[attr-defined]
    check_published(env, files | {"new.roa": corpus_objects[0]})
    assert old_snapshot.exists() and old_snapshot.with_name("snapshot.xml.gz").exists()
    check_tree(old_tree, files)
    env.clock.now += 3601
    env.run()
    assert not old_snapshot.exists()


def test_stale_notification_gz_is_repaired(env: Env, corpus_objects: list[bytes]) -> None:
    """Recovery compares the .gz sibling too: nginx's gzip_static would serve a stale one."""
    import gzip

    write_source(env.opts.source_dir, random_files(random.Random(3), corpus_objects, 30))
    publish(env.opts)
    note = env.opts.rrdp_dir / "notification.xml"
    gz = env.opts.rrdp_dir / "notification.xml.gz"
    gz.write_bytes(gzip.compress(b"<notification/>"))
    publish(env.opts)
    assert gzip.decompress(gz.read_bytes()) == note.read_bytes()


def test_expired_tree_of_an_old_session_is_collected(env: Env, corpus_objects: list[bytes]) -> None:
    """A tree of an earlier session is never reused, so once its grace has passed it goes, even
    when it is the only expired tree."""
    rng = random.Random(4)
    write_source(env.opts.source_dir, random_files(rng, corpus_objects, 30))
    publish(env.opts)
    old_tree = (env.opts.rsync_dir / "current").resolve()
    shutil.rmtree(env.opts.state_dir)  # lost state: a new session; the old tree enters grace
    publish(env.opts)
    assert old_tree.is_dir()
    env.clock.now += env.opts.grace + 1
    publish(env.opts)  # nothing changed: only garbage collection
    assert not old_tree.exists()
