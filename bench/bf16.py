"""bf16 inference against fp32: speed, and how far the vectors and the neighbours move.

    python -m bench.bf16 --dataset ../shared/datasets/clothing-small [--split test] [--seconds 8]

Each variant runs in a fresh process (oneDNN fixes its maths mode once per process) over the
same photos, and reports images/s at batch 32 and batch 1 (each rate timed over ``--seconds``):

- ``fp32``: strict fp32 (``IMGSEARCH_PRECISION=fp32``);
- ``bf16``: the product's bf16 setting (``IMGSEARCH_PRECISION=bf16``): oneDNN's bf16 maths
  mode, convolutions and matrix products in bf16 with fp32 accumulation;
- ``keras-mixed-bf16``: Keras' ``mixed_bfloat16`` policy (every layer computes in bf16);
- ``tf-auto-mixed``: TensorFlow's oneDNN auto-mixed-precision graph rewrite.

Against fp32 it prints each variant's cosine per photo and the top-10 overlap of exact search
among the photos (each photo queries the others): how much of a result page changes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.child import run_child

VARIANTS = ("fp32", "bf16", "keras-mixed-bf16", "tf-auto-mixed")


def rate(fn, pixels: np.ndarray, batch: int, seconds: float = 8.0) -> float:
    fn(pixels[:batch])
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        fn(pixels[:batch])
        done += len(pixels[:batch])  # fewer than ``batch`` when the split is smaller
    return done / (time.perf_counter() - started)


def worker(variant: str, images: list[Path], out: Path, seconds: float) -> None:
    """Embed ``images`` one way; save the vectors and the two rates to ``out``."""
    os.environ["IMGSEARCH_PRECISION"] = "bf16" if variant == "bf16" else "fp32"
    import keras
    import tensorflow as tf

    from imgsearch.embedder import Embedder
    from imgsearch.settings import Settings

    if variant == "tf-auto-mixed":
        tf.config.optimizer.set_experimental_options(
            {"auto_mixed_precision_onednn_bfloat16": True})
    settings = Settings.from_env()
    embedder = Embedder(settings)
    embed = embedder.embed
    if variant == "keras-mixed-bf16":
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
        model = keras.applications.ResNet50(include_top=False, pooling="avg", weights=None)
        model.set_weights(embedder.model.get_weights())
        preprocess = keras.applications.resnet50.preprocess_input

        @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.uint8)])
        def forward(x):
            out = tf.cast(model(preprocess(tf.cast(x, tf.float32)), training=False), tf.float32)
            return tf.math.l2_normalize(out, axis=1)

        def embed(x):
            return forward(x).numpy()

    pixels = np.stack([embedder.decode(p.read_bytes()).pixels for p in images])
    vectors = np.concatenate([embed(pixels[i : i + 32]) for i in range(0, len(pixels), 32)])
    np.savez(out, vectors=vectors, batch32=rate(embed, pixels, 32, seconds),
             batch1=rate(embed, pixels, 1, seconds))


def top10(vectors: np.ndarray) -> np.ndarray:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1)[:, :10]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--seconds", type=float, default=8.0,
                   help="how long each rate is timed (default 8)")
    p.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    images = sorted((args.dataset / "images" / args.split).rglob("*.jpg"))
    if args.worker:
        worker(args.worker, images, args.out, args.seconds)
        return

    from imgsearch.embedder import cpu_flags

    print("CPU bf16 support:", sorted(f for f in cpu_flags() if "bf16" in f or f.startswith("amx"))
          or "none (no avx512_bf16 / amx_bf16: bf16 is emulated)")
    print(f"{len(images)} photos of {args.dataset.name}/{args.split}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for variant in ["fp32"] + [v for v in args.variants if v != "fp32"]:
            out = Path(tmp) / f"{variant}.npz"
            run_child([sys.executable, "-m", "bench.bf16", "--dataset", str(args.dataset),
                       "--split", args.split, "--seconds", str(args.seconds), "--worker",
                       variant, "--out", str(out)])
            results[variant] = dict(np.load(out))
    ref = results["fp32"]
    ref_top = top10(ref["vectors"])
    print(f"{'variant':18s} {'batch 32':>9s} {'speed-up':>8s} {'batch 1':>8s} "
          f"{'cos min':>8s} {'cos mean':>8s} {'top-10 overlap':>14s}")
    for variant, r in results.items():
        cos = (r["vectors"] * ref["vectors"]).sum(axis=1)
        overlap = np.mean([len(set(a) & set(b)) / 10
                           for a, b in zip(top10(r["vectors"]), ref_top, strict=True)])
        print(f"{variant:18s} {float(r['batch32']):7.1f}/s {r['batch32'] / ref['batch32']:7.2f}x "
              f"{float(r['batch1']):6.1f}/s {cos.min():8.5f} {cos.mean():8.5f} {overlap:14.4f}")


if __name__ == "__main__":
    main()
