"""Fine-tuning, before and after: train on the train split, score on the test split.

Trains with ``python -m indexer finetune``'s recipe on the clothing train split (the
validation split for early stopping), then scores the base and the tuned model on the test
split, each indexed into a throwaway alias: precision@10, mAP@10 and mAP by exact search, P@10
and mAP@10 through Elasticsearch's kNN, and the kNN's recall@10 against exact search. Prints
the training wall time and rate, the model card's validation scores per epoch, and the tuned
model's predicted-label accuracy on the test split, per label (imgsearch/labels.py).

    python -m bench.finetune --dataset ../shared/datasets/clothing-small [--out var/models/x]
    python -m bench.finetune --model var/models/x     # score an existing model only

Needs Elasticsearch at ES_URL (``make es-up``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from bench.machine import cpu_model
from bench.quality import measure
from imgsearch.embedder import Embedder, cpu_flags
from imgsearch.finetune import Recipe, finetune
from imgsearch.modelstore import read_card
from imgsearch.settings import Settings
from indexer.sidecar import load_sidecar


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", type=Path,
                   default=Settings.from_env().datasets_dir / "clothing-small")
    p.add_argument("--model", type=Path, help="score this model directory instead of training")
    p.add_argument("--out", type=Path, help="where to write the tuned model (default: var/models/"
                   "bench-<dataset>-<UTC time>)")
    p.add_argument("--epochs", type=int, default=Recipe.max_epochs)
    p.add_argument("--views", type=int, default=Recipe.views)
    p.add_argument("--tune-from-block", type=int, default=Recipe.tune_from_block)
    p.add_argument("--lr-schedule", choices=("constant", "cosine"), default=Recipe.lr_schedule)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="append the figures as a JSON line to this file")
    args = p.parse_args(argv)

    settings = Settings.from_env()
    flags = sorted(cpu_flags() & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"})
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; CPU {cpu_model()}, "
          f"{len(os.sched_getaffinity(0))} cores, flags {' '.join(flags)}")
    model_dir = args.model
    if model_dir is None:
        model_dir = args.out or settings.model_store / (
            f"bench-{args.dataset.name}-{datetime.now(UTC):%Y%m%d-%H%M%S}")
        recipe = Recipe(max_epochs=args.epochs, views=args.views,
                        tune_from_block=args.tune_from_block, lr_schedule=args.lr_schedule)
        started = time.perf_counter()
        result = finetune(
            args.dataset / "images", model_dir, settings=settings,
            sidecar=load_sidecar(args.dataset / "labels.csv"), recipe=recipe, seed=args.seed,
            metadata_name=str(args.dataset / "labels.csv"),
        )
        print(f"fine-tuning: {time.perf_counter() - started:.0f} s wall"
              + (" (interrupted)" if result.interrupted else ""))
    card = read_card(model_dir)
    train = card["training_data"]
    print(f"model {card['model_version']} in {model_dir}")
    print(f"trained on {train['train_images']} images, validated on "
          f"{train['validation_images']}; {card['epochs']} epochs (best {card['best_epoch']}), "
          f"{card['wall_seconds']:.0f} s in all, training steps "
          f"{card['training_images_per_second']} images/s")
    print(f"{'epoch':>5s} {'loss':>7s} {'val P@10':>8s} {'mAP@10':>7s} {'seconds':>8s}")
    before = card["validation"]["before"]
    print(f"{'base':>5s} {'':>7s} {before['p@10']:8.4f} {before['map@10']:7.4f}")
    for e in card["validation"]["per_epoch"]:
        print(f"{e['epoch']:5d} {e['loss']:7.4f} {e['p@10']:8.4f} {e['map@10']:7.4f} "
              f"{e['seconds']:8.1f}")

    test = args.dataset / "images" / "test"
    rows = {}
    for name, model in (("base", Embedder(settings)),
                        ("tuned", Embedder(settings, model_dir=model_dir))):
        rows[name] = measure(test, settings, model)
    print(f"\ntest split ({rows['base']['images']} images), same label relevant")
    print(f"{'model':6s} {'exact P@10':>10s} {'mAP@10':>7s} {'mAP':>7s} {'ES P@10':>8s} "
          f"{'ES mAP@10':>9s} {'recall@10':>9s}")
    for name, m in rows.items():
        print(f"{name:6s} {m['exact']['p@10']:10.4f} {m['exact']['map@10']:7.4f} "
              f"{m['exact']['map']:7.4f} {m['es']['p@10']:8.4f} {m['es']['map@10']:9.4f} "
              f"{m['recall@10']:9.4f}")
    labels = label_accuracy(test, Embedder(settings, model_dir=model_dir))
    if labels is not None:
        print(f"\npredicted labels on the test split (the tuned model's proxies): accuracy "
              f"{labels['accuracy']:.3f}; at confidence >= 0.5, {labels['confident_share']:.2f} "
              f"of the photos, accuracy {labels['confident_accuracy']:.3f}")
        for label, (accuracy, n) in labels["per_label"].items():
            print(f"  {label:10s} {accuracy:.3f} ({n})")
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps({"cpu": cpu_model(), "flags": flags, "card": card,
                                "test": rows, "labels": labels}) + "\n")


def label_accuracy(test: Path, tuned: Embedder) -> dict | None:
    """Each test photo's predicted label (imgsearch/labels.py) against its folder's; None for
    a model without proxies."""
    from imgsearch.labels import Labeler

    if not isinstance(tuned.tagger, Labeler):
        return None
    photos = sorted(test.glob("*/*"))
    predicted = []
    for start in range(0, len(photos), 32):
        batch = photos[start:start + 32]
        pixels = np.stack([tuned.decode(p.read_bytes()).pixels for p in batch])
        predicted += tuned.tagger.predict(tuned.embed(pixels))
    truth = [p.parent.name for p in photos]
    right = [label == t for (label, _), t in zip(predicted, truth, strict=True)]
    confident = [r for r, (_, c) in zip(right, predicted, strict=True) if c >= 0.5]
    per_label = {}
    for label in sorted(set(truth)):
        mine = [r for r, t in zip(right, truth, strict=True) if t == label]
        per_label[label] = (sum(mine) / len(mine), len(mine))
    return {"accuracy": sum(right) / len(right), "per_label": per_label,
            "confident_share": len(confident) / len(right),
            "confident_accuracy": sum(confident) / len(confident) if confident else None}


if __name__ == "__main__":
    main()
