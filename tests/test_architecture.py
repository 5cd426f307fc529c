"""Architecture rules that code review alone would let slip.

The protocol cores (rrdp/, objects/) are sans-I/O: no files, sockets, processes or threads, so
they can be fed bytes in tests and fuzzers and reused under any I/O layer (docs/architecture.md).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rpkirepo"
SANS_IO_PACKAGES = ("rrdp", "objects")
#: The rsync daemon's protocol core; its I/O adapters (tree.py, daemon.py, command.py) are not.
RSYNC_CORE = (
    "_args", "_filters", "_md4", "_model", "_receiver", "_session", "_state", "_wire", "__init__",
)  # fmt: skip
FORBIDDEN_MODULES = frozenset(
    {
        "os", "io", "pathlib", "shutil", "tempfile", "fcntl", "mmap", "sqlite3",
        "socket", "ssl", "select", "selectors", "asyncio", "http", "urllib",
        "subprocess", "multiprocessing", "threading", "concurrent",
        "rpkirepo.fsutil", "rpkirepo.publish",
        "rpkirepo.rsync.tree", "rpkirepo.rsync.daemon", "rpkirepo.rsync.command",
    }
)  # fmt: skip
FORBIDDEN_CALLS = frozenset({"open", "exec", "eval", "compile", "__import__"})

CORE_FILES = sorted(p for pkg in SANS_IO_PACKAGES for p in (SRC / pkg).glob("*.py")) + [
    SRC / "rsync" / f"{name}.py" for name in RSYNC_CORE
]


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_protocol_cores_do_no_io(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = {name, name.split(".")[0], ".".join(name.split(".")[:2])}
            assert not (top & FORBIDDEN_MODULES), f"{path.name}:{node.lineno} imports {name}"
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            assert node.func.id not in FORBIDDEN_CALLS, (
                f"{path.name}:{node.lineno} calls {node.func.id}"
            )


def test_the_rule_has_something_to_check() -> None:
    assert len(CORE_FILES) >= 10
