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
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tqdm import tqdm

from imgsearch.regions import REGION_MODES, RegionMode
from imgsearch.settings import Settings
from imgsearch.store import ImageStore, StoreError, StoreUnavailable
from imgsearch.thumbnails import ThumbnailStore

from .pipeline import (
    Failure,
    RunStats,
    batches,
    embed_batches,
    make_decoder,
    now_iso,
    ordered_map,
    read_file,
    skip_known,
    to_document,
)
from .sidecar import SidecarError, load_sidecar
from .walk import walk_files

EXIT_OK, EXIT_ABORTED, EXIT_USAGE, EXIT_PARTIAL = 0, 1, 2, 3
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

    @property
    def exit_code(self) -> int:
        if self.aborted:
            return EXIT_ABORTED
        return EXIT_PARTIAL if self.stats.failed else EXIT_OK

    def to_json(self) -> dict:
        s = self.stats
        return {
            "index": self.index,
            "regions": self.regions,
            "seen": s.seen,
            "indexed": s.indexed,
            "already_present": s.already_present,
            "duplicates": s.duplicates,
            "ignored": s.ignored,
            "deleted": s.deleted,
            "failed": [vars(f) for f in s.failed],
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.embedded / self.seconds, 2) if self.seconds else None,
            "aborted": self.aborted,
            "exit_code": self.exit_code,
        }


