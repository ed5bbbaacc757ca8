"""Fine-tuning, before and after: train on the train split, score on the test split.

Trains with ``python -m indexer finetune``'s recipe on the clothing train split (the
validation split for early stopping), then scores the base and the tuned model on the test
split, each indexed into a throwaway alias: precision@10, mAP@10 and mAP by exact search, P@10
and mAP@10 through Elasticsearch's kNN, and the kNN's recall@10 against exact search. Prints
the training wall time and rate, the model card's validation scores per epoch, and the tuned
model's predicted-label accuracy on the test split, per label (imgsearch/labels.py), and the
test P@10 of each share toward the base network that training tried (imgsearch/finetune.py
``interpolate_toward_base``; the written model holds one share, and every other lies on the
same line from the base weights, so each is scored from the two).

``--disjoint A`` (or B) is the test of forgetting: train on five of the ten labels (A: dress,
longsleeve, pants, shoes, skirt, every other label in sorted order; B: the other five) and
score base and tuned on the test photos of the five labels the model never saw, beside the
five it trained on.

    python -m bench.finetune --dataset ../shared/datasets/clothing-small [--out var/models/x]
    python -m bench.finetune --model var/models/x     # score an existing model only
    python -m bench.finetune --disjoint A             # class-disjoint: seen and unseen labels

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
    p.add_argument("--disjoint", choices=("A", "B"),
                   help="train on five labels only and score the other five apart")
    p.add_argument("--max-per-label", type=int, help="at most this many training photos a "
                   "label (a quick run)")
    p.add_argument("--json", type=Path, help="append the figures as a JSON line to this file")
    args = p.parse_args(argv)

    settings = Settings.from_env()
    flags = sorted(cpu_flags() & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"})
    print(f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC; CPU {cpu_model()}, "
          f"{len(os.sched_getaffinity(0))} cores, flags {' '.join(flags)}")
    all_labels = sorted(p.name for p in (args.dataset / "images" / "train").iterdir()
                        if p.is_dir())
    seen = set(all_labels[{"A": 0, "B": 1}[args.disjoint]::2]) if args.disjoint else None
    if seen:
        print(f"class-disjoint split {args.disjoint}: trained on {', '.join(sorted(seen))}; "
              f"never seen: {', '.join(sorted(set(all_labels) - seen))}")
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
            metadata_name=str(args.dataset / "labels.csv"), labels=seen,
            max_per_label=args.max_per_label,
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
    shares = share_scores(settings, model_dir, card, sorted(test.glob("*/*")), seen)
    interpolation = card.get("interpolation") or {}
    written = interpolation.get("chosen", {}).get("share", 1.0)
    val = {row["share"]: row["p@10"] for row in interpolation.get("tried", [])}
    print("\nshares toward the base network: validation (training's) and test P@10, exact "
          "search, TensorFlow" + ("; seen = the trained labels' test photos, unseen = "
                                  "the others'" if seen else ""))
    columns = ["all"] + (["seen", "unseen"] if seen else [])
    print(f"{'share':>6s} {'val P@10':>8s} " + " ".join(f"{c + ' P@10':>11s}" for c in columns))
    for share, scores in shares.items():
        name = "base" if share == 0 else f"{share:g}" + (" *" if share == written else "")
        v = f"{val[share]:8.4f}" if share in val else f"{'':8s}"
        print(f"{name:>6s} {v} " + " ".join(f"{scores[c]:11.4f}" for c in columns))
    if seen:  # the usual split's figures mean little for a model that saw half the labels
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps({"cpu": cpu_model(), "flags": flags, "card": card,
                                    "disjoint": args.disjoint, "shares": shares}) + "\n")
        return
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
                                "test": rows, "labels": labels, "shares": shares}) + "\n")


def share_scores(settings: Settings, model_dir: Path, card: dict, photos: list[Path],
                 seen: set[str] | None) -> dict[float, dict[str, float]]:
    """Test P@10 (exact leave-one-out, same label relevant) of the base network (share 0)
    and of every share toward it that training tried: ``{share: {"all", "seen", "unseen"}}``
    (seen and unseen only with ``seen``). The written model is ``base + s * (best - base)``,
    so the weights of share ``x`` are ``base + (x / s) * (written - base)``."""
    from imgsearch.metrics import retrieval_scores
    from imgsearch.modelstore import load_model_dir
    from imgsearch.runtime import compile_forward

    base = Embedder(settings)
    tuned, _, _ = load_model_dir(model_dir)
    base_w, written_w = base.model.get_weights(), tuned.get_weights()
    interpolation = card.get("interpolation") or {}
    written = interpolation.get("chosen", {}).get("share", 1.0)
    tried = [row["share"] for row in interpolation.get("tried", [])] or [1.0]
    forward = compile_forward(tuned, base.input_size)
    pixels = [base.decode(p.read_bytes()).pixels for p in photos]
    labels = np.array([p.parent.name for p in photos])
    masks = {"all": np.ones(len(photos), bool)}
    if seen:
        masks["seen"] = np.isin(labels, sorted(seen))
        masks["unseen"] = ~masks["seen"]
    out = {}
    for share in [0.0, *tried]:
        k = share / written
        tuned.set_weights([b + k * (w - b) for b, w in zip(base_w, written_w, strict=True)])
        vectors = np.concatenate([forward(np.stack(pixels[i:i + 32])).numpy()
                                  for i in range(0, len(pixels), 32)])
        out[share] = {name: retrieval_scores(vectors[m], labels[m])["p@10"]
                      for name, m in masks.items()}
    return out


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
