"""Region search: can a part of a photo find the photo it comes from?

    python -m bench.regions --images ../shared/datasets/clothing-small/images/test \
        [--modes standard fine] [--types bbq_hnsw int8_hnsw hnsw] [--queries 200]

**The product** (default): the gallery folder is indexed by the real indexer into a throwaway
index without regions and one with each ``--modes`` region mode; each mode's documents are
copied into one index per ``--types`` region index type (the same vectors, force-merged to one
segment). Queries are random boxes on the first ``--queries`` gallery photos covering 5-10 %,
10-20 % and 20-40 % of their area (aspect 1:2 to 2:1), searched two ways through the search
service as the API runs them: (a) the crop uploaded as a photo of its own, against the global
vectors; (b) the photo with ``box=``, a nested kNN over region vectors. Reported: recall@1 and
@10 of the source photo, the nested kNN's p50/p95 (search stage, ms), region vectors' memory
and disk per photo (the index's vector files less the index without regions'), and
whole-photo precision@10 (same label, leave-one-out) on every index: region vectors must not
change it. Needs ``make es-up``.

**The design** (``--design``): exact search in numpy, no ES, over region passes of several
``--areas`` (multiples of the 224 x 224 pass's pixels) and R-MAC ``--scales``, with crops
described two ways (upsampled to 224 px, or at the scale of the indexed regions); this chose
the modes. ``--es-types`` adds a nested-kNN measurement of the first design.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from bench.machine import cpu_line
from bench.scale import sizes
from imgsearch.embedder import Embedder
from imgsearch.images import content_hash, decode_rgb, model_input
from imgsearch.regions import REGION_MODES, BoxError, box_pass_size, pass_size, pool, windows
from imgsearch.runtime import compile_feature_map
from imgsearch.settings import VECTOR_INDEX_TYPES, Settings

AREAS = ((0.05, 0.10), (0.10, 0.20), (0.20, 0.40))


def random_crop(rgb: Image.Image, area: tuple[float, float], rng) -> Image.Image:
    w, h = rgb.size
    for _ in range(100):
        share = rng.uniform(*area)
        aspect = np.exp(rng.uniform(np.log(0.5), np.log(2)))
        cw, ch = round(np.sqrt(share * w * h * aspect)), round(np.sqrt(share * w * h / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
            crop = rgb.crop((x, y, x + cw, y + ch))
            crop.info["offset"] = (int(x), int(y))
            return crop
    raise ValueError("no crop fits")


def es_measure(es, index_type: str, regions: list[np.ndarray],
               boxes: list[list[tuple[float, float, float, float]]], queries: dict,
               sources: np.ndarray, num_candidates: int = 100) -> list[dict]:
    """Region vectors in a nested ``dense_vector`` field of ``index_type``; nested kNN (one hit
    an image, the best region as inner hit) for every query: recall@1/@10 of the source,
    latency, and the vector files' sizes per image."""
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
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.add_argument("--modes", nargs="+", default=["standard"], choices=sorted(REGION_MODES))
    p.add_argument("--types", nargs="+", default=["bbq_hnsw", "int8_hnsw", "hnsw"],
                   choices=VECTOR_INDEX_TYPES, help="region vector index types")
    p.add_argument("--design", action="store_true",
                   help="the design measurements (exact search, no ES) instead of the product")
    p.add_argument("--areas", type=float, nargs="+", default=[1.0, 2.0, 4.0],
                   help="--design: region pass sizes, in multiples of the 224 x 224 pass's pixels")
    p.add_argument("--scales", type=int, nargs="+", default=[2, 3, 4], help="--design")
    p.add_argument("--es-types", nargs="*", default=[],
                   help="--design: also index the first --areas/--scales design's regions into "
                   "ES with these vector index types and measure nested kNN (needs make es-up)")
    args = p.parse_args(argv)
    if args.design:
        design(args)
    else:
        product(args)


