"""Benchmark: rpkirepo's rsync daemon against the real `rsync --daemon`, same tree, same run.

Both servers run as child processes of this script on loopback, serving the same revision tree
(directories of 25 real corpus objects, RFC 9589-style mtimes, ``current`` -> ``revisions/r1``).
The client is Debian's rsync (``-rt``, as RPs run it).  Measured per server:

* server CPU seconds (user + system, children included: rsyncd forks one per client and reaps it)
  for one full sync into an empty directory and for one no-change re-sync (best of ``--repeat``);
* the wall time of that full sync as the client sees it;
* ``--clients`` concurrent full syncs: all must succeed; the server's peak proportional set size
  (PSS, so pages rsyncd's children share are not counted twice) summed over its processes,
  sampled every 100 ms, and its idle PSS before.

Our daemon's one-off cost of loading a revision (walk, read, MD5) is reported separately: it is
paid once per revision, not per client.

Usage: ``bench_rsyncd.py [--files 20000] [--clients 50] [--repeat 3] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def corpus_objects() -> list[bytes]:
    root = Path(os.environ.get("RPKIREPO_CORPUS", REPO.parent / "shared" / "corpus"))
    out = [
        p.read_bytes()
        for p in sorted((root / "objects").rglob("*"))
        if p.suffix in (".roa", ".mft", ".crl", ".cer") and 200 < p.stat().st_size < 20000
    ]
    if not out:
        sys.exit(f"no corpus objects under {root}")
    return out


def make_tree(module: Path, n: int) -> int:
    rng = random.Random(6)
    pool = corpus_objects()
    rev = module / "revisions" / "r1"
    exts = [".roa"] * 6 + [".mft", ".crl", ".cer"]
    total = 0
    for i in range(n):
        d = rev / f"ca{i // 25:06d}"
        if i % 25 == 0:
            d.mkdir(parents=True)
        p = d / f"{rng.getrandbits(120):030x}{exts[i % len(exts)]}"
        data = pool[i % len(pool)]
        p.write_bytes(data)
        t = 1_700_000_000 + rng.randrange(10_000_000)
        os.utime(p, (t, t))
        total += len(data)
    for d in [rev, *rev.iterdir()]:
        os.utime(d, (946684800, 946684800))
    os.symlink("revisions/r1", module / "current")
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.sendall(b"@RSYNCD: 31.0\n#list\n")
                s.recv(100)
                return
        except OSError:
            time.sleep(0.1)
    sys.exit("server did not start")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime stime cutime cstime are fields 14-17 (1-based); after ')' they are 11-14 (0-based).
    return sum(int(x) for x in fields[11:15]) / TICK


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_kib(root: int) -> int:
    pids = [root]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == root:
                pids.append(int(entry))
    return sum(pss_kib(p) for p in pids)


def rsync(url: str, dest: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["rsync", "-rt", url, f"{dest}/"], check=True, capture_output=True, timeout=3600)
    return time.perf_counter() - started


def measure(
    name: str, proc: subprocess.Popen[bytes], url: str, work: Path, args: Any
) -> dict[str, Any]:
    res: dict[str, Any] = {}
    full_cpu, full_wall, nochange_cpu = [], [], []
    for i in range(args.repeat):
        dest = work / f"{name}-full-{i}"
        before = cpu_seconds(proc.pid)
        full_wall.append(rsync(url, dest))
        time.sleep(0.3)  # let rsyncd reap its child, so its CPU is counted
        full_cpu.append(cpu_seconds(proc.pid) - before)
        before = cpu_seconds(proc.pid)
        rsync(url, dest)
        time.sleep(0.3)
        nochange_cpu.append(cpu_seconds(proc.pid) - before)
        shutil.rmtree(dest)
    res["full_sync_cpu_s"] = min(full_cpu)
    res["full_sync_wall_s"] = min(full_wall)
    res["nochange_cpu_s"] = min(nochange_cpu)
    res["idle_pss_mib"] = tree_pss_kib(proc.pid) / 1024
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_pss_kib(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    errors = []
    started = time.perf_counter()

    def one(k: int) -> None:
        try:
            rsync(url, work / f"{name}-c{k}")
        except subprocess.CalledProcessError as exc:
            errors.append(exc.returncode)

    clients = [threading.Thread(target=one, args=(k,)) for k in range(args.clients)]
    for t in clients:
        t.start()
    for t in clients:
        t.join()
    res["concurrent_wall_s"] = time.perf_counter() - started
    stop.set()
    sampler.join()
    res["concurrent_failures"] = len(errors)
    res["concurrent_peak_pss_mib"] = peak[0] / 1024
    for k in range(args.clients):
        shutil.rmtree(work / f"{name}-c{k}", ignore_errors=True)
    return res


def serve_ours(module: Path, port: int) -> None:
    import asyncio

    from rpkirepo.limits import DEFAULT_LIMITS
    from rpkirepo.rsync.daemon import serve_rsync

    limits = DEFAULT_LIMITS.override({"rsync_max_connections_per_address": 100000})
    started = time.perf_counter()

    def ready(_bound: list[tuple[str, int]]) -> None:
        print(f"loaded {time.perf_counter() - started:.3f}", file=sys.stderr, flush=True)

    asyncio.run(serve_rsync([("127.0.0.1", port)], {"repo": module}, limits, ready=ready))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve_ours(args.serve, args.port)
        return
    if shutil.which("rsync") is None:
        sys.exit("rsync is not installed")
    work = Path(tempfile.mkdtemp(prefix="bench-rsyncd-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        module = work / "module"
        total = make_tree(module, args.files)
        summary: dict[str, Any] = {"files": args.files, "bytes": total, "clients": args.clients}
        # rsyncd
        port = free_port()
        conf = work / "rsyncd.conf"
        conf.write_text(
            f"pid file = {work}/rsyncd.pid\nuse chroot = no\nuid = {os.getuid()}\n"
            f"gid = {os.getgid()}\nmax connections = 0\nlog file = {work}/rsyncd.log\n"
            f"[repo]\npath = {module}/current\nread only = yes\n"
        )
        rsyncd = subprocess.Popen(
            ["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={port}",
             "--address=127.0.0.1"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(rsyncd)
        wait_port(port, rsyncd)
        summary["rsyncd"] = measure("rsyncd", rsyncd, f"rsync://127.0.0.1:{port}/repo/", work, args)
        rsyncd.send_signal(signal.SIGTERM)
        rsyncd.wait(30)
        # ours
        port = free_port()
        started = time.perf_counter()
        ours = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(module), "--port", str(port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        procs.append(ours)
        wait_port(port, ours)
        load_cpu = cpu_seconds(ours.pid)
        summary["ours_load_wall_s"] = time.perf_counter() - started
        summary["ours_load_cpu_s"] = load_cpu
        summary["ours"] = measure("ours", ours, f"rsync://127.0.0.1:{port}/repo/", work, args)
        r, o = summary["rsyncd"], summary["ours"]
        summary["ratios"] = {
            "full_sync_cpu": o["full_sync_cpu_s"] / max(r["full_sync_cpu_s"], 1e-9),
            "nochange_cpu": o["nochange_cpu_s"] / max(r["nochange_cpu_s"], 1e-9),
            "full_sync_wall": o["full_sync_wall_s"] / max(r["full_sync_wall_s"], 1e-9),
            "concurrent_peak_pss": o["concurrent_peak_pss_mib"]
            / max(r["concurrent_peak_pss_mib"], 1e-9),
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
