"""Search by words (imgsearch/words.py): P@10 of words alone, and how words should combine with
a query image (filter the visual neighbours, or re-rank them), on the clothing splits.

    python -m bench.words --dataset ../shared/datasets/clothing-small [--limit N]

Every photo of the validation and test splits goes through the model once, with its tags, as
the indexer makes them (:meth:`Embedder.embed_and_tag`). Each split is then a collection of its
own, searched exactly in NumPy (the hold-out checks show the index's kNN equals exact search;
the words' scores are what the ``sparse_vector`` query computes, which
tests/imgsearch/test_words.py checks against Elasticsearch):

- **Words alone**: for each clothing label, the words a person would type for it
  (:data:`TYPED`, written before anything was measured), parsed by the product's parser;
  images ranked by their tag score; P@10 against the label (ties by id, as they fall).
- **Image + words**: each photo of the split is a query (itself left out) with the label's
  WordNet synsets (bench/tags.py ``LABEL_SYNSETS``: the words' meaning, without the parser in
  the way); P@10 of the image alone, of the words as a filter (only neighbours with a tag
  score above zero), and of re-ranking the visual top 100 by cosine + w x tag score for each w
  of :data:`WEIGHTS`. The weight is chosen on validation and reported on test.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.machine import cpu_line
from bench.tags import LABEL_SYNSETS, split_paths

# What a person would type for each clothing label (written from the labels' names alone).
TYPED = {
    "dress": "dress", "hat": "hat", "longsleeve": "sweater", "outwear": "jacket",
    "pants": "trousers", "shirt": "shirt", "shoes": "shoes", "shorts": "shorts",
    "skirt": "skirt", "t-shirt": "t-shirt",
}
WEIGHTS = (0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
K = 10
CANDIDATES = 100  # the visual neighbours a re-rank reorders (the product's num_candidates)


def embed_split(embedder, items, batch: int = 32):
    vectors, synsets = [], []
    for i in range(0, len(items), batch):
        pixels = np.stack([embedder.decode(p.read_bytes()).pixels for p, _ in items[i:i + batch]])
        v, tags = embedder.embed_and_tag(pixels)
        vectors.append(v)
        synsets += [t["model_synsets"] for t in tags]
    return np.concatenate(vectors), synsets


def tag_scores(synsets: list[dict], senses) -> np.ndarray:
    return np.array([sum(s.get(w, 0.0) for w in senses) for s in synsets])


def precision_at_k(order, labels, label) -> float:
    top = order[:K]
    return sum(labels[j] == label for j in top) / K


def words_alone(parser, synsets, labels) -> dict[str, tuple[float, int]]:
    out = {}
    for label, typed in TYPED.items():
        query = parser.parse(typed)
        if not query:
            out[label] = (float("nan"), 0)
            continue
        scores = np.array([query.score(s) for s in synsets])
        order = [int(j) for j in np.lexsort((np.arange(len(scores)), -scores)) if scores[j] > 0]
        out[label] = (precision_at_k(order, labels, label), len(order))
    return out


def with_image(vectors, synsets, labels) -> dict[str, float]:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    per_label_scores = {label: tag_scores(synsets, senses)
                        for label, senses in LABEL_SYNSETS.items()}
    totals = {"image": 0.0, "filter": 0.0, **{f"rerank {w}": 0.0 for w in WEIGHTS}}
    for i, label in enumerate(labels):
        words = per_label_scores[label].copy()
        words[i] = 0.0
        visual = np.argsort(-sims[i])
        totals["image"] += precision_at_k(visual, labels, label)
        kept = [j for j in visual if words[j] > 0 and j != i]
        totals["filter"] += precision_at_k(kept, labels, label)  # fewer than K: misses
        top = visual[:CANDIDATES]
        for w in WEIGHTS:
            order = top[np.argsort(-(sims[i, top] + w * words[top]), kind="stable")]
            totals[f"rerank {w}"] += precision_at_k(order, labels, label)
    return {name: total / len(labels) for name, total in totals.items()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path, required=True)
    p.add_argument("--limit", type=int, help="photos of each split (default: all)")
    args = p.parse_args(argv)

    from imgsearch.embedder import Embedder
    from imgsearch.settings import Settings
    from imgsearch.words import WordParser

    embedder = Embedder(Settings.from_env())
    if embedder.tagger is None:
        raise SystemExit("the model does not tag (IMGSEARCH_TAGS=off, or not the base model)")
    parser = WordParser(embedder.tagger.vocabulary)
    print(f"CPU: {cpu_line()}")
    print(f"model {embedder.version} on {embedder.runtime} ({embedder.precision}); "
          f"date {time.strftime('%Y-%m-%d')}")
    results = {}
    for split in ("validation", "test"):
        items = split_paths(args.dataset, split)
        if args.limit:
            items = items[:: max(1, len(items) // args.limit)][: args.limit]
        vectors, synsets = embed_split(embedder, items)
        labels = [label for _, label in items]
        results[split] = {"alone": words_alone(parser, synsets, labels),
                          "image": with_image(vectors, synsets, labels)}
        print(f"{split} ({len(items)} photos): words alone, P@{K} (images with a score):")
        for label, (p10, n) in results[split]["alone"].items():
            print(f"  {TYPED[label]!r:12s} ({label}) {p10:.3f} ({n})")
        print(f"  image + words, P@{K}: " + ", ".join(
            f"{name} {value:.3f}" for name, value in results[split]["image"].items()))
    validation = results["validation"]["image"]
    best = max(validation, key=lambda name: (round(validation[name], 3), name == "filter"))
    print(f"chosen on validation: {best} ({validation[best]:.3f}); on test: "
          f"{results['test']['image'][best]:.3f} against the image alone "
          f"{results['test']['image']['image']:.3f} and the filter "
          f"{results['test']['image']['filter']:.3f}")
    return results


if __name__ == "__main__":
    main()
