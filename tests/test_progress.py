"""The terminal progress line: silent off a terminal, a bar with a rate on one."""

from __future__ import annotations

import io

from rpkirepo.progress import TerminalProgress


def test_silent_when_not_a_terminal() -> None:
    out = io.StringIO()
    progress = TerminalProgress(out)
    progress("objects", 5, 10)
    progress("objects", 10, 10)
    assert out.getvalue() == ""


def test_draws_stages_and_finishes_lines() -> None:
    out = io.StringIO()
    progress = TerminalProgress(out, force=True)
    progress("objects", 0, 4)
    progress("objects", 4, 4)
    progress("snapshot", 1, 2)
    progress("snapshot", 2, 2)
    text = out.getvalue()
    assert "objects [" in text and "4/4" in text and "snapshot [" in text and "2/2" in text
    assert text.count("\n") == 2  # one finished line per stage
    assert "#" * 30 in text  # a full bar at 100 %
