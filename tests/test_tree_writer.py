"""The tree writers: TreeWriter in this process, BackgroundTree through its helper process."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from rpkirepo.errors import Reason, StorageError
from rpkirepo.limits import DEFAULT_LIMITS
from rpkirepo.objects import mtime_of
from rpkirepo.publish.rsync_tree import DIR_MTIME, BackgroundTree, MtimeRule, TreeWriter

FILES = {f"ca{i // 25}/obj{i}.roa": bytes([i % 251]) * (100 + i) for i in range(700)}


def _tree_of(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns // 10**9)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("spawn_after", [1, 10_000], ids=["helper", "in-process"])
def test_writes_and_links_like_tree_writer(tmp_path: Path, spawn_after: int) -> None:
    """The same operations give the same tree, mtimes and bookkeeping whether the helper runs
    (spawn_after=1) or the operations stay below the threshold (performed at close)."""
    ref = TreeWriter.new_tree(tmp_path, "pub/", None)
    for i, (rel, data) in enumerate(FILES.items()):
        ref.write(rel, data, 1_600_000_000 + i)
    ref.finish()

    bg_tree = TreeWriter.new_tree(tmp_path, "pub/", ref.root)
    writer = BackgroundTree(bg_tree, spawn_after=spawn_after)
    for i, (rel, data) in enumerate(FILES.items()):
        if i % 3 == 0:
            writer.link(rel)  # same inode as the reference tree's
        else:
            writer.write(rel, data, 1_600_000_000 + i)
    writer.close()
    bg_tree.finish()

    assert _tree_of(bg_tree.root) == _tree_of(ref.root)
    assert bg_tree.touched_dirs == ref.touched_dirs
    assert bg_tree.files_written == len(FILES) - len(range(0, len(FILES), 3))
    first = "pub/ca0/obj0.roa"
    assert os.stat(bg_tree.root / first).st_ino == os.stat(ref.root / first).st_ino
    assert os.stat(bg_tree.root / "pub/ca0").st_mtime == DIR_MTIME


def test_reused_tree_replaces_files(tmp_path: Path) -> None:
    """A tree that is not fresh: a file written over an existing name is replaced (a new inode),
    never written into, so trees sharing the old inode keep their content."""
    tree = TreeWriter.new_tree(tmp_path, "", None)
    tree.write("a/x.roa", b"old" * 100, 1)
    tree.finish()
    other = tmp_path / "other"
    os.mkdir(other)
    os.link(tree.root / "a/x.roa", other / "x.roa")
    reused = TreeWriter(tree.root, "", None)
    writer = BackgroundTree(reused, spawn_after=1)
    writer.write("a/x.roa", b"new" * 100, 2)
    writer.close()
    assert (tree.root / "a/x.roa").read_bytes() == b"new" * 100
    assert (other / "x.roa").read_bytes() == b"old" * 100


def test_helper_error_is_a_storage_error(tmp_path: Path) -> None:
    """A create that fails in the helper (the name exists in a fresh tree) surfaces as
    STORAGE_IO naming the path, at the latest from close()."""
    tree = TreeWriter.new_tree(tmp_path, "", None)
    os.makedirs(tree.root / "d")
    (tree.root / "d/clash.roa").write_bytes(b"x")
    writer = BackgroundTree(tree, spawn_after=1)
    with pytest.raises(StorageError) as info:
        writer.write("d/clash.roa", b"y" * 64, 1)
        for i in range(5000):  # enough to fill the pipe once the helper has stopped
            writer.write(f"d/more{i}.roa", b"z" * 1024, 1)
        writer.close()
    assert info.value.reason is Reason.STORAGE_IO
    assert "d/clash.roa" in str(info.value.context.get("path"))


def test_link_without_source_is_refused(tmp_path: Path) -> None:
    writer = BackgroundTree(TreeWriter.new_tree(tmp_path, "", None))
    with pytest.raises(StorageError) as info:
        writer.link("a.roa")
    assert info.value.reason is Reason.STORAGE_UNEXPECTED
    writer.abort()


def _running(tmp_path: Path) -> tuple[TreeWriter, BackgroundTree, subprocess.Popen[bytes]]:
    """A fresh tree whose writer has started its helper with one file queued."""
    tree = TreeWriter.new_tree(tmp_path, "", None)
    writer = BackgroundTree(tree, spawn_after=1)
    writer.write("a/b.roa", b"x" * 100, 1)
    assert writer._proc is not None
    return tree, writer, writer._proc


def test_abort_stops_the_helper(tmp_path: Path) -> None:
    _, writer, proc = _running(tmp_path)
    writer.abort()
    assert proc.returncode is not None
    with pytest.raises(StorageError):
        writer.write("a/c.roa", b"x", 1)


def test_helper_dies_with_its_parent(tmp_path: Path) -> None:
    """A kill -9 of a run must not leave the helper writing into a tree the next run removes:
    it exits on end of input and (Linux) is killed with its parent."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the "run": starts a helper, reports its pid, then waits to be killed
        try:
            os.close(r)
            _, _, proc = _running(tmp_path)
            os.write(w, str(proc.pid).encode())
            os.close(w)
            signal.pause()
        finally:
            os._exit(0)
    os.close(w)
    helper = int(os.read(r, 64))
    os.close(r)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    for _ in range(200):
        try:
            os.kill(helper, 0)
        except ProcessLookupError:
            break
        with open(f"/proc/{helper}/stat") as f:
            if f.read().split(") ")[1].startswith("Z"):
                break  # a zombie of init's: gone for our purposes
        time.sleep(0.02)
    else:
        pytest.fail("the helper outlived its parent")


