"""Region search, measured before it is built: can a crop of a photo find its source?

    python -m bench.regions --images ../shared/datasets/clothing-small/images/test \
        [--areas 1 2 4] [--scales 2 3 4] [--queries 200]

The gallery is every photo of the folder. For each gallery photo the conv5 feature map is
computed on the whole image resized to each ``--areas`` budget (in multiples of the 224 x 224
global pass's pixels, aspect kept, sides multiples of 32), and pooled into R-MAC windows
at 1..``--scales`` scales (:mod:`imgsearch.regions`). Queries are random crops of the first
``--queries`` photos covering 5-10 %, 10-20 % and 20-40 % of their area (aspect 1:2 to 2:1),
each embedded as a whole photo by the model (its own decoding: centre crop at 224 px), as an
uploaded crop would be. An image scores the best cosine of its global vector and its regions;
reported: recall@1 and @10 of the source photo, per crop size, against the global vectors alone,
with the windows per image, float bytes per image, and the region pass's pixels and measured
time against the global pass's (TensorFlow, one image at a time against batches of 32, so the
time ratio overstates the cost; the pixel ratio is the FLOP ratio). Exact search in numpy (no
ES): this chooses the design; the index type is measured on top of it.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from bench.machine import cpu_line
from imgsearch.embedder import Embedder
from imgsearch.images import decode_rgb, model_input
from imgsearch.regions import box_pass_size, pass_size, pool, windows
from imgsearch.runtime import compile_feature_map
from imgsearch.settings import Settings

AREAS = ((0.05, 0.10), (0.10, 0.20), (0.20, 0.40))


def random_crop(rgb: Image.Image, area: tuple[float, float], rng) -> Image.Image:
    w, h = rgb.size
    for _ in range(100):
        share = rng.uniform(*area)
        aspect = np.exp(rng.uniform(np.log(0.5), np.log(2)))
        cw, ch = round(np.sqrt(share * w * h * aspect)), round(np.sqrt(share * w * h / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            return rgb.crop((x, y, x + cw, y + ch))
    raise ValueError("no crop fits")


def es_measure(es, index_type: str, regions: list[np.ndarray],
               boxes: list[list[tuple[float, float, float, float]]], queries: dict,
               sources: np.ndarray, num_candidates: int = 100) -> list[dict]:
    """Region vectors in a nested ``dense_vector`` field of ``index_type``; nested kNN (one hit
    an image, the best region as inner hit) for every query: recall@1/@10 of the source,
    latency, and the vector files' sizes per image."""
    from bench.scale import sizes

    index = f"bench-regions-{index_type.replace('_', '-')}-{uuid.uuid4().hex[:6]}"
    es.indices.create(index=index, settings={"number_of_shards": 1, "number_of_replicas": 0},
                      mappings={"properties": {"regions": {"type": "nested", "properties": {
                          "vector": {"type": "dense_vector", "dims": regions[0].shape[1],
                                     "similarity": "dot_product", "index": True,
                                     "index_options": {"type": index_type}},
                          "box": {"type": "float", "index": False}}}}})
    try:
        for start in range(0, len(regions), 16):
            ops = []
            for i in range(start, min(start + 16, len(regions))):
                ops.append({"index": {"_index": index, "_id": str(i)}})
                ops.append({"regions": [{"vector": v.tolist(), "box": list(b)}
                                        for v, b in zip(regions[i], boxes[i], strict=True)]})
            es.bulk(operations=ops, refresh=False)
        es.indices.refresh(index=index)
        es.indices.forcemerge(index=index, max_num_segments=1)
        size = sizes(es, index, index_type)
        rows = []
        for area, q in queries.items():
            ranks, took = [], []
            for vector, source in zip(q, sources, strict=True):
                started = time.perf_counter()
                resp = es.search(index=index, size=10, source=False, knn={
                    "field": "regions.vector", "query_vector": vector.tolist(), "k": 10,
                    "num_candidates": num_candidates,
                    "inner_hits": {"size": 1, "_source": False, "fields": ["regions.box"]}})
                took.append((time.perf_counter() - started) * 1000)
                ids = [int(h["_id"]) for h in resp["hits"]["hits"]]
                ranks.append(ids.index(source) if source in ids else 99)
            ranks, took = np.array(ranks), np.sort(took)
            rows.append({"index_type": index_type, "area": area,
                         "recall@1": float(np.mean(ranks < 1)),
                         "recall@10": float(np.mean(ranks < 10)),
                         "p50_ms": float(np.percentile(took, 50)),
                         "p95_ms": float(np.percentile(took, 95)),
                         "hot_kb_per_image": size["hot_bytes"] / len(regions) / 1024,
                         "disk_kb_per_image": size["disk_bytes"] / len(regions) / 1024})
        return rows
    finally:
        es.indices.delete(index=index, ignore_unavailable=True)


