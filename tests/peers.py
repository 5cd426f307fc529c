"""Run real peers (nginx, rsync daemon, rpki-client) against repositories the tests write.

Everything here is hermetic: every peer gets its own generated configuration, pid file and logs in
a directory the caller owns, listens on loopback only, and is killed and waited for when its
context manager exits.  Nothing on the host is reconfigured: rpki-client is made to trust a
throwaway TLS CA and to resolve names through a private hosts file by bind mounts inside a
private mount namespace (``unshare -m``), which vanish with the process.

Helpers:

* :func:`make_tls_ca` writes a throwaway CA and a server certificate for some names.
* :func:`nginx_tls` serves directories and files over TLS with the real nginx.
* :func:`rsync_daemon` serves modules with the real ``rsync --daemon``.
* :func:`run_rpki_client` runs the real rpki-client and returns its output and VRPs.
* :func:`run_fort` and :func:`run_octorpki` run FORT and OctoRPKI once the same way.
* :func:`expected_vrps` and :func:`validity_window` compute, independently of rpkirepo and of the
  peers, what a validator should produce from a directory of objects and when it can be run.

Peer startup waits are bounded; on a failure the peer's log is quoted in the exception.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import glob
import grp
import http.client
import ipaddress
import json
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from asn1crypto import cms, core, crl, x509

UTC = dt.UTC
LOOPBACK4 = "127.0.0.1"
LOOPBACK6 = "::1"
RPKI_CLIENT_USER = "_rpki-client"


class PeerError(RuntimeError):
    """A peer could not be started, or failed; the message carries the peer's log."""


# --------------------------------------------------------------------------------------------
# small process and socket utilities


