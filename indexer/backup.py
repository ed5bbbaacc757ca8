"""``python -m indexer backup [DIR]`` backs the collection up into DIR (default
``IMGSEARCH_BACKUP_DIR``): a snapshot of the index behind the alias, the API keys and the
decisions (and the duplicate state), the thumbnails beside it, a manifest; a second backup into
the same folder is incremental. ``python -m indexer restore [DIR] [--snapshot NAME]
[--replace] [--list]`` restores the newest backup of DIR (or NAME), or lists them
(imgsearch/snapshots.py).

Exit status: 0 done; 1 Elasticsearch unreachable, nothing indexed to back up, the collection
already on the node (restore without --replace), a snapshot that failed, or interrupted;
2 bad arguments, or a folder outside path.repo, without a backup, or damaged.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from imgsearch.settings import Settings
from imgsearch.snapshots import Backups, describe

from . import cli


def _parser(verb: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m indexer {verb}",
        description=(__doc__ or "").split("\n\n")[0],
        epilog="Exit status: 0 done; 1 Elasticsearch unreachable, nothing to back up, the "
        "collection already there (restore without --replace) or interrupted; 2 bad "
        "arguments, or a folder outside path.repo, without a backup or damaged.",
    )
    p.add_argument("dir", nargs="?", type=Path, default=None,
                   help="the backup folder, under the node's path.repo (default: "
                   "IMGSEARCH_BACKUP_DIR, which the local node lists there)")
    return p


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None):
    try:
        return parser.parse_args(argv), None
    except SystemExit as exc:  # argparse has said what was wrong
        return None, cli.EXIT_USAGE if exc.code else cli.EXIT_OK


def _set_up_logging() -> None:
    # SIGTERM stops like Ctrl-C: a backup deletes its unrecorded snapshot on the way out.
    cli.stop_on_sigterm()
    cli.set_up_logging(logging.WARNING)
    # The client's warnings would only repeat, a line earlier, the one error line that says
    # why a verb stopped (a node that failed: the verb fails with it; nothing is retried).
    logging.getLogger("elastic_transport").setLevel(logging.ERROR)


def _backups(args: argparse.Namespace, settings: Settings) -> Backups:
    from imgsearch.esclient import connect

    return Backups(connect(settings), settings, args.dir or settings.backup_dir)


def backup_main(argv: list[str] | None = None) -> int:
    args, status = _parse(_parser("backup"), argv)
    if args is None:
        return status
    _set_up_logging()
    return cli.run(lambda settings: backup_command(args, settings),
                   interrupted="interrupted; no backup was recorded")


def backup_command(args: argparse.Namespace, settings: Settings) -> int:
    backups = _backups(args, settings)
    entry = backups.backup()
    files = ", ".join(f"{info['files']} {tree} ({info['copied']} new)"
                      for tree, info in entry["files"].items())
    print(f"backed up {describe(entry)}; {files}; into {backups.folder} in "
          f"{entry['seconds']:.1f}s", file=sys.stderr)
    print(entry["snapshot"])  # alone on stdout, for scripts
    return cli.EXIT_OK


def restore_main(argv: list[str] | None = None) -> int:
    parser = _parser("restore")
    parser.add_argument("--snapshot", metavar="NAME",
                        help="the backup to restore (default: the newest; --list shows them)")
    parser.add_argument("--replace", action="store_true",
                        help="where the collection exists already: restore the image index "
                        "beside it and move the alias (the old index is kept), and replace "
                        "the keys and decisions with the backup's")
    parser.add_argument("--list", action="store_true",
                        help="list the folder's backups, oldest first, and restore nothing")
    args, status = _parse(parser, argv)
    if args is None:
        return status
    _set_up_logging()
    return cli.run(lambda settings: restore_command(args, settings),
                   interrupted="interrupted; what Elasticsearch had begun to restore goes on, "
                   "and the alias was not moved")


def restore_command(args: argparse.Namespace, settings: Settings) -> int:
    backups = _backups(args, settings)
    if args.list:
        for entry in backups.list():
            print(describe(entry))
        return cli.EXIT_OK
    report = backups.restore(args.snapshot, replace=args.replace)
    counts = ", ".join(f"{name} {n}" for name, n in report.documents.items())
    moved = (f"; alias {report.alias!r} moved from {report.previous} (kept, not searched)"
             if report.previous else "")
    replaced = f"; replaced {', '.join(report.replaced)}" if report.replaced else ""
    files = ", ".join(f"{n} {tree}" for tree, n in report.files.items())
    print(f"restored {report.snapshot} as {report.index} ({counts}){moved}{replaced}; copied "
          f"{files or 'no files'} in {report.seconds:.1f}s", file=sys.stderr)
    for name, (got, want) in report.mismatched.items():
        print(f"warning: {name} has {got} documents, the backup counted {want}",
              file=sys.stderr)
    return cli.EXIT_OK


VERBS = {"backup": backup_main, "restore": restore_main}
