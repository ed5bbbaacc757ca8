"""bf16 inference (Keras ``mixed_bfloat16``) against fp32: speed and agreement of the vectors.

    python -m bench.bf16 --images ../shared/datasets/clothing-small/images/test [-n 64]

bf16 pays only where the hardware computes in it (AVX512-BF16/AMX CPUs, recent GPUs); elsewhere
TensorFlow emulates it. This prints the CPU flags that decide, the two rates, and the cosine of
each bf16 vector to its fp32 twin.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from imgsearch.embedder import Embedder
from imgsearch.images import decode_image
from imgsearch.settings import Settings


def rate(fn, pixels: np.ndarray, batch: int, seconds: float = 8.0) -> float:
    fn(pixels[:batch])
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        fn(pixels[:batch])
        done += batch
    return done / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("-n", type=int, default=64)
    args = p.parse_args()
    flags = set(Path("/proc/cpuinfo").read_text().split())
    print("CPU bf16 support:", sorted(f for f in flags if "bf16" in f or f.startswith("amx"))
          or "none (no avx512_bf16 / amx_bf16)")

    settings = Settings.from_env()
    fp32 = Embedder(settings)
    paths = sorted(args.images.rglob("*.jpg"))[: args.n]
    pixels = np.stack([decode_image(p.read_bytes(), resize_mode=settings.resize_mode,
                                    thumbnail_size=0).pixels for p in paths])

    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    model = keras.applications.ResNet50(include_top=False, pooling="avg", weights=None)
    model.set_weights(fp32.model.get_weights())
    keras.mixed_precision.set_dtype_policy("float32")
    preprocess = keras.applications.resnet50.preprocess_input

    @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.uint8)])
    def bf16(x):
        out = tf.cast(model(preprocess(tf.cast(x, tf.float32)), training=False), tf.float32)
        return tf.math.l2_normalize(out, axis=1)

    a = np.concatenate([fp32.embed(pixels[i : i + 32]) for i in range(0, len(pixels), 32)])
    b = np.concatenate([bf16(pixels[i : i + 32]).numpy() for i in range(0, len(pixels), 32)])
    cos = (a * b).sum(axis=1)
    r32 = rate(fp32.embed, pixels, 32)
    r16 = rate(lambda x: bf16(x).numpy(), pixels, 32)
    print(f"fp32: {r32:.1f} images/s   bf16: {r16:.1f} images/s   ratio {r16 / r32:.2f}x")
    print(f"cosine bf16 vs fp32 over {len(cos)} photos: min {cos.min():.5f}, "
          f"mean {cos.mean():.5f}")


if __name__ == "__main__":
    main()