def unexpected_lines(text: str, allowed: Iterable[str]) -> list[str]:
    """The non-empty lines of a peer's output that match none of the ``allowed`` regexes."""
    patterns = [re.compile(p) for p in allowed]
    return [
        line for line in text.splitlines() if line and not any(p.fullmatch(line) for p in patterns)
    ]


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for error messages ('' when it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def ipv6_loopback_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK6, 0))
    except OSError:
        return False
    return True


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(_family(host), socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(hosts: Sequence[str] = (LOOPBACK4,), attempts: int = 50) -> int:
    """A TCP port that is free on every one of ``hosts`` right now (for peers whose port is not
    fixed by a TAL or a certificate)."""
    for _ in range(attempts):
        with socket.socket(_family(hosts[0]), socket.SOCK_STREAM) as s:
            s.bind((hosts[0], 0))
            port = int(s.getsockname()[1])
        if all(port_is_free(h, port) for h in hosts[1:]):
            return port
    raise PeerError(f"no TCP port free on all of {hosts} after {attempts} attempts")


def _require_free(name: str, hosts: Iterable[str], port: int) -> None:
    # A stale server on the port would answer the readiness poll and serve the wrong content.
    busy = [h for h in hosts if not port_is_free(h, port)]
    if busy:
        raise PeerError(
            f"{name}: port {port} is already in use on {busy} (a stale peer? see `ss -ltnp`)"
        )


def _start(
    argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a peer in its own process group, stdout and stderr to ``log``."""
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=None if env is None else dict(env),
        )


def _exited(proc: subprocess.Popen[bytes], timeout: float = 0.0) -> bool:
    """Whether the peer's leader process has exited, waiting up to ``timeout``, *without*
    reaping it: while it is an unreaped zombie its pid, which is also the id of the process
    group we gave it, cannot be reused, so signalling that group reaches only our processes."""
    if proc.returncode is not None:
        return True
    deadline = time.monotonic() + timeout
    while True:
        if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
    """Signal a peer we started and wait for it, then SIGKILL what is left of its process
    group (created by start_new_session: the peer's workers and children), then reap it."""
    try:
        if not _exited(proc):
            proc.send_signal(sig)
            _exited(proc, timeout)
    finally:
        if proc.returncode is None:  # not reaped yet, so the group id is still ours
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


def _wait_for_port(
    name: str,
    proc: subprocess.Popen[bytes],
    hosts: Sequence[str],
    port: int,
    timeout: float,
    logs: Sequence[Path],
) -> None:
    """Poll until every host:port accepts a TCP connection; fail fast if the peer exits."""
    deadline = time.monotonic() + timeout
    pending = list(hosts)
    while pending:
        if _exited(proc):
            raise PeerError(f"{name} exited during startup\n" + _logs_text(logs))
        host = pending[0]
        try:
            with socket.create_connection((host, port), timeout=0.5):
                pending.pop(0)
                continue
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise PeerError(
                f"{name} did not listen on {host}:{port} within {timeout:.0f} s\n"
                + _logs_text(logs)
            )
        time.sleep(0.05)


def _logs_text(logs: Sequence[Path]) -> str:
    return "\n".join(f"--- {p} ---\n{tail(p)}" for p in logs)


def _unprivileged_ids() -> tuple[int, int]:
    """uid and gid of 'nobody', which servers started as root drop to: it proves that what we
    serve is readable by an unprivileged server, as in production."""
    nobody = pwd.getpwnam("nobody")
    return nobody.pw_uid, nobody.pw_gid


def public_dir(path: Path) -> Path:
    """``mkdir -p`` with mode 0755 for every directory it creates, whatever the umask: peers
    that drop privileges (nginx workers, the rsync daemon, rpki-client) must enter them."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir()
        d.chmod(0o755)
    return path


def make_readable(root: Path) -> None:
    """chmod a+rX below ``root`` (for trees a test writes and a peer must read)."""
    for dirpath, _, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644)


def _conf_path(path: Path) -> str:
    text = str(path)
    if any(c in text for c in "\"'\n;{}\\"):
        raise PeerError(f"path not usable in a generated peer configuration: {text!r}")
    return text


# --------------------------------------------------------------------------------------------
# TLS


@dataclass(frozen=True)
class TlsCa:
    """A throwaway CA and one server certificate signed by it (PEM files)."""

    ca_cert: Path  # the CA certificate: the only thing a client should trust
    server_cert: Path  # the server certificate (leaf only)
    server_key: Path
    names: tuple[str, ...]


def make_tls_ca(
    directory: Path,
    names: Sequence[str] = ("localhost",),
    addresses: Sequence[str] = (LOOPBACK4, LOOPBACK6),
    not_before: dt.datetime = dt.datetime(2000, 1, 1, tzinfo=UTC),
    not_after: dt.datetime = dt.datetime(2099, 12, 31, tzinfo=UTC),
) -> TlsCa:
    """Write a throwaway CA and a server certificate for ``names`` (CN = first name, SAN = all
    names and ``addresses``) into ``directory``.

    The validity is deliberately wide: peers may run with a faked clock (e.g. rpki-client
    evaluating 2023 objects), and the TLS certificates must be valid at that time as well.
    """
    from cryptography import x509 as cx509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    public_dir(directory)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, "rpkirepo test CA (throwaway)")])
    ca_ski = cx509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        cx509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(cx509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(cx509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            cx509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    san: list[cx509.GeneralName] = [cx509.DNSName(n) for n in names]
    san += [cx509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    leaf = (
        cx509.CertificateBuilder()
        .subject_name(cx509.Name([cx509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(cx509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(cx509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            cx509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(cx509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(cx509.SubjectAlternativeName(san), critical=False)
        .add_extension(
            cx509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    tls = TlsCa(
        ca_cert=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        names=tuple(names),
    )
    tls.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.server_cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    tls.server_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    tls.server_key.chmod(0o600)
    tls.ca_cert.chmod(0o644)
    return tls


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to a fixed address, verifying the certificate for (and sending SNI) ``host``."""

    def __init__(self, address: str, host: str, port: int, ctx: ssl.SSLContext, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ctx)
        self._address = address
        self._ctx = ctx

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self.host)


def https_get(
    tls: TlsCa,
    port: int,
    path: str,
    headers: Mapping[str, str] | None = None,
    *,
    address: str = LOOPBACK4,
    name: str = "localhost",
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """GET ``path`` from a test server at ``address``:``port``, trusting only ``tls``'s CA and
    verifying the name ``name`` (no name resolution).  Returns status, headers, body."""
    ctx = ssl.create_default_context(cafile=str(tls.ca_cert))
    conn = _PinnedHTTPSConnection(address, name, port, ctx, timeout)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# nginx


@dataclass
class NginxServer:
    port: int
    hosts: tuple[str, ...]
    workdir: Path
    access_log: Path
    error_log: Path

    def access_entries(self, since: int = 0) -> list[dict[str, object]]:
        """One dict per request (see the JSON log_format in :func:`nginx_tls`), from entry
        number ``since`` on (see :meth:`mark`)."""
        if not self.access_log.exists():
            return []
        lines = self.access_log.read_text().splitlines()
        return [json.loads(line) for line in lines if line][since:]

    def mark(self) -> int:
        """A position in the access log: pass it as ``since`` to see only later requests."""
        return len(self.access_entries())

    def logs(self) -> str:
        return _logs_text([self.access_log, self.error_log])


def _nginx_user() -> str:
    """The ``user`` directive: nginx workers run as nobody when started as root."""
    if os.geteuid() != 0:
        return ""
    uid, gid = _unprivileged_ids()
    return f"user {pwd.getpwuid(uid).pw_name} {grp.getgrgid(gid).gr_name};"


def _nginx_locations(locations: Mapping[str, Path]) -> list[str]:
    """``location`` blocks: a URL ending in '/' maps a prefix to a directory, any other one
    exact URL to one file."""
    out = []
    for url, target in locations.items():
        if not url.startswith("/"):
            raise PeerError(f"nginx location must start with '/': {url!r}")
        if url.endswith("/"):
            out.append(f'    location {url} {{ alias "{_conf_path(target)}/"; }}')
        else:
            out.append(f'    location = {url} {{ alias "{_conf_path(target)}"; }}')
    return out


def _nginx_listen(hosts: Sequence[str], port: int, extra: str = "") -> str:
    return "\n".join(
        f"    listen {'[' + h + ']' if ':' in h else h}:{port} ssl{extra};" for h in hosts
    )


def _nginx_server(
    hosts: Sequence[str], port: int, names: str, tls: TlsCa, body: Sequence[str], extra: str = ""
) -> str:
    """One TLS ``server`` block with ``body`` (location blocks or a ``return``)."""
    lines = [
        "  server {",
        _nginx_listen(hosts, port, extra),
        f"    server_name {names};",
        f'    ssl_certificate "{_conf_path(tls.server_cert)}";',
        f'    ssl_certificate_key "{_conf_path(tls.server_key)}";',
        "    ssl_protocols TLSv1.2 TLSv1.3;",
        *body,
        "  }",
    ]
    return "\n".join(lines)


def _nginx_main(workdir: Path, servers: Sequence[str]) -> str:
    """The configuration around ``servers``: foreground, one worker, pid and logs in
    ``workdir``, a JSON access log (:meth:`NginxServer.access_entries`), ``gzip_static``."""
    w = _conf_path(workdir)
    return f"""\
# generated by tests/peers.py for one test run
daemon off;
master_process on;
worker_processes 1;
{_nginx_user()}
pid "{w}/nginx.pid";
error_log "{w}/error.log" info;
events {{ worker_connections 128; }}
http {{
  types {{ application/xml xml; application/pkix-cert cer; application/gzip gz; }}
  default_type application/octet-stream;
  log_format peer escape=json
    '{{"request":"$request","uri":"$uri","status":$status,"bytes":$body_bytes_sent,'
    '"content_encoding":"$sent_http_content_encoding","accept_encoding":"$http_accept_encoding",'
    '"ssl_protocol":"$ssl_protocol","host":"$host","sni":"$ssl_server_name",'
    '"user_agent":"$http_user_agent"}}';
  access_log "{w}/access.log" peer;
  client_body_temp_path "{w}/tmp/body";
  proxy_temp_path "{w}/tmp/proxy";
  fastcgi_temp_path "{w}/tmp/fastcgi";
  uwsgi_temp_path "{w}/tmp/uwsgi";
  scgi_temp_path "{w}/tmp/scgi";
  server_tokens off;
  sendfile on;
  gzip_static on;
  gzip_vary on;
{chr(10).join(servers)}
}}
"""


def nginx_config(
    workdir: Path,
    tls: TlsCa,
    locations: Mapping[str, Path],
    hosts: Sequence[str],
    port: int,
) -> str:
    """An nginx configuration serving ``locations`` over TLS.

    A location ending in '/' maps a URL prefix to a directory; any other maps one exact URL to
    one file.  ``gzip_static on`` serves a ``.gz`` sibling to clients that accept gzip.
    """
    body = ["    autoindex off;", *_nginx_locations(locations), "    location / { return 404; }"]
    return _nginx_main(workdir, [_nginx_server(hosts, port, " ".join(tls.names), tls, body)])


@contextlib.contextmanager
def _run_nginx(
    workdir: Path,
    make_config: Callable[[tuple[str, ...], int], str],
    *,
    port: int | None,
    ipv6: bool,
    binary: str,
    startup_timeout: float,
) -> Iterator[NginxServer]:
    """Run the real nginx with ``make_config(hosts, port)`` on 127.0.0.1 (and [::1] when
    ``ipv6`` and the host has it) only; ``port=None`` picks a free port."""
    hosts: tuple[str, ...] = (
        (LOOPBACK4, LOOPBACK6) if ipv6 and ipv6_loopback_available() else (LOOPBACK4,)
    )
    if port is None:
        port = free_port(hosts)
    _require_free("nginx", hosts, port)
    public_dir(workdir / "tmp")
    with _start_nginx(workdir, make_config(hosts, port), hosts, port, binary, startup_timeout) as s:
        yield s


@contextlib.contextmanager
def _start_nginx(
    workdir: Path,
    config: str,
    hosts: tuple[str, ...],
    port: int,
    binary: str,
    startup_timeout: float,
) -> Iterator[NginxServer]:
    """Write ``config`` to ``workdir``/nginx.conf, run nginx in the foreground until it listens
    on ``hosts``:``port``, and stop it (SIGTERM) when the block ends."""
    conf = workdir / "nginx.conf"
    conf.write_text(config)
    server = NginxServer(
        port=port,
        hosts=hosts,
        workdir=workdir,
        access_log=workdir / "access.log",
        error_log=workdir / "error.log",
    )
    stdout_log = workdir / "nginx.stdout.log"
    # -e: the error log before the config is read; -p: prefix for any relative path.
    proc = _start(
        [binary, "-p", f"{workdir}/", "-c", str(conf), "-e", str(server.error_log)], stdout_log
    )
    try:
        _wait_for_port(
            "nginx", proc, hosts, port, startup_timeout, [stdout_log, server.error_log, conf]
        )
        yield server
    finally:
        _stop(proc, signal.SIGTERM)


@contextlib.contextmanager
def nginx_tls(
    workdir: Path,
    tls: TlsCa,
    locations: Mapping[str, Path],
    *,
    port: int | None = None,
    ipv6: bool = True,
    binary: str = "nginx",
    startup_timeout: float = 10.0,
) -> Iterator[NginxServer]:
    """Run the real nginx in the foreground (``daemon off``) with its own generated config, pid
    file and logs in ``workdir``, listening on 127.0.0.1 (and [::1] when ``ipv6`` and the host
    has it) only.  ``port=None`` picks a free port."""
    with _run_nginx(
        workdir,
        lambda hosts, port: nginx_config(workdir, tls, locations, hosts, port),
        port=port,
        ipv6=ipv6,
        binary=binary,
        startup_timeout=startup_timeout,
    ) as server:
        yield server


# --------------------------------------------------------------------------------------------
# rsync daemon


@dataclass
class RsyncServer:
    port: int
    host: str
    workdir: Path
    log: Path
    config: Path

    def url(self, module: str) -> str:
        return f"rsync://{self.host}:{self.port}/{module}/"

    def log_text(self, since: int = 0) -> str:
        """The daemon's log from character ``since`` on (see :meth:`mark`)."""
        return self.log.read_text(errors="replace")[since:] if self.log.exists() else ""

    def mark(self) -> int:
        """A position in the log: pass it as ``since`` to see only what was logged after."""
        return len(self.log_text())

    def module_requests(self, module: str, since: int = 0) -> list[str]:
        """The daemon's 'rsync on MODULE/... from HOST' lines: one per client request."""
        return [
            line
            for line in self.log_text(since).splitlines()
            if re.search(rf"\brsync (on|to) {re.escape(module)}/", line)
        ]

    def sent_files(self, module: str, since: int = 0) -> list[str]:
        """Paths (below the module) the daemon sent, from its transfer log ('send' lines)."""
        out = []
        for line in self.log_text(since).splitlines():
            m = re.search(rf"\bsend \S+ \[[^\]]*\] {re.escape(module)} \(\S*\) (\S+) \d+$", line)
            if m:
                out.append(m.group(1))
        return out


def rsync_config(workdir: Path, modules: Mapping[str, Path]) -> str:
    lines = [
        "# generated by tests/peers.py for one test run",
        f"pid file = {_conf_path(workdir)}/rsyncd.pid",
        f"lock file = {_conf_path(workdir)}/rsyncd.lock",
        f"log file = {_conf_path(workdir)}/rsyncd.log",
        "transfer logging = yes",
        "log format = %o %h [%a] %m (%u) %f %l",
        "use chroot = no",
        "munge symlinks = no",
        "read only = yes",
        "list = yes",
        "max connections = 0",
    ]
    if os.geteuid() == 0:
        uid, gid = _unprivileged_ids()
        lines += [f"uid = {uid}", f"gid = {gid}"]
    for name, path in modules.items():
        if not re.fullmatch(r"[A-Za-z0-9._-]+", name):
            raise PeerError(f"bad rsync module name {name!r}")
        lines += ["", f"[{name}]", f"    path = {_conf_path(path)}", "    comment = test module"]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def rsync_daemon(
    workdir: Path,
    modules: Mapping[str, Path],
    *,
    host: str = LOOPBACK4,
    port: int | None = None,
    binary: str = "rsync",
    startup_timeout: float = 10.0,
) -> Iterator[RsyncServer]:
    """Run the real ``rsync --daemon --no-detach`` with its own config serving ``modules`` (name ->
    directory; a symlink such as rpkirepo's ``current`` is resolved per connection), read only,
    on ``host`` only.  ``port=None`` picks a free port; port 873 (what ``rsync://localhost/``
    means) needs root."""
    if port is None:
        port = free_port((host,))
    _require_free("rsync daemon", (host,), port)
    public_dir(workdir)
    conf = workdir / "rsyncd.conf"
    conf.write_text(rsync_config(workdir, modules))
    server = RsyncServer(
        port=port, host=host, workdir=workdir, log=workdir / "rsyncd.log", config=conf
    )
    stdout_log = workdir / "rsyncd.stdout.log"
    proc = _start(
        [
            binary,
            "--daemon",
            "--no-detach",
            f"--config={conf}",
            f"--address={host}",
            f"--port={port}",
        ],
        stdout_log,
    )
    try:
        _wait_for_port(
            "rsync daemon", proc, (host,), port, startup_timeout, [stdout_log, server.log, conf]
        )
        yield server
    finally:
        _stop(proc, signal.SIGTERM)


# --------------------------------------------------------------------------------------------
# rpki-client


@dataclass
class RpkiClientResult:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    outdir: Path
    cachedir: Path
    seconds: float
    time_method: str  # how the evaluation time was set: "-P", "libfaketime" or "real clock"

    def output_json(self) -> dict[str, object]:
        data = json.loads((self.outdir / "json").read_text())
        assert isinstance(data, dict)
        return data

    def metadata(self) -> dict[str, object]:
        meta = self.output_json().get("metadata", {})
        assert isinstance(meta, dict)
        return meta

    def vrps(self) -> set[tuple[int, str, int]]:
        """(asn, prefix, maxLength) of every VRP in the JSON output."""
        roas = self.output_json().get("roas", [])
        assert isinstance(roas, list)
        out = set()
        for r in roas:
            asn = r["asn"]
            asn = int(asn[2:]) if isinstance(asn, str) and asn.upper().startswith("AS") else asn
            out.add((int(asn), str(ipaddress.ip_network(r["prefix"])), int(r["maxLength"])))
        return out

    def csv_vrps(self) -> set[tuple[int, str, int]]:
        """(asn, prefix, maxLength) of every VRP in the CSV output."""
        rows = (self.outdir / "csv").read_text().splitlines()[1:]
        out = set()
        for row in rows:
            asn, prefix, maxlen = row.split(",")[:3]
            out.add((int(asn.removeprefix("AS")), str(ipaddress.ip_network(prefix)), int(maxlen)))
        return out

    def describe(self) -> str:
        return (
            f"rpki-client exited {self.returncode} after {self.seconds:.1f} s\n"
            f"argv: {' '.join(self.argv)}\n--- stderr ---\n{self.stderr}\n"
            f"--- stdout ---\n{self.stdout}"
        )


def rpki_client_supports_epoch(binary: str) -> bool:
    """Whether this rpki-client has ``-P posix-seconds`` (evaluation time; recent releases have
    it, Debian 12's 8.2 does not)."""
    usage = subprocess.run(
        [binary, "-h"], capture_output=True, text=True, timeout=10, check=False
    ).stderr
    return re.search(r"\[-P\s", usage) is not None


def remove_stale_faketime_shm(shm: Path = Path("/dev/shm")) -> int:
    """Remove the semaphores and shared memory that libfaketime left behind for processes that
    have exited (it names them after the creating pid and never removes them).

    Once pids wrap, a new faked process (rpki-client's rsync child, after it dropped privileges)
    may get the pid of a dead root process whose 0600 semaphore is still there: libfaketime then
    fails with "sem_open failed ... Permission denied" and the child's fetch fails.  Only names
    of pids with no live process are removed; returns how many files went."""
    removed = 0
    for prefix in ("sem.faketime_sem_", "faketime_shm_"):
        for path in shm.glob(prefix + "*"):
            pid = path.name[len(prefix) :]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed += 1
    return removed


def libfaketime_path() -> Path | None:
    """The libfaketime preload library (Debian packages faketime/libfaketime), if installed."""
    for pattern in (
        "/usr/lib/*/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
        "/usr/local/lib/faketime/libfaketime.so.1",
    ):
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[0])
    return None


def libtls_ca_file(binary: str) -> Path:
    """The CA bundle rpki-client's libtls loads (tls_default_ca_cert_file()), symlinks resolved,
    so that a bind mount over it is seen.  rpki-client ignores SSL_CERT_FILE."""
    candidates: list[str] = []
    ldd = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=10, check=False)
    m = re.search(r"\slibtls\.so\S*\s+=>\s+(\S+)", ldd.stdout)
    if m:
        try:
            lib = ctypes.CDLL(m.group(1))
            fn = lib.tls_default_ca_cert_file
            fn.restype = ctypes.c_char_p
            value = fn()
            if value:
                candidates.append(value.decode())
        except (OSError, AttributeError):
            pass
    candidates += [
        "/etc/ssl/cert.pem",
        "/usr/lib/ssl/cert.pem",
        "/etc/ssl/certs/ca-certificates.crt",
    ]
    for c in candidates:
        if Path(c).exists():
            return Path(os.path.realpath(c))
    raise PeerError(f"cannot find the CA bundle of rpki-client's libtls (tried {candidates})")


def run_rpki_client(
    workdir: Path,
    tal: Path,
    *,
    binary: str = "rpki-client",
    trust: Path | None = None,
    hosts: Mapping[str, str] | None = None,
    evaluation_time: dt.datetime | None = None,
    rsync_only: bool = False,
    no_sync: bool = False,
    shortlist: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    verbose: int = 1,
    run_timeout: int = 40,
    timeout: float = 60.0,
    cachedir: Path | None = None,
) -> RpkiClientResult:
    """Run the real rpki-client once with TAL ``tal``; cache and output dirs in ``workdir``.

    ``trust``: a PEM CA bundle rpki-client must trust *instead of* the system bundle.
    ``hosts``: name -> address, replacing /etc/hosts.  Both are bind-mounted inside a private
    mount namespace (``unshare --mount``; needs root), so the host is never changed.
    ``evaluation_time``: ``-P`` when this rpki-client has it, else libfaketime (LD_PRELOAD).
    JSON and CSV output are always written (``-j -c``); the result parses them.
    ``run_timeout`` is rpki-client's own ``-s``; ``timeout`` kills its process group.
    ``cachedir``: a cache made by someone else (``rpkirepo fetch``'s output view, for ``-n``),
    left as it is: rpki-client, unprivileged, may read it but not change it.
    """
    public_dir(workdir)
    own_cache = cachedir is None
    if cachedir is None:
        cachedir = public_dir(workdir / "cache")
    outdir = public_dir(workdir / "out")
    if os.geteuid() == 0:
        # rpki-client drops privileges to _rpki-client: its dirs must be writable for it.
        try:
            pw = pwd.getpwnam(RPKI_CLIENT_USER)
        except KeyError as exc:
            raise PeerError(f"user {RPKI_CLIENT_USER} missing (is rpki-client installed?)") from exc
        for d in (cachedir, outdir) if own_cache else (outdir,):
            os.chown(d, pw.pw_uid, pw.pw_gid)
    tal_copy = workdir / tal.name
    shutil.copyfile(tal, tal_copy)
    tal_copy.chmod(0o644)
    skiplist = workdir / "skiplist"
    skiplist.write_text("# empty: generated by tests/peers.py\n")
    skiplist.chmod(0o644)

    args = [binary, "-t", str(tal_copy), "-d", str(cachedir), "-S", str(skiplist), "-j", "-c"]
    args += ["-s", str(run_timeout)]
    args += ["-v"] * verbose
    for h in shortlist:
        args += ["-H", h]
    if rsync_only:
        args.append("-R")
    if no_sync:
        args.append("-n")
    args += list(extra_args)

    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C",
        "TZ": "UTC",
    }
    time_method = "real clock"
    if evaluation_time is not None:
        when = evaluation_time.astimezone(UTC)
        if rpki_client_supports_epoch(binary):
            args += ["-P", str(int(when.timestamp()))]
            time_method = "-P"
        else:
            lib = libfaketime_path()
            if lib is None:
                raise PeerError(
                    "this rpki-client has no -P (evaluation time) and libfaketime is not "
                    "installed (Debian package faketime)"
                )
            remove_stale_faketime_shm()
            env.update(
                LD_PRELOAD=str(lib),
                FAKETIME="@" + when.strftime("%Y-%m-%d %H:%M:%S"),
                # Only the wall clock is moved: poll timeouts keep the real monotonic clock.
                DONT_FAKE_MONOTONIC="1",
                FAKETIME_DONT_FAKE_MONOTONIC="1",
                FAKETIME_DONT_RESET="1",
            )
            time_method = "libfaketime"
    args.append(str(outdir))

    argv = list(args)
    mounts: list[tuple[Path, Path]] = []
    if trust is not None:
        bundle = workdir / "trust.pem"
        shutil.copyfile(trust, bundle)
        bundle.chmod(0o644)
        mounts.append((bundle, libtls_ca_file(binary)))
    if hosts is not None:
        hosts_file = workdir / "hosts"
        hosts_file.write_text("".join(f"{addr}\t{name}\n" for name, addr in hosts.items()))
        hosts_file.chmod(0o644)
        mounts.append((hosts_file, Path(os.path.realpath("/etc/hosts"))))
    if mounts:
        if os.geteuid() != 0:
            raise PeerError("trust/hosts overrides need root (unshare --mount)")
        if len(mounts) * 2 > 9:
            raise PeerError("too many bind mounts for the sh wrapper")
        script = " && ".join(
            f'mount --bind "${i * 2 + 1}" "${i * 2 + 2}"' for i in range(len(mounts))
        )
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            f'{script} && shift {len(mounts) * 2} && exec "$@"',
            "sh",
        ]
        for src, dst in mounts:
            argv += [str(src), str(dst)]
        argv += args

    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=env,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # Still running, so not reaped: its process group (rpki-client's privilege-separated
        # processes and rsync) is ours to kill.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=10)
        raise PeerError(
            f"rpki-client did not finish within {timeout:.0f} s (killed)\nargv: {argv}\n"
            f"--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}"
        ) from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        raise
    (workdir / "rpki-client.stderr.log").write_text(stderr)
    (workdir / "rpki-client.stdout.log").write_text(stdout)
    return RpkiClientResult(
        argv=argv,
        returncode=proc.returncode,
        stdout=stdout,
        stderr=stderr,
        outdir=outdir,
        cachedir=cachedir,
        seconds=time.monotonic() - started,
        time_method=time_method,
    )


