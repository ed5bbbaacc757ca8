"""``python -m indexer finetune <folder> --metadata labels.csv``: make a domain model.

Exit status: 0 a model was written; 3 a model was written but some images could not be read
(each listed); 1 stopped (Ctrl-C or SIGTERM: the best epoch so far is kept and usable, or
nothing was written if no epoch had finished; or the base weights could not be loaded);
2 bad arguments or training data that cannot make a model.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

from imgsearch.settings import Settings

from . import cli
from .cli import EXIT_ABORTED, EXIT_OK, EXIT_PARTIAL
from .sidecar import load_sidecar

MAX_LISTED = 50


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m indexer finetune",
        description="Fine-tune the base model on a labelled folder of images and write a model "
        "directory (weights, model card, model version) into the model store.",
        epilog="Labels come from the sidecar's 'label' column, else from each image's parent "
        "folder; a 'split' column (train/validation) picks the sets, else a stratified seeded "
        "split is made. Exit status: 0 written, 3 written but some images unreadable, 1 "
        "interrupted or failed, 2 bad arguments or unusable data.",
    )
    p.add_argument("folder", type=Path, help="folder of labelled images, walked recursively")
    p.add_argument("--metadata", type=Path, help="CSV or JSONL sidecar: path,label[,split]")
    p.add_argument("--out", type=Path,
                   help="model directory to write (default: <model store>/<folder>-<UTC time>)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--epochs", type=int, help="most epochs (early stopping may end sooner)")
    p.add_argument("--views", type=int, help="augmented views precomputed per image")
    p.add_argument("--patience", type=int, help="epochs without improvement before stopping")
    p.add_argument("--lr-schedule", choices=("constant", "cosine"),
                   help="learning rates decaying to zero over --epochs (cosine, the default) "
                   "or constant")
    p.add_argument("--tune-from-block", type=int, choices=(1, 2, 3),
                   help="first conv5 block that learns (1: all of conv5; default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validation-fraction", type=float, default=0.1,
                   help="share of each label held out when there is no split column")
    p.add_argument("--max-per-label", type=int,
                   help="use at most this many images per label and split (quick trials)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p




def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.set_up_logging()
    if threading.current_thread() is threading.main_thread():
        # SIGTERM stops like Ctrl-C does; the SIGINT handler is the trainer's own.
        signal.signal(signal.SIGTERM, lambda s, f: signal.raise_signal(signal.SIGINT))
    return cli.run(lambda settings: finetune_command(args, settings),
                   interrupted="interrupted before training began; nothing was written")


def finetune_command(args: argparse.Namespace, settings: Settings) -> int:
    if not args.folder.is_dir():
        raise cli.UsageError(f"{args.folder} is not a folder")
    from imgsearch.finetune import Recipe, finetune

    sidecar = load_sidecar(args.metadata) if args.metadata else None
    recipe = Recipe(**{k: v for k, v in {
        "max_epochs": args.epochs, "views": args.views, "patience": args.patience,
        "tune_from_block": args.tune_from_block, "lr_schedule": args.lr_schedule,
    }.items() if v is not None})
    if not 0 < args.validation_fraction < 1:
        raise cli.UsageError("--validation-fraction must be between 0 and 1")
    out = args.out or settings.model_store / (
        f"{args.folder.resolve().name}-{datetime.now(UTC):%Y%m%d-%H%M%S}")
    result = finetune(
        args.folder, out, settings=settings, sidecar=sidecar, recipe=recipe,
        seed=args.seed, validation_fraction=args.validation_fraction,
        max_per_label=args.max_per_label, force=args.force, progress=not args.no_progress,
        metadata_name=str(args.metadata) if args.metadata else None,
        log_epoch=lambda line: print(line, file=sys.stderr, flush=True),
    )
    for s in result.skipped[:MAX_LISTED]:
        print(f"  skipped {s.rel_path}: [{s.reason}] {s.message}", file=sys.stderr)
    if len(result.skipped) > MAX_LISTED:
        print(f"  ... and {len(result.skipped) - MAX_LISTED} more (see the model card)",
              file=sys.stderr)
    if result.card is None:
        print("interrupted before the first epoch ended; nothing was written", file=sys.stderr)
        return EXIT_ABORTED
    card = result.card
    before, after = card["validation"]["before"], card["validation"]["after"]
    print(
        f"{'interrupted; kept' if result.interrupted else 'wrote'} {out} (best epoch "
        f"{card['best_epoch']} of {card['epochs']}, {result.seconds:.0f} s)\n"
        f"  validation P@10 {before['p@10']:.4f} -> {after['p@10']:.4f}, "
        f"mAP@10 {before['map@10']:.4f} -> {after['map@10']:.4f}\n"
        f"  model version {card['model_version']}\n"
        f"Index with it (a new index, the alias moves when it is complete):\n"
        f"  python -m indexer <folder> --model {out} --new-index",
        file=sys.stderr,
    )
    if after["p@10"] <= before["p@10"]:
        print("warning: the tuned model does not beat the base model on validation; more "
              "images per label, more epochs or another recipe may", file=sys.stderr)
    if result.interrupted:
        return EXIT_ABORTED
    return EXIT_PARTIAL if result.skipped else EXIT_OK
