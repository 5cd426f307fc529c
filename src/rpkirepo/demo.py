"""``make demo``: publish a sample repository, change it, publish again, and show the output.

The sample is the one complete, self-consistent repository of the shared corpus (a Krill test CA
tree, ``rrdp/krill-sync/validation/good``), read from ``../shared/corpus`` beside the checkout
(or ``$RPKIREPO_CORPUS``) through our own RRDP parser.  No server is needed: the output is plain
files under ``demo-out/``.  (The testbed work will replace the sample with generated repositories.)
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from rpkirepo.errors import RpkiRepoError
from rpkirepo.publish import PublishOptions, publish
from rpkirepo.rrdp.model import PublishElement
from rpkirepo.rrdp.parser import iter_events, parse_notification
from rpkirepo.uri import HttpsUri, RsyncUri

RSYNC_BASE = "rsync://localhost/repo/"
HTTPS_BASE = "https://localhost:3000/rrdp/"
SAMPLE = "rrdp/krill-sync/validation/good/rrdp"


def _corpus() -> Path:
    env = os.environ.get("RPKIREPO_CORPUS")
    root = Path(env) if env else Path(__file__).resolve().parents[3] / "shared" / "corpus"
    if not (root / SAMPLE).is_dir():
        sys.exit(f"demo: the shared corpus is not at {root} (set RPKIREPO_CORPUS)")
    return root


def _extract(corpus: Path, dest: Path) -> int:
    snapshot = next((corpus / SAMPLE).rglob("snapshot.xml"))
    count = 0
    for ev in iter_events([snapshot.read_bytes()]):
        if isinstance(ev, PublishElement):
            rel = ev.uri.uri[len(RSYNC_BASE) :]
            path = dest / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(ev.data)
            count += 1
    return count


def _show_tree(root: Path, limit: int = 12) -> None:
    shown = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if shown < limit:
                st = p.stat()
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(st.st_mtime))
                print(f"    {p.relative_to(root)}  {st.st_size:>7} bytes  mtime {stamp}Z")
            shown += 1
    if shown > limit:
        print(f"    ... and {shown - limit} more")


def main() -> int:
    out = Path("demo-out").resolve()
    shutil.rmtree(out, ignore_errors=True)
    src = out / "source"
    n = _extract(_corpus(), src)
    print(f"Sample: {n} objects of a Krill test CA tree, extracted into {src}\n")
    opts = PublishOptions(
        source_dir=src,
        rsync_base=RsyncUri(RSYNC_BASE),
        https_base=HttpsUri(HTTPS_BASE),
        state_dir=out / "state",
        rrdp_dir=out / "rrdp",
        rsync_dir=out / "rsync",
    )
    try:
        first = publish(opts)
        print(
            f"1. first run: new session {first.session_id}, serial {first.serial}, "
            f"{first.objects} objects"
        )
        print(f"   RRDP  {opts.rrdp_dir}:")
        _show_tree(opts.rrdp_dir, limit=6)
        print(f"   rsync {opts.rsync_dir}/current -> {os.readlink(opts.rsync_dir / 'current')}")
        print("   (file mtimes follow RFC 9589: CMS signing-time, notBefore, thisUpdate)")
        _show_tree(opts.rsync_dir / "current", limit=6)

        victim = sorted(src.rglob("*.roa"))[0]
        victim.unlink()
        second = publish(opts)
        print(
            f"\n2. removed {victim.relative_to(src)}: serial {second.serial}, "
            f"-{second.removed} object(s), one delta written"
        )
        note = parse_notification((opts.rrdp_dir / "notification.xml").read_bytes())
        print(f"   notification: serial {note.serial}, snapshot {note.snapshot.uri}")
        for d in note.deltas:
            print(f"   delta {d.serial}: {d.uri}")

        third = publish(opts)
        print(f"\n3. nothing changed: serial stays {third.serial}, nothing written")
        print(
            "\nServe it: point an HTTPS server at demo-out/rrdp (gzip_static for the .gz files) "
            "and an rsync module at demo-out/rsync/current."
        )
    except RpkiRepoError as exc:
        print(f"demo: error {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