# --------------------------------------------------------------------------------------------
# FORT and OctoRPKI (one-shot runs, same trust and name arrangement as rpki-client)


@dataclass
class RelyingPartyResult:
    """One run of a relying party other than rpki-client (FORT, OctoRPKI)."""

    name: str
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    output: Path  # the VRP file the RP wrote
    cachedir: Path
    seconds: float

    def describe(self) -> str:
        return (
            f"{self.name} exited {self.returncode} after {self.seconds:.1f} s\n"
            f"argv: {' '.join(self.argv)}\n--- stderr ---\n{self.stderr}\n"
            f"--- stdout ---\n{self.stdout}"
        )

    def vrps(self) -> set[tuple[int, str, int]]:
        """(asn, prefix, maxLength) of every VRP in the output file: FORT's CSV
        (``ASN,Prefix,Max prefix length``) or OctoRPKI's JSON (``{"roas": [{"prefix",
        "maxLength", "asn": "AS..."}]}``)."""
        text = self.output.read_text()
        out = set()
        if self.output.suffix == ".json":
            doc = json.loads(text)
            for r in doc["roas"]:
                asn = str(r["asn"]).upper().removeprefix("AS")
                out.add((int(asn), str(ipaddress.ip_network(r["prefix"])), int(r["maxLength"])))
            return out
        lines = text.splitlines()
        if not lines or lines[0] != "ASN,Prefix,Max prefix length":
            raise PeerError(f"unexpected header in {self.output}: {lines[:1]}")
        for row in lines[1:]:
            asn, prefix, maxlen = row.split(",")
            out.add((int(asn.removeprefix("AS")), str(ipaddress.ip_network(prefix)), int(maxlen)))
        return out


