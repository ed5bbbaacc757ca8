"""int8 against fp32 on a labelled split: do the neighbours stay the same?

    python -m bench.int8 --dataset ../shared/datasets/clothing-small --int8 var/models/base-int8

Embeds the split (``--split``, default test) with the int8 model and with the fp32 model it was
quantised from (both on OpenVINO), then compares, by exact leave-one-out search over the split:
P@10 and mAP@10 (same label relevant) of each, the mean overlap of each photo's top 10 between
the two, and the cosine between each photo's two vectors. The issue's bounds for letting int8
share fp32's model version: top-10 overlap >= 0.98 and P@10 within 0.005.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from imgsearch.embedder import Embedder
from imgsearch.metrics import exact_ranking, retrieval_scores
from imgsearch.modelstore import read_card
from imgsearch.settings import Settings

OVERLAP_BOUND, P10_BOUND = 0.98, 0.005


def embed_all(model: Embedder, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
    return np.concatenate([model.embed(pixels[i : i + batch])
                           for i in range(0, len(pixels), batch)])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, required=True, help="folder with labels.csv")
    p.add_argument("--int8", type=Path, required=True, help="int8 model directory")
    p.add_argument("--split", default="test")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with open(args.dataset / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("split") == args.split]
    settings = Settings.from_env(runtime="openvino")
    card = read_card(args.int8)
    source_version = card["quantization"]["source_model_version"]
    int8 = Embedder(settings, model_dir=args.int8)
    fp32 = _source(settings, card)
    assert fp32.version == source_version, (fp32.version, source_version)
    images = args.dataset / "images"
    pixels = np.stack([fp32.decode((images / r["path"]).read_bytes()).pixels for r in rows])
    labels = [r["label"] for r in rows]
    v32, v8 = embed_all(fp32, pixels), embed_all(int8, pixels)
    s32, s8 = retrieval_scores(v32, labels), retrieval_scores(v8, labels)
    top32, top8 = exact_ranking(v32)[:, :10], exact_ranking(v8)[:, :10]
    overlap = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top32, top8, strict=True)]))
    cosines = np.sum(v32 * v8, axis=1)
    within = overlap >= OVERLAP_BOUND and abs(s8["p@10"] - s32["p@10"]) <= P10_BOUND
    summary = {
        "split": args.split, "photos": len(rows), "fp32": source_version,
        "int8": int8.version, "calibration_images": card["quantization"]["calibration"]["images"],
        "fp32_scores": {k: round(v, 4) for k, v in s32.items()},
        "int8_scores": {k: round(v, 4) for k, v in s8.items()},
        "top10_overlap": round(overlap, 4),
        "cosine": {"min": round(float(cosines.min()), 4),
                   "median": round(float(np.median(cosines)), 4)},
        "within_bounds": within,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{len(rows)} photos of the {args.split} split; int8 {int8.version} "
          f"({summary['calibration_images']} calibration photos)")
    for name, s in (("fp32", s32), ("int8", s8)):
        print(f"  {name}: P@10 {s['p@10']:.4f}  mAP@10 {s['map@10']:.4f}")
    print(f"  top-10 overlap with fp32 {overlap:.4f} (bound {OVERLAP_BOUND}); cosine to fp32 "
          f"min {cosines.min():.4f}, median {np.median(cosines):.4f}")
    print(f"  P@10 difference {s8['p@10'] - s32['p@10']:+.4f} (bound {P10_BOUND}); "
          f"{'within' if within else 'outside'} the bounds for sharing fp32's version")


def _source(settings: Settings, card: dict) -> Embedder:
    """The fp32 model the int8 one was quantised from: the base model or a tuned one."""
    from imgsearch.modelstore import ModelStore

    source = card["quantization"]["source_model_version"]
    base = Embedder(settings.with_(model=""))
    if base.version == source:
        return base
    del base
    found = ModelStore(settings.model_store).find(source)
    if found is None:
        raise SystemExit(f"the source model {source} is not in {settings.model_store}")
    return Embedder(settings, model_dir=found)


if __name__ == "__main__":
    main()
