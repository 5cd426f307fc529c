"""`rpkirepo sync` against a real upstream (a testbed published by `rpkirepo publish`): byte-for-
byte RRDP copies, O(k) rsync trees, conditional fetches, the notification delay, layouts, the
lock, configuration, daemon mode and recovery."""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rpkirepo.errors import ConfigError, Reason, StorageError
from rpkirepo.fsutil import DirLock
from rpkirepo.httpget import HttpOptions
from rpkirepo.rrdp.parser import parse_notification
from rpkirepo.sync.mirror import sync_once
from rpkirepo.sync.upstream import HttpUpstream
from sync_support import (
    HTTPS_BASE,
    NOTIFY,
    UpstreamServer,
    mirror_options,
    served_snapshot,
    tree,
    tree_mtimes,
)


@pytest.fixture(scope="module")
def base_upstream(tmp_path_factory: pytest.TempPathFactory) -> UpstreamServer:
    return UpstreamServer(tmp_path_factory.mktemp("upstream")).create()


@pytest.fixture
def upstream(tmp_path: Path, base_upstream: UpstreamServer) -> UpstreamServer:
    """A private copy of the module's upstream (tests advance it)."""
    import shutil

    root = tmp_path / "upstream"
    shutil.copytree(base_upstream.root, root, symlinks=True)
    return UpstreamServer(root)


GZIP_MARK = 1234567


class _LoggingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[tuple[str, dict[str, str]]]
    #: Answer gzip-encoded when the client accepts it (as nginx with gzip on).
    gzip_static = False

    def do_GET(self) -> None:
        self.requests.append((self.path, dict(self.headers.items())))
        plain = Path(self.translate_path(self.path))
        if (
            self.gzip_static
            and "gzip" in self.headers.get("Accept-Encoding", "")
            and plain.is_file()
        ):
            # A gzip header of our own (mtime GZIP_MARK), so a test can tell it was kept.
            body = gzip.compress(plain.read_bytes(), mtime=GZIP_MARK)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def http_upstream(
    upstream: UpstreamServer,
) -> Iterator[tuple[str, list[tuple[str, dict[str, str]]]]]:
    """The upstream's RRDP directory behind a plain HTTP server that logs every request."""
    log: list[tuple[str, dict[str, str]]] = []
    handler = type("H", (_LoggingHandler,), {"requests": log})
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(handler, directory=str(upstream.rrdp))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", log
    finally:
        server.shutdown()
        server.server_close()