def ca_directory(directory: Path, ca_cert: Path) -> Path:
    """A directory that replaces /etc/ssl/certs: ``ca-certificates.crt`` (the bundle libcurl and
    Go read by default) holding only ``ca_cert``, and the OpenSSL ``<subject hash>.0`` link
    (what a CA *path* lookup reads).  Bind-mounted over /etc/ssl/certs, nothing else is trusted."""
    public_dir(directory)
    bundle = directory / "ca-certificates.crt"
    shutil.copyfile(ca_cert, bundle)
    bundle.chmod(0o644)
    openssl = shutil.which("openssl")
    if openssl is not None:
        digest = subprocess.run(
            [openssl, "x509", "-hash", "-noout", "-in", str(bundle)],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        link = directory / f"{digest}.0"
        link.unlink(missing_ok=True)
        link.symlink_to("ca-certificates.crt")
    return directory


def _run_in_private_namespace(
    name: str,
    workdir: Path,
    args: Sequence[str],
    *,
    trust: Path | None,
    hosts: Mapping[str, str] | None,
    user: str | None,
    env: Mapping[str, str],
    timeout: float,
) -> tuple[list[str], int, str, str, float]:
    """Run ``args`` once, as ``user`` (setpriv) when given, with /etc/ssl/certs replaced by a
    directory trusting only ``trust`` and /etc/hosts by ``hosts``, both by bind mounts inside a
    private mount namespace (``unshare --mount``, needs root) that vanish with the process.
    Kills the process group after ``timeout``.  Returns argv, exit status, stdout, stderr and
    the run time; stdout and stderr are also saved in ``workdir``."""
    mounts: list[tuple[Path, Path]] = []
    if trust is not None:
        mounts.append(
            (ca_directory(workdir / "certs", trust), Path(os.path.realpath("/etc/ssl/certs")))
        )
    if hosts is not None:
        hosts_file = workdir / "hosts"
        hosts_file.write_text("".join(f"{addr}\t{n}\n" for n, addr in hosts.items()))
        hosts_file.chmod(0o644)
        mounts.append((hosts_file, Path(os.path.realpath("/etc/hosts"))))
    argv = list(args)
    if user is not None:
        pw = pwd.getpwnam(user)
        argv = [
            "setpriv",
            f"--reuid={pw.pw_uid}",
            f"--regid={pw.pw_gid}",
            "--clear-groups",
            "--",
            *argv,
        ]
    if mounts:
        if os.geteuid() != 0:
            raise PeerError("trust/hosts overrides need root (unshare --mount)")
        script = " && ".join(
            f'mount --bind "${i * 2 + 1}" "${i * 2 + 2}"' for i in range(len(mounts))
        )
        wrapper = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c"]
        wrapper += [f'{script} && shift {len(mounts) * 2} && exec "$@"', "sh"]
        for src, dst in mounts:
            wrapper += [str(src), str(dst)]
        argv = wrapper + argv
    started = time.monotonic()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=dict(env),
        cwd=workdir,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # Still running, so not reaped: its process group (the RP and its rsync) is ours.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate(timeout=10)
        raise PeerError(
            f"{name} did not finish within {timeout:.0f} s (killed)\nargv: {argv}\n"
            f"--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}"
        ) from None
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        raise
    seconds = time.monotonic() - started
    (workdir / f"{name}.stderr.log").write_text(stderr)
    (workdir / f"{name}.stdout.log").write_text(stdout)
    return argv, proc.returncode, stdout, stderr, seconds


def _rp_dirs(workdir: Path, tal: Path, user: str | None) -> tuple[Path, Path, Path]:
    """workdir/tal/<tal> (a TAL directory with only this TAL), workdir/cache and workdir/out,
    the last two owned by ``user`` (the RP writes them after dropping privileges)."""
    public_dir(workdir)
    taldir, cachedir, outdir = (public_dir(workdir / d) for d in ("tal", "cache", "out"))
    shutil.copyfile(tal, taldir / tal.name)
    (taldir / tal.name).chmod(0o644)
    if user is not None and os.geteuid() == 0:
        pw = pwd.getpwnam(user)
        for d in (cachedir, outdir):
            os.chown(d, pw.pw_uid, pw.pw_gid)
    return taldir, cachedir, outdir


_RP_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C",
    "TZ": "UTC",
    "HOME": "/nonexistent",
}


