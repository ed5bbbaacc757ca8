"""Indexing throughput end to end against the model's compiled forward pass alone.

    python -m bench.indexing --images ../shared/datasets/clothing-small/images \
        [--runtimes tensorflow,openvino] [--int8 var/models/base-int8]

Each runtime indexes the whole folder in a fresh process of its own (as the product runs).

The forward pass is timed just before and just after the indexing run, and the ratio taken
against their mean, so that a drift of the machine's speed does not flatter either side.

Needs a running Elasticsearch at ES_URL (``make es-up``); indexes into a throwaway alias that
it deletes afterwards. Thumbnails go to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from bench.machine import cpu_line
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


RUNTIMES = ("tensorflow", "openvino")


def measure(images: Path, runtime: str, int8: Path | None) -> dict:
    """One runtime's indexing run and forward rate, in this (fresh) process."""
    with tempfile.TemporaryDirectory() as thumbs:
        settings = Settings.from_env(es_index=f"bench-{uuid.uuid4().hex[:8]}",
                                     thumbnail_dir=Path(thumbs), runtime=runtime)
        embedder = Embedder(settings, model_dir=int8)
        paths = sorted(images.rglob("*.jpg"))
        before = forward_rate(embedder, paths, settings.batch_size)
        store = ImageStore.from_settings(settings)
        try:
            report = index_folder(images, settings=settings, embedder=embedder,
                                  store=store, progress=False)
        finally:
            store.es.indices.delete(index=f"{settings.es_index}-*", ignore_unavailable=True)
        after = forward_rate(embedder, paths, settings.batch_size)
    return {"runtime": runtime + (" int8" if int8 else ""), "precision": embedder.precision,
            "version": embedder.version, "images": report.embedded,
            "seconds": round(report.seconds, 1), "forward_before": round(before, 1),
            "forward_after": round(after, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--runtimes", default=",".join(RUNTIMES),
                   help="comma-separated, each run in a process of its own")
    p.add_argument("--int8", type=Path, help="also an int8 model directory, on OpenVINO")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        runtime, _, int8 = args.measure.partition(":")
        print(json.dumps(measure(args.images, runtime, Path(int8) if int8 else None)))
        return
    jobs = [r for r in args.runtimes.split(",") if r]
    if args.int8:
        jobs.append(f"openvino:{args.int8}")
    print(f"CPU: {cpu_line()}")
    for job in jobs:
        out = subprocess.run([sys.executable, "-m", "bench.indexing", "--images",
                              str(args.images), "--measure", job],
                             capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        ceiling = (r["forward_before"] + r["forward_after"]) / 2
        rate = r["images"] / r["seconds"]
        print(f"{r['runtime']:14s} {r['precision']:5s} forward (batch 32) {ceiling:5.1f} images/s "
              f"(before {r['forward_before']}, after {r['forward_after']}); indexer end to "
              f"end {rate:5.1f} images/s = {rate / ceiling:.0%} ({r['images']} images, "
              f"{r['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
