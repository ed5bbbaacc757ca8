"""Indexing throughput end to end against the model's compiled forward pass alone.

    python -m bench.indexing --images ../shared/datasets/clothing-small/images

The forward pass is timed just before and just after the indexing run, and the ratio taken
against their mean, so that a drift of the machine's speed does not flatter either side.

Needs a running Elasticsearch at ES_URL (``make es-up``); indexes into a throwaway alias that
it deletes afterwards. Thumbnails go to a temporary directory.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from imgsearch.embedder import Embedder
from imgsearch.settings import Settings
from imgsearch.store import ImageStore
from indexer.index import index_folder


def forward_rate(embedder: Embedder, paths: list[Path], batch: int, rounds: int = 8) -> float:
    """Images/s of the compiled batched forward pass on pre-decoded tensors (the ceiling)."""
    pixels = np.stack([embedder.decode(p.read_bytes()).pixels for p in paths[:batch]])
    embedder.embed(pixels)  # trace
    started = time.perf_counter()
    for _ in range(rounds):
        embedder.embed(pixels)
    return rounds * len(pixels) / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, required=True)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as thumbs:
        settings = Settings.from_env(es_index=f"bench-{uuid.uuid4().hex[:8]}",
                                     thumbnail_dir=Path(thumbs))
        embedder = Embedder(settings)
        paths = sorted(args.images.rglob("*.jpg"))
        before = forward_rate(embedder, paths, settings.batch_size)
        store = ImageStore.from_settings(settings)
        try:
            report = index_folder(args.images, settings=settings, embedder=embedder,
                                  store=store, progress=False)
        finally:
            store.es.indices.delete(index=f"{settings.es_index}-*", ignore_unavailable=True)
        after = forward_rate(embedder, paths, settings.batch_size)
    ceiling = (before + after) / 2
    rate = report.embedded / report.seconds
    print(f"images:                       {report.embedded} (model {embedder.version}, "
          f"precision {embedder.precision})")
    print(f"compiled forward pass (batch {settings.batch_size}): {ceiling:6.1f} images/s "
          f"(before {before:.1f}, after {after:.1f})")
    print(f"indexer end to end:           {rate:6.1f} images/s "
          f"({report.seconds:.1f} s, {rate / ceiling:.0%} of the forward pass)")


if __name__ == "__main__":
    main()
