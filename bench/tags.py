"""Tags from the base model (imgsearch/tags.py): precision and recall against the clothing
labels, the threshold and count chosen by them, and indexing time with tags against without.

    python -m bench.tags --dataset ../shared/datasets/clothing-small [--skip-indexing]

Quality: every photo of the validation and test splits goes through the model once
(:meth:`Embedder.embed_and_tag`'s forward pass); for each (count, threshold) of the grid an
image keeps its top ``count`` classes with probability >= ``threshold``. Against
:data:`LABEL_SYNSETS` (each clothing label's WordNet synsets, written from WordNet alone before
any result was looked at), a kept class is right when it lies at or below one of its image's
label's synsets:

- precision: right kept classes / kept classes, over all images;
- recall: images with at least one right kept class / images.

The pair is chosen on the validation split by F1 of the two (ties: the fewer tags), and then
reported on the test split, per label too.

Indexing: the test split indexed into a throwaway index of a local node of its own (loopback,
started here) with tags and without, alternately, three times each, in this one process with
one model (the runs differ only in the tagger); the median of each side.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from bench.machine import cpu_line

# Each clothing label -> the WordNet 3.0 synsets whose classes are right for it. From
# WordNet's glosses only, written before any tag was measured (git history: this table was
# committed before the figures in the README and docs/BENCHMARKS.md).
LABEL_SYNSETS = {
    "dress": ("n03236735", "n03450230"),  # dress, frock; gown (a woman's dress)
    "hat": ("n03502509",),  # headdress, headgear (hats are below it)
    # a long-sleeved top: sweater, sweatshirt, cardigan, or a T-shirt-like jersey
    "longsleeve": ("n04370048", "n04370456", "n02963159", "n03595614"),
    # outerwear: overgarment, outerwear, jacket, and the sweatshirts and cardigans worn over
    "outwear": ("n03863923", "n03859495", "n03590306", "n04370456", "n02963159"),
    "pants": ("n04489008",),  # trouser, pant (jeans are below it)
    "shirt": ("n04197391", "n03595614"),  # shirt; jersey, T-shirt
    "shoes": ("n03380867", "n03381126"),  # footwear (both senses)
    # WordNet's "short pants, shorts, trunks" has no ImageNet class below it; the nearest:
    "shorts": ("n04371430",),  # swimming trunks, bathing trunks
    "skirt": ("n04230808",),  # skirt
    "t-shirt": ("n03595614",),  # jersey, T-shirt, tee shirt
}
COUNTS = (1, 2, 3, 5, 10)
THRESHOLDS = (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)


def split_paths(dataset: Path, split: str) -> list[tuple[Path, str]]:
    with open(dataset / "labels.csv", newline="") as f:
        return [(dataset / "images" / row["path"], row["label"]) for row in csv.DictReader(f)
                if row["split"] == split]


def probabilities(embedder, items: list[tuple[Path, str]], batch: int = 32) -> np.ndarray:
    out = []
    for i in range(0, len(items), batch):
        pixels = np.stack([embedder.decode(p.read_bytes()).pixels for p, _ in items[i:i + batch]])
        out.append(embedder.class_probabilities(pixels)[1])  # the indexer's one pass
    return np.concatenate(out)


def right_classes(vocabulary) -> dict[str, np.ndarray]:
    """Per label, a boolean [1000]: the classes at or below its synsets."""
    return {label: np.array([bool(set(ids) & vocabulary.ancestors[c])
                             for c in vocabulary.classes])
            for label, ids in LABEL_SYNSETS.items()}


def score(probs: np.ndarray, labels: list[str], right: dict[str, np.ndarray], count: int,
          threshold: float) -> dict:
    order = np.argsort(-probs, axis=1)[:, :count]
    kept = right_kept = hit = 0
    per_label: dict[str, list[int]] = {}
    for row, top, label in zip(probs, order, labels, strict=True):
        classes = [c for c in top if row[c] >= threshold]
        good = sum(bool(right[label][c]) for c in classes)
        kept, right_kept, hit = kept + len(classes), right_kept + good, hit + (good > 0)
        stats = per_label.setdefault(label, [0, 0, 0, 0])
        stats[0] += len(classes)
        stats[1] += good
        stats[2] += good > 0
        stats[3] += 1
    precision = right_kept / kept if kept else 0.0
    recall = hit / len(labels)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"count": count, "threshold": threshold, "precision": precision, "recall": recall,
            "f1": f1, "tags_per_image": kept / len(labels),
            "per_label": {k: (v[1] / v[0] if v[0] else 0.0, v[2] / v[3], v[3])
                          for k, v in sorted(per_label.items())}}


def quality(embedder, dataset: Path) -> tuple[int, float]:
    right = right_classes(embedder.tagger.vocabulary)
    results = {}
    for split in ("validation", "test"):
        items = split_paths(dataset, split)
        started = time.perf_counter()
        probs = probabilities(embedder, items)
        print(f"{split}: {len(items)} photos through the model in "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        results[split] = (probs, [label for _, label in items])
    grid = [score(*results["validation"], right, c, t) for c in COUNTS for t in THRESHOLDS]
    print("validation split: count threshold precision recall F1 tags/image")
    for g in grid:
        print(f"  {g['count']:2d} {g['threshold']:.2f}  {g['precision']:.3f} {g['recall']:.3f} "
              f"{g['f1']:.3f} {g['tags_per_image']:.2f}")
    best = max(grid, key=lambda g: (round(g["f1"], 3), -g["tags_per_image"]))
    test = score(*results["test"], right, best["count"], best["threshold"])
    print(f"chosen on validation: top {best['count']}, p >= {best['threshold']} (F1 "
          f"{best['f1']:.3f}); test split: precision {test['precision']:.3f}, recall "
          f"{test['recall']:.3f}, {test['tags_per_image']:.2f} tags an image")
    print("  per label on test (precision, recall, photos):")
    for label, (p, r, n) in test["per_label"].items():
        print(f"    {label:10s} {p:.3f} {r:.3f} {n}")
    current = score(*results["test"], right, embedder.tagger.max_tags,
                    embedder.tagger.min_probability)
    print(f"the product's setting (top {embedder.tagger.max_tags}, p >= "
          f"{embedder.tagger.min_probability}) on test: precision {current['precision']:.3f}, "
          f"recall {current['recall']:.3f}")
    return best["count"], best["threshold"]


def tagging_cost(embedder, dataset: Path, rounds: int = 10, batch: int = 32) -> None:
    """Seconds of a batch through :meth:`embed` against :meth:`embed_and_tag` (the same pass
    plus the head and the fields), alternately, on pre-decoded photos: the model's share of
    indexing, without the disk, decoding and Elasticsearch noise of whole runs."""
    items = split_paths(dataset, "test")[:batch]
    pixels = np.stack([embedder.decode(p.read_bytes()).pixels for p, _ in items])
    embedder.embed(pixels)
    embedder.embed_and_tag(pixels)
    times: dict[str, list[float]] = {"embed": [], "embed_and_tag": []}
    for _ in range(rounds):
        for name in times:
            started = time.perf_counter()
            getattr(embedder, name)(pixels)
            times[name].append(time.perf_counter() - started)
    plain, tagged = (statistics.median(times[k]) for k in times)
    vectors, norms = embedder.embed_with_norms(pixels)
    started = time.perf_counter()
    for _ in range(rounds):
        embedder.tagger.tag(vectors, norms)
    head = (time.perf_counter() - started) / rounds
    print(f"a batch of {batch}: embed {plain * 1000:.0f} ms, embed_and_tag {tagged * 1000:.0f} ms "
          f"(medians of {rounds}; {tagged / plain:.3f}x); the head and the fields alone "
          f"{head * 1000:.1f} ms a batch")


def indexing(embedder, settings, dataset: Path, rounds: int = 3) -> None:
    from imgsearch.localnode import LocalNode
    from imgsearch.store import ImageStore, connect
    from indexer.index import index_folder

    images = dataset / "images" / "test"
    tagger = embedder.tagger
    seconds: dict[str, list[float]] = {"tags": [], "no tags": []}
    with tempfile.TemporaryDirectory(prefix="bench-tags-", dir="/tmp") as tmp:
        node_dir = Path(tmp) / "node"
        node_dir.mkdir()
        node_dir.chmod(0o755)
        Path(tmp).chmod(0o755)
        node = LocalNode(node_dir, port=9391, heap="1g")
        node.start()
        try:
            for i in range(2 * rounds):
                side = ("tags", "no tags")[i % 2]
                embedder.tagger = tagger if side == "tags" else None
                local = settings.with_(es_url=node.url, es_index=f"bench-{uuid.uuid4().hex[:8]}",
                                       thumbnail_dir=Path(tmp) / f"thumbs-{i}")
                store = ImageStore(connect(local), local.es_index)
                report = index_folder(images, settings=local, embedder=embedder, store=store,
                                      progress=False)
                assert report.exit_code == 0, report.to_json()
                seconds[side].append(report.seconds)
                print(f"  {side:8s} {report.stats.indexed} photos in {report.seconds:.1f} s",
                      flush=True)
                store.es.indices.delete(index=f"{store.alias}-*")
        finally:
            embedder.tagger = tagger
            node.stop()
    with_tags, without = (statistics.median(seconds[k]) for k in ("tags", "no tags"))
    print(f"indexing the test split: {with_tags:.2f} s with tags, {without:.2f} s without "
          f"(medians of {rounds}; {with_tags / without:.3f}x)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--skip-indexing", action="store_true")
    args = p.parse_args(argv)

    from imgsearch.embedder import Embedder
    from imgsearch.settings import Settings

    settings = Settings.from_env()
    embedder = Embedder(settings)
    print(f"CPU: {cpu_line()}")
    print(f"model {embedder.version} on {embedder.runtime} ({embedder.precision}); "
          f"date {time.strftime('%Y-%m-%d')}")
    quality(embedder, args.dataset)
    tagging_cost(embedder, args.dataset)
    if not args.skip_indexing:
        indexing(embedder, settings, args.dataset)


if __name__ == "__main__":
    main()