def _listing(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*") if p.is_file()}


def test_first_sync_copies_upstream_byte_for_byte(tmp_path: Path, upstream: UpstreamServer) -> None:
    opts = mirror_options(tmp_path / "m", upstream.rrdp)
    result = sync_once(opts)
    assert (result.outcome, result.reason) == ("snapshot", Reason.PLAN_NO_LOCAL_STATE)
    # Our notification names the same public files as upstream's, so the bytes are equal.
    assert (opts.rrdp_dir / "notification.xml").read_bytes() == (
        upstream.rrdp / "notification.xml"
    ).read_bytes()
    n = parse_notification((upstream.rrdp / "notification.xml").read_bytes())
    rel = n.snapshot.uri.uri[len(HTTPS_BASE) :]
    assert (opts.rrdp_dir / rel).read_bytes() == (upstream.rrdp / rel).read_bytes()
    assert served_snapshot(opts.rrdp_dir) == upstream.objects()
    assert tree(opts.rsync_dir) == upstream.objects()
    # RFC 9589 file times, the same the publisher gave; directories at the constant time.
    assert tree_mtimes(opts.rsync_dir) == upstream.mtimes()
    current = (opts.rsync_dir / "current").resolve()
    assert {int(d.stat().st_mtime) for d in current.rglob("*") if d.is_dir()} == {946684800}
    assert result.objects == len(upstream.objects())


def test_unchanged_upstream_writes_nothing(tmp_path: Path, upstream: UpstreamServer) -> None:
    opts = mirror_options(tmp_path / "m", upstream.rrdp)
    sync_once(opts)
    before = _listing(tmp_path / "m" / "rrdp")
    link = os.readlink(opts.rsync_dir / "current")
    result = sync_once(opts)
    assert result.outcome == "not-modified"
    assert _listing(tmp_path / "m" / "rrdp") == before
    assert os.readlink(opts.rsync_dir / "current") == link


def test_deltas_are_applied_and_trees_reused(tmp_path: Path, upstream: UpstreamServer) -> None:
    opts = mirror_options(tmp_path / "m", upstream.rrdp, cleanup_after=0.0)
    sync_once(opts)
    for steps in (2, 1, 1):
        upstream.advance(steps)
        result = sync_once(opts)
        assert (result.outcome, result.deltas_applied) == ("deltas", steps)
        assert result.added + result.modified + result.removed > 0
        assert tree(opts.rsync_dir) == upstream.objects()
        assert tree_mtimes(opts.rsync_dir) == upstream.mtimes()
        assert served_snapshot(opts.rrdp_dir) == upstream.objects()
        assert (opts.rrdp_dir / "notification.xml").read_bytes() == (
            upstream.rrdp / "notification.xml"
        ).read_bytes()
    # With no grace, superseded trees are reused (the ring) and old RRDP files are gone.
    assert len(list((opts.rsync_dir / "revisions").iterdir())) <= 2
    n = parse_notification((opts.rrdp_dir / "notification.xml").read_bytes())
    named = {n.snapshot.uri.uri[len(HTTPS_BASE) :]} | {
        d.uri.uri[len(HTTPS_BASE) :] for d in n.deltas
    }
    on_disk = {
        str(p.relative_to(opts.rrdp_dir))
        for p in opts.rrdp_dir.rglob("*.xml")
        if p.name != "notification.xml"
    }
    assert on_disk == named


def test_grace_keeps_old_files_and_trees(tmp_path: Path, upstream: UpstreamServer) -> None:
    opts = mirror_options(tmp_path / "m", upstream.rrdp)
    sync_once(opts)
    first_tree = (opts.rsync_dir / "current").resolve()
    n1 = parse_notification((opts.rrdp_dir / "notification.xml").read_bytes())
    upstream.advance()
    sync_once(opts)
    assert first_tree.is_dir(), "a superseded tree stays through the grace period"
    assert (opts.rrdp_dir / n1.snapshot.uri.uri[len(HTTPS_BASE) :]).exists()


def test_http_upstream_conditional_get_and_gzip(
    tmp_path: Path,
    upstream: UpstreamServer,
    http_upstream: tuple[str, list[tuple[str, dict[str, str]]]],
) -> None:
    base, log = http_upstream
    source = HttpUpstream(base, HttpOptions())
    opts = mirror_options(tmp_path / "m", source)
    assert sync_once(opts).outcome == "snapshot"
    assert tree(opts.rsync_dir) == upstream.objects()
    assert all(h.get("Accept-Encoding") == "gzip" for _p, h in log)
    log.clear()
    assert sync_once(opts).outcome == "not-modified"
    assert len(log) == 1, "an unchanged upstream costs one conditional request"
    assert log[0][1].get("If-Modified-Since")
    upstream.advance()
    log.clear()
    result = sync_once(opts)
    assert result.outcome == "deltas"
    paths = [p for p, _h in log]
    assert paths[0] == "/notification.xml"
    assert sum("delta" in p for p in paths) == 1
    assert sum("snapshot" in p for p in paths) == 1, "the new snapshot is copied, not parsed"
    assert tree(opts.rsync_dir) == upstream.objects()


def test_gzip_sent_by_upstream_becomes_our_gz_sibling(
    tmp_path: Path,
    upstream: UpstreamServer,
    http_upstream: tuple[str, list[tuple[str, dict[str, str]]]],
) -> None:
    """A server answering with Content-Encoding: gzip: its bytes are kept as our .gz sibling
    (no compression of our own), after its gzip trailer was checked against the hashed file."""
    base, _log = http_upstream
    _LoggingHandler.gzip_static = True
    try:
        opts = mirror_options(tmp_path / "m", HttpUpstream(base, HttpOptions()))
        sync_once(opts)
        upstream.advance()
        assert sync_once(opts).outcome == "deltas"
    finally:
        _LoggingHandler.gzip_static = False
    assert tree(opts.rsync_dir) == upstream.objects()
    served = [p for p in opts.rrdp_dir.rglob("*.xml") if p.name != "notification.xml"]
    assert served
    for xml in served:
        rel = xml.relative_to(opts.rrdp_dir)
        ours = xml.with_name(xml.name + ".gz").read_bytes()
        assert ours == gzip.compress((upstream.rrdp / rel).read_bytes(), mtime=GZIP_MARK), rel
        assert gzip.decompress(ours) == xml.read_bytes()


def test_notify_delay_puts_files_in_place_first(tmp_path: Path, upstream: UpstreamServer) -> None:
    seen: list[tuple[float, bool, int]] = []

    def sleep(seconds: float) -> None:
        n = parse_notification((opts.rrdp_dir / "notification.xml").read_bytes())
        new = parse_notification((upstream.rrdp / "notification.xml").read_bytes())
        rel = new.snapshot.uri.uri[len(HTTPS_BASE) :]
        seen.append((seconds, (opts.rrdp_dir / rel).exists(), n.serial))

    opts = mirror_options(tmp_path / "m", upstream.rrdp, rrdp_notify_delay=0.0)
    sync_once(opts)
    old_serial = parse_notification((opts.rrdp_dir / "notification.xml").read_bytes()).serial
    opts = mirror_options(tmp_path / "m", upstream.rrdp, rrdp_notify_delay=30.0, sleep=sleep)
    upstream.advance()
    sync_once(opts)
    assert seen == [(30.0, True, old_serial)]
    assert parse_notification((opts.rrdp_dir / "notification.xml").read_bytes()).serial == (
        old_serial + 1
    )


def test_rsync_disable_and_include_host(tmp_path: Path, upstream: UpstreamServer) -> None:
    opts = mirror_options(tmp_path / "a", upstream.rrdp, rsync_enabled=False)
    sync_once(opts)
    assert not (opts.rsync_dir / "current").exists()
    assert served_snapshot(opts.rrdp_dir) == upstream.objects()
    opts = mirror_options(tmp_path / "b", upstream.rrdp, rsync_include_host=True)
    sync_once(opts)
    assert tree(opts.rsync_dir) == {f"localhost/repo/{k}": v for k, v in upstream.objects().items()}
    # Switching the layout rebuilds the tree from the snapshot.
    opts = mirror_options(tmp_path / "b", upstream.rrdp, rsync_include_host=False)
    upstream.advance()
    result = sync_once(opts)
    assert result.outcome == "snapshot"
    assert tree(opts.rsync_dir) == upstream.objects()


def test_session_reset_upstream_takes_the_snapshot(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    import shutil

    opts = mirror_options(tmp_path / "m", upstream.rrdp)
    sync_once(opts)
    old = parse_notification((opts.rrdp_dir / "notification.xml").read_bytes())
    shutil.rmtree(upstream.root / "up" / "state")  # the publisher lost its state: new session
    upstream.advance()
    result = sync_once(opts)
    assert (result.outcome, result.reason) == ("snapshot", Reason.PLAN_NEW_SESSION)
    assert result.session_id != str(old.session_id)
    assert tree(opts.rsync_dir) == upstream.objects()
    assert served_snapshot(opts.rrdp_dir) == upstream.objects()
    # The old session's snapshot stays for its grace period.
    assert (opts.rrdp_dir / old.snapshot.uri.uri[len(HTTPS_BASE) :]).exists()


def test_lost_served_file_is_repaired(tmp_path: Path, upstream: UpstreamServer) -> None:
    opts = mirror_options(tmp_path / "m", upstream.rrdp)
    sync_once(opts)
    n = parse_notification((opts.rrdp_dir / "notification.xml").read_bytes())
    (opts.rrdp_dir / n.snapshot.uri.uri[len(HTTPS_BASE) :]).unlink()
    result = sync_once(opts)
    assert result.outcome == "snapshot"
    assert served_snapshot(opts.rrdp_dir) == upstream.objects()


def test_lock_and_foreign_state(tmp_path: Path, upstream: UpstreamServer) -> None:
    opts = mirror_options(tmp_path / "m", upstream.rrdp)
    opts.state_dir.mkdir(parents=True)
    with DirLock(opts.state_dir), pytest.raises(StorageError) as exc:
        sync_once(opts)
    assert exc.value.reason == Reason.STATE_LOCKED
    sync_once(opts)
    from dataclasses import replace

    from rpkirepo.uri import HttpsUri

    other = replace(opts, notification_uri=HttpsUri.parse("https://other.example/n.xml"))
    with pytest.raises(ConfigError):
        sync_once(other)


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "rpkirepo", *args], capture_output=True, text=True, timeout=120
    )
    if check and proc.returncode != 0:
        pytest.fail(f"exit {proc.returncode}\n{proc.stderr}\n{proc.stdout}")
    return proc


