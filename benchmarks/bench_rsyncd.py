"""Benchmark: rpkirepo's rsync daemon against the real `rsync --daemon`, same tree, same run.

Both servers run as child processes of this script on loopback, one after the other, serving the
same module (directories of 25 real corpus objects, RFC 9589-style mtimes, ``current`` ->
``revisions/r1``).  The clients are Debian's rsync (``-rt``, as RPs run it), writing into
``/dev/shm`` when it exists (so client disk writes do not set the pace).  Per server:

1. *one client*: server CPU seconds (user + system, reaped children included: rsyncd forks one
   per client) and client wall time of a full sync into an empty directory, then the CPU of a
   no-change re-sync of it (best of ``--repeat``);
2. *concurrent full syncs*: ``--full-clients`` clients at once into empty directories (each one
   a full copy of the tree, so their number is bounded by time and space);
3. *the RP load*: ``current`` is switched to ``revisions/r2``, which differs from r1 in
   ``--change`` of its files (rewritten with new content and mtime), and ``--clients`` clients
   start at once, each re-syncing with ``--compare-dest`` against a full copy of r1 made in step
   1 (as rpki-client does with its cache): every client gets the whole file list and only the
   changed files.  All must finish; each client's result is checked (exactly the changed files
   transferred).

Memory is the proportional set size (PSS, so pages rsyncd's children share are not counted
twice) summed over the server's process tree, sampled every ``--sample`` seconds; idle is before
the first client, peak is over each concurrent step.  Our daemon's one-off revision load (walk,
read, MD5, spool, the common file list) is reported separately.  Each figure carries the load
average when it was taken (the machine may be shared).  Every client has a timeout, and the
run stops by itself.

Usage: ``bench_rsyncd.py [--files 100000] [--clients 200] [--full-clients 8] [--repeat 2]
[--json]``; ``--quick`` (20,000 files, 50 + 4 clients, one repeat) is what ``make bench`` runs.
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
CLIENT_TIMEOUT = 900


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


def make_next_revision(module: Path, fraction: float) -> int:
    """``revisions/r2``: r1 hard-linked, with ``fraction`` of its files rewritten (new content,
    new mtime), as a publication cycle does; returns how many files changed."""
    r1, r2 = module / "revisions" / "r1", module / "revisions" / "r2"
    rng = random.Random(7)
    pool = corpus_objects()
    files = sorted(p.relative_to(r1) for p in r1.rglob("*") if p.is_file())
    changed = set(rng.sample(range(len(files)), max(1, int(len(files) * fraction))))
    for d in sorted(p for p in r1.rglob("*") if p.is_dir()):
        (r2 / d.relative_to(r1)).mkdir(parents=True, exist_ok=True)
    for i, rel in enumerate(files):
        if i in changed:
            old = (r1 / rel).read_bytes()
            data = next(o for o in pool[rng.randrange(len(pool)) :] + pool if o != old)
            (r2 / rel).write_bytes(data)
            t = 1_720_000_000 + i
            os.utime(r2 / rel, (t, t))
        else:
            os.link(r1 / rel, r2 / rel)
    for d in [r2, *r2.iterdir()]:
        os.utime(d, (946684800, 946684800))
    return len(changed)


def switch_current(module: Path, name: str) -> None:
    tmp = module / "current.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(f"revisions/{name}", tmp)
    os.replace(tmp, module / "current")


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


def tree_pss_kib(root: int) -> tuple[int, int]:
    """(PSS summed over ``root`` and its children, number of processes)."""
    pids = [root]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == root:
                pids.append(int(entry))
    return sum(pss_kib(p) for p in pids), len(pids)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def rsync(url: str, dest: Path, *extra: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["rsync", "-rt", "--timeout=120", *extra, url, f"{dest}/"],
        check=True,
        capture_output=True,
        timeout=CLIENT_TIMEOUT,
    )
    return time.perf_counter() - started


class PeakPss:
    """Samples a process tree's PSS in a thread until stopped."""

    def __init__(self, pid: int, every: float) -> None:
        self.pid, self.every = pid, every
        self.peak_kib = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            kib, procs = tree_pss_kib(self.pid)
            if kib > self.peak_kib:
                self.peak_kib = kib
            self.peak_procs = max(self.peak_procs, procs)
            self._stop.wait(self.every)

    def __enter__(self) -> PeakPss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def concurrent(
    url: str, dests: list[Path], extra: tuple[str, ...], pid: int, every: float
) -> dict[str, Any]:
    errors: list[str] = []
    walls: list[float] = []
    lock = threading.Lock()

    def one(dest: Path) -> None:
        try:
            wall = rsync(url, dest, *extra)
        except subprocess.CalledProcessError as exc:
            with lock:
                errors.append(f"exit {exc.returncode}: {exc.stderr[-200:]!r}")
        except subprocess.TimeoutExpired:
            with lock:
                errors.append("timeout")
        else:
            with lock:
                walls.append(wall)

    cpu0 = cpu_seconds(pid)
    started = time.perf_counter()
    with PeakPss(pid, every) as sampler:
        threads = [threading.Thread(target=one, args=(d,)) for d in dests]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        time.sleep(0.5)  # let rsyncd reap its last children, so their CPU is counted
    return {
        "clients": len(dests),
        "failures": len(errors),
        "errors": errors[:5],
        "wall_s": round(time.perf_counter() - started, 2),
        "slowest_client_s": round(max(walls, default=0.0), 2),
        "server_cpu_s": round(cpu_seconds(pid) - cpu0, 2),
        "peak_pss_mib": round(sampler.peak_kib / 1024, 1),
        "peak_processes": sampler.peak_procs,
        "load": load(),
    }