def run_fort(
    workdir: Path,
    tal: Path,
    *,
    binary: str = "fort",
    trust: Path | None = None,
    hosts: Mapping[str, str] | None = None,
    rsync_only: bool = False,
    user: str | None = "nobody",
    transfer_timeout: int = 20,
    timeout: float = 60.0,
) -> RelyingPartyResult:
    """Run FORT once (``--mode=standalone``) with a TAL directory holding only ``tal``, its own
    cache, and the VRPs as CSV in ``workdir/out/vrps.csv``.  Logs go to the console at level
    warning (operation and validation logs), so that any line beyond FORT's start/end banner is a
    complaint.  ``rsync_only``: ``--http.enabled=false`` (no RRDP, TA from its rsync URI).
    ``trust``/``hosts`` as for :func:`run_rpki_client`, but FORT's libcurl reads the CA bundle
    and CA path under /etc/ssl/certs, so that whole directory is replaced (see
    :func:`ca_directory`).  FORT does not drop privileges itself: as root it runs as ``user``."""
    user = user if os.geteuid() == 0 else None
    taldir, cachedir, outdir = _rp_dirs(workdir, tal, user)
    output = outdir / "vrps.csv"
    args = [
        binary,
        "--mode=standalone",
        f"--tal={taldir}",
        f"--local-repository={cachedir}",
        f"--output.roa={output}",
        "--output.format=csv",
        "--log.output=console",
        "--log.level=warning",
        "--log.color-output=false",
        "--validation-log.enabled=true",
        "--validation-log.output=console",
        "--validation-log.level=warning",
        "--validation-log.color-output=false",
        "--http.connect-timeout=5",
        f"--http.transfer-timeout={transfer_timeout}",
        f"--rsync.transfer-timeout={transfer_timeout}",
        "--http.retry.count=0",
        "--rsync.retry.count=0",
    ]
    if rsync_only:
        args.append("--http.enabled=false")
    argv, rc, stdout, stderr, seconds = _run_in_private_namespace(
        "fort",
        workdir,
        args,
        trust=trust,
        hosts=hosts,
        user=user,
        env=_RP_ENV,
        timeout=timeout,
    )
    return RelyingPartyResult("fort", argv, rc, stdout, stderr, output, cachedir, seconds)