def index_folder(
    root: Path,
    *,
    settings: Settings,
    embedder,
    store: ImageStore,
    sidecar: dict[str, dict] | None = None,
    sync: bool = False,
    new_index: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> IndexReport:
    """Index every image below ``root``; safe to re-run, and to run again after a crash."""
    # Normalised but not resolved: documents keep the path the user knows, links included.
    root = Path(os.path.abspath(root))
    started = time.perf_counter()
    if new_index:
        # Where the alias points now: the swap at the end moves it from there, and fails if
        # another run has moved it in the meantime.
        replaces = store.current_index()
        index = store.create_index(embedder.version, settings)
    else:
        index = store.ensure_index(embedder.version, settings)
    regions = region_mode(store, index, settings, embedder)
    paths = list(walk_files(root))
    stats = RunStats(seen=len(paths))
    report = IndexReport(stats, 0.0, index, regions=regions.name if regions else None)
    workers = workers or min(4, len(os.sched_getaffinity(0)) + 1)
    window = max(2 * settings.batch_size, 4 * workers)
    thumbnails = ThumbnailStore(settings.thumbnail_dir)
    indexed_at = now_iso()
    bar = tqdm(total=len(paths), unit="img", disable=not progress, dynamic_ncols=True)

    # Once a write has given up, the requests still queued give up at once instead of each
    # waiting out its own retry window: the run is over, and a re-run finishes it.
    gave_up = threading.Event()

    def write(docs: list[dict]):
        if gave_up.is_set():
            raise StoreError("an earlier bulk write failed; this one was not attempted")
        try:
            return store.bulk_index(docs, index)
        except Exception:
            gave_up.set()
            raise

    def collect(future, group) -> None:
        result = future.result()
        stats.indexed += result.indexed
        by_id = {d.candidate.content_hash: d.candidate.rel_path for d in group}
        for doc_id, reason in result.failed:
            stats.failed.append(Failure(by_id.get(doc_id, doc_id), "rejected", reason))

    def collect_finished() -> None:
        # After an abort, the writes that still succeeded count too, so that the summary
        # says what is really stored.
        while pending:
            future, group = pending.popleft()
            if future.done() and not future.cancelled() and future.exception() is None:
                collect(future, group)

    pending: deque = deque()
    try:
        with ThreadPoolExecutor(workers, "decode") as pool, ThreadPoolExecutor(1, "bulk") as bulk:
            read = ordered_map(partial(read_file, root=root), paths, pool, window)
            fresh = skip_known(read, partial(store.existing_ids, index=index), stats)
            decoder = make_decoder(
                embedder, thumbnails, settings.thumbnail_size, settings.max_image_pixels, regions
            )
            decoded = ordered_map(decoder, fresh, pool, window)
            for group, vectors, group_regions in embed_batches(
                batches(decoded, settings.batch_size, stats), embedder.embed,
                partial(embedder.region_vectors, mode=regions) if regions else None,
            ):
                report.embedded += len(group)
                docs = [
                    to_document(
                        d, v, root=root, sidecar=sidecar or {},
                        model_version=embedder.version, indexed_at=indexed_at,
                        regions=group_regions[i] if group_regions else None,
                    )
                    for i, (d, v) in enumerate(zip(group, vectors, strict=True))
                ]
                pending.append((bulk.submit(write, docs), group))
                # Two requests in flight keep ES busy without holding many vectors in memory.
                while len(pending) > 2:
                    collect(*pending.popleft())
                in_flight = sum(len(g) for _, g in pending)
                bar.update(stats.done + in_flight - bar.n)
            while pending:
                collect(*pending.popleft())
            bar.update(stats.done - bar.n)
        if sync:
            store.refresh(index)
            stale = set(store.ids_under_root(str(root), index)) - stats.hashes
            stats.deleted = store.delete_ids(stale, index) if stale else 0
        if new_index:
            previous = store.point_alias(index, replaces)
            if previous:
                log.warning(
                    "alias %s now points at %s; the previous index %s is kept "
                    "(delete it when you no longer need it)", store.alias, index, previous,
                )
        store.refresh(index)
    except StoreUnavailable as exc:  # a request outside the retried ones (refresh, sync)
        gave_up.set()
        collect_finished()
        report.aborted = (
            f"Elasticsearch became unreachable ({exc}); start it again and re-run the same "
            "command (nothing already stored is embedded twice)"
        )
    except StoreError as exc:
        gave_up.set()
        collect_finished()
        report.aborted = str(exc)
    except KeyboardInterrupt:
        gave_up.set()
        collect_finished()
        report.aborted = "interrupted; run the same command again to finish (no work is lost)"
    finally:
        bar.close()
        report.seconds = time.perf_counter() - started
    return report


def region_mode(store: ImageStore, index: str, settings: Settings, embedder) -> RegionMode | None:
    """The region mode of ``index``, which every document written to it gets (an index
    built with regions keeps getting them, asked or not); a run asking for other regions
    than the index holds is refused, as is an int8 model (regions come from fp32 maps)."""
    mode = store.index_regions(index)
    asked = REGION_MODES.get(settings.regions)
    if asked is not None and asked != mode:
        holds = "no region vectors" if mode is None else f"{mode.name} region vectors"
        raise StoreError(
            f"index {index} holds {holds}, and this run asks for {asked.name} ones; an index "
            "has one kind for all its images. Build a new one behind the alias with "
            f"`python -m indexer <dir> --new-index --regions {asked.name}` (the current index "
            "stays searchable until it is complete)."
        )
    if mode is not None and embedder.precision == "int8":
        raise StoreError(
            f"index {index} holds region vectors, which come from fp32 models, and this run's "
            "model is int8: index with its fp32 source model, or build an index without "
            "regions for the int8 model."
        )
    if mode is not None and asked is None:
        log.info("index %s holds %s region vectors: this run adds them too", index, mode.name)
    return mode


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
    if s.duplicates:
        lines.append(f"  duplicates:       {s.duplicates} (same content as another file)")
    if s.ignored:
        lines.append(f"  ignored:          {s.ignored} (not images)")
    if s.deleted:
        lines.append(f"  deleted (sync):   {s.deleted}")
    lines.append(f"  failed:           {len(s.failed)}")
    for f in s.failed[:MAX_LISTED_FAILURES]:
        lines.append(f"    {f.rel_path}: [{f.reason}] {f.message}")
    if len(s.failed) > MAX_LISTED_FAILURES:
        lines.append(f"    ... and {len(s.failed) - MAX_LISTED_FAILURES} more (see --report)")
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
    p.add_argument("--model", help="a fine-tuned model: its directory or its model version in "
                   "the model store (default: IMGSEARCH_MODEL, else the base model)")
    p.add_argument("--regions", choices=sorted(REGION_MODES),
                   help="give a new index region vectors, for searching with part of a photo "
                   "(default: IMGSEARCH_REGIONS, else none); an index that has them keeps "
                   "getting them")
    p.add_argument("--batch-size", type=int, help="images per inference batch")
    p.add_argument("--workers", type=int, help="decode threads (default: cores + 1, max 4)")
    p.add_argument("--report", type=Path, help="write the run summary as JSON to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


class _WithoutTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info, record.exc_text = None, None
        return True


def quiet_transport_logs() -> None:
    """One line per HTTP request would drown the progress bar, and the client logs each retry
    with a 30-line traceback: keep warnings, as one line each (the final error says it all)."""
    transport = logging.getLogger("elastic_transport")
    transport.setLevel(logging.WARNING)
    for name in ("elastic_transport.transport", "elastic_transport.node_pool"):
        logging.getLogger(name).addFilter(_WithoutTraceback())


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the run stops, prints its summary and exits 1."""


def _on_sigterm(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_transport_logs()
    if not args.folder.is_dir():
        print(f"error: {args.folder} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    try:
        overrides: dict = {"batch_size": args.batch_size} if args.batch_size else {}
        if args.model:
            overrides["model"] = args.model
        if args.regions:
            overrides["regions"] = args.regions
        settings = Settings.from_env(**overrides)
        sidecar = load_sidecar(args.metadata) if args.metadata else None
    except (ValueError, SidecarError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    from imgsearch.embedder import Embedder
    from imgsearch.runtime import RuntimeUnavailable
    from imgsearch.weights import WeightsError

    store = ImageStore.from_settings(settings)
    try:
        embedder = Embedder(settings)
        report = index_folder(
            args.folder, settings=settings, embedder=embedder, store=store, sidecar=sidecar,
            sync=args.sync, new_index=args.new_index, workers=args.workers,
            progress=not args.no_progress,
        )
    except StoreUnavailable as exc:  # unreachable before the first write
        print(f"error: Elasticsearch at {settings.es_url} is not reachable ({exc.__cause__}). "
              "Start it with `make es-up`.", file=sys.stderr)
        return EXIT_ABORTED
    except (StoreError, WeightsError, RuntimeUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ABORTED
    except KeyboardInterrupt:  # before the run began (loading the model, checking the index)
        print("interrupted before indexing began; nothing was written", file=sys.stderr)
        return EXIT_ABORTED
    print(format_summary(report), file=sys.stderr)
    if args.report:
        args.report.write_text(json.dumps(report.to_json(), indent=2))
    return report.exit_code