def product(args) -> None:
    """The product's region search measured through its indexer and search service."""
    from imgsearch.search import SearchService
    from imgsearch.store import ImageStore
    from indexer.index import index_folder

    paths = sorted(args.images.rglob("*.jpg"))
    base = Settings.from_env(es_index=f"bench-regions-{uuid.uuid4().hex[:6]}")
    model = Embedder(base)
    labels = [p.parent.name for p in paths]
    ids = [content_hash(p.read_bytes()) for p in paths]
    rng = np.random.default_rng(args.seed)
    sources = np.arange(min(args.queries, len(paths)))
    rgbs = {i: decode_rgb(paths[i].read_bytes(), short_side=1024) for i in sources}
    boxes = {area: [random_box(rgbs[i], area, rng) for i in sources] for area in AREAS}
    out: dict = {"cpu": cpu_line(), "gallery": len(paths), "queries_per_area": len(sources),
                 "model_version": model.version, "rows": []}
    created: list[ImageStore] = []

    def build(name: str, regions: str, folder: Path | None = None, copy_from=None,
              region_type: str = "bbq_hnsw") -> tuple[ImageStore, float]:
        with tempfile.TemporaryDirectory() as thumbs:
            settings = base.with_(es_index=f"{base.es_index}-{name}", regions=regions,
                                  region_index_type=region_type, thumbnail_dir=Path(thumbs))
            store = ImageStore.from_settings(settings)
            created.append(store)
            if copy_from is None:
                report = index_folder(folder, settings=settings, embedder=model, store=store,
                                      progress=False)
                seconds = report.seconds
            else:
                store.indices.point_alias(store.indices.create_index(model.version, settings))
                copy_documents(copy_from, store)
                seconds = 0.0
        store.es.indices.forcemerge(index=store.indices.current_index(), max_num_segments=1)
        store.refresh()
        return store, seconds

    def searcher(store: ImageStore) -> SearchService:
        return SearchService(base.with_(es_index=store.alias), store, model)

    try:
        plain, plain_seconds = build("global", "off", args.images)
        plain_size = sizes(plain.es, plain.indices.current_index(), "hnsw")
        out["global"] = {"index_seconds": round(plain_seconds, 1),
                         "p@10": whole_photo_precision(searcher(plain), paths, ids, labels)}
        for area in AREAS:
            ranks = []
            for i, box in zip(sources, boxes[area], strict=True):
                crop = crop_bytes(rgbs[i], box)
                hits = searcher(plain).search_image(crop, k=10).hits
                ranks.append(rank_of(ids[i], hits))
            out["rows"].append(recall_row("global", None, area, ranks))
        for mode in args.modes:
            first, seconds = build(mode, mode, args.images, region_type=args.types[0])
            out.setdefault("index_seconds", {})[mode] = round(seconds, 1)
            for region_type in args.types:
                store = first if region_type == args.types[0] else build(
                    f"{mode}-{region_type.replace('_', '-')}", mode, copy_from=first,
                    region_type=region_type)[0]
                service = searcher(store)
                size = sizes(store.es, store.indices.current_index(), "hnsw")
                files = {ext: size["vector_files"][ext] - plain_size["vector_files"][ext]
                         for ext in size["vector_files"]}
                hot = files["vex"] + {"hnsw": files["vec"], "int8_hnsw": files["veq"],
                                      "bbq_hnsw": files["veb"]}[region_type]
                p10 = whole_photo_precision(service, paths, ids, labels)
                for area in AREAS:
                    ranks, took, refused = [], [], 0
                    for i, box in zip(sources, boxes[area], strict=True):
                        try:
                            result = service.search_image(paths[i].read_bytes(), k=10, box=box)
                        except BoxError:
                            refused += 1
                            ranks.append(99)
                            continue
                        took.append(result.timings_ms["search"])
                        ranks.append(rank_of(ids[i], result.hits))
                    row = recall_row(mode, region_type, area, ranks)
                    row.update({
                        "search_p50_ms": float(np.percentile(took, 50)),
                        "search_p95_ms": float(np.percentile(took, 95)),
                        "refused_boxes": refused,
                        "region_hot_kb_per_image": hot / len(paths) / 1024,
                        "region_disk_kb_per_image":
                            (size["disk_bytes"] - plain_size["disk_bytes"]) / len(paths) / 1024,
                        "whole_photo_p@10": p10,
                    })
                    out["rows"].append(row)
    finally:
        for store in created:
            store.es.indices.delete(index=f"{store.alias}-*", ignore_unavailable=True)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"CPU: {out['cpu']}; gallery {len(paths)} photos, {len(sources)} boxes per size")
    print(f"whole-photo P@10 without regions {out['global']['p@10']:.4f}; indexing "
          f"{out['global']['index_seconds']} s without regions, "
          + ", ".join(f"{m} {s} s ({s / out['global']['index_seconds']:.2f}x)"
                      for m, s in out["index_seconds"].items()))
    for r in out["rows"]:
        lo, hi = r["area"]
        line = (f"{r['mode']:9s} {r['index_type'] or 'global':10s} {f'{lo:.0%}-{hi:.0%}':>8s} "
                f"R@1 {r['recall@1']:.3f} R@10 {r['recall@10']:.3f}")
        if r["index_type"]:
            line += (f"  search p50 {r['search_p50_ms']:.1f} p95 {r['search_p95_ms']:.1f} ms"
                     f"  regions {r['region_hot_kb_per_image']:.1f} KB/photo in memory, "
                     f"{r['region_disk_kb_per_image']:.1f} KB on disk  whole-photo P@10 "
                     f"{r['whole_photo_p@10']:.4f}  refused {r['refused_boxes']}")
        print(line, flush=True)