def recall(sims_per_image: np.ndarray, sources: np.ndarray) -> tuple[float, float]:
    order = np.argsort(-sims_per_image, axis=1)
    rank = np.argmax(order == sources[:, None], axis=1)
    return float(np.mean(rank < 1)), float(np.mean(rank < 10))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--areas", type=float, nargs="+", default=[1.0, 2.0, 4.0],
                   help="region pass sizes, in multiples of the 224 x 224 pass's pixels")
    p.add_argument("--scales", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--es-types", nargs="*", default=[],
                   help="also index the first --areas/--scales design's regions into ES with "
                   "these vector index types and measure nested kNN (needs make es-up)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    paths = sorted(args.images.rglob("*.jpg"))
    settings = Settings.from_env()
    model = Embedder(settings)
    rgbs = [decode_rgb(p.read_bytes(), short_side=1024) for p in paths]
    started = time.perf_counter()
    gallery = np.concatenate([model.embed(np.stack([model.decode(p.read_bytes()).pixels
                                                     for p in paths[i:i + 32]]))
                              for i in range(0, len(paths), 32)])
    global_seconds = time.perf_counter() - started

    rng = np.random.default_rng(args.seed)
    sources = np.arange(min(args.queries, len(paths)))
    queries, crops_by_area = {}, {}
    for area in AREAS:
        crops = crops_by_area[area] = [random_crop(rgbs[i], area, rng) for i in sources]
        pixels = np.stack([model_input(c, model.input_size, model.resize_mode) for c in crops])
        queries[area] = np.concatenate([model.embed(pixels[i:i + 32])
                                        for i in range(0, len(pixels), 32)])

    results = {"cpu": cpu_line(), "gallery": len(paths), "queries_per_area": len(sources),
               "global_seconds": round(global_seconds, 1), "rows": []}
    for area in AREAS:
        r1, r10 = recall(queries[area] @ gallery.T, sources)
        results["rows"].append({"mode": "global", "area": area, "recall@1": r1,
                                "recall@10": r10})
    feature_map = compile_feature_map(model.model)

    def forward(pixels: np.ndarray) -> np.ndarray:
        return feature_map(pixels[None]).numpy()[0]

    def described(crop: Image.Image, photo: Image.Image, budget: float) -> np.ndarray:
        """A crop at the scale of its photo's regions, average-pooled (a box query)."""
        size = box_pass_size(*crop.size, *photo.size, budget)
        v = forward(np.asarray(crop.resize(size, Image.Resampling.BILINEAR))).mean(axis=(0, 1))
        return v / np.linalg.norm(v)

    for area_budget in args.areas:
        pixels_budget = area_budget * 224 * 224
        scaled = {area: np.stack([described(c, rgbs[i], pixels_budget) for c, i in
                                  zip(crops_by_area[area], sources, strict=True)])
                  for area in AREAS}
        images = [np.asarray(rgb.resize(pass_size(*rgb.size, pixels_budget),
                                        Image.Resampling.BILINEAR)) for rgb in rgbs]
        pixels_ratio = float(np.mean([i.shape[0] * i.shape[1] for i in images])) / 224**2
        started = time.perf_counter()
        maps = [forward(image) for image in images]
        seconds = time.perf_counter() - started
        for scales in args.scales:
            pooled = []
            for m in maps:
                pooled.append(pool(m, windows(m.shape[0], m.shape[1], scales)))
            counts = np.array([len(v) for v in pooled])
            owner = np.repeat(np.arange(len(pooled)), counts)
            regions = np.concatenate(pooled)
            if args.es_types and (area_budget, scales) == (args.areas[0], args.scales[0]):
                from imgsearch.store import connect

                es = connect(settings)
                wins = [windows(m.shape[0], m.shape[1], scales) for m in maps]
                boxes = [[w.box for w in ws] for ws in wins]
                for index_type in args.es_types:
                    results.setdefault("es", []).extend(
                        es_measure(es, index_type, pooled, boxes, scaled, sources))
            for area, query_mode in ((a, m) for m in ("224", "scaled") for a in AREAS):
                q = queries[area] if query_mode == "224" else scaled[area]
                best = np.full((len(q), len(paths)), -1.0, np.float32)
                sims = q @ regions.T
                for j in range(len(paths)):
                    best[:, j] = sims[:, owner == j].max(axis=1)
                best = np.maximum(best, q @ gallery.T)
                r1, r10 = recall(best, sources)
                results["rows"].append({
                    "mode": f"{area_budget:g}x L{scales} q{query_mode}", "area": area,
                    "recall@1": r1,
                    "recall@10": r10, "windows_mean": float(counts.mean()),
                    "kb_per_image_float": float(counts.mean() * 2048 * 4 / 1024),
                    "map_seconds_vs_global": round(seconds / global_seconds, 2),
                    "map_pixels_vs_global": round(pixels_ratio, 2),
                })
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results.get("es", []):
        lo, hi = r["area"]
        print(f"ES nested kNN {r['index_type']:10s} {f'{lo:.0%}-{hi:.0%}':>8s} regions only: "
              f"R@1 {r['recall@1']:.3f} R@10 {r['recall@10']:.3f}  p50 {r['p50_ms']:.1f} ms "
              f"p95 {r['p95_ms']:.1f} ms  vectors {r['hot_kb_per_image']:.1f} KB/image hot, "
              f"{r['disk_kb_per_image']:.1f} KB on disk")
    print(f"CPU: {results['cpu']}; gallery {len(paths)}, {len(sources)} crops per size")
    print(f"{'mode':14s} {'crop area':>10s} {'R@1':>6s} {'R@10':>6s} {'windows':>8s} "
          f"{'KB/img':>7s} {'pixels':>6s} {'time':>5s}")
    for r in results["rows"]:
        lo, hi = r["area"]
        print(f"{r['mode']:14s} {f'{lo:.0%}-{hi:.0%}':>10s} {r['recall@1']:6.3f} "
              f"{r['recall@10']:6.3f} {r.get('windows_mean', 0):8.1f} "
              f"{r.get('kb_per_image_float', 0):7.0f} {r.get('map_pixels_vs_global', 1):6.2f} "
              f"{r.get('map_seconds_vs_global', 1):5.2f}")


if __name__ == "__main__":
    main()