def one_client(url: str, pid: int, scratch: Path, name: str, repeat: int) -> dict[str, Any]:
    full_cpu, full_wall, nochange_cpu, loads = [], [], [], []
    for i in range(repeat):
        dest = scratch / f"{name}-full-{i}"
        before = cpu_seconds(pid)
        full_wall.append(rsync(url, dest))
        time.sleep(0.3)  # let rsyncd reap its child, so its CPU is counted
        full_cpu.append(cpu_seconds(pid) - before)
        before = cpu_seconds(pid)
        rsync(url, dest)
        time.sleep(0.3)
        nochange_cpu.append(cpu_seconds(pid) - before)
        loads.append(load())
        base = scratch / "base"
        if not base.exists():
            dest.rename(base)  # the RPs' cache for step 3
        else:
            shutil.rmtree(dest)
    return {
        "full_sync_cpu_s": min(full_cpu),
        "full_sync_cpu_all_s": full_cpu,
        "full_sync_wall_s": round(min(full_wall), 2),
        "nochange_cpu_s": min(nochange_cpu),
        "load": loads,
    }


def start_rsyncd(module: Path, work: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    conf = work / "rsyncd.conf"
    conf.write_text(
        f"pid file = {work}/rsyncd.pid\nuse chroot = no\nmax connections = 0\n"
        f"log file = {work}/rsyncd.log\n[repo]\npath = {module}/current\nread only = yes\n"
    )
    proc = subprocess.Popen(
        ["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={port}",
         "--address=127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port, proc)
    return proc, f"rsync://127.0.0.1:{port}/repo/"


def start_ours(module: Path) -> tuple[subprocess.Popen[bytes], str, float, float]:
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(module), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_port(port, proc)
    return (
        proc,
        f"rsync://127.0.0.1:{port}/repo/",
        time.perf_counter() - started,
        cpu_seconds(proc.pid),
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve_ours(module: Path, port: int) -> None:
    import asyncio

    from rpkirepo.limits import DEFAULT_LIMITS
    from rpkirepo.rsync.daemon import serve_rsync

    # rsyncd applies the client's --timeout (120 s here) as its idle timeout; ours caps it at
    # rsync_idle_timeout (60 s by default), which a client starved of CPU by 200 others can
    # exceed while it compares the file list with its cache: raised so both apply 120 s.
    limits = DEFAULT_LIMITS.override(
        {"rsync_max_connections_per_address": 100000, "rsync_idle_timeout": 300}
    )

    async def main() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await serve_rsync([("127.0.0.1", port)], {"repo": module}, limits, stop=stop)

    asyncio.run(main())


def check_resync(dests: list[Path], changed: int) -> int:
    """How many clients did not end with exactly the changed files (compare-dest semantics)."""
    bad = 0
    for dest in dests:
        n = sum(len(files) for _root, _dirs, files in os.walk(dest))
        bad += n != changed
    return bad


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--clients", type=int, default=200, help="concurrent re-syncing clients")
    ap.add_argument("--full-clients", type=int, default=8, help="concurrent full syncs")
    ap.add_argument("--change", type=float, default=0.01, help="fraction of files r2 changes")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--sample", type=float, default=0.2, help="PSS sampling interval, s")
    ap.add_argument("--quick", action="store_true", help="20k files, 50 + 4 clients, 1 repeat")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve_ours(args.serve, args.port)
        return
    if args.quick:
        args.files, args.clients, args.full_clients, args.repeat = 20_000, 50, 4, 1
    if shutil.which("rsync") is None:
        sys.exit("rsync is not installed")
    work = Path(tempfile.mkdtemp(prefix="bench-rsyncd-"))
    shm = Path("/dev/shm")
    scratch = Path(tempfile.mkdtemp(prefix="bench-rsyncd-", dir=shm if shm.is_dir() else None))
    procs: list[subprocess.Popen[bytes]] = []
    summary: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "argv": " ".join(sys.argv[1:]),
        "rsync": subprocess.run(
            ["rsync", "--version"], capture_output=True, text=True
        ).stdout.splitlines()[0],
    }
    try:
        module = work / "module"
        total = make_tree(module, args.files)
        changed = make_next_revision(module, args.change)
        summary.update(files=args.files, bytes=total, changed_in_r2=changed)
        results: dict[str, dict[str, Any]] = {"rsyncd": {}, "ours": {}}
        # Steps 1 and 2 on r1, rsyncd then ours.
        for name in ("rsyncd", "ours"):
            res = results[name]
            if name == "rsyncd":
                proc, url = start_rsyncd(module, work)
            else:
                proc, url, wall, cpu = start_ours(module)
                res["load_wall_s"], res["load_cpu_s"] = round(wall, 2), cpu
            procs.append(proc)
            time.sleep(1)
            res["idle_pss_mib"] = round(tree_pss_kib(proc.pid)[0] / 1024, 1)
            res.update(one_client(url, proc.pid, scratch, name, args.repeat))
            dests = [scratch / f"{name}-c{k}" for k in range(args.full_clients)]
            res["concurrent_full"] = concurrent(url, dests, (), proc.pid, args.sample)
            for d in dests:
                shutil.rmtree(d, ignore_errors=True)
            stop(proc)
        # Step 3 on r2: every client re-syncs against its cache, a copy of r1.
        switch_current(module, "r2")
        base = scratch / "base"
        for name in ("rsyncd", "ours"):
            if name == "rsyncd":
                proc, url = start_rsyncd(module, work)
            else:
                proc, url, _wall, _cpu = start_ours(module)
            procs.append(proc)
            time.sleep(1)
            idle = round(tree_pss_kib(proc.pid)[0] / 1024, 1)
            dests = [scratch / f"{name}-r{k}" for k in range(args.clients)]
            res = concurrent(url, dests, (f"--compare-dest={base}",), proc.pid, args.sample)
            res["idle_pss_mib"] = idle
            res["wrong_results"] = check_resync(dests, changed)
            results[name]["resync"] = res
            for d in dests:
                shutil.rmtree(d, ignore_errors=True)
            stop(proc)
        summary.update(results)
        r, o = results["rsyncd"], results["ours"]
        summary["ratios"] = {
            "full_sync_cpu": o["full_sync_cpu_s"] / max(r["full_sync_cpu_s"], 1e-9),
            "nochange_cpu": o["nochange_cpu_s"] / max(r["nochange_cpu_s"], 1e-9),
            "full_sync_wall": o["full_sync_wall_s"] / max(r["full_sync_wall_s"], 1e-9),
            "concurrent_full_peak_pss": o["concurrent_full"]["peak_pss_mib"]
            / max(r["concurrent_full"]["peak_pss_mib"], 1e-9),
            "resync_peak_pss": o["resync"]["peak_pss_mib"] / max(r["resync"]["peak_pss_mib"], 1e-9),
            "resync_cpu": o["resync"]["server_cpu_s"] / max(r["resync"]["server_cpu_s"], 1e-9),
        }
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for key, value in summary.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
