"""``python -m indexer search <image> -k 10``: print the nearest indexed images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imgsearch.filters import FilterError, Filters
from imgsearch.settings import Settings


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
    from imgsearch.images import ImageError

    from .index import quiet_transport_logs

    quiet_transport_logs()
    from imgsearch.runtime import RuntimeUnavailable
    from imgsearch.search import QueryError, SearchService
    from imgsearch.serving import initial_model
    from imgsearch.store import ImageStore, StoreError
    from imgsearch.weights import WeightsError

    try:
        data = args.image.read_bytes()
        filters = Filters.from_params({"label": args.label, "folder": args.folder})
        settings = Settings.from_env()
        store = ImageStore.from_settings(settings)
        # The model that built the index (from the model store), else the configured one.
        service = SearchService(settings, store, initial_model(settings, store))
        result = service.search_image(
            data, k=args.k, num_candidates=args.num_candidates, filters=filters
        )
    except OSError as exc:
        print(f"error: cannot read {args.image}: {exc.strerror}", file=sys.stderr)
        return 2
    except (ImageError, QueryError, FilterError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (StoreError, WeightsError, RuntimeUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for rank, hit in enumerate(result.hits, 1):
        label = hit.source.get("label") or "-"
        print(f"{rank:3d}  {hit.cosine:.4f}  {label:12s}  {hit.source.get('path')}")
    t = result.timings_ms
    print(f"({len(result.hits)} results; decode {t['decode']} ms, embed {t['embed']} ms, "
          f"search {t['search']} ms)", file=sys.stderr)
    return 0
