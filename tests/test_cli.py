"""The command line: help with examples, config precedence, clear errors with reason codes."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from rpkirepo.cli import PUBLISH_KEYS, build_parser, limits_markdown, main
from rpkirepo.errors import ConfigError, Reason
from rpkirepo.limits import DEFAULT_LIMITS, Limits

REPO = Path(__file__).resolve().parents[1]


def test_every_command_has_help_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--help"], ["publish", "--help"], ["inspect", "--help"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "examples:" in out and "rpkirepo" in out


def test_limits_doc_is_generated_from_the_code() -> None:
    assert (REPO / "docs" / "limits.md").read_text() == limits_markdown()
    for name in Limits.names():
        assert f"`{name}`" in limits_markdown()


def test_publish_config_keys_match_the_flags() -> None:
    sub = build_parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    dests = {a.dest for a in sub.choices["publish"]._actions} - {
        "help",
        "config",
        "verbose",
        "quiet",
        "log_format",
        "json",
        "progress",
    }
    assert dests == PUBLISH_KEYS


def _objects(corpus_dir: Path, n: int) -> list[bytes]:
    files = sorted((corpus_dir / "objects" / "roa").rglob("*.roa"))
    return [p.read_bytes() for p in files[:n]]


def test_publish_from_config_file_with_flag_override(
    tmp_path: Path, corpus_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i, data in enumerate(_objects(corpus_dir, 5)):
        (src / f"r{i}.roa").write_bytes(data)
    cfg = tmp_path / "rpkirepo.toml"
    cfg.write_text(
        f"""
[log]
level = "error"
[limits]
max_uri_length = 1000
[publish]
source_dir = "{src}"
rsync_base = "rsync://rpki.example.net/repo/"
https_base = "https://rrdp.example.net/rrdp/"
state_dir = "{tmp_path / "state"}"
metrics_file = "{tmp_path / "metrics.prom"}"
"""
    )
    rc = main(
        ["publish", "--config", str(cfg), "--json", "--rrdp-dir", str(tmp_path / "elsewhere")]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out)
    assert result["serial"] == 1 and result["objects"] == 5 and result["changed"]
    assert (tmp_path / "elsewhere" / "notification.xml").exists()  # the flag won
    assert (tmp_path / "state" / "rsync" / "current").is_symlink()  # default below state_dir
    metrics = (tmp_path / "metrics.prom").read_text()
    assert 'rpkirepo_publish_serial{rsync_base="rsync://rpki.example.net/repo/"} 1' in metrics
    assert "# TYPE rpkirepo_publish_objects gauge" in metrics
    # Second run: nothing changed.
    assert (
        main(["publish", "--config", str(cfg), "--json", "--rrdp-dir", str(tmp_path / "elsewhere")])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["changed"] is False


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[nosuchtable]\nx = 1\n", Reason.CONFIG_UNKNOWN_KEY),
        ("[publish]\nsource_dirr = 'x'\n", Reason.CONFIG_UNKNOWN_KEY),
        ("[limits]\nmax_object_sizee = 1\n", Reason.CONFIG_UNKNOWN_KEY),
        ("[limits]\nmax_object_size = -1\n", Reason.CONFIG_INVALID),
        ("[limits]\nmax_object_size = 'big'\n", Reason.CONFIG_INVALID),
        ("this is [not toml\n", Reason.CONFIG_INVALID),
    ],
)
def test_bad_config_is_a_clear_error(
    tmp_path: Path, text: str, reason: Reason, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    rc = main(
        [
            "publish",
            "--config",
            str(cfg),
            str(tmp_path),
            "--rsync-base",
            "rsync://h/m/",
            "--https-base",
            "https://h/r/",
            "--state-dir",
            str(tmp_path / "s"),
        ]
    )
    assert rc == 1
    assert f"[{reason.value}]" in capsys.readouterr().err


def test_shrink_guard_from_the_command_line(
    tmp_path: Path, corpus_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i, data in enumerate(_objects(corpus_dir, 12)):
        (src / f"r{i}.roa").write_bytes(data)
    argv = ["publish", str(src), "--rsync-base", "rsync://h/m/", "--https-base", "https://h/r/",
            "--state-dir", str(tmp_path / "s")]  # fmt: skip
    assert main(argv) == 0
    for p in src.iterdir():
        p.unlink()
    capsys.readouterr()
    assert main(argv) == 1
    assert "[source-shrink-refused]" in capsys.readouterr().err
    assert main([*argv, "--force", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == 12


def test_bad_uri_flag_is_refused_with_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(
        [
            "publish",
            str(tmp_path),
            "--rsync-base",
            "rsync://h/../x/",
            "--https-base",
            "https://h/r/",
            "--state-dir",
            str(tmp_path / "s"),
        ]
    )
    assert rc == 1
    assert "[uri-dot-segment]" in capsys.readouterr().err


def test_missing_arguments_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["publish"])
    assert info.value.code == 2
    assert "missing" in capsys.readouterr().err


def test_limits_override_and_listing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert DEFAULT_LIMITS.override({"max_uri_length": 10}).max_uri_length == 10
    with pytest.raises(ConfigError):
        DEFAULT_LIMITS.override({"nope": 1})
    cfg = tmp_path / "c.toml"
    cfg.write_text("[limits]\nmax_uri_length = 99\n")
    assert main(["limits", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "max_uri_length = 2048 (configured: 99)" in out


def test_inspect_prints_what_the_reader_sees(
    corpus_dir: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    roa = sorted((corpus_dir / "objects" / "roa").rglob("*.roa"))[0]
    assert main(["inspect", "--json", str(roa)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["file"] == str(roa)
    bad = tmp_path / "garbage.roa"
    bad.write_bytes(random.Random(1).randbytes(300))
    assert main(["inspect", str(bad)]) == 1
    assert "error [" in capsys.readouterr().err


def test_make_demo_runs(tmp_path: Path) -> None:
    """`make demo` (python -m rpkirepo.demo) works from any directory and tells the story."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = subprocess.run(
        [sys.executable, "-m", "rpkirepo.demo"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "serial 1" in out.stdout and "serial 2" in out.stdout
    assert "nothing changed: serial stays 2" in out.stdout
    assert (tmp_path / "demo-out" / "rrdp" / "notification.xml").exists()
    assert "sync: deltas, 1 delta applied" in out.stdout
    assert "mirror tree identical to the publisher's: True" in out.stdout
    assert "then not-modified (one conditional request). Its tree is identical: True" in out.stdout
    # Step 7: fetch through our rsync daemon (a second run transfers nothing), then
    # rpki-client, when it can run here (pytest's 0700 tmp dirs keep _rpki-client out), agrees.
    text = out.stdout.split("\n7. ", 1)[1].split("\n\n", 1)[0]
    fetches = [line for line in text.splitlines() if "rpkirepo fetch" in line]
    assert len(fetches) == 2, text
    assert all("publication points matching their manifests: True" in f for f in fetches), text
    assert "second run" in fetches[1] and " 0 files transferred" in fetches[1], text
    clients = [line for line in text.splitlines() if "rpki-client" in line]
    assert clients, text
    for line in clients:
        assert line.endswith("exactly the testbed's expected VRPs: True") or "skipped" in line