def _corpus_objects(corpus_dir: Path) -> dict[str, bytes]:
    """Real objects of every extension the mtime rule knows, and one without a usable time."""
    out: dict[str, bytes] = {}
    for ext in ("cer", "crl", "mft", "roa", "asa", "gbr"):
        for i, p in enumerate(sorted((corpus_dir / "objects").rglob(f"*.{ext}"))[:40]):
            out[f"ca{i % 7}/{p.stem}-{i}.{ext}"] = p.read_bytes()
    out["ca0/garbage.roa"] = b"\x30\x03\x02\x01\x00" * 20
    return out


@pytest.mark.parametrize("spawn_after", [1, 10_000], ids=["helper", "in-process"])
def test_write_timed_applies_rfc9589(tmp_path: Path, corpus_dir: Path, spawn_after: int) -> None:
    """write_timed gives each file the time mtime_of finds (the helper runs the same rule), and
    ``now`` with the reason for an object without one; times come back in call order."""
    objects = _corpus_objects(corpus_dir)
    assert len(objects) > 100
    rule = MtimeRule(1_700_000_000, DEFAULT_LIMITS)
    tree = TreeWriter.new_tree(tmp_path, "", None)
    writer = BackgroundTree(tree, rule=rule, spawn_after=spawn_after)
    order: list[str] = []
    for rel, data in objects.items():
        assert writer.write_timed(rel, data) == len(order)
        order.append(rel)
    writer.close()
    assert (writer._proc is not None) == (spawn_after == 1)
    assert len(writer.times) == len(order)
    fallbacks = dict(writer.fallbacks)
    for i, rel in enumerate(order):
        t = mtime_of(objects[rel], rel)
        expected = t.seconds if t.seconds >= 0 else rule.now
        assert writer.times[i] == expected, rel
        assert os.stat(tree.root / rel).st_mtime == expected
        assert (tree.root / rel).read_bytes() == objects[rel]
        assert (i in fallbacks) == (t.seconds < 0), rel
    assert fallbacks[order.index("ca0/garbage.roa")]
    assert tree.files_written == len(order)


def test_write_timed_needs_a_rule(tmp_path: Path) -> None:
    writer = BackgroundTree(TreeWriter.new_tree(tmp_path, "", None))
    with pytest.raises(StorageError) as info:
        writer.write_timed("a.roa", b"x")
    assert info.value.reason is Reason.STORAGE_UNEXPECTED
    writer.abort()


def test_helper_ignores_ctrl_c(tmp_path: Path) -> None:
    """SIGINT from a terminal reaches the helper too; the parent decides what happens, so the
    helper neither dies nor prints a traceback of its own."""
    tree, writer, proc = _running(tmp_path)
    writer._flush()
    # The helper installs its handler before it reads anything: once the first file exists,
    # the handler is in place.
    for _ in range(500):
        if (tree.root / "a/b.roa").exists():
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGINT)
    writer.write("a/c.roa", b"y" * 100, 2)
    writer.close()
    assert (tree.root / "a/c.roa").read_bytes() == b"y" * 100


