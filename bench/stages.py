"""Where an indexed photo's time goes: each stage's cost per photo, and the ceiling they set.

    python -m bench.stages --images ../shared/datasets/clothing-small/images [-n 1000]

On ``-n`` photos, one stage at a time, the product's own functions: read, hash (SHA-256),
decode to the model's input (JPEG DCT-scaled draft, as the indexer does, and without it for
comparison), the WebP thumbnail the indexer writes (and two alternatives), embedding at batch
32, the documents' JSON, the bulk write into a throwaway local node of its own (loopback) and
the kNN queries that find each batch's near-duplicate pairs, the node's work read as its Java
process's CPU time from /proc: Elasticsearch shares these cores too.

Each single-threaded stage is timed in CPU time of the thread (``time.thread_time``): a core's
milliseconds per photo, which is what it takes from inference. Embedding is timed in wall time
at batch 32 with the runtime's own threads on every core, so its core-milliseconds are wall x
cores. The ceiling: with ``C`` cores and every stage overlapped perfectly, the pipeline can
index at most ``C x 1000 / (sum of core-ms per photo)`` photos a second; the forward pass alone
``C x 1000 / embed core-ms``; their ratio is the best share of the forward rate any schedule
of these stages can reach on this CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from bench.machine import cpu_line


def _cpu_ms(fn, items) -> float:
    """Median over three passes of a core's CPU milliseconds per item for ``fn``."""
    passes = []
    for _ in range(3):
        started = time.thread_time()
        for item in items:
            fn(item)
        passes.append((time.thread_time() - started) * 1000 / len(items))
    return statistics.median(passes)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (``/proc/<pid>/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=Path, required=True)
    # 1,000: at 200 the node's fixed costs (its first refreshes, JIT warm-up) doubled its
    # per-photo figures (bulk 5.45 against 2.32 core-ms, the pairs' kNN 5.95 against 2.21).
    p.add_argument("-n", type=int, default=1000)
    p.add_argument("--pair-candidates", type=int, nargs="*", default=[],
                   help="also time the pairs' kNN with these num_candidates (and what each "
                   "still finds)")
    p.add_argument("--no-node", action="store_true",
                   help="skip the bulk write (no local node started)")
    args = p.parse_args(argv)

    from PIL import Image

    from imgsearch.embedder import Embedder
    from imgsearch.images import content_hash, decode_image, read_bytes, thumbnail_webp
    from imgsearch.pipeline import Candidate, Decoded, to_document
    from imgsearch.settings import Settings
    from imgsearch.walk import walk_files

    settings = Settings.from_env()
    embedder = Embedder(settings)
    cores = len(os.sched_getaffinity(0))
    paths = sorted(walk_files(args.images))[: args.n]
    datas = [read_bytes(path) for path in paths]
    size, mode, thumb = embedder.input_size, embedder.resize_mode, settings.thumbnail_size

    def decode(data, draft=True, thumbnail=0):
        return decode_image(data, target=size, resize_mode=mode, thumbnail_size=thumbnail,
                            max_pixels=settings.max_image_pixels, draft=draft)

    stages: dict[str, float] = {}
    stages["read"] = _cpu_ms(read_bytes, paths)
    stages["hash"] = _cpu_ms(content_hash, datas)
    stages["decode + resize (draft)"] = _cpu_ms(decode, datas)
    plain = _cpu_ms(lambda d: decode(d, draft=False), datas)
    with_thumb = _cpu_ms(lambda d: decode(d, thumbnail=thumb), datas)
    stages["thumbnail (WebP, method 2)"] = max(0.0, with_thumb - stages["decode + resize (draft)"])
    # Alternatives for the thumbnail, from the same reduced image.
    reduced = [Image.open(io.BytesIO(d)).convert("RGB") for d in datas[:50]]
    for im in reduced:
        im.thumbnail((thumb * 2, thumb * 2))
    encoders = {
        "WebP method 2 (the product's)": lambda im: thumbnail_webp(im, thumb),
        "WebP method 0": lambda im: _webp(im, thumb, 0),
        "JPEG q80": lambda im: _jpeg(im, thumb),
    }
    sizes = {name: np.mean([len(encode(im)) for im in reduced])
             for name, encode in encoders.items()}
    alternatives = {name: _cpu_ms(encode, reduced) for name, encode in encoders.items()}
    decoded = [decode(d, thumbnail=thumb) for d in datas]
    pixels = np.stack([d.pixels for d in decoded])
    batch = pixels[:32]
    embedder.embed(batch)
    walls = []
    for _ in range(5):
        started = time.perf_counter()
        embedder.embed(batch)
        walls.append(time.perf_counter() - started)
    embed_wall_ms = statistics.median(walls) * 1000 / len(batch)
    stages["embed (batch 32, every core)"] = embed_wall_ms * cores
    vectors = np.concatenate([embedder.embed(pixels[i:i + 32]) for i in range(0, len(pixels), 32)])
    items = [Decoded(Candidate(path, path.name, data, content_hash(data)), d, "t")
             for path, data, d in zip(paths, datas, decoded, strict=True)]

    def doc_json(i):
        doc = to_document(items[i], vectors[i], root=args.images, sidecar={},
                          model_version=embedder.version, indexed_at="2026-12-01T00:00:00")
        doc["vector"] = doc["vector"].tolist()
        return json.dumps(doc)

    stages["document + JSON"] = _cpu_ms(doc_json, range(len(items)))
    if not args.no_node:
        bulk, pairs = _bulk_cost(settings, embedder, items, vectors, args.images,
                                 tuple(args.pair_candidates))
        stages["bulk write (Elasticsearch's CPU)"] = bulk
        stages["near-duplicate pairs (Elasticsearch's CPU)"] = pairs
    total = sum(stages.values())
    forward_rate = cores * 1000 / stages["embed (batch 32, every core)"]
    ceiling = cores * 1000 / total
    print(f"CPU: {cpu_line()}; {cores} cores; model on {embedder.runtime} "
          f"({embedder.precision}); {len(paths)} photos; date {time.strftime('%Y-%m-%d')}")
    print(f"{'stage':44s} {'core-ms/photo':>13s} {'share':>6s}")
    for name, ms in stages.items():
        print(f"{name:44s} {ms:13.2f} {ms / total:6.1%}")
    print(f"{'all':44s} {total:13.2f}")
    print(f"decode without the draft: {plain:.2f} core-ms a photo")
    print("thumbnail alternatives (core-ms, bytes): " + ", ".join(
        f"{k} {v:.2f} ms {sizes[k]:.0f} B" for k, v in alternatives.items()))
    print(f"forward pass alone: {forward_rate:.1f} images/s; ceiling of the whole pipeline "
          f"{ceiling:.1f} images/s = {ceiling / forward_rate:.0%} of it")
    return {"stages": stages, "forward_rate": forward_rate, "ceiling": ceiling,
            "decode_without_draft": plain, "thumbnails": alternatives}


