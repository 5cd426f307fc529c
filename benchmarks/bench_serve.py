"""`rpkirepo serve` against nginx on the same files, one worker each, in the same run, with wrk.

Setup (all in a scratch directory, all on loopback): an RRDP directory like `rpkirepo publish`
writes (notification + ``.gz``, a snapshot of --snapshot-mb with ``.gz``, 20 deltas), an ECDSA
P-256 certificate, nginx 1 worker (``sendfile on``, ``gzip_static on``, access log off, the
cache headers of docs/serving.md) and ``rpkirepo serve`` 1 worker (no access log) - each on a
plain and a TLS port.  All servers are started first and stay up; each of --repeat rounds then
measures them one after the other, so that every server sees the same drift of a shared
machine's load, and each figure's best round is kept (all rounds' values are in ``*_runs``):

* ``keepalive_rps``: wrk, 1 thread, 50 keep-alive connections, GET notification.xml (identity);
  ``keepalive_cpu_us_per_req``: the server's CPU (user + system, /proc) per request in that run;
* ``tls_new_conn_per_s``: wrk over TLS with ``Connection: close``, GET notification.xml: one
  handshake per request.  wrk keeps its ``SSL`` object across reconnects (``SSL_shutdown`` +
  ``SSL_clear``), so it offers the session it was given (TLS 1.3 ticket) and both servers, with
  tickets on by default, resume it: a PSK handshake with a fresh X25519 exchange, no certificate
  signature.  ``tls_cpu_us_per_conn``: the server's CPU per connection;
  ``ssl_floor_us_per_conn`` (a reference, best of the rounds, measured before each round): the
  CPU the stdlib ``ssl`` module alone spends on the server side of such a connection, in memory
  with no sockets or event loop (:func:`ssl_floor`): what any server built on it pays at least;
* ``idle_10k_rss_mb``: 10,000 plain keep-alive connections each make one request and then stay
  idle; the server's RSS (nginx: master + worker) is read from /proc while they are held, and
  ``rps_with_10k_idle`` is wrk's keep-alive rate on other connections meanwhile (last round);
* ``snapshot_mb_per_s`` / ``snapshot_tls_mb_per_s``: wrk, 2 connections, GET of the whole
  snapshot (identity), body MB/s; ``snapshot_rss_mb``: the server's RSS after it.

The machine has 2 cores: wrk (1 thread) takes one, the server the other.  Each wrk run lasts
--seconds; ``load_average`` is the 1-minute load after each server's round.  Needs wrk (Debian
package) and nginx; exits 2 if either is missing.

    .venv/bin/python benchmarks/bench_serve.py                # a table
    .venv/bin/python benchmarks/bench_serve.py --json         # one JSON object (make bench)
    .venv/bin/python benchmarks/bench_serve.py --only keepalive,tls --loops uvloop --repeat 5
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import gzip
import hashlib
import importlib.util
import json
import os
import platform
import pwd
import re
import resource
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

SESSION = "3d9e4c1a-7f52-4b8e-9a61-0c2f5d8e7b14"
BASE = "https://rrdp.example.net/rrdp/"
MIB = 1024 * 1024
MEASUREMENTS = ("keepalive", "tls", "snapshot", "idle")
RATIO_KEYS = (
    "keepalive_rps",
    "tls_new_conn_per_s",
    "snapshot_mb_per_s",
    "snapshot_tls_mb_per_s",
    "idle_10k_rss_mb",
    "rps_with_10k_idle",
    "keepalive_cpu_us_per_req",
    "tls_cpu_us_per_conn",
)


Runner = Callable[..., contextlib.AbstractContextManager[dict[str, list[int]]]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_rrdp(root: Path, snapshot_mb: int) -> dict[str, str]:
    """An RRDP directory in publish's layout; returns URL paths by role."""
    root.mkdir(parents=True)
    rnd = os.urandom
    serial = 20
    line = (
        b'<publish uri="rsync://rpki.example.net/repo/ca/%08d.roa">'
        + b"MIIGxQYJKoZIhvcNAQcCoIIGtjCCBrICAQMxDTALBglghkgBZQMEAgEwggEp" * 20
        + b"</publish>\n"
    )
    snap_rel = f"{SESSION}/{serial}/{rnd(8).hex()}/snapshot.xml"
    path = root / snap_rel
    path.parent.mkdir(parents=True)
    h = hashlib.sha256()
    target = snapshot_mb * MIB
    with open(path, "wb") as f, gzip.open(str(path) + ".gz", "wb", compresslevel=1) as g:
        written, i = 0, 0
        while written < target:
            chunk = b"".join(line % (i + k) for k in range(1000))
            i += 1000
            f.write(chunk)
            g.write(chunk)
            h.update(chunk)
            written += len(chunk)
    deltas = []
    for s in range(1, serial + 1):
        rel = f"{SESSION}/{s}/{rnd(8).hex()}/delta.xml"
        data = b"<delta>" + rnd(2000).hex().encode() + b"</delta>\n"
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        (root / (rel + ".gz")).write_bytes(gzip.compress(data))
        deltas.append(
            f'  <delta serial="{s}" uri="{BASE}{rel}" hash="{hashlib.sha256(data).hexdigest()}"/>\n'
        )
    note = (
        f'<notification xmlns="http://www.ripe.net/rpki/rrdp" version="1" session_id="{SESSION}" '
        f'serial="{serial}">\n  <snapshot uri="{BASE}{snap_rel}" hash="{h.hexdigest()}"/>\n'
        + "".join(reversed(deltas))
        + "</notification>\n"
    ).encode()
    (root / "notification.xml.gz").write_bytes(gzip.compress(note))
    (root / "notification.xml").write_bytes(note)
    for dirpath, _, files in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o644)
    return {"notification": "/rrdp/notification.xml", "snapshot": "/rrdp/" + snap_rel}


