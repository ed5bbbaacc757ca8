"""``python -m indexer search <image> -k 10``: print the nearest indexed images."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from imgsearch.filters import Filters
from imgsearch.settings import Settings

from . import cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m indexer search", description="Find the indexed images nearest to one."
    )
    p.add_argument("image", type=Path, help="query image file")
    p.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    p.add_argument("--num-candidates", type=int, help="HNSW candidates per shard")
    p.add_argument("--label", action="append", default=[], help="only this label (repeatable)")
    p.add_argument("--folder", action="append", default=[], help="only this folder (repeatable)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.set_up_logging(logging.WARNING)
    return cli.run(lambda settings: search_command(args, settings))


def search_command(args: argparse.Namespace, settings: Settings) -> int:
    from imgsearch.search import SearchService
    from imgsearch.serving import initial_model
    from imgsearch.store import ImageStore

    try:
        data = args.image.read_bytes()
    except OSError as exc:
        raise cli.UsageError(f"cannot read {args.image}: {exc.strerror}") from exc
    filters = Filters.from_params({"label": args.label, "folder": args.folder})
    store = ImageStore.from_settings(settings)
    # The model that built the index (from the model store), else the configured one.
    service = SearchService(settings, store, initial_model(settings, store))
    result = service.search_image(
        data, k=args.k, num_candidates=args.num_candidates, filters=filters
    )
    for rank, hit in enumerate(result.hits, 1):
        label = hit.source.get("label") or "-"
        print(f"{rank:3d}  {hit.cosine:.4f}  {label:12s}  {hit.source.get('path')}")
    t = result.timings_ms
    print(f"({len(result.hits)} results; decode {t['decode']} ms, embed {t['embed']} ms, "
          f"search {t['search']} ms)", file=sys.stderr)
    return cli.EXIT_OK