def run_octorpki(
    workdir: Path,
    tal: Path,
    *,
    binary: str = "octorpki",
    trust: Path | None = None,
    hosts: Mapping[str, str] | None = None,
    rsync_only: bool = False,
    user: str | None = "nobody",
    rsync_timeout: int = 20,
    loglevel: str = "info",
    timeout: float = 60.0,
) -> RelyingPartyResult:
    """Run OctoRPKI once (``-mode oneoff``) with ``tal`` as its only TAL (name ``ta``), its own
    cache and RRDP state file, unsigned JSON VRPs in ``workdir/out/vrps.json``, its HTTP
    endpoint on an ephemeral loopback port.  ``rsync_only``: ``-rrdp=false``.  OctoRPKI
    refuses to run as root ("Running as root is not allowed by default", a panic before its
    flags are parsed), so as root it runs as ``user`` (setpriv).  Trust: the same /etc/ssl/certs
    replacement as :func:`run_fort` (Go reads ca-certificates.crt and the directory), and
    ``SSL_CERT_FILE``/``SSL_CERT_DIR`` name the same throwaway files."""
    user = user if os.geteuid() == 0 else None
    taldir, cachedir, outdir = _rp_dirs(workdir, tal, user)
    output = outdir / "vrps.json"
    args = [
        binary,
        "-mode",
        "oneoff",
        "-tal.root",
        str(taldir / tal.name),
        "-tal.name",
        "ta",
        "-cache",
        f"{cachedir}/",
        "-rrdp.file",
        str(cachedir / "rrdp.json"),
        "-output.roa",
        str(output),
        "-output.sign=false",
        "-http.addr",
        f"{LOOPBACK4}:0",
        "-rsync.timeout",
        f"{rsync_timeout}s",
        "-loglevel",
        loglevel,
    ]
    if rsync_only:
        args.append("-rrdp=false")
    env = dict(_RP_ENV)
    if trust is not None:
        certs = ca_directory(workdir / "certs", trust)
        env.update(SSL_CERT_FILE=str(certs / "ca-certificates.crt"), SSL_CERT_DIR=str(certs))
    argv, rc, stdout, stderr, seconds = _run_in_private_namespace(
        "octorpki",
        workdir,
        args,
        trust=trust,
        hosts=hosts,
        user=user,
        env=env,
        timeout=timeout,
    )
    return RelyingPartyResult("octorpki", argv, rc, stdout, stderr, output, cachedir, seconds)


# --------------------------------------------------------------------------------------------
# independent expectations: what a validator should output for a directory of objects


class _RoaIpAddress(core.Sequence):
    _fields: ClassVar[list[tuple[object, ...]]] = [
        ("address", core.BitString),
        ("max_length", core.Integer, {"optional": True}),
    ]


class _RoaIpAddresses(core.SequenceOf):
    _child_spec = _RoaIpAddress


class _RoaIpAddressFamily(core.Sequence):
    _fields: ClassVar[list[tuple[object, ...]]] = [
        ("address_family", core.OctetString),
        ("addresses", _RoaIpAddresses),
    ]


class _RoaIpAddressFamilies(core.SequenceOf):
    _child_spec = _RoaIpAddressFamily


class _RouteOriginAttestation(core.Sequence):
    """RFC 6482 / RFC 9582 RouteOriginAttestation."""

    _fields: ClassVar[list[tuple[object, ...]]] = [
        ("version", core.Integer, {"explicit": 0, "default": 0}),
        ("as_id", core.Integer),
        ("ip_addr_blocks", _RoaIpAddressFamilies),
    ]


class _Manifest(core.Sequence):
    """RFC 9286 Manifest (the file list is not needed here)."""

    _fields: ClassVar[list[tuple[object, ...]]] = [
        ("version", core.Integer, {"explicit": 0, "default": 0}),
        ("manifest_number", core.Integer),
        ("this_update", core.GeneralizedTime),
        ("next_update", core.GeneralizedTime),
        ("file_hash_alg", core.ObjectIdentifier),
        ("file_list", core.Any),
    ]


def _signed_data(data: bytes) -> cms.SignedData:
    info = cms.ContentInfo.load(data)
    if info["content_type"].native != "signed_data":
        raise ValueError("not CMS SignedData")
    return info["content"]


def _econtent(sd: cms.SignedData) -> bytes:
    content = sd["encap_content_info"]["content"]
    return bytes(content.native if isinstance(content.native, bytes) else content.contents)


def roa_vrps(data: bytes) -> set[tuple[int, str, int]]:
    """(asn, prefix, maxLength) of one ROA file, parsed with asn1crypto only.  A missing
    maxLength means the prefix length (RFC 6482 section 3.3)."""
    roa = _RouteOriginAttestation.load(_econtent(_signed_data(data)))
    asn = int(roa["as_id"].native)
    out = set()
    for family in roa["ip_addr_blocks"]:
        afi = bytes(family["address_family"].native)[:2]
        width = {b"\x00\x01": 32, b"\x00\x02": 128}[afi]
        for entry in family["addresses"]:
            bits = entry["address"].native  # tuple of 0/1
            length = len(bits)
            value = int("".join(map(str, bits)) or "0", 2) << (width - length)
            cls = ipaddress.IPv4Network if width == 32 else ipaddress.IPv6Network
            prefix = cls((value, length))
            maxlen = entry["max_length"].native
            out.add((asn, str(prefix), length if maxlen is None else int(maxlen)))
    return out


