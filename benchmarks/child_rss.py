"""Run the rpkirepo CLI in a child process and measure its own peak RSS.

wait4()'s ru_maxrss is no good for this on Linux: the maximum resident set size is carried across
fork+exec, so a child reports at least its parent's size at fork time, and a benchmark that holds
a repository in memory would inflate every figure.  The child prints its own VmHWM (the peak of
its address space, which exec replaces) on its last stderr line instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

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


def run_cli(args: list[str]) -> tuple[subprocess.CompletedProcess[bytes], float, float]:
    """``rpkirepo ARGS`` in a child: (result, wall seconds, peak RSS in MB); exits on failure."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WRAP, *args], capture_output=True, env=env)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(
            f"rpkirepo {' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.decode()}"
        )
    hwm_kib = int(proc.stderr.decode().strip().splitlines()[-1].split()[1])
    return proc, elapsed, hwm_kib / 1024
