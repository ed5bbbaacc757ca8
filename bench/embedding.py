"""Embedding throughput, side by side, on the same photos:

1. naive: what reference demos do, one ``model.predict`` per image with decoding in the same
   thread (Keras' image loader path: PIL open, resize, ``preprocess_input``);
2. pipeline: the indexer's read -> decode (thread pool) -> batched compiled embed stages,
   without Elasticsearch;
3. ceiling: the compiled batched forward pass on tensors decoded beforehand.

    python -m bench.embedding --images ../shared/datasets/clothing-small/images/test [-n 372]

The pipeline and the ceiling run over every photo (a pipeline's fill and drain are fixed costs
that a short run would overweight), alternately for ``--rounds`` rounds, and the medians are
compared (a VM's speed drifts by several percent over a minute); the naive way, the slowest by
far, runs once over the first 64.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from imgsearch.embedder import Embedder
from imgsearch.settings import Settings
from imgsearch.thumbnails import ThumbnailStore
from indexer.pipeline import RunStats, batches, embed_batches, make_decoder, ordered_map, read_file


def naive(embedder: Embedder, paths: list[Path]) -> float:
    from keras.applications.resnet50 import preprocess_input

    started = time.perf_counter()
    for p in paths:
        # The model's own decoding (its resize mode), then Keras' predict on one image.
        pixels = embedder.decode(p.read_bytes()).pixels
        x = preprocess_input(pixels.astype(np.float32)[None])
        embedder.model.predict(x, verbose=0)
    return len(paths) / (time.perf_counter() - started)


def pipeline(embedder: Embedder, settings: Settings, paths: list[Path], root: Path) -> float:
    decode = make_decoder(embedder, ThumbnailStore(settings.thumbnail_dir),
                          settings.thumbnail_size, settings.max_image_pixels)
    started = time.perf_counter()
    with ThreadPoolExecutor(3) as pool:
        read = ordered_map(lambda p: read_file(p, root), paths, pool, 64)
        decoded = ordered_map(decode, read, pool, 64)
        count = sum(len(group) for group, _ in embed_batches(
            batches(decoded, settings.batch_size, RunStats()), embedder.embed))
    return count / (time.perf_counter() - started)


def ceiling(embedder: Embedder, paths: list[Path], batch: int) -> float:
    pixels = np.stack([embedder.decode(p.read_bytes()).pixels for p in paths])
    embedder.embed(pixels[:batch])
    started = time.perf_counter()
    for i in range(0, len(pixels), batch):
        embedder.embed(pixels[i : i + batch])
    return len(pixels) / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("-n", type=int, default=0, help="photos (default: all)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    paths = sorted(args.images.rglob("*.jpg"))[: args.n or None]
    with tempfile.TemporaryDirectory() as thumbs:
        settings = Settings.from_env(thumbnail_dir=Path(thumbs))
        embedder = Embedder(settings)
        embedder.warm_up()
        piped, forward = [], []
        for _ in range(args.rounds):
            piped.append(pipeline(embedder, settings, paths, args.images))
            forward.append(ceiling(embedder, paths, settings.batch_size))
        rates = {
            "naive (predict per image)": naive(embedder, paths[:64]),
            "indexer pipeline (no ES)": statistics.median(piped),
            "compiled forward (ceiling)": statistics.median(forward),
        }
    def listed(values: list[float]) -> str:
        return ", ".join(f"{v:.1f}" for v in values)

    print(f"{len(paths)} photos, model {embedder.version}, precision {embedder.precision}; "
          f"rounds: pipeline "
          f"{listed(piped)}, forward {listed(forward)}")
    top = rates["compiled forward (ceiling)"]
    base = rates["naive (predict per image)"]
    for name, rate in rates.items():
        print(f"{name:28s} {rate:6.1f} images/s  {rate / top:5.0%} of ceiling  "
              f"{rate / base:4.1f}x naive")


if __name__ == "__main__":
    main()
