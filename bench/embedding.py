"""Embedding speed per runtime, side by side, on the same photos in one process:

1. naive: what reference demos do, one Keras ``model.predict`` per image;
2. for each runtime (TensorFlow compiled, OpenVINO fp32, and an int8 model with ``--int8``):
   the forward pass on decoded tensors at batch 32 (images/s) and at batch 1 (ms per image,
   the web app's case), and the indexer's read -> decode (thread pool) -> batched embed
   pipeline without Elasticsearch (images/s, and its share of that runtime's forward rate);
3. the CPU's limit: its peak fp32 rate (cores x clock x FLOPs per cycle: two FMA units of 8
   lanes with AVX2, 16 with AVX-512, 2 FLOPs per FMA) divided by ResNet50's 8.2 GFLOP per
   224-px image; beside it, what a large matrix product on OpenVINO (oneDNN's GEMM) reaches;
4. decoding's cost: one core's milliseconds per photo for the indexer's decode + thumbnail,
   which shares the cores with inference.

    python -m bench.embedding --images ../shared/datasets/clothing-small/images/test \
        [--int8 var/models/base-int8] [-n 372] [--json]

Every runtime is measured in a fresh process of its own, ``--rounds`` times, the runtimes
alternating, and medians are compared (a VM's speed drifts by several percent over a minute).
The precision is IMGSEARCH_PRECISION's (``auto``: bf16 where the CPU computes in it); to
compare TensorFlow's bf16 and fp32, see bench/bf16.py.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from bench.child import run_child
from bench.machine import cpu_line
from imgsearch.embedder import Embedder, cpu_flags
from imgsearch.pipeline import (
    RunStats,
    batches,
    embed_batches,
    make_decoder,
    ordered_map,
    read_file,
)
from imgsearch.settings import Settings
from imgsearch.thumbnails import ThumbnailStore

# Multiply-accumulates of ResNet50 without its classifier at 224x224 (4.09 G), two FLOPs each.
RESNET50_GFLOP = 8.2


def peak_gflops() -> tuple[float, str]:
    """The CPU's theoretical fp32 peak and how it was computed (the clock is the one
    /proc/cpuinfo reports; a turbo clock would raise it)."""
    mhz = max(float(line.partition(":")[2]) for line in Path("/proc/cpuinfo").read_text()
              .splitlines() if line.startswith("cpu MHz"))
    lanes = 16 if "avx512f" in cpu_flags() else 8
    cores = len(os.sched_getaffinity(0))
    flops = cores * mhz / 1000 * 2 * lanes * 2
    return flops, f"{cores} cores x {mhz / 1000:.2f} GHz x 2 FMA units x {lanes} lanes x 2"


def decode_ms(embedder: Embedder, settings: Settings, paths: list[Path], root: Path) -> float:
    decode = make_decoder(embedder, ThumbnailStore(settings.thumbnail_dir),
                          settings.thumbnail_size, settings.max_image_pixels)
    items = [read_file(p, root) for p in paths]
    started = time.perf_counter()
    for item in items:
        decode(item)
    return (time.perf_counter() - started) / len(items) * 1000


def gemm_gflops(n: int = 2048, repeats: int = 10) -> float:
    """fp32 GFLOP/s of an ``n``-cube matrix product on OpenVINO's CPU plugin (all cores)."""
    import openvino as ov
    import openvino.opset13 as ops

    a = ops.parameter([n, n], ov.Type.f32)
    b = ops.constant(np.random.default_rng(0).random((n, n), np.float32))
    compiled = ov.Core().compile_model(ov.Model([ops.matmul(a, b, False, False)], [a]), "CPU",
                                       {"PERFORMANCE_HINT": "LATENCY",
                                        "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    x = np.random.default_rng(1).random((n, n), np.float32)
    request.infer({0: x})
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        request.infer({0: x})
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


def naive(embedder: Embedder, paths: list[Path]) -> float:
    from keras.applications.resnet50 import preprocess_input

    started = time.perf_counter()
    for p in paths:
        pixels = embedder.decode(p.read_bytes()).pixels
        embedder.model.predict(preprocess_input(pixels.astype(np.float32)[None]), verbose=0)
    return len(paths) / (time.perf_counter() - started)


def pipeline(embedder: Embedder, settings: Settings, paths: list[Path], root: Path) -> float:
    decode = make_decoder(embedder, ThumbnailStore(settings.thumbnail_dir),
                          settings.thumbnail_size, settings.max_image_pixels)
    started = time.perf_counter()
    with ThreadPoolExecutor(3) as pool:
        read = ordered_map(lambda p: read_file(p, root), paths, pool, 64)
        decoded = ordered_map(decode, read, pool, 64)
        # Each batch comes with its vectors and its region vectors (none here).
        count = sum(len(group) for group, _, _ in embed_batches(
            batches(decoded, settings.batch_size, RunStats()), embedder.embed))
    return count / (time.perf_counter() - started)


def batched(embedder: Embedder, pixels: np.ndarray, batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(pixels), batch):
        embedder.embed(pixels[i : i + batch])
    return len(pixels) / (time.perf_counter() - started)


def single_ms(embedder: Embedder, pixels: np.ndarray, count: int = 24) -> float:
    started = time.perf_counter()
    for i in range(count):
        embedder.embed(pixels[i % len(pixels)][None])
    return (time.perf_counter() - started) / count * 1000


RUNTIMES = {"tensorflow": ("tensorflow", None), "openvino": ("openvino", None),
            "openvino int8": ("openvino", "int8")}


def measure(args) -> dict:
    """One runtime's figures, in this (fresh) process."""
    paths = sorted(args.images.rglob("*.jpg"))[: args.n or None]
    runtime, int8 = RUNTIMES[args.measure]
    with tempfile.TemporaryDirectory() as thumbs:
        settings = Settings.from_env(thumbnail_dir=Path(thumbs), runtime=runtime)
        model = Embedder(settings, model_dir=args.int8 if int8 else None)
        pixels = np.stack([model.decode(p.read_bytes()).pixels for p in paths])
        model.embed(pixels[:1])  # compile both ways before any timing
        model.embed(pixels[: settings.batch_size])
        out = {"precision": model.precision, "version": model.version,
               "batch": batched(model, pixels, settings.batch_size),
               "single_ms": single_ms(model, pixels)}
        if not args.no_pipeline:
            out["pipeline"] = pipeline(model, settings, paths, args.images)
        if runtime == "tensorflow":
            out["naive"] = naive(model, paths[:32])
            out["decode_ms"] = decode_ms(model, settings, paths[:64], args.images)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("-n", type=int, default=0, help="photos (default: all)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--int8", type=Path, help="an int8 model directory (indexer quantize)")
    p.add_argument("--no-pipeline", action="store_true", help="forward passes only")
    p.add_argument("--json", action="store_true")
    p.add_argument("--measure", choices=RUNTIMES, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args)))
        return
    names = [n for n in RUNTIMES if args.int8 or RUNTIMES[n][1] is None]
    child = [sys.executable, "-m", "bench.embedding", "--images", str(args.images),
             "-n", str(args.n)] + (["--int8", str(args.int8)] if args.int8 else []) + (
             ["--no-pipeline"] if args.no_pipeline else [])
    runs: dict[str, list[dict]] = {name: [] for name in names}
    # Each runtime in a fresh process, alternating: TensorFlow's idle threads keep spinning
    # for a while after a batch and slowed OpenVINO's next images by up to a third when they
    # shared a process (which the product never does).
    for _ in range(args.rounds):
        for name in names:
            out = run_child(child + ["--measure", name])
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    peak, how = peak_gflops()
    gflops = gemm_gflops()
    limit = peak / RESNET50_GFLOP

    def median(name: str, key: str) -> float | None:
        values = [r[key] for r in runs[name] if key in r]
        return statistics.median(values) if values else None

    tf_batch, tf_single = median("tensorflow", "batch"), median("tensorflow", "single_ms")
    rows = []
    for name in names:
        batch, single, piped = (median(name, k) for k in ("batch", "single_ms", "pipeline"))
        rows.append({
            "runtime": name, "precision": runs[name][0]["precision"],
            "batch32_images_per_s": round(batch, 1),
            "batch32_x_tensorflow": round(batch / tf_batch, 2),
            "batch32_share_of_limit": round(batch / limit, 2),
            "batch1_ms": round(single, 1),
            "batch1_x_tensorflow": round(tf_single / single, 2),
            "pipeline_images_per_s": round(piped, 1) if piped else None,
            "pipeline_share_of_forward": round(piped / batch, 2) if piped else None,
            "rounds": {k: [round(r[k], 1) for r in runs[name] if k in r]
                       for k in ("batch", "single_ms", "pipeline")},
        })
    paths = sorted(args.images.rglob("*.jpg"))[: args.n or None]
    summary = {"cpu": cpu_line(), "photos": len(paths),
               "model": runs["tensorflow"][0]["version"],
               "naive_images_per_s": round(median("tensorflow", "naive"), 1),
               "peak_gflops": round(peak, 1), "peak_computed_as": how,
               "gemm_gflops": round(gflops, 1), "limit_images_per_s": round(limit, 1),
               "decode_ms_one_core": round(median("tensorflow", "decode_ms"), 1),
               "runtimes": rows}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"CPU: {summary['cpu']}")
    print(f"{len(paths)} photos, model {summary['model']}, {args.rounds} rounds (medians)")
    print(f"limit: peak {peak:.0f} GFLOP/s fp32 ({how}) / {RESNET50_GFLOP} GFLOP per image "
          f"= {limit:.1f} images/s (a 2048^3 GEMM on OpenVINO reaches {gflops:.0f} GFLOP/s)")
    print(f"naive predict per image: {summary['naive_images_per_s']} images/s; decode + "
          f"thumbnail {summary['decode_ms_one_core']} ms per photo on one core")
    print(f"{'runtime':15s} {'precision':9s} {'batch 32':>9s} {'x TF':>5s} {'of limit':>8s} "
          f"{'batch 1':>8s} {'x TF':>5s} {'pipeline':>9s} {'of fwd':>6s}")
    for r in rows:
        piped = (f"{r['pipeline_images_per_s']:9.1f} {r['pipeline_share_of_forward']:6.0%}"
                 if r["pipeline_images_per_s"] else f"{'-':>9s} {'-':>6s}")
        print(f"{r['runtime']:15s} {r['precision']:9s} {r['batch32_images_per_s']:9.1f} "
              f"{r['batch32_x_tensorflow']:5.2f} {r['batch32_share_of_limit']:8.0%} "
              f"{r['batch1_ms']:6.1f}ms {r['batch1_x_tensorflow']:5.2f} {piped}")
    print("rounds:", {r["runtime"]: r["rounds"] for r in rows})


if __name__ == "__main__":
    main()
