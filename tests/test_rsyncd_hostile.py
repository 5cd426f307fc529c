"""Hostile clients against the live daemon (rsync-wire.md §9): it logs, answers or closes, keeps
its memory bounded, frees the slot, and goes on serving well-behaved clients.

Protocol-level refusals (every malformed field) are unit-tested on the session in
test_rsyncd_session.py; here are the ones that need sockets, clocks and a global view: floods,
trickles, clients that stop reading, connection caps, and unservable revisions.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import require_peer
from peers import RpkirepoRsyncd, rpkirepo_rsyncd
from rpkirepo.limits import DEFAULT_LIMITS, Limits

FILES = {"a.cer": b"a" * 2000, "sub/b.roa": b"b" * 3000, "big.crl": os.urandom(4_000_000)}


def make_module(root: Path, name: str = "r1", files: dict[str, bytes] = FILES) -> Path:
    rev = root / "revisions" / name
    for rel, data in files.items():
        (rev / rel).parent.mkdir(parents=True, exist_ok=True)
        (rev / rel).write_bytes(data)
    tmp = root / "current.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(f"revisions/{name}", tmp)
    os.replace(tmp, root / "current")
    return root


@pytest.fixture
def module(tmp_path: Path) -> Path:
    return make_module(tmp_path / "mod")


@pytest.fixture
def fast_limits() -> Limits:
    return DEFAULT_LIMITS.override(
        {"rsync_handshake_timeout": 1, "rsync_idle_timeout": 1, "rsync_session_timeout": 5}
    )


@pytest.fixture
def daemon(module: Path, fast_limits: Limits) -> Iterator[RpkirepoRsyncd]:
    with rpkirepo_rsyncd({"repo": module}, fast_limits) as d:
        yield d


def connect(d: RpkirepoRsyncd) -> socket.socket:
    s = socket.create_connection((d.host, d.port), timeout=10)
    return s


def read_all(s: socket.socket, limit: float = 10.0) -> bytes:
    s.settimeout(limit)
    out = bytearray()
    try:
        while chunk := s.recv(65536):
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return bytes(out)


def counters(d: RpkirepoRsyncd):  # type: ignore[no-untyped-def]
    return d.daemon.counters  # type: ignore[attr-defined]


def wait_until(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def well_behaved_sync(d: RpkirepoRsyncd, dest: Path) -> None:
    require_peer("rsync")
    subprocess.run(
        ["rsync", "-rt", d.url("repo/"), f"{dest}/"], check=True, capture_output=True, timeout=60
    )
    assert (dest / "sub" / "b.roa").read_bytes() == FILES["sub/b.roa"]


def test_apnic_argument_flood_is_cut_off_with_bounded_memory(
    daemon: RpkirepoRsyncd, tmp_path: Path
) -> None:
    chunk = b"it's a good idea to limit arrays\x00" * 1000
    sent: list[int] = []

    def flood() -> None:
        s = connect(daemon)
        total = 0
        try:
            s.sendall(b"@RSYNCD: 31.0\nrepo\n")
            while total < 50_000_000:
                s.sendall(chunk)
                total += len(chunk)
        except OSError:
            pass
        finally:
            sent.append(total)
            s.close()

    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        started = time.monotonic()
        threads = [threading.Thread(target=flood) for _ in range(30)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        elapsed = time.monotonic() - started
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert len(sent) == 30 and all(n < 50_000_000 for n in sent)
    assert elapsed < 10
    assert peak < 16 * 1024 * 1024, f"peak {peak} bytes during the flood"
    wait_until(lambda: counters(daemon).active == 0)
    assert counters(daemon).refusals["rsync-argument-refused"] == 30
    well_behaved_sync(daemon, tmp_path / "after")


@pytest.mark.parametrize(
    ("data", "expect"),
    [
        (b"@RSYNCD: 31.0\n" + b"x" * 10_000, b"@ERROR: module line too long"),
        (b"@RSYNCD: " + b"9" * 5000, b"@ERROR: greeting too long"),
        (b"@RSYNCD: 29\n", b"@ERROR: protocol version 29 not supported"),
        (b"@RSYNCD: 31.0\n../etc\n", b"@ERROR: Unknown module"),
        (b"@RSYNCD: 31.0\n#early_input=5\n", b"@ERROR: Unknown module"),
    ],
)
def test_bad_greetings_get_an_error_line(
    daemon: RpkirepoRsyncd, data: bytes, expect: bytes
) -> None:
    s = connect(daemon)
    s.sendall(data)
    out = read_all(s)
    s.close()
    assert out.startswith(b"@RSYNCD: 31.0\n") and expect in out


def test_trickled_greeting_hits_the_handshake_deadline(daemon: RpkirepoRsyncd) -> None:
    s = connect(daemon)
    started = time.monotonic()
    closed = False
    try:
        for b in b"@RSYNCD: 31.0\nrepo\n--server\x00--sender\x00":
            s.sendall(bytes([b]))
            time.sleep(0.1)
    except OSError:
        closed = True
    out = read_all(s)
    s.close()
    assert closed or out.endswith(b"\n") or out
    assert time.monotonic() - started < 5
    wait_until(lambda: counters(daemon).refusals["rsync-handshake-timeout"] == 1)


def test_silent_client_hits_the_idle_deadline(daemon: RpkirepoRsyncd) -> None:
    s = connect(daemon)
    out = read_all(s, 5)
    s.close()
    assert out.startswith(b"@RSYNCD: 31.0\n@ERROR")
    wait_until(lambda: counters(daemon).active == 0)
    reasons = counters(daemon).refusals
    assert reasons["rsync-idle-timeout"] + reasons["rsync-handshake-timeout"] == 1


def test_client_that_stops_reading_frees_its_slot(daemon: RpkirepoRsyncd) -> None:
    # A real client handshake for big.crl, then never read the 4 MB answer.
    s = connect(daemon)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    args = [b"--server", b"--sender", b"-tre.iLsfxCIvu", b".", b"repo/big.crl"]
    s.sendall(b"@RSYNCD: 31.0\nrepo\n" + b"".join(a + b"\x00" for a in args) + b"\x00")
    s.sendall(b"\x0axxh128 md5")  # the checksums it negotiates (``v`` in its info)
    s.sendall(bytes([4, 0, 0, 7]) + b"\x00\x00\x00\x00")  # empty filter list
    s.sendall(bytes([21, 0, 0, 7]) + b"\x01\x00\x80" + b"\x00" * 16 + b"\x00\x00")  # ndx 0
    try:
        wait_until(lambda: counters(daemon).connections == 1)  # accepted
        wait_until(lambda: counters(daemon).active == 0, timeout=10)
        assert counters(daemon).refusals["rsync-idle-timeout"] == 1, counters(daemon)
    finally:
        s.close()


def test_connection_caps(module: Path, tmp_path: Path) -> None:
    limits = DEFAULT_LIMITS.override(
        {"rsync_max_connections_per_address": 2, "rsync_max_connections": 3}
    )
    with rpkirepo_rsyncd({"repo": module}, limits) as d:
        held = [connect(d) for _ in range(2)]
        for s in held:
            assert s.recv(100).startswith(b"@RSYNCD: 31.0\n")
        extra = connect(d)
        out = read_all(extra)
        extra.close()
        assert b"@ERROR: max connections" in out
        assert counters(d).refusals["rsync-too-many-connections-per-address"] == 1
        for s in held:
            s.close()
        wait_until(lambda: counters(d).active == 0)
        well_behaved_sync(d, tmp_path / "after")


def test_eof_mid_session_and_client_abort_are_logged(daemon: RpkirepoRsyncd) -> None:
    s = connect(daemon)
    s.sendall(b"@RSYNCD: 31.0\nrepo\n--server\x00--sender\x00-r\x00.\x00repo/\x00\x00")
    s.sendall(bytes([4, 0, 0, 7]) + b"\x00\x00\x00\x00")
    time.sleep(0.2)
    s.close()
    s = connect(daemon)
    s.sendall(b"@RSYNCD: 31.0\nrepo\n--server\x00--sender\x00-r\x00.\x00repo/\x00\x00")
    s.sendall(bytes([0, 0, 0, 7 + 86]))
    read_all(s)
    s.close()
    wait_until(lambda: counters(daemon).active == 0)
    reasons = counters(daemon).refusals
    wait_until(lambda: reasons["rsync-unexpected-eof"] == 1 and reasons["rsync-client-abort"] == 1)


@pytest.mark.parametrize("bad", ["symlink", "control-character", "backslash", "fifo"])
def test_unservable_revision_is_refused_and_the_old_one_kept(tmp_path: Path, bad: str) -> None:
    root = make_module(tmp_path / "mod")
    with rpkirepo_rsyncd({"repo": root}) as d:
        rev = root / "revisions" / "r2"
        make_module(root, "r2", {"a.cer": b"new" * 100})
        if bad == "symlink":
            os.symlink("/etc/passwd", rev / "passwd.cer")
        elif bad == "control-character":
            (rev / "bad\x01name.cer").write_bytes(b"x")
        elif bad == "backslash":
            (rev / "bad\\name.cer").write_bytes(b"x")
        else:
            os.mkfifo(rev / "fifo.cer")
        d.call(d.daemon.refresh)  # type: ignore[attr-defined]
        watcher = d.daemon.watchers["repo"]  # type: ignore[attr-defined]
        assert watcher.revision is not None and watcher.revision.name == "r1"
        assert watcher.failed_target == rev
        well_behaved_sync(d, tmp_path / "dest")  # still the old revision, complete


def test_module_without_loadable_revision_answers_an_error(tmp_path: Path) -> None:
    root = tmp_path / "mod"
    (root / "revisions" / "r1").mkdir(parents=True)
    os.symlink("/etc", root / "revisions" / "r1" / "etc")
    os.symlink("revisions/r1", root / "current")
    with rpkirepo_rsyncd({"repo": root}) as d:
        s = connect(d)
        s.sendall(b"@RSYNCD: 31.0\nrepo\n")
        out = read_all(s)
        s.close()
        assert b"@ERROR: module 'repo' is not available" in out


# --- the CLI glue (rpkirepo.rsync.command) --------------------------------------------------


def test_command_parses_its_flags_and_refuses_bad_ones() -> None:
    import argparse

    from rpkirepo.config import Config
    from rpkirepo.errors import ConfigError
    from rpkirepo.rsync import command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    ns = parser.parse_args(["--rsync-listen", "[::1]:8873", "--module", "repo=/srv/rsync"])
    assert [command.parse_listen(x) for x in ns.rsync_listen] == [("::1", 8873)]
    assert command.parse_module(ns.module[0]) == ("repo", Path("/srv/rsync"))
    for bad in ("8873", "host:", "h:99999"):
        with pytest.raises(ConfigError):
            command.parse_listen(bad)
    for bad in ("repo", "../x=/d", "=/d", "r="):
        with pytest.raises(ConfigError):
            command.parse_module(bad)
    with pytest.raises(ConfigError):
        command.run(parser.parse_args([]), Config({}, None))
    missing = parser.parse_args(["--rsync-listen", "127.0.0.1:0", "--module", "r=/nonexistent"])
    with pytest.raises(ConfigError):
        command.run(missing, Config({}, None))


def test_command_serves_in_a_child_process(module: Path, tmp_path: Path) -> None:
    import sys

    require_peer("rsync")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    code = (
        "import argparse, sys\n"
        "from rpkirepo.config import Config\n"
        "from rpkirepo.rsync import command\n"
        "p = argparse.ArgumentParser(); command.add_arguments(p)\n"
        "sys.exit(command.run(p.parse_args(sys.argv[1:]), Config({}, None)))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "--rsync-listen", f"127.0.0.1:{port}",
         "--module", f"repo={module}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        dest = tmp_path / "dest"
        subprocess.run(
            ["rsync", "-rt", f"rsync://127.0.0.1:{port}/repo/", f"{dest}/"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        assert (dest / "big.crl").read_bytes() == FILES["big.crl"]
    finally:
        proc.terminate()
        rc = proc.wait(10)
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        proc.stderr.close()
    assert rc == 0, err  # SIGTERM is a clean shutdown


def test_metrics_render_counters_and_reasons(daemon: RpkirepoRsyncd, tmp_path: Path) -> None:
    from rpkirepo.metrics import render

    well_behaved_sync(daemon, tmp_path / "dest")
    s = connect(daemon)
    s.sendall(b"@RSYNCD: 31.0\nnosuch\n")
    read_all(s)
    s.close()
    wait_until(lambda: counters(daemon).active == 0)
    text = render(daemon.daemon.metrics())  # type: ignore[attr-defined]
    assert "rpkirepo_rsyncd_files_sent_total 3" in text
    assert 'rpkirepo_rsyncd_refusals_total{reason="rsync-unknown-module"} 1' in text
    assert "rpkirepo_rsyncd_sessions_total 1" in text
    assert 'rpkirepo_rsyncd_revision_loads_total{module="repo"} 1' in text


def test_a_slow_list_build_runs_beside_other_sessions_and_meets_the_deadlines(
    daemon: RpkirepoRsyncd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list that is not built yet is built in a worker thread: while one takes 3 s, a
    client asking for the list built at load is served, and the slow session is cut off by
    its handshake deadline (1 s here: the list is part of the handshake), not left waiting."""
    require_peer("rsync")
    from rpkirepo.rsync import Session

    build = Session.build_list

    def slow(self: Session):  # type: ignore[no-untyped-def]
        time.sleep(3)
        return build(self)

    monkeypatch.setattr(Session, "build_list", slow)
    slow_client = subprocess.Popen(
        ["rsync", "-rt", "--exclude=*.crl", daemon.url("repo/"), f"{tmp_path / 'slow'}/"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: counters(daemon).connections == 1)
        started = time.monotonic()
        fast = subprocess.run(
            ["rsync", "-rt", daemon.url("repo/"), f"{tmp_path / 'fast'}/"],
            capture_output=True, timeout=30, check=False,
        )  # fmt: skip
        assert fast.returncode == 0, fast.stderr
        assert time.monotonic() - started < 3  # not behind the slow build
        assert slow_client.wait(30) != 0
    finally:
        slow_client.kill()
        slow_client.wait()
    wait_until(lambda: counters(daemon).refusals["rsync-handshake-timeout"] == 1)