def test_cli_one_shot_status_and_lock_exit_code(tmp_path: Path, upstream: UpstreamServer) -> None:
    state = tmp_path / "m"
    args = [NOTIFY, "--source-uri-base", str(upstream.rrdp), "--state-dir", str(state)]
    metrics = tmp_path / "sync.prom"
    out = json.loads(_cli("sync", *args, "--json", "--metrics-file", str(metrics)).stdout)
    assert out["outcome"] == "snapshot" and out["reason"] == "no-local-state"
    prom = metrics.read_text()
    assert f'rpkirepo_sync_serial{{repository="{NOTIFY}"}} {out["serial"]}' in prom
    assert f'rpkirepo_sync_runs_total{{outcome="snapshot",repository="{NOTIFY}"}} 1' in prom
    assert tree(state / "rsync") == upstream.objects()
    status = json.loads(_cli("sync", *args, "--status", "--json").stdout)
    assert status["serial"] == str(out["serial"]) and status["objects"] == out["objects"]
    with DirLock(state):
        proc = _cli("sync", *args, check=False)
    assert proc.returncode == 3, proc.stderr
    proc = _cli(
        "sync", NOTIFY, "--state-dir", str(state), "--source-uri-base", "/nonexistent", check=False
    )
    assert proc.returncode == 2