def test_frames_larger_than_the_read_buffer(tmp_path: Path) -> None:
    """Objects larger than the helper's read buffer (it grows), between small ones, and frames
    split across reads arrive whole and in order."""
    tree = TreeWriter.new_tree(tmp_path, "", None)
    writer = BackgroundTree(tree, spawn_after=1)
    files = {f"d{i % 3}/f{i}.roa": bytes([i]) * (100 + 37 * i) for i in range(200)}
    files["big/a.roa"] = os.urandom(5 << 20)
    files["big/b.roa"] = os.urandom(9 << 20)
    files["d0/last.roa"] = b"after the large ones"
    for i, (rel, data) in enumerate(files.items()):
        writer.write(rel, data, 1_600_000_000 + i)
    writer.close()
    assert _tree_of(tree.root) == {
        rel: (data, 1_600_000_000 + i) for i, (rel, data) in enumerate(files.items())
    }
    assert tree.files_written == len(files)


def test_helper_makes_missing_directories_in_a_reused_tree(tmp_path: Path) -> None:
    """A tree that is not fresh knows none of its directories: the helper makes those missing
    (with their ancestors) and uses those that exist, for writes and links alike."""
    source = TreeWriter.new_tree(tmp_path, "", None)
    source.write("x/y/z/linked.roa", b"l" * 100, 5)
    source.finish()
    tree = TreeWriter.new_tree(tmp_path, "", None)
    tree.write("a/old.roa", b"o" * 100, 1)
    reused = TreeWriter(tree.root, "", source.root)
    writer = BackgroundTree(reused, spawn_after=1)
    writer.write("a/new.roa", b"n" * 100, 2)  # existing directory
    writer.write("b/c/d/new.roa", b"m" * 100, 3)  # three missing
    writer.link("x/y/z/linked.roa")
    writer.close()
    reused.finish()
    assert _tree_of(tree.root) == {
        "a/old.roa": (b"o" * 100, 1),
        "a/new.roa": (b"n" * 100, 2),
        "b/c/d/new.roa": (b"m" * 100, 3),
        "x/y/z/linked.roa": (b"l" * 100, 5),
    }
    assert {"", "a", "b", "b/c", "b/c/d", "x", "x/y", "x/y/z"} <= reused.touched_dirs
    assert os.stat(tree.root / "b/c").st_mtime == DIR_MTIME


def test_helper_directory_error_names_the_object(tmp_path: Path) -> None:
    """A directory that cannot be made (a file holds its name) is STORAGE_IO with the system's
    reason and the object's path in the tree."""
    tree = TreeWriter.new_tree(tmp_path, "", None)
    (tree.root / "f").write_bytes(b"a file")
    writer = BackgroundTree(tree, spawn_after=1)
    writer.write("f/x.roa", b"x" * 100, 1)
    with pytest.raises(StorageError) as info:
        writer.close()
    assert info.value.reason is Reason.STORAGE_IO
    assert info.value.detail == os.strerror(errno.EEXIST)
    assert info.value.context == {"path": "f/x.roa"}


def test_helper_create_error_is_tree_writers(tmp_path: Path) -> None:
    """A failed create answers what TreeWriter raises in-process: reason, detail, context."""
    errors = []
    for spawn_after in (1, 10_000):
        tree = TreeWriter.new_tree(tmp_path, "", None)
        os.makedirs(tree.root / "d")
        (tree.root / "d/clash.roa").write_bytes(b"x")
        writer = BackgroundTree(tree, spawn_after=spawn_after)
        writer.write("d/clash.roa", b"y" * 64, 1)
        with pytest.raises(StorageError) as info:
            writer.close()
        path = str(info.value.context["path"])
        assert path == os.path.join(tree.root, "d/clash.roa")
        errors.append((info.value.reason, info.value.detail, path.replace(str(tree.root), "")))
    assert errors[0] == errors[1]


def test_write_timed_helper_agrees_with_in_process(tmp_path: Path, corpus_dir: Path) -> None:
    """The helper's times and fallback reasons are exactly MtimeRule's, as applied in-process."""
    objects = _corpus_objects(corpus_dir)
    rule = MtimeRule(1_700_000_000, DEFAULT_LIMITS)
    results = []
    for spawn_after in (1, 10_000):
        writer = BackgroundTree(TreeWriter.new_tree(tmp_path, "", None), rule=rule,
                                spawn_after=spawn_after)  # fmt: skip
        for rel, data in objects.items():
            writer.write_timed(rel, data)
        writer.close()
        results.append((list(writer.times), writer.fallbacks))
    assert results[0] == results[1]
    assert results[0][1]  # (garbage.roa)
    assert [rule(data, rel) for rel, data in objects.items()] == [
        (t, dict(results[0][1]).get(i)) for i, t in enumerate(results[0][0])
    ]
