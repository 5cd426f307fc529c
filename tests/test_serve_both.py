"""`rpkirepo serve` with both servers: RRDP over HTTP and the rsync daemon, from one command.

A repository published by `rpkirepo publish` is served by one `rpkirepo serve --listen ...
--rsync-listen ... --module repo=RSYNC_DIR` (the real CLI in a child process); the real rsync
client copies the module and the tree equals the source, an HTTP client gets the notification,
and SIGTERM stops both servers.  The `[serve]` table can give the rsync flags too.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import require_peer
from rpkirepo.publish import PublishOptions, publish
from rpkirepo.testbed import TestbedOptions, generate
from rpkirepo.uri import HttpsUri, RsyncUri

RSYNC_BASE = "rsync://localhost/repo/"
HTTPS_BASE = "https://rrdp.example.net/rrdp/"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, Path, Path]:
    tb = generate(TestbedOptions(tmp_path / "tb", rsync_base=RSYNC_BASE, cas=2, roas_per_ca=2))
    out = tmp_path / "out"
    publish(
        PublishOptions(
            source_dir=tb.repository,
            rsync_base=RsyncUri.parse(RSYNC_BASE),
            https_base=HttpsUri.parse(HTTPS_BASE),
            rrdp_dir=out / "rrdp",
            rsync_dir=out / "rsync",
            state_dir=out / "state",
        )
    )
    return tb.repository, out / "rrdp", out / "rsync"


def _wait_http(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail("rpkirepo serve did not answer /healthz")


@pytest.mark.parametrize("from_config", [False, True], ids=["flags", "config"])
def test_http_and_rsync_from_one_command(
    tmp_path: Path, published: tuple[Path, Path, Path], from_config: bool
) -> None:
    rsync = require_peer("rsync")
    source, rrdp, rsync_dir = published
    http_port, rsync_port = _free_port(), _free_port()
    argv = [sys.executable, "-m", "rpkirepo"]
    if from_config:
        config = tmp_path / "rpkirepo.toml"
        config.write_text(
            f'[serve]\nrrdp_dir = "{rrdp}"\nlisten = ["127.0.0.1:{http_port}"]\n'
            f'rsync_listen = ["127.0.0.1:{rsync_port}"]\nmodules = {{ repo = "{rsync_dir}" }}\n'
        )
        argv += ["--config", str(config), "serve"]
    else:
        argv += [
            "serve", "--rrdp-dir", str(rrdp), "--listen", f"127.0.0.1:{http_port}",
            "--rsync-listen", f"127.0.0.1:{rsync_port}", "--module", f"repo={rsync_dir}",
        ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_http(http_port, proc)
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=5)
        conn.request("GET", "/rrdp/notification.xml")
        resp = conn.getresponse()
        assert resp.status == 200
        assert resp.read() == (rrdp / "notification.xml").read_bytes()
        conn.close()
        dest = tmp_path / "copy"
        deadline = time.monotonic() + 20
        while True:
            done = subprocess.run(
                [rsync, "-rt", f"rsync://127.0.0.1:{rsync_port}/repo/", f"{dest}/"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # the daemon child may still be binding its port
        assert done.returncode == 0, done.stderr
        assert _files(dest) == _files(source)
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err.decode()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", rsync_port), timeout=2).close()