def _webp(im, size: int, method: int) -> bytes:
    small = im.copy()
    small.thumbnail((size, size))
    out = io.BytesIO()
    small.save(out, "WEBP", quality=80, method=method)
    return out.getvalue()


def _jpeg(im, size: int) -> bytes:
    small = im.copy()
    small.thumbnail((size, size))
    out = io.BytesIO()
    small.save(out, "JPEG", quality=80)
    return out.getvalue()


def _settle(pid: int, *, idle_s: float = 0.05, most_s: float = 60.0) -> None:
    """Wait until the process ``pid`` spends less than ``idle_s`` of CPU in a second (its
    background work done), at most ``most_s``."""
    deadline = time.monotonic() + most_s
    while time.monotonic() < deadline:
        before = process_cpu_s(pid)
        time.sleep(1.0)
        if process_cpu_s(pid) - before < idle_s:
            return


def _bulk_cost(settings, embedder, items, vectors, root,
               pair_candidates: tuple[int, ...] = ()) -> tuple[float, float]:
    """Elasticsearch's CPU milliseconds a photo to index the documents (HNSW included, and a
    refresh), and to find their near-duplicate pairs, on a node of its own."""
    from imgsearch.localnode import LocalNode, free_port
    from imgsearch.pipeline import to_document
    from imgsearch.store import ImageStore, connect

    with tempfile.TemporaryDirectory(prefix="bench-stages-", dir="/tmp") as tmp:
        Path(tmp).chmod(0o755)  # the unprivileged Elasticsearch user must reach it
        (Path(tmp) / "node").mkdir(mode=0o755)
        node = LocalNode(Path(tmp) / "node", port=free_port(), heap="1g")
        node.start()
        try:
            local = settings.with_(es_url=node.url, es_index=f"stages-{uuid.uuid4().hex[:8]}")
            store = ImageStore(connect(local), local.es_index)
            index = store.indices.ensure_index(embedder.version, local)
            docs = [to_document(d, v, root=root, sidecar={}, model_version=embedder.version,
                                indexed_at="2026-12-01T00:00:00")
                    for d, v in zip(items, vectors, strict=True)]
            time.sleep(2)  # let the node settle after creating the index
            before = process_cpu_s(node.pid())
            for start in range(0, len(docs), 32):
                store.bulk_index(docs[start:start + 32], index)
            store.refresh(index)
            # Counted until the node is idle again: the segment merges the writes set off run
            # after the last bulk, and would otherwise land on whatever is measured next (the
            # first kNN pass measured here cost 1.3-1.8x the next ones before this wait).
            _settle(node.pid())
            bulk = (process_cpu_s(node.pid()) - before) * 1000 / len(docs)
            # The kept near-duplicate pairs (imgsearch/pairs.py): each written batch's kNN
            # queries at the floor, as the writer thread sends them after each bulk; then the
            # same with fewer HNSW candidates, and the share of the pairs each still finds.
            from imgsearch.pairs import DEFAULT_K, NUM_CANDIDATES

            costs, found = {}, {}
            # A first pass over every photo unmeasured: the node's first kNN queries warm its
            # code and caches (one batch of 32 was not enough: the first measured count then
            # cost 2.45 core-ms a photo, the same count 1.17 a round later, and the counts
            # measured after it looked cheaper in the order they came).
            for start in range(0, len(docs), 32):
                store.knn_many(list(vectors[start:start + 32]), index=index, k=DEFAULT_K + 1,
                               num_candidates=NUM_CANDIDATES,
                               min_cosine=settings.duplicate_floor)
            # Two rounds, the counts in turn, each count's mean: no count gets the node's
            # first queries or a quiet moment that another does not.
            spent: dict[int, list[float]] = {}
            for _ in range(2):
                for candidates in dict.fromkeys((NUM_CANDIDATES, *pair_candidates)):
                    before = process_cpu_s(node.pid())
                    pairs = set()
                    for start in range(0, len(docs), 32):
                        answers = store.knn_many(
                            list(vectors[start:start + 32]), index=index, k=DEFAULT_K + 1,
                            num_candidates=candidates, min_cosine=settings.duplicate_floor)
                        for doc, hits in zip(docs[start:start + 32], answers, strict=True):
                            pairs |= {tuple(sorted((doc["content_hash"], other)))
                                      for other, _ in hits if other != doc["content_hash"]}
                    spent.setdefault(candidates, []).append(
                        (process_cpu_s(node.pid()) - before) * 1000 / len(docs))
                    found[candidates] = pairs
            costs = {candidates: sum(v) / len(v) for candidates, v in spent.items()}
            reference = found[NUM_CANDIDATES]
            for candidates, cost in costs.items():
                share = len(found[candidates] & reference) / len(reference) if reference else 1
                rounds = ", ".join(f"{v:.2f}" for v in spent[candidates])
                print(f"pairs' kNN with num_candidates {candidates}: {cost:.2f} core-ms a photo "
                      f"(rounds {rounds}), "
                      f"{len(found[candidates])} pairs, {share:.3f} of the "
                      f"{NUM_CANDIDATES}-candidate ones")
            return bulk, costs[NUM_CANDIDATES]
        finally:
            node.stop()


if __name__ == "__main__":
    main()