def test_config_with_several_repositories(tmp_path: Path, base_upstream: UpstreamServer) -> None:
    other = UpstreamServer(tmp_path / "second", "https://rrdp2.example.net/rrdp/").create(
        cas=1, roas=2, seed=7
    )
    config = tmp_path / "rpkirepo.toml"
    config.write_text(
        f"""
[sync]
state_dir = "{tmp_path / "sync"}"
cleanup_after = 600

[[sync.repository]]
notification_uri = "{NOTIFY}"
source_uri_base = "{base_upstream.rrdp}"

[[sync.repository]]
notification_uri = "https://rrdp2.example.net/rrdp/notification.xml"
source_uri_base = "{other.rrdp}"
state_dir = "{tmp_path / "second-mirror"}"
"""
    )
    out = json.loads(_cli("--config", str(config), "sync", "--json").stdout)
    assert [r["outcome"] for r in out] == ["snapshot", "snapshot"]
    assert tree(tmp_path / "sync" / "rrdp.example.net" / "rsync") == base_upstream.objects()
    assert tree(tmp_path / "second-mirror" / "rsync") == other.objects()
    status = json.loads(_cli("--config", str(config), "sync", "--status", "--json").stdout)
    assert [s["repository"] for s in status] == [
        NOTIFY,
        "https://rrdp2.example.net/rrdp/notification.xml",
    ]
    config.write_text(config.read_text() + "\n[sync.repository.x]\n")
    assert _cli("--config", str(config), "sync", check=False).returncode != 0


def test_daemon_mode_serves_metrics_and_stops_on_sigterm(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "rpkirepo", "-q", "sync", NOTIFY,
            "--source-uri-base", str(upstream.rrdp), "--state-dir", str(tmp_path / "m"),
            "--interval", "0.3", "--metrics-listen", f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        body = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                    body = r.read().decode()
                if 'rpkirepo_sync_runs_total{outcome="not-modified"' in body:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        assert "rpkirepo_sync_serial{" in body, body
        assert 'outcome="snapshot"' in body and 'outcome="not-modified"' in body, body
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            assert r.read() == b"ok\n"
        upstream.advance()
        n = parse_notification((upstream.rrdp / "notification.xml").read_bytes())
        while time.monotonic() < deadline:
            mine = tmp_path / "m" / "rrdp" / "notification.xml"
            if parse_notification(mine.read_bytes()).serial == n.serial:
                break
            time.sleep(0.2)
        assert tree(tmp_path / "m" / "rsync") == upstream.objects()
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err


def test_gz_siblings_decode_to_the_files(tmp_path: Path, upstream: UpstreamServer) -> None:
    opts = mirror_options(tmp_path / "m", upstream.rrdp)
    sync_once(opts)
    for xml in opts.rrdp_dir.rglob("*.xml"):
        assert gzip.decompress(xml.with_name(xml.name + ".gz").read_bytes()) == xml.read_bytes()


def test_trees_of_an_old_session_are_never_brought_forward(
    tmp_path: Path, upstream: UpstreamServer
) -> None:
    """After a session reset, the tree that was current belongs to the old serial numbering:
    replaying the new session's change log onto it would build a wrong tree (found by the
    kill -9 test).  With no grace, every later run reuses some tree of the ring."""
    import shutil

    opts = mirror_options(tmp_path / "m", upstream.rrdp, cleanup_after=0.0)
    sync_once(opts)
    upstream.advance(2)
    sync_once(opts)
    shutil.rmtree(upstream.root / "up" / "state")
    upstream.advance()
    assert sync_once(opts).outcome == "snapshot"
    for _ in range(3):
        upstream.advance()
        assert sync_once(opts).outcome == "deltas"
        assert tree(opts.rsync_dir) == upstream.objects()


@pytest.mark.parametrize("damage", ["other-file", "broken-deflate", "none"])
def test_upstream_gz_sibling_is_linked_only_when_it_matches(
    tmp_path: Path, upstream: UpstreamServer, damage: str
) -> None:
    """With --source-link the files of a local upstream are hard-linked; a .gz sibling only
    when it decodes to the verified file: one of another file, or one whose deflate data is
    damaged under an intact trailer, is replaced by our own compression."""
    n = parse_notification((upstream.rrdp / "notification.xml").read_bytes())
    rel = n.snapshot.uri.uri[len(HTTPS_BASE) :]
    gz = upstream.rrdp / (rel + ".gz")
    data = gz.read_bytes()
    if damage == "other-file":
        data = gzip.compress(b"not the snapshot")
    elif damage == "broken-deflate":
        middle = len(data) // 2
        data = data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :]
    gz.unlink()
    gz.write_bytes(data)
    opts = mirror_options(tmp_path / "m", upstream.rrdp, link_local=True)
    sync_once(opts)
    mine = opts.rrdp_dir / rel
    assert mine.stat().st_ino == (upstream.rrdp / rel).stat().st_ino, "snapshot hard-linked"
    ours = opts.rrdp_dir / (rel + ".gz")
    assert gzip.decompress(ours.read_bytes()) == mine.read_bytes()
    assert (ours.stat().st_ino == gz.stat().st_ino) == (damage == "none")