def random_box(rgb: Image.Image, area: tuple[float, float], rng) -> tuple[float, ...]:
    """A random box of ``area`` (fractions of the photo's area) as fractions of its sides."""
    crop = random_crop(rgb, area, rng)
    x0, y0 = crop.info["offset"]
    w, h = rgb.size
    return (x0 / w, y0 / h, (x0 + crop.width) / w, (y0 + crop.height) / h)


def crop_bytes(rgb: Image.Image, box: tuple[float, ...]) -> bytes:
    """The box of a photo as a PNG file of its own (an uploaded crop; lossless)."""
    w, h = rgb.size
    crop = rgb.crop((round(box[0] * w), round(box[1] * h), round(box[2] * w), round(box[3] * h)))
    buffer = io.BytesIO()
    crop.save(buffer, "PNG")
    return buffer.getvalue()


def rank_of(doc_id: str, hits) -> int:
    ranked = [h.id for h in hits]
    return ranked.index(doc_id) if doc_id in ranked else 99


def recall_row(mode: str, index_type: str | None, area, ranks: list[int]) -> dict:
    ranks = np.array(ranks)
    return {"mode": mode, "index_type": index_type, "area": area,
            "recall@1": float(np.mean(ranks < 1)), "recall@10": float(np.mean(ranks < 10))}


def whole_photo_precision(service, paths: list[Path], ids: list[str], labels: list[str]) -> float:
    """Same-label precision@10 of whole-photo searches, the query photo left out."""
    by_id = dict(zip(ids, labels, strict=True))
    precisions = []
    for path, doc_id, label in zip(paths, ids, labels, strict=True):
        hits = [h for h in service.search_image(path.read_bytes(), k=11).hits if h.id != doc_id]
        precisions.append(np.mean([by_id.get(h.id) == label for h in hits[:10]]))
    return float(np.mean(precisions))


def copy_documents(source, target) -> None:
    """Every document of ``source``'s index, vectors included, into ``target``'s."""
    from elasticsearch import helpers

    docs = helpers.scan(source.es, index=source.alias, source_exclude_vectors=False)
    batch = []
    for hit in docs:
        batch.append(hit["_source"])
        if len(batch) == 32:
            target.bulk_index(batch)
            batch = []
    target.bulk_index(batch)


def design(args) -> None:
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