def make_cert(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    c, k = directory / "cert.pem", directory / "key.pem"
    c.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return c, k


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening")


@contextlib.contextmanager
def nginx(
    work: Path, rrdp: Path, cert: Path, key: Path, plain: int, tls: int
) -> Iterator[dict[str, list[int]]]:
    work.mkdir()
    (work / "tmp").mkdir()
    user = ""
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        user = "user nobody nogroup;"
        os.chown(work / "tmp", nobody.pw_uid, nobody.pw_gid)
    conf = work / "nginx.conf"
    conf.write_text(f"""
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 40000;
{user}
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  client_body_temp_path {work}/tmp/body;
  proxy_temp_path {work}/tmp/proxy;
  fastcgi_temp_path {work}/tmp/fastcgi;
  uwsgi_temp_path {work}/tmp/uwsgi;
  scgi_temp_path {work}/tmp/scgi;
  types {{ application/xml xml; }}
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  gzip_static on;
  gzip_vary on;
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  server_tokens off;
  server {{
    listen 127.0.0.1:{plain} backlog=4096;
    listen 127.0.0.1:{tls} ssl backlog=4096;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    location = /rrdp/notification.xml {{
      alias {rrdp}/notification.xml;
      add_header Cache-Control "public, max-age=60";
    }}
    location /rrdp/ {{
      alias {rrdp}/;
      add_header Cache-Control "public, max-age=86400, immutable";
    }}
    location / {{ return 404; }}
  }}
}}
""")
    proc = subprocess.Popen(
        ["nginx", "-p", f"{work}/", "-c", str(conf), "-e", str(work / "error.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        wait_port(plain, proc)
        wait_port(tls, proc)
        time.sleep(0.3)
        pids = [proc.pid, *children(proc.pid)]
        yield {"plain": pids, "tls": pids}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


@contextlib.contextmanager
def rpkirepo(
    work: Path, rrdp: Path, cert: Path, key: Path, plain: int, tls: int, loop: str = "asyncio"
) -> Iterator[dict[str, list[int]]]:
    work.mkdir()
    cfg = work / "rpkirepo.toml"
    cfg.write_text(
        "[limits]\nserve_max_connections = 30000\nserve_max_connections_per_address = 30000\n"
        "serve_idle_timeout = 120\n"
    )
    procs = []
    for port, extra in ((plain, []), (tls, ["--tls-cert", str(cert), "--tls-key", str(key)])):
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rpkirepo",
                    "-q",
                    "--config",
                    str(cfg),
                    "serve",
                    "--rrdp-dir",
                    str(rrdp),
                    "--listen",
                    f"127.0.0.1:{port}",
                    "--event-loop",
                    loop,
                    *extra,
                ],
                stdout=subprocess.DEVNULL,
                stderr=open(work / f"serve-{port}.log", "wb"),  # noqa: SIM115
                start_new_session=True,
            )
        )
    try:
        wait_port(plain, procs[0])
        wait_port(tls, procs[1])
        # one process per port; RSS figures are the plain-port process's
        yield {"plain": [procs[0].pid], "tls": [procs[1].pid]}
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of ``pids`` so far (from /proc, clock ticks)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


REQUEST = b"GET /notification.xml HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def ssl_floor(cert: Path, key: Path, n: int = 1500) -> float:
    """Reference: the CPU the stdlib ``ssl`` module alone spends on the server side of one
    connection as wrk makes it (a resumed TLS 1.3 handshake, one request, one ~2 KB answer,
    close_notify both ways), in memory: no sockets, no event loop, no HTTP.  The server context
    is the one ``rpkirepo serve`` builds.  Only the server's calls are timed (this thread's CPU
    time); the client runs in the same thread, untimed.  Any Python server built on the stdlib
    ``ssl`` module spends at least this per connection."""
    from rpkirepo.serve._server import _tls_context

    server = _tls_context(cert, key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    answer = b"HTTP/1.1 200 OK\r\n" + b"x" * 300 + b"\r\n\r\n" + b"y" * 1700
    session: ssl.SSLSession | None = None
    spent = 0.0
    reused = 0
    clock = time.thread_time
    for i in range(n + 1):
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        c = client.wrap_bio(c_in, c_out, server_hostname="localhost", session=session)
        t = clock()
        s = server.wrap_bio(s_in, s_out, server_side=True)
        took = clock() - t
        c_done = s_done = False
        while not (c_done and s_done):
            if not c_done:
                with contextlib.suppress(ssl.SSLWantReadError):
                    c.do_handshake()
                    c_done = True
            s_in.write(c_out.read())
            t = clock()
            if not s_done:
                with contextlib.suppress(ssl.SSLWantReadError):
                    s.do_handshake()
                    s_done = True
            flight = s_out.read()
            took += clock() - t
            c_in.write(flight)
        c.write(REQUEST)
        s_in.write(c_out.read())
        t = clock()
        request = s.read(65536)
        s.write(answer)
        with contextlib.suppress(ssl.SSLWantReadError):
            s.unwrap()
        flight = s_out.read()
        took += clock() - t
        c_in.write(flight)
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            while c.read(65536):
                pass
        with contextlib.suppress(ssl.SSLWantReadError):
            c.unwrap()
        s_in.write(c_out.read())
        t = clock()
        with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLZeroReturnError):
            s.unwrap()
        took += clock() - t
        if request != REQUEST:
            raise RuntimeError("ssl floor: the request did not arrive whole")
        if i == 0:
            session = c.session  # the ticket wrk would offer from now on
            continue
        spent += took
        reused += s.session_reused
    if reused != n:
        raise RuntimeError(f"ssl floor: only {reused} of {n} handshakes resumed")
    return round(spent / n * 1e6, 1)


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            text = Path(f"/proc/{pid}/status").read_text()
            m = re.search(r"VmRSS:\s+(\d+) kB", text)
            if m:
                total += int(m.group(1))
    return round(total / 1024, 1)


def wrk(url: str, seconds: int, conns: int, *headers: str) -> dict[str, Any]:
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--timeout", "10s"]
    for h in headers:
        argv += ["-H", h]
    out = subprocess.run([*argv, url], capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    tr = re.search(r"Transfer/sec:\s+([\d.]+)([KMG]?B)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if rps is None or tr is None:
        raise RuntimeError(f"wrk output not understood:\n{out}")
    scale = {"B": 1 / MIB, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}[tr.group(2)]
    return {
        "rps": float(rps.group(1)),
        "mb_per_s": round(float(tr.group(1)) * scale, 1),
        "errors": errors.group(1) if errors else "",
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
    }


def hold_idle(port: int, n: int, path: str) -> list[socket.socket]:
    """n keep-alive connections that each made one request and read its answer."""
    socks: list[socket.socket] = []
    sel = selectors.DefaultSelector()
    req = f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(req)
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        socks.append(s)
        if len(socks) % 500 == 0:  # drain answers as we go
            for key, _ in sel.select(0):
                with contextlib.suppress(BlockingIOError):
                    key.fileobj.recv(65536)  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ready = sel.select(0.2)
        if not ready:
            break
        for key, _ in ready:
            with contextlib.suppress(BlockingIOError, ConnectionResetError):
                key.fileobj.recv(65536)  # type: ignore[union-attr]
    sel.close()
    alive = 0
    for s in socks:
        try:
            alive += s.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    if alive < n:
        raise RuntimeError(f"only {alive} of {n} idle connections survived")
    return socks


def timed_wrk(pids: list[int], url: str, seconds: int, conns: int, *headers: str) -> dict[str, Any]:
    """One wrk run, with the server's CPU per request and the load average after it."""
    cpu0 = cpu_seconds(pids)
    w = wrk(url, seconds, conns, *headers)
    cpu = cpu_seconds(pids) - cpu0
    total = w["rps"] * seconds
    w["cpu_us_per_req"] = round(cpu / total * 1e6, 1) if total else 0.0
    w["load"] = loadavg()
    return w


#: Each figure (the best of the rounds is kept) with the figures taken from the same wrk run.
FIGURES = {
    "keepalive_rps": ("keepalive_errors", "keepalive_cpu_us_per_req", "keepalive_load"),
    "tls_new_conn_per_s": ("tls_errors", "tls_cpu_us_per_conn", "tls_load"),
    "snapshot_mb_per_s": ("snapshot_rss_mb",),
    "snapshot_tls_mb_per_s": (),
    "rps_with_10k_idle": ("idle_10k_rss_mb", "rss_before_idle_mb"),
}


def measure(
    name: str,
    procs: dict[str, list[int]],
    plain: int,
    tls: int,
    urls: dict[str, str],
    seconds: int,
    idle: int,
    only: set[str],
) -> dict[str, Any]:
    """One round of the figures in ``only`` for one server."""
    note = urls["notification"]
    snap = urls["snapshot"]
    pids, tls_pids = procs["plain"], procs["tls"]
    r: dict[str, Any] = {}
    if "keepalive" in only:
        print(f"  {name}: keep-alive ...", file=sys.stderr, flush=True)
        w = timed_wrk(pids, f"http://127.0.0.1:{plain}{note}", seconds, 50)
        r["keepalive_rps"], r["keepalive_errors"] = w["rps"], w["errors"] or w["non2xx"]
        r["keepalive_cpu_us_per_req"], r["keepalive_load"] = w["cpu_us_per_req"], w["load"]
    if "tls" in only:
        print(f"  {name}: new TLS connections ...", file=sys.stderr, flush=True)
        w = timed_wrk(tls_pids, f"https://127.0.0.1:{tls}{note}", seconds, 50, "Connection: close")
        r["tls_new_conn_per_s"], r["tls_errors"] = w["rps"], w["errors"] or w["non2xx"]
        r["tls_cpu_us_per_conn"], r["tls_load"] = w["cpu_us_per_req"], w["load"]
    if "snapshot" in only:
        print(f"  {name}: snapshot ...", file=sys.stderr, flush=True)
        w = timed_wrk(pids, f"http://127.0.0.1:{plain}{snap}", seconds, 2)
        r["snapshot_mb_per_s"] = w["mb_per_s"]
        r["snapshot_rss_mb"] = rss_mb(pids)
        w = timed_wrk(tls_pids, f"https://127.0.0.1:{tls}{snap}", seconds, 2)
        r["snapshot_tls_mb_per_s"] = w["mb_per_s"]
    if "idle" in only:
        print(f"  {name}: {idle} idle connections ...", file=sys.stderr, flush=True)
        r["rss_before_idle_mb"] = rss_mb(pids)
        socks = hold_idle(plain, idle, note)
        try:
            r["idle_10k_rss_mb"] = rss_mb(pids)
            w = wrk(f"http://127.0.0.1:{plain}{note}", max(3, seconds // 2), 20)
            r["rps_with_10k_idle"] = w["rps"]
        finally:
            for s in socks:
                s.close()
    return r


def best_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per figure, the round where it was best (and that run's companions); all values too."""
    out: dict[str, Any] = {}
    for key, companions in FIGURES.items():
        runs = [r for r in rounds if key in r]
        if not runs:
            continue
        best = max(runs, key=lambda r: float(r[key]))
        out[key] = best[key]
        out[key + "_runs"] = [r[key] for r in runs]
        for c in companions:
            out[c] = best[c]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=8, help="length of each wrk run")
    ap.add_argument("--snapshot-mb", type=int, default=64)
    ap.add_argument("--idle", type=int, default=10_000)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--only",
        default=",".join(MEASUREMENTS),
        help="comma-separated subset of: " + ",".join(MEASUREMENTS),
    )
    ap.add_argument(
        "--loops",
        default="asyncio,uvloop",
        help="event loops to run rpkirepo serve on (asyncio, uvloop)",
    )
    ap.add_argument(
        "--repeat", type=int, default=1, help="rounds over all servers; each figure's best kept"
    )
    args = ap.parse_args()
    only = set(args.only.split(","))
    if not only <= set(MEASUREMENTS):
        ap.error(f"--only: not among {','.join(MEASUREMENTS)}")
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} is not installed (apt-get install {tool})", file=sys.stderr)
            return 2
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.idle + 1000:
        print(f"RLIMIT_NOFILE {hard} too low for {args.idle} idle connections", file=sys.stderr)
        return 2
    os.environ["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src")
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    os.chmod(tmp, 0o755)
    try:
        urls = write_rrdp(tmp / "rrdp", args.snapshot_mb)
        cert, key = make_cert(tmp)
        os.chmod(key, 0o600)
        result: dict[str, object] = {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "seconds_per_run": args.seconds,
            "snapshot_mb": args.snapshot_mb,
            "idle_connections": args.idle,
            "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "wrk": subprocess.run(["wrk", "-v"], capture_output=True, text=True)
            .stdout.split("\n")[0]
            .strip(),
        }
        runners: list[tuple[str, Runner]] = [("nginx", nginx)]
        loops = args.loops.split(",")
        if "asyncio" in loops:
            runners.append(("rpkirepo", functools.partial(rpkirepo, loop="asyncio")))
        if "uvloop" in loops and importlib.util.find_spec("uvloop") is not None:
            runners.append(("rpkirepo_uvloop", functools.partial(rpkirepo, loop="uvloop")))
        # All servers run at once (idle unless measured); each round measures them one after
        # the other, so that every server sees the same drift of a shared machine's load.
        with contextlib.ExitStack() as stack:
            started: list[tuple[str, dict[str, list[int]], int, int]] = []
            for name, runner in runners:
                plain, tls = free_port(), free_port()
                print(f"== starting {name}", file=sys.stderr, flush=True)
                procs = stack.enter_context(runner(tmp / name, tmp / "rrdp", cert, key, plain, tls))
                started.append((name, procs, plain, tls))
            rounds: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in runners}
            loads = [loadavg()]
            floors: list[float] = []
            for rnd in range(args.repeat):
                if "tls" in only:
                    print("  reference: the ssl module's own work ...", file=sys.stderr, flush=True)
                    floors.append(ssl_floor(cert, key))
                for name, procs, plain, tls in started:
                    # idle connections last: memory they leave behind would skew later RSS
                    wanted = only if rnd == args.repeat - 1 else only - {"idle"}
                    rounds[name].append(
                        measure(name, procs, plain, tls, urls, args.seconds, args.idle, wanted)
                    )
                    loads.append(loadavg())
            result["load_average"] = loads
            if floors:
                result["ssl_floor_us_per_conn"] = min(floors)
                result["ssl_floor_us_per_conn_runs"] = floors
            result["finished"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
            for name, _ in runners:
                result[name] = best_of(rounds[name])
        ref = result["nginx"]
        assert isinstance(ref, dict)
        for name, _ in runners[1:]:
            ours = result[name]
            assert isinstance(ours, dict)
            result[f"ratios_{name}"] = {
                k: round(float(ours[k]) / float(ref[k]), 2) if float(ref[k]) else None
                for k in RATIO_KEYS
                if k in ref
            }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        names = [n for n, _ in runners]
        print(f"{'':24}" + "".join(f"{n:>17}" for n in names))
        ref = result["nginx"]
        assert isinstance(ref, dict)
        for k in (k for k in ref if not k.endswith(("errors", "_runs"))):
            cells = []
            for n in names:
                value = result[n][k]  # type: ignore[index]
                ratio = result.get(f"ratios_{n}", {}).get(k)  # type: ignore[attr-defined]
                cells.append(
                    f"{value!s:>10}" + (f" ({ratio:.2f})" if ratio is not None else " " * 7)
                )
            print(f"{k:24}" + "".join(cells))
        if "ssl_floor_us_per_conn" in result:
            print(f"{'ssl_floor_us_per_conn':24}{result['ssl_floor_us_per_conn']!s:>10}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