def expected_vrps(objects_dir: Path) -> set[tuple[int, str, int]]:
    """The union of the VRPs of every ``*.roa`` below ``objects_dir``."""
    out: set[tuple[int, str, int]] = set()
    for p in sorted(objects_dir.rglob("*.roa")):
        out |= roa_vrps(p.read_bytes())
    return out


@dataclass(frozen=True)
class ValidityWindow:
    start: dt.datetime  # latest notBefore / thisUpdate of any object
    end: dt.datetime  # earliest notAfter / nextUpdate of any object
    start_object: str = field(default="")
    end_object: str = field(default="")

    @property
    def middle(self) -> dt.datetime:
        return self.start + (self.end - self.start) / 2


def validity_window(objects_dir: Path) -> ValidityWindow:
    """When every object below ``objects_dir`` is valid at once: certificates (notBefore,
    notAfter), CRLs (thisUpdate, nextUpdate), the EE certificates of signed objects, and the
    thisUpdate/nextUpdate of manifests.  Raises if there is no such moment."""
    starts: list[tuple[dt.datetime, str]] = []
    ends: list[tuple[dt.datetime, str]] = []

    def cert(c: x509.Certificate, name: str) -> None:
        validity = c["tbs_certificate"]["validity"]
        starts.append((validity["not_before"].native, name))
        ends.append((validity["not_after"].native, name))

    for p in sorted(objects_dir.rglob("*")):
        if not p.is_file():
            continue
        data, name = p.read_bytes(), str(p.relative_to(objects_dir))
        if p.suffix == ".cer":
            cert(x509.Certificate.load(data), name)
        elif p.suffix == ".crl":
            tbs = crl.CertificateList.load(data)["tbs_cert_list"]
            starts.append((tbs["this_update"].native, name))
            ends.append((tbs["next_update"].native, name))
        elif p.suffix in {".roa", ".mft", ".gbr", ".asa", ".sig", ".tak", ".spl"}:
            sd = _signed_data(data)
            for choice in sd["certificates"]:
                cert(choice.chosen, name + " (EE)")
            if p.suffix == ".mft":
                mft = _Manifest.load(_econtent(sd))
                starts.append((mft["this_update"].native, name + " (thisUpdate)"))
                ends.append((mft["next_update"].native, name + " (nextUpdate)"))
    if not starts:
        raise ValueError(f"no objects below {objects_dir}")
    start, end = max(starts), min(ends)
    if start[0] >= end[0]:
        raise ValueError(f"no common validity: {start} starts after {end} ends")
    return ValidityWindow(start[0], end[0], start[1], end[1])


# --------------------------------------------------------------------------------------------
# Shared fixtures of the peer test modules


