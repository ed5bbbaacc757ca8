"""Indexing throughput end to end against the model's compiled forward pass alone.

    python -m bench.indexing --images ../shared/datasets/clothing-small/images \
        [--runtimes tensorflow,openvino] [--int8 var/models/base-int8] \
        [--regions off,standard,fine]

Each runtime (and region mode) indexes the whole folder in a fresh process of its own (as the
product runs); with region modes, each is also set against the same runtime's run without
regions (region search's target: at most 3x the indexing time).

The forward pass is timed just before and just after the indexing run, and the ratio taken
against their mean, so that a drift of the machine's speed does not flatter either side.

Needs a running Elasticsearch at ES_URL (``make es-up``); indexes into a throwaway alias that
it deletes afterwards. Thumbnails go to a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from bench.child import run_child
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


def es_cpu_seconds(store: ImageStore) -> float:
    """CPU seconds Elasticsearch's processes have used so far (all nodes): on a machine that
    also runs the node, its indexing work shares the cores with inference."""
    nodes = store.es.nodes.stats(metric="process").body["nodes"].values()
    return sum(n["process"]["cpu"]["total_in_millis"] for n in nodes) / 1000


def measure(images: Path, runtime: str, int8: Path | None, regions: str = "off") -> dict:
    """One runtime's indexing run and forward rate, in this (fresh) process."""
    with tempfile.TemporaryDirectory() as thumbs:
        settings = Settings.from_env(es_index=f"bench-{uuid.uuid4().hex[:8]}",
                                     thumbnail_dir=Path(thumbs), runtime=runtime,
                                     regions=regions)
        embedder = Embedder(settings, model_dir=int8)
        paths = sorted(images.rglob("*.jpg"))
        before = forward_rate(embedder, paths, settings.batch_size)
        store = ImageStore.from_settings(settings)
        es_cpu = es_cpu_seconds(store)
        try:
            report = index_folder(images, settings=settings, embedder=embedder,
                                  store=store, progress=False)
            es_cpu = es_cpu_seconds(store) - es_cpu
        finally:
            store.es.indices.delete(index=f"{settings.es_index}-*", ignore_unavailable=True)
        after = forward_rate(embedder, paths, settings.batch_size)
    return {"runtime": runtime + (" int8" if int8 else ""), "regions": regions,
            "precision": embedder.precision,
            "version": embedder.version, "images": report.embedded,
            # Milliseconds kept: the parent's rate must not come from a rounded short run.
            "seconds": round(report.seconds, 3), "es_cpu_seconds": round(es_cpu, 1),
            "forward_before": round(before, 1),
            "forward_after": round(after, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--runtimes", default=",".join(RUNTIMES),
                   help="comma-separated, each run in a process of its own")
    p.add_argument("--int8", type=Path, help="also an int8 model directory, on OpenVINO")
    p.add_argument("--regions", default="off",
                   help="comma-separated region modes (off, standard, fine), each a run")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        runtime, _, rest = args.measure.partition(":")
        int8, _, regions = rest.partition("@")
        print(json.dumps(measure(args.images, runtime, Path(int8) if int8 else None,
                                 regions or "off")))
        return
    jobs = [r for r in args.runtimes.split(",") if r]
    if args.int8:
        jobs.append(f"openvino:{args.int8}")
    modes = [m for m in args.regions.split(",") if m]
    print(f"CPU: {cpu_line()}")
    global_seconds: dict[str, float] = {}
    for job in jobs:
        for mode in modes:
            if mode != "off" and ":" in job:
                continue  # int8 models have no region vectors
            out = run_child([sys.executable, "-m", "bench.indexing", "--images",
                             str(args.images), "--measure", f"{job.partition(':')[0]}:"
                             f"{job.partition(':')[2]}@{mode}"])
            r = json.loads(out.strip().splitlines()[-1])
            ceiling = (r["forward_before"] + r["forward_after"]) / 2
            rate = r["images"] / r["seconds"]
            if mode == "off":
                global_seconds[job] = r["seconds"]
            against = (f"; {r['seconds'] / global_seconds[job]:.2f}x the time without regions"
                       if mode != "off" and job in global_seconds else "")
            print(f"{r['runtime']:14s} {r['precision']:5s} regions {mode:8s} forward (batch 32) "
                  f"{ceiling:5.1f} images/s (before {r['forward_before']}, after "
                  f"{r['forward_after']}); indexer end to end {rate:5.1f} images/s = "
                  f"{rate / ceiling:.0%} ({r['images']} images, {r['seconds']:.0f} s, "
                  f"Elasticsearch {r.get('es_cpu_seconds', 0):.0f} s of CPU){against}",
                  flush=True)


if __name__ == "__main__":
    main()
