"""``python -m indexer <dir>``: index a folder of images into Elasticsearch.

Exit status: 0 every image is indexed (or already was); 3 the run completed but some files
failed (each listed with its reason); 1 the run was aborted (Elasticsearch unreachable after
retries, another model's index, interrupted); 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from imgsearch.carry import CarryResult, carry_over
from imgsearch.indexing import aborted_because, finish, prepare, run_partition
from imgsearch.model import ImageModel
from imgsearch.pipeline import RunStats, now_iso
from imgsearch.settings import Settings
from imgsearch.store import ImageStore, StoreError
from imgsearch.walk import walk_files

from . import cli
from .sidecar import load_sidecar

MAX_LISTED_FAILURES = 50

log = logging.getLogger("indexer")


@dataclass
class IndexReport:
    stats: RunStats
    seconds: float
    index: str
    aborted: str | None = None
    embedded: int = 0
    regions: str | None = None  # the region mode of the index, when it holds regions
    # The model's version and what it computed in here (the Ray engine's workers load the same
    # model on their own machines; this is the driver's view of it).
    model: dict | None = None
    # --new-index: the replaced index's images this run carried (imgsearch/carry.py).
    carry: CarryResult | None = None

    @property
    def exit_code(self) -> int:
        if self.aborted:
            return cli.EXIT_ABORTED
        failed = self.stats.failed or (self.carry is not None and self.carry.failed)
        return cli.EXIT_PARTIAL if failed else cli.EXIT_OK

    def to_json(self) -> dict:
        s = self.stats
        return {
            "index": self.index,
            "regions": self.regions,
            "model": self.model,
            "seen": s.seen,
            "indexed": s.indexed,
            "already_present": s.already_present,
            "duplicates": s.duplicates,
            "near_duplicates": s.near_duplicates,
            "ignored": s.ignored,
            "excluded": s.excluded,
            "moved": s.moved,
            "deleted": s.deleted,
            "failed": [vars(f) for f in s.failed],
            "carried": self.carry.carried if self.carry else None,
            "carry": self.carry.to_json() if self.carry else None,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.embedded / self.seconds, 2) if self.seconds else None,
            "aborted": self.aborted,
            "exit_code": self.exit_code,
        }


def index_folder(
    root: Path,
    *,
    settings: Settings,
    embedder: ImageModel,
    store: ImageStore,
    sidecar: dict[str, dict] | None = None,
    sync: bool = False,
    new_index: bool = False,
    workers: int | None = None,
    progress: bool = True,
    engine=None,
    skip_near_duplicates: bool = False,
) -> IndexReport:
    """Index every image below ``root``: in this process as one partition of every file, or
    with ``engine`` (:class:`indexer.distributed.RayEngine`) as many partitions over a
    cluster. Safe to re-run, and to run again after a crash. ``skip_near_duplicates``: leave
    out images at ``settings.duplicate_threshold`` or closer to an indexed one (local only).
    ``new_index``: the index it replaces has its images carried over (imgsearch/carry.py:
    uploads, other folders, with their metadata) before the alias moves, in this process
    whatever the engine."""
    if skip_near_duplicates and engine is not None:
        raise ValueError("--skip-near-duplicates needs the local engine: each batch is checked "
                         "against everything written before it")
    # Normalised but not resolved: documents keep the path the user knows, links included.
    root = Path(os.path.abspath(root))
    started = time.perf_counter()
    target = prepare(store, settings, embedder, new_index=new_index)
    paths = list(walk_files(root))
    bar = tqdm(total=len(paths), unit="img", disable=not progress, dynamic_ncols=True)
    try:
        def advance(done: int) -> None:
            bar.update(done - bar.n)

        if engine is None:
            part = run_partition(
                paths, root, target, settings=settings, embedder=embedder, store=store,
                indexed_at=now_iso(), sidecar=sidecar, workers=workers, progress=advance,
                skip_near=settings.duplicate_threshold if skip_near_duplicates else None,
            )
        else:
            part = engine.run(paths, root, target, settings=settings, version=embedder.version,
                              indexed_at=now_iso(), sidecar=sidecar, progress=advance)
        report = IndexReport(part.stats, 0.0, target.index, aborted=part.aborted,
                             embedded=part.embedded,
                             regions=target.regions.name if target.regions else None,
                             model={"version": embedder.version,
                                    "precision": embedder.precision,
                                    "runtime": embedder.runtime})
        if not report.aborted and target.new_index and target.replaces:
            try:
                report.carry = carry_over(store, target, settings=settings, embedder=embedder,
                                          indexed_at=now_iso())
                why = report.carry.aborted
                report.embedded += report.carry.embedded
                # Carried images have their files: --sync must not take them for gone ones.
                part.stats.hashes |= report.carry.stats.hashes
            except (StoreError, KeyboardInterrupt) as exc:  # the replaced index's pages
                why = aborted_because(exc)
            if why:
                report.aborted = (
                    f"carrying the images of {target.replaces} into {target.index} stopped: "
                    f"{why}. The alias was not moved ({target.replaces} still serves); run the "
                    "same command again (it builds a new index), and delete "
                    f"{target.index} if you do not")
        if not report.aborted:
            try:
                finish(store, target, root, part.stats, sync=sync)
            except (StoreError, KeyboardInterrupt) as exc:  # sync, the swap, the refresh
                report.aborted = aborted_because(exc)
    finally:
        bar.close()
    report.seconds = time.perf_counter() - started
    return report


def format_summary(report: IndexReport) -> str:
    s = report.stats
    rate = report.embedded / report.seconds if report.seconds else 0.0
    lines = [
        f"Index {report.index}"
        + (f" (with {report.regions} region vectors)" if report.regions else "")
        + f": {s.seen} files in {report.seconds:.1f} s "
        f"({rate:.1f} images/s embedded)",
        f"  indexed:          {s.indexed}",
        f"  already present:  {s.already_present}",
    ]
    if s.moved:
        lines.append(f"  moved:            {s.moved} of them (new path, not embedded again)")
    if s.duplicates:
        lines.append(f"  duplicates:       {s.duplicates} (same content as another file)")
    if s.near_duplicates:
        lines.append(f"  near-duplicates:  {s.near_duplicates} skipped (as close as an indexed "
                     "image: --skip-near-duplicates)")
    if s.ignored:
        lines.append(f"  ignored:          {s.ignored} (not images)")
    if s.excluded:
        lines.append(f"  excluded:         {s.excluded} (deleted by a person; indexed again "
                     "only when the file changes)")
    if s.deleted:
        lines.append(f"  deleted (sync):   {s.deleted}")
    lines.append(f"  failed:           {len(s.failed)}")
    for f in s.failed[:MAX_LISTED_FAILURES]:
        lines.append(f"    {f.rel_path}: [{f.reason}] {f.message}")
    if len(s.failed) > MAX_LISTED_FAILURES:
        lines.append(f"    ... and {len(s.failed) - MAX_LISTED_FAILURES} more (see --report)")
    c = report.carry
    if c is not None:
        lines.append(f"  carried:          {c.carried} of {c.missing} image(s) of the replaced "
                     f"index {c.replaced} missing from this folder (uploads, other folders; "
                     "re-embedded from their files)")
        if c.not_carried:
            lines.append(f"  not carried:      {len(c.not_carried)}")
        for n in c.not_carried[:MAX_LISTED_FAILURES]:
            lines.append(f"    {n.path or n.id}: [{n.reason}] {n.message}")
        if len(c.not_carried) > MAX_LISTED_FAILURES:
            lines.append(f"    ... and {len(c.not_carried) - MAX_LISTED_FAILURES} more "
                         "(see --report)")
    if report.aborted:
        lines.append(f"ABORTED: {report.aborted}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m indexer",
        description="Index a folder of images (recursively) into Elasticsearch.",
        epilog="Exit status: 0 all indexed, 3 some files failed, 1 aborted, 2 bad arguments. "
        "Configuration comes from ES_URL, ES_INDEX, IMGSEARCH_* variables (see README).",
    )
    p.add_argument("folder", type=Path, help="folder of images, walked recursively")
    p.add_argument("--metadata", type=Path, help="CSV or JSONL sidecar keyed by relative path")
    p.add_argument("--sync", action="store_true",
                   help="delete documents of files under this folder that are gone")
    p.add_argument("--new-index", action="store_true",
                   help="build a fresh index and switch the alias to it when complete")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this process; ray: partitions of the files over a Ray "
                   "cluster's workers (README, 'Indexing on Ray')")
    p.add_argument("--address", help="--engine ray: the Ray cluster (HOST:PORT; default: "
                   "start a local Ray)")
    p.add_argument("--ray-workers", type=int, default=8,
                   help="--engine ray: at most this many model actors (the pool is elastic: "
                   "it goes on with fewer when workers go away)")
    p.add_argument("--skip-near-duplicates", action="store_true",
                   help="leave out each image as close as IMGSEARCH_DUPLICATE_THRESHOLD to one "
                   "already indexed or earlier in this run (counted in the summary; local "
                   "engine only)")
    cli.add_model_options(p)
    p.add_argument("--report", type=Path, help="write the run summary as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.stop_on_sigterm()
    cli.set_up_logging()
    overrides = cli.model_overrides(args)
    return cli.run(lambda settings: index_command(args, settings),
                   settings=lambda: Settings.from_env(**overrides),
                   interrupted="interrupted before indexing began; nothing was written")


def index_command(args: argparse.Namespace, settings: Settings) -> int:
    if not args.folder.is_dir():
        raise cli.UsageError(f"{args.folder} is not a folder")
    if args.engine != "ray" and args.address:
        raise cli.UsageError("--address names a Ray cluster: add --engine ray")
    if args.skip_near_duplicates and args.engine == "ray":
        raise cli.UsageError("--skip-near-duplicates needs the local engine (each batch is "
                             "checked against everything written before it)")
    if args.ray_workers < 1:
        raise cli.UsageError("--ray-workers must be at least 1")
    sidecar = load_sidecar(args.metadata) if args.metadata else None

    from imgsearch.embedder import Embedder

    store = ImageStore.from_settings(settings)
    embedder = Embedder(settings)
    log.info("model %s, computing in %s on %s", embedder.version, embedder.precision,
             embedder.runtime)
    engine = None
    if args.engine == "ray":
        from .distributed import RayEngine

        engine = RayEngine(args.address, max_workers=args.ray_workers,
                           progress=not args.no_progress)
    report = index_folder(
        args.folder, settings=settings, embedder=embedder, store=store, sidecar=sidecar,
        sync=args.sync, new_index=args.new_index, workers=args.workers,
        progress=not args.no_progress, engine=engine,
        skip_near_duplicates=args.skip_near_duplicates,
    )
    print(format_summary(report), file=sys.stderr)
    if args.report:
        args.report.write_text(json.dumps(report.to_json(), indent=2))
    return report.exit_code