@contextlib.contextmanager
def peer_scratch(prefix: str, why: str) -> Iterator[Path]:
    """A world-traversable scratch directory for peer tests that need root (port 873,
    ``unshare --mount``, privilege drops): servers run as nobody, rpki-client as _rpki-client,
    and neither can enter pytest's 0700 tmp_path.  Without root: skip locally, fail in CI
    (RPKIREPO_REQUIRE_PEERS=1).  Kept when RPKIREPO_KEEP_PEER_DIRS is set."""
    import pytest  # only the test modules import this module

    if os.geteuid() != 0:
        message = f"peer tests with {why} need root (port 873, unshare --mount)"
        if os.environ.get("RPKIREPO_REQUIRE_PEERS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        if os.environ.get("RPKIREPO_KEEP_PEER_DIRS"):
            print(f"\npeer directories kept in {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def run_rpkirepo(*args: str) -> subprocess.CompletedProcess[str]:
    """The real ``rpkirepo`` CLI in a child process; a non-zero exit fails the test with its
    output."""
    import pytest

    argv = [sys.executable, "-m", "rpkirepo", *args]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{argv} exited {proc.returncode}\n{proc.stderr}\n{proc.stdout}")
    return proc


@dataclass(frozen=True)
class Served:
    """A published repository behind the real nginx (TLS) and the real rsync daemon."""

    nginx: NginxServer
    rsync: RsyncServer
    tls: TlsCa


@contextlib.contextmanager
def serve_testbed(
    root: Path,
    testbed: Path,
    *,
    rsync_base: str,
    rrdp_base: str,
    https_port: int,
    rsync_port: int,
) -> Iterator[Served]:
    """`rpkirepo publish` a testbed's repository into ROOT/publish, then serve its RRDP files
    (and the TA certificate at /ta/ta.cer) with nginx over TLS and ``current`` as rsync module
    ``repo``, until the block ends."""
    out = public_dir(root / "publish")
    run_rpkirepo(
        "publish", str(testbed / "repository"),
        "--rsync-base", rsync_base, "--https-base", rrdp_base,
        "--state-dir", str(out / "state"), "--rrdp-dir", str(out / "rrdp"),
        "--rsync-dir", str(out / "rsync"),
    )  # fmt: skip
    with serve_repository(
        root, out / "rrdp", out / "rsync", testbed / "ta.cer", https_port, rsync_port
    ) as served:
        yield served


@contextlib.contextmanager
def serve_repository(
    root: Path, rrdp_dir: Path, rsync_dir: Path, ta_cer: Path, https_port: int, rsync_port: int
) -> Iterator[Served]:
    """Serve an RRDP directory at /rrdp/ and the TA certificate at /ta/ta.cer with nginx over TLS
    (a throwaway CA in ROOT/tls, for the name localhost), and ``RSYNC_DIR/current`` as rsync
    module ``repo``, until the block ends."""
    tls = make_tls_ca(root / "tls", names=("localhost",))
    with (
        nginx_tls(
            root / "nginx",
            tls,
            {"/rrdp/": rrdp_dir, "/ta/ta.cer": ta_cer},
            port=https_port,
            binary=shutil.which("nginx") or "/usr/sbin/nginx",
        ) as nginx,
        rsync_daemon(
            root / "rsyncd",
            {"repo": rsync_dir / "current"},
            port=rsync_port,
            binary=shutil.which("rsync") or "rsync",
        ) as rsync,
    ):
        yield Served(nginx, rsync, tls)


# --------------------------------------------------------------------------------------------
# rpkirepo's own rsync daemon, in-process (tests/test_rsyncd_*.py)


@dataclass
class RpkirepoRsyncd:
    """Our rsync daemon running on its own event loop in a background thread."""

    daemon: object  # rpkirepo.rsync.daemon.RsyncDaemon
    host: str
    port: int
    loop: object  # asyncio.AbstractEventLoop

    def url(self, path: str = "") -> str:
        return f"rsync://{self.host}:{self.port}/{path}"

    def call(self, coro_factory: object, timeout: float = 30.0) -> object:
        """Run a coroutine (made by ``coro_factory()``) on the daemon's loop and wait for it."""
        import asyncio

        fut = asyncio.run_coroutine_threadsafe(coro_factory(), self.loop)  # type: ignore[operator,arg-type]
        return fut.result(timeout)


@contextlib.contextmanager
def rpkirepo_rsyncd(
    modules: Mapping[str, Path], limits: object = None, host: str = LOOPBACK4, port: int = 0
) -> Iterator[RpkirepoRsyncd]:
    """Start ``rpkirepo.rsync.daemon.RsyncDaemon`` on ``host``:``port`` (0: any free port) in a
    thread; stop it and join the thread when the block ends."""
    import asyncio
    import threading

    from rpkirepo.limits import DEFAULT_LIMITS
    from rpkirepo.rsync.daemon import RsyncDaemon

    loop = asyncio.new_event_loop()
    daemon = RsyncDaemon(modules, limits or DEFAULT_LIMITS)  # type: ignore[arg-type]
    thread = threading.Thread(target=loop.run_forever, name="rpkirepo-rsyncd", daemon=True)
    thread.start()
    try:
        bound = asyncio.run_coroutine_threadsafe(daemon.start([(host, port)]), loop).result(30)
        yield RpkirepoRsyncd(daemon, bound[0][0], bound[0][1], loop)
    finally:
        asyncio.run_coroutine_threadsafe(daemon.close(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# --------------------------------------------------------------------------------------------
# `rpkirepo serve` as a child process, and nginx with a caller's configuration (test_serve_*)


@dataclass
class RpkirepoServer:
    """``python -m rpkirepo serve`` running in its own process group."""

    port: int
    hosts: tuple[str, ...]
    log: Path
    access_log: Path

    def access_lines(self) -> list[str]:
        return self.access_log.read_text().splitlines() if self.access_log.exists() else []

    def logs(self) -> str:
        return _logs_text([self.log, self.access_log])


@contextlib.contextmanager
def rpkirepo_serve(
    workdir: Path,
    rrdp_dir: Path,
    *,
    tls: TlsCa | None = None,
    port: int | None = None,
    ipv6: bool = True,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 15.0,
) -> Iterator[RpkirepoServer]:
    """Run the real ``rpkirepo serve`` (the CLI, in a child process) on ``rrdp_dir``, over TLS
    with ``tls``'s server certificate when given, on 127.0.0.1 (and [::1] when ``ipv6`` and the
    host has it), with a CLF access log in ``workdir``; SIGTERM when the block ends."""
    hosts: tuple[str, ...] = (
        (LOOPBACK4, LOOPBACK6) if ipv6 and ipv6_loopback_available() else (LOOPBACK4,)
    )
    if port is None:
        port = free_port(hosts)
    _require_free("rpkirepo serve", hosts, port)
    public_dir(workdir)
    log = workdir / "serve.log"
    access = workdir / "access.log"
    argv = [sys.executable, "-m", "rpkirepo", "-v", "serve", "--rrdp-dir", str(rrdp_dir)]
    for h in hosts:
        argv += ["--listen", f"[{h}]:{port}" if ":" in h else f"{h}:{port}"]
    if tls is not None:
        argv += ["--tls-cert", str(tls.server_cert), "--tls-key", str(tls.server_key)]
    argv += ["--access-log", str(access), "--poll-interval", "0.2", *extra_args]
    proc = _start(argv, log)
    try:
        _wait_for_port("rpkirepo serve", proc, hosts, port, startup_timeout, [log])
        yield RpkirepoServer(port, hosts, log, access)
    finally:
        _stop(proc, signal.SIGTERM)


@contextlib.contextmanager
def nginx_custom(
    workdir: Path,
    http_conf: str,
    *,
    port: int,
    binary: str = "nginx",
    startup_timeout: float = 10.0,
) -> Iterator[NginxServer]:
    """Run the real nginx with ``http_conf`` (the inside of an ``http { }`` block, holding the
    caller's ``server`` blocks, listening on 127.0.0.1:``port``) wrapped in a generated main
    configuration: foreground, one worker, pid, logs and temporary files in ``workdir``, workers
    as nobody when run as root."""
    hosts = (LOOPBACK4,)
    _require_free("nginx", hosts, port)
    public_dir(workdir / "tmp")
    if os.geteuid() == 0:  # a proxy cache under tmp/ is written by the workers
        uid, gid = _unprivileged_ids()
        os.chown(workdir / "tmp", uid, gid)
    w = _conf_path(workdir)
    config = f"""\
# generated by tests/peers.py for one test run
daemon off;
master_process on;
worker_processes 1;
{_nginx_user()}
pid "{w}/nginx.pid";
error_log "{w}/error.log" info;
events {{ worker_connections 256; }}
http {{
  access_log "{w}/access.log";
  client_body_temp_path "{w}/tmp/body";
  proxy_temp_path "{w}/tmp/proxy";
  fastcgi_temp_path "{w}/tmp/fastcgi";
  uwsgi_temp_path "{w}/tmp/uwsgi";
  scgi_temp_path "{w}/tmp/scgi";
{http_conf}
}}
"""
    with _start_nginx(workdir, config, hosts, port, binary, startup_timeout) as server:
        yield server


# --------------------------------------------------------------------------------------------
# nginx serving several host names, each with its own locations (several publication points)


def nginx_sites_config(
    workdir: Path,
    tls: TlsCa,
    sites: Mapping[str, Mapping[str, Path]],
    hosts: Sequence[str],
    port: int,
) -> str:
    """An nginx configuration with one TLS ``server`` per host name of ``sites`` (name ->
    locations as in :func:`nginx_config`), all with ``tls``'s certificate, and a default server
    that answers 421 (Misdirected Request) for any other name.  The JSON access log carries the
    ``host`` each request was for."""
    servers = [_nginx_server(hosts, port, "_", tls, ["    return 421;"], extra=" default_server")]
    for name, locations in sites.items():
        if not re.fullmatch(r"[A-Za-z0-9.-]+", name) or name not in tls.names:
            raise PeerError(f"site {name!r}: not a host name of the TLS certificate {tls.names}")
        body = [
            "    autoindex off;",
            *_nginx_locations(locations),
            "    location / { return 404; }",
        ]
        servers.append(_nginx_server(hosts, port, name, tls, body))
    return _nginx_main(workdir, servers)


@contextlib.contextmanager
def nginx_tls_sites(
    workdir: Path,
    tls: TlsCa,
    sites: Mapping[str, Mapping[str, Path]],
    *,
    port: int | None = None,
    ipv6: bool = True,
    binary: str = "nginx",
    startup_timeout: float = 10.0,
) -> Iterator[NginxServer]:
    """Like :func:`nginx_tls`, but for several host names on one port, each with locations of
    its own (``sites``: name -> locations; see :func:`nginx_sites_config`): e.g. one RRDP
    repository per publication point at the same path on different hosts.  ``tls`` must name
    every host (``make_tls_ca(..., names=...)``); clients reach them all at 127.0.0.1 through
    their hosts mapping (``run_rpki_client(hosts=...)``)."""
    with _run_nginx(
        workdir,
        lambda hosts, port: nginx_sites_config(workdir, tls, sites, hosts, port),
        port=port,
        ipv6=ipv6,
        binary=binary,
        startup_timeout=startup_timeout,
    ) as server:
        yield server
