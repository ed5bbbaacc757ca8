"""``python -m indexer quantize <photos> [--model M]``: an int8 model for OpenVINO.

Exit status: 0 a model was written; 3 written, but some photos could not be read (each
listed); 1 the source model could not be loaded or OpenVINO cannot run; 2 bad arguments or too
few usable photos.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path

from imgsearch.settings import Settings

from . import cli
from .cli import EXIT_OK, EXIT_PARTIAL

MAX_LISTED = 50


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m indexer quantize",
        description="Quantise a model to int8 for OpenVINO (NNCF post-training quantisation, "
        "calibrated on photos of the collection) and write it as a model directory of its own "
        "(its own model version: it builds its own index).",
        epilog="Exit status: 0 written, 3 written but some photos unreadable, 1 failed, "
        "2 bad arguments or too few photos.",
    )
    p.add_argument("folder", type=Path, help="photos to calibrate on, walked recursively")
    p.add_argument("--model", help="model to quantise: directory or model version "
                   "(default: IMGSEARCH_MODEL, else the base model)")
    p.add_argument("--samples", type=int, default=300,
                   help="calibration photos, chosen at random (default 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path,
                   help="model directory to write (default: <model store>/<model>-int8-<time>)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.set_up_logging(logging.WARNING)
    return cli.run(lambda settings: quantize_command(args, settings),
                   settings=lambda: Settings.from_env(**({"model": args.model} if args.model
                                                         else {})))


def quantize_command(args: argparse.Namespace, settings: Settings) -> int:
    if not args.folder.is_dir():
        raise cli.UsageError(f"{args.folder} is not a folder")
    from imgsearch.embedder import Embedder
    from imgsearch.quantize import quantize
    from imgsearch.runtime import RuntimeUnavailable

    if settings.runtime == "tensorflow":
        raise RuntimeUnavailable("int8 models run on OpenVINO only, but "
                                 "IMGSEARCH_RUNTIME=tensorflow")
    source = Embedder(settings)
    name = Path(settings.model).name if settings.model else "base"
    out = args.out or settings.model_store / f"{name}-int8-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    result = quantize(source, args.folder, out, samples=args.samples, seed=args.seed,
                      force=args.force)
    for path, reason in result.skipped[:MAX_LISTED]:
        print(f"  skipped {path}: {reason}", file=sys.stderr)
    q = result.card["quantization"]
    print(
        f"wrote {result.out_dir} ({q['calibration']['images']} calibration photos, "
        f"{q['seconds']['quantize']:.0f} s)\n"
        f"  model version {result.card['model_version']}\n"
        f"Index with it (a new index, the alias moves when it is complete):\n"
        f"  python -m indexer <folder> --model {result.out_dir} --new-index",
        file=sys.stderr,
    )
    return EXIT_PARTIAL if result.skipped else EXIT_OK
