"""``python -m indexer duplicates [--threshold T] [--json] [--min-size 2]``: print the groups of
near-duplicate images in the index (imgsearch/duplicates.py), from the pairs kept as images
are indexed (``--exhaustive``: from every vector, the check); ``--update`` first finds the
pairs of the images that have none (an index built before pairs were kept), ``--rebuild``
finds every image's again at ``IMGSEARCH_DUPLICATE_FLOOR`` (imgsearch/pairs.py).

Exit status: 0 the groups were printed (none is a result too); 1 the index could not be read
(Elasticsearch unreachable, nothing indexed yet, no pairs kept yet), 2 bad arguments.
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
    how = p.add_mutually_exclusive_group()
    how.add_argument("--update", action="store_true",
                     help="first find the pairs of the images that have none (one kNN query "
                     "each): an index built before pairs were kept")
    how.add_argument("--rebuild", action="store_true",
                     help="first find every image's pairs again, at IMGSEARCH_DUPLICATE_FLOOR "
                     "(to lower the floor)")
    how.add_argument("--exhaustive", action="store_true",
                     help="group from every image's vector (one kNN query each) instead of "
                     "from the kept pairs")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.set_up_logging(logging.WARNING)
    return cli.run(lambda settings: duplicates_command(args, settings))


def duplicates_command(args: argparse.Namespace, settings: Settings) -> int:
    from tqdm import tqdm

    from imgsearch.decisions import Decisions
    from imgsearch.duplicates import DuplicateGroups, check_threshold, find_duplicates
    from imgsearch.store import ImageStore

    threshold = check_threshold(
        settings.duplicate_threshold if args.threshold is None else args.threshold)
    if args.min_size < 2:
        raise cli.UsageError("--min-size must be at least 2 (a group of one is no duplicate)")
    store = ImageStore.from_settings(settings)
    if args.update or args.rebuild:
        update_pairs(store, settings, rebuild=args.rebuild, progress=not args.no_progress)
    if args.exhaustive:
        # Shown after a second: a small index is grouped before a bar would be worth it.
        with tqdm(unit="img", disable=args.no_progress, dynamic_ncols=True, delay=1,
                  file=sys.stderr) as bar:
            def progress(done: int) -> None:
                bar.total = bar.total or store.count()
                bar.update(done - bar.n)

            report = find_duplicates(store, threshold, min_size=args.min_size,
                                     progress=progress)
        groups, documents, index = report.groups, report.documents, report.index
        how = f"{report.queries} kNN queries in {report.seconds:.1f} s"
    else:
        decisions = Decisions(store.es, settings.image_decisions_index)
        page = DuplicateGroups(store, decisions, threshold).page(
            threshold, limit=None, min_size=args.min_size)
        groups, documents, index = page.groups, page.documents, page.kept.index
        how = f"from {page.kept.pairs} kept pairs in {page.kept.seconds:.2f} s"
        if page.unvisited:
            print(f"warning: {page.unvisited} images have no pairs yet: run `python -m indexer "
                  "duplicates --update`", file=sys.stderr)
    for n, group in enumerate(groups, 1):
        if args.json:
            print(json.dumps({"size": group.size, "min_cosine": group.min_cosine, "members": [
                {"id": m.id, "cosine": m.cosine, "path": m.source.get("path"),
                 "label": m.source.get("label")} for m in group.members]}))
            continue
        print(f"group {n}: {group.size} images, cosine to the first at least "
              f"{group.min_cosine:.4f}")
        for m in group.members:
            print(f"  {m.cosine:.4f}  {m.source.get('label') or '-':12s}  {m.source.get('path')}")
    said = "1 group" if len(groups) == 1 else f"{len(groups)} groups"
    print(f"{said} of {sum(g.size for g in groups)} images among {documents} "
          f"documents of {index} at cosine >= {threshold} ({how})", file=sys.stderr)
    return cli.EXIT_OK


def update_pairs(store, settings: Settings, *, rebuild: bool, progress: bool) -> None:
    """Find the pairs of the images of the alias's index that have none (all of them again,
    at the setting's floor, with ``rebuild``)."""
    from tqdm import tqdm

    from imgsearch.esclient import IndexMissing
    from imgsearch.pairs import PairFinder, PairState

    index = store.indices.current_index()
    if index is None:
        raise IndexMissing(f"no index behind the alias {store.alias!r}")
    if rebuild:
        PairState(store.es, index).drop()
    finder = PairFinder(store, index, settings.duplicate_floor)
    with tqdm(total=store.count(index), unit="img", disable=not progress, dynamic_ncols=True,
              delay=1, file=sys.stderr) as bar:
        visited, pairs = finder.visit_missing(progress=lambda done: bar.update(done - bar.n))
    print(f"pairs of {visited} images found ({pairs} pairs at cosine >= {finder.floor})",
          file=sys.stderr)