def test_run_deadline_keeps_the_last_good_state(tmp_path: Path, upstream: UpstreamServer) -> None:
    """All files of a run together get ``sync_run_deadline`` ((c)31: many slow files)."""
    from rpkirepo.errors import RemoteProtocolError
    from rpkirepo.limits import DEFAULT_LIMITS

    opts = mirror_options(tmp_path / "m", upstream.rrdp)
    sync_once(opts)
    before = (opts.rrdp_dir / "notification.xml").read_bytes()
    upstream.advance()
    hurried = mirror_options(
        tmp_path / "m", upstream.rrdp, limits=DEFAULT_LIMITS.override({"sync_run_deadline": 0})
    )
    with pytest.raises(RemoteProtocolError) as exc:
        sync_once(hurried)
    assert (exc.value.reason, exc.value.context["limit"]) == (
        Reason.HTTP_TIMEOUT,
        "sync_run_deadline",
    )
    assert (opts.rrdp_dir / "notification.xml").read_bytes() == before
    assert sync_once(opts).outcome == "deltas"
    assert tree(opts.rsync_dir) == upstream.objects()


def test_snapshot_through_the_tree_helper(
    tmp_path: Path,
    upstream: UpstreamServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The snapshot path with the tree helper process (started here for any size): the same
    tree and RFC 9589 times as the publisher's, and an object without a usable time gets the
    sync time, logged with its path and reason."""
    import logging

    from rpkirepo.publish import rsync_tree

    spawned: list[object] = []
    popen = rsync_tree.subprocess.Popen

    def counting_popen(*args: Any, **kw: Any) -> Any:
        spawned.append(args[0])
        return popen(*args, **kw)

    monkeypatch.setattr(rsync_tree, "SPAWN_AFTER", 1)
    repo = upstream.testbed / "repository"
    some_dir = next(p.parent for p in sorted(repo.rglob("*.roa")))
    junk = some_dir / "junk.roa"
    junk.write_bytes(b"\x04\x82\x01\x00" + bytes(range(256)))  # no RPKI object: no time in it
    upstream.publish()
    rel = junk.relative_to(repo).as_posix()
    monkeypatch.setattr(rsync_tree.subprocess, "Popen", counting_popen)

    opts = mirror_options(tmp_path / "m", upstream.rrdp)
    before = int(time.time())
    with caplog.at_level(logging.INFO, logger="rpkirepo"):
        result = sync_once(opts)
    after = int(time.time()) + 1
    assert result.outcome == "snapshot"
    assert len(spawned) == 1
    assert tree(opts.rsync_dir) == upstream.objects()
    ours, theirs = tree_mtimes(opts.rsync_dir), upstream.mtimes()
    assert before <= ours.pop(rel) <= after
    theirs.pop(rel)
    assert ours == theirs
    assert any("no time in" in r.getMessage() and rel in r.getMessage() for r in caplog.records)
