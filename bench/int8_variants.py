"""Ways to quantise to int8, against strict fp32: could int8 be the default?

    python -m bench.int8_variants --dataset ../shared/datasets/clothing-small [--variants A D2]

The issue's bars for ``auto`` to pick int8: top-10 overlap with the fp32 model >= 0.98 and
clothing P@10 within 0.005 (and >= 1.3x the current default's speed). Each variant is an
``nncf.quantize`` of the base model's OpenVINO graph, calibrated on photos of the train split
(seeded), and is scored on the test split by exact leave-one-out search against the same
model computing in strict fp32 (OpenVINO, ``INFERENCE_PRECISION_HINT`` f32): mean overlap of
each photo's top 10, P@10 (same label relevant) and the mean cosine of each photo's two
vectors. bf16, the default where the CPU has AVX512_BF16, is scored the same way for scale.

Variants (:data:`VARIANTS`): the product's preset (A: PERFORMANCE, symmetric activations,
fast bias correction), MIXED (asymmetric activations), full bias correction, more calibration,
and mixed precision: the first convolution and the last 3, or all 10 of conv5's, kept in fp32
(the layers nearest the pooled vector, where int8's error reaches the vector unfiltered).
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np

from bench.machine import cpu_line
from imgsearch.metrics import exact_ranking, retrieval_scores

VARIANTS = {
    "A": ("PERFORMANCE, fast bias correction (the product's)", {}, 1.0, 0),
    "B": ("MIXED preset", {"preset": "MIXED"}, 1.0, 0),
    "C": ("full bias correction", {"fast_bias_correction": False}, 1.0, 0),
    "E": ("MIXED, full bias correction, twice the photos",
          {"preset": "MIXED", "fast_bias_correction": False}, 2.0, 0),
    "D1": ("first conv + last 3 convs in fp32", {}, 1.0, 3),
    "D2": ("first conv + conv5 (last 10 convs) in fp32", {}, 1.0, 10),
}


def overlap(reference: np.ndarray, vectors: np.ndarray) -> float:
    a, b = exact_ranking(reference)[:, :10], exact_ranking(vectors)[:, :10]
    return float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b, strict=True)]))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, required=True, help="folder with labels.csv")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--calibration", type=int, default=300, help="photos of the train split")
    args = p.parse_args(argv)

    import nncf
    import openvino as ov

    from imgsearch.embedder import Embedder
    from imgsearch.runtime import convert
    from imgsearch.settings import Settings

    with open(args.dataset / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    fp32 = Embedder(Settings.from_env(runtime="openvino", precision="fp32"))
    assert fp32.precision == "fp32", fp32.precision

    def pixels(split_rows):
        return np.stack([fp32.decode((args.dataset / "images" / r["path"]).read_bytes()).pixels
                         for r in split_rows])

    def embed(fn, x):
        return np.concatenate([fn(x[i:i + 32]) for i in range(0, len(x), 32)])

    train = [r for r in rows if r["split"] == "train"]
    test_rows = [r for r in rows if r["split"] == "test"]
    labels = [r["label"] for r in test_rows]
    most = int(args.calibration * max(v[2] for k, v in VARIANTS.items() if k in args.variants))
    picked = np.random.default_rng(0).choice(len(train), min(most, len(train)), replace=False)
    calibration = pixels([train[i] for i in sorted(picked)])
    test = pixels(test_rows)
    reference = embed(fp32.embed, test)
    p10_fp32 = retrieval_scores(reference, labels)["p@10"]
    print(f"CPU: {cpu_line()}; date {time.strftime('%Y-%m-%d')}")
    print(f"test split: {len(test)} photos; fp32 P@10 {p10_fp32:.4f}; calibration up to "
          f"{len(calibration)} train photos")
    results = {}
    bf16 = Embedder(Settings.from_env(runtime="openvino", precision="bf16"))
    if bf16.precision == "bf16":
        v = embed(bf16.embed, test)
        results["bf16"] = {"what": "bf16 (OpenVINO), for scale", "overlap": overlap(reference, v),
                           "p10": retrieval_scores(v, labels)["p@10"],
                           "cos": float(np.mean(np.sum(v * reference, axis=1)))}
    graph = convert(fp32.model, fp32.input_size)
    convs = [op.get_friendly_name() for op in graph.get_ops()
             if op.get_type_name() == "Convolution"]
    core = ov.Core()
    for name in args.variants:
        what, options, more, keep_last = VARIANTS[name]
        options = dict(options)
        options["preset"] = getattr(nncf.QuantizationPreset, options.get("preset", "PERFORMANCE"))
        if keep_last:
            options["ignored_scope"] = nncf.IgnoredScope(names=convs[:1] + convs[-keep_last:],
                                                         validate=False)
        n = min(len(calibration), int(args.calibration * more))
        started = time.perf_counter()
        int8 = nncf.quantize(graph, nncf.Dataset([x[None] for x in calibration[:n]]),
                             subset_size=n, **options)
        seconds = time.perf_counter() - started
        compiled = core.compile_model(int8, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})

        def forward(x, compiled=compiled):
            v = next(iter(compiled(x).values()))
            return v / np.linalg.norm(v, axis=1, keepdims=True)

        v = embed(forward, test)
        results[name] = {"what": what, "calibration": n, "overlap": overlap(reference, v),
                         "p10": retrieval_scores(v, labels)["p@10"],
                         "cos": float(np.mean(np.sum(v * reference, axis=1))),
                         "quantize_seconds": round(seconds, 1)}
    print(f"{'variant':8s} {'overlap@10':>10s} {'P@10':>7s} {'dP@10':>7s} {'cosine':>8s}  what")
    for name, r in results.items():
        print(f"{name:8s} {r['overlap']:10.4f} {r['p10']:7.4f} {r['p10'] - p10_fp32:+7.4f} "
              f"{r['cos']:8.5f}  {r['what']}")
    print(json.dumps({"fp32_p10": p10_fp32, **results}))
    return results


if __name__ == "__main__":
    main()
