"""``python -m indexer duplicates [--threshold T] [--json] [--min-size 2]``: print the groups of
near-duplicate images in the index (imgsearch/duplicates.py); nothing is written.

Exit status: 0 the groups were printed (none is a result too); 1 the index could not be read
(Elasticsearch unreachable, nothing indexed yet); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from imgsearch.settings import Settings

from . import cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m indexer duplicates",
        description="Group the indexed images that are near-duplicates of each other (copies "
        "re-encoded, resized, cropped, retouched or captioned).",
        epilog="Exit status: 0 done, 1 the index could not be read, 2 bad arguments.",
    )
    p.add_argument("--threshold", type=float,
                   help="least cosine of two near-duplicates, 0.5 to 1.0 (default: "
                   "IMGSEARCH_DUPLICATE_THRESHOLD, else the measured default)")
    p.add_argument("--min-size", type=int, default=2, help="only groups of at least this many")
    p.add_argument("--json", action="store_true",
                   help="one JSON object a group on stdout (the summary still on stderr)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.set_up_logging(logging.WARNING)
    return cli.run(lambda settings: duplicates_command(args, settings))


def duplicates_command(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from imgsearch.duplicates import check_threshold, find_duplicates
    from imgsearch.store import ImageStore

    threshold = check_threshold(
        settings.duplicate_threshold if args.threshold is None else args.threshold)
    if args.min_size < 2:
        raise cli.UsageError("--min-size must be at least 2 (a group of one is no duplicate)")
    store = ImageStore.from_settings(settings)
    # Shown after a second: a small index is grouped before a bar would be worth it.
    with tqdm(unit="img", disable=args.no_progress, dynamic_ncols=True, delay=1,
              file=sys.stderr) as bar:
        def progress(done: int) -> None:
            bar.total = bar.total or store.count()
            bar.update(done - bar.n)

        report = find_duplicates(store, threshold, min_size=args.min_size, progress=progress)
    for n, group in enumerate(report.groups, 1):
        if args.json:
            print(json.dumps({"size": group.size, "min_cosine": group.min_cosine, "members": [
                {"id": m.id, "cosine": m.cosine, "path": m.source.get("path"),
                 "label": m.source.get("label")} for m in group.members]}))
            continue
        print(f"group {n}: {group.size} images, cosine to the first at least "
              f"{group.min_cosine:.4f}")
        for m in group.members:
            print(f"  {m.cosine:.4f}  {m.source.get('label') or '-':12s}  {m.source.get('path')}")
    groups = "1 group" if len(report.groups) == 1 else f"{len(report.groups)} groups"
    print(f"{groups} of {report.images} images among {report.documents} "
          f"documents of {report.index} at cosine >= {report.threshold} "
          f"({report.queries} kNN queries in {report.seconds:.1f} s)", file=sys.stderr)
    return cli.EXIT_OK
