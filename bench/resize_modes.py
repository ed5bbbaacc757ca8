"""Which resize to 224x224 retrieves best: squash, centre crop or pad?

Embeds a labelled folder once per mode and reports exact (brute-force) same-label precision@10
and mAP@10, each image querying all the others. No Elasticsearch involved: this isolates the
preprocessing choice from the index.

    python -m bench.resize_modes --dataset ../shared/datasets/clothing-small [--split test]
"""

from __future__ import annotations

import argparse
import csv
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from imgsearch.embedder import Embedder
from imgsearch.metrics import retrieval_scores
from imgsearch.settings import RESIZE_MODES, Settings


def load_labels(dataset: Path, split: str | None) -> list[tuple[Path, str]]:
    with open(dataset / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if split in (None, r.get("split"))]
    return [(dataset / "images" / r["path"], r["label"]) for r in rows]


def embed_all(embedder: Embedder, paths: list[Path], batch: int = 32) -> np.ndarray:
    """Vectors of ``paths``, each decoded the way ``embedder`` (its resize mode) decodes."""

    def decode(p: Path) -> np.ndarray:
        return embedder.decode(p.read_bytes()).pixels

    out = []
    with ThreadPoolExecutor(3) as pool:
        pixels = list(pool.map(decode, paths))
    for i in range(0, len(pixels), batch):
        out.append(embedder.embed(np.stack(pixels[i : i + batch])))
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, default=Settings.from_env().datasets_dir
                   / "clothing-small")
    p.add_argument("--split", default=None, help="train, validation or test (default: all)")
    args = p.parse_args(argv)
    items = load_labels(args.dataset, args.split)
    paths = [p for p, _ in items]
    labels = np.array([label for _, label in items])
    print(f"{len(paths)} images, {len(set(labels))} labels from {args.dataset}"
          f" (split: {args.split or 'all'})")
    print(f"{'mode':8s} {'P@10':>7s} {'mAP@10':>7s} {'seconds':>8s}")
    for mode in RESIZE_MODES:
        embedder = Embedder(Settings.from_env(resize_mode=mode))
        started = time.perf_counter()
        vectors = embed_all(embedder, paths)
        scores = retrieval_scores(vectors, labels)
        p10, map10 = scores["p@10"], scores["map@10"]
        print(f"{mode:8s} {p10:7.4f} {map10:7.4f} {time.perf_counter() - started:8.1f}")


if __name__ == "__main__":
    main()
