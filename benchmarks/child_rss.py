"""Run the rpkirepo CLI in a child process and measure its own peak RSS.

wait4()'s ru_maxrss is no good for this on Linux: the maximum resident set size is carried across
fork+exec, so a child reports at least its parent's size at fork time, and a benchmark that holds
a repository in memory would inflate every figure.  The child prints its own VmHWM (the peak of
its address space, which exec replaces) on its last stderr line instead, and its helper
processes (the tree writer's) are sampled while it runs.

The child runs as an installed copy would: from compiled bytecode.  pip compiles a package's
modules when it installs them; a run with ``PYTHONDONTWRITEBYTECODE=1`` (set by CI and on the
development machines) compiles every module from source at each start instead, ~0.3-0.4 s per
run of the CLI and its helper, which is no part of the work measured.  The bytecode goes to a
cache outside the source tree (``PYTHONPYCACHEPREFIX``), filled once before the first run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Where the children's bytecode is cached (outside the source tree; see the module docstring).
PYCACHE = Path(os.environ.get("RPKIREPO_BENCH_PYCACHE", "/tmp/rpkirepo-bench-pycache"))
_compiled = False

_WRAP = (
    "import sys\n"
    "from rpkirepo.cli import main\n"
    "try:\n"
    "    code = main(sys.argv[1:])\n"
    "finally:\n"
    "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
    "    print('VmHWM', hwm, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _tree_rss_kib(pid: int) -> int:
    """Summed VmRSS of ``pid`` and its descendants (the tree writer helper) right now."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next((int(ln.split()[1]) for ln in f if ln.startswith("VmRSS")), 0)
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue  # gone meanwhile
    return total


def run_cli(args: list[str]) -> tuple[subprocess.CompletedProcess[bytes], float, float]:
    """``rpkirepo ARGS`` in a child: (result, wall seconds, peak RSS in MB); exits on failure.

    The peak is the larger of the child's own VmHWM (exact) and the largest sum of RSS over the
    child and its own children (the tree writer's helper process), sampled every 0.1 s.
    """
    global _compiled
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONPYCACHEPREFIX": str(PYCACHE)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if not _compiled:  # as pip does at install time
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(REPO / "src")], env=env, check=True
        )
        _compiled = True
    t0 = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, "-c", _WRAP, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    tree_kib = 0
    while True:
        try:
            out, err = child.communicate(timeout=0.1)
            break
        except subprocess.TimeoutExpired:
            tree_kib = max(tree_kib, _tree_rss_kib(child.pid))
    elapsed = time.perf_counter() - t0
    proc = subprocess.CompletedProcess(child.args, child.returncode, out, err)
    if proc.returncode != 0:
        sys.exit(
            f"rpkirepo {' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.decode()}"
        )
    hwm_kib = int(proc.stderr.decode().strip().splitlines()[-1].split()[1])
    return proc, elapsed, max(hwm_kib, tree_kib) / 1024
