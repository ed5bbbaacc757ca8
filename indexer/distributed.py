"""``python -m indexer <folder> --engine ray [--address HOST:PORT]``: the same run on Ray.

The driver prepares the target index (:func:`indexer.run.prepare`), lists the files once and
cuts them into partitions of :data:`PARTITION_FILES`. Ray Data maps the partitions over an
**elastic** pool of actors (``concurrency=(1, N)``): each actor loads the model and connects to
Elasticsearch once, then runs the local pipeline on each partition it gets
(:func:`indexer.run.run_partition`: read, skip known, decode in threads, embed, bulk with the
store's retries) and returns the partition's counts, which the driver merges into the same
summary and exit status as the local indexer; then :func:`indexer.run.finish` (sync, alias
swap) runs on the driver.

Why whole partitions on an actor rather than decode tasks feeding embedding actors: decoding
next to inference, in the actor's threads, keeps 150 KB of pixels a photo out of Ray's object
store and is the pipeline that runs at 85-95 % of the forward pass (docs/BENCHMARKS.md); the
unit of distribution is a partition of files, as in clip-retrieval. Why elastic: a fixed-size
pool waits forever for an actor whose node has gone; an elastic one goes on with the actors it
has, and Ray runs the lost actor's partition again elsewhere. Running a partition twice is
harmless: documents are keyed by content hash, and the second run skips what the first wrote.

Thumbnails are written by the actors into ``IMGSEARCH_THUMBNAIL_DIR``, so on a real cluster it
must be storage that every worker and the web app reach (NFS, a mounted volume). Workers need
this project and its environment, and the same model (base weights in the cache, or the model
store) as the driver: the model version is checked against the index on the driver, and every
document carries the version its worker embedded with.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from pathlib import Path

from imgsearch.settings import Settings
from imgsearch.store import ImageStore, StoreError, StoreUnavailable

from .pipeline import Failure, RunStats, now_iso
from .run import INTERRUPTED, UNREACHABLE, Target, finish, prepare, run_partition
from .walk import walk_files

log = logging.getLogger("indexer")

# Files a partition holds: small enough that a lost worker costs little work again, large
# enough that each actor call fills several inference batches.
PARTITION_FILES = 64


class PartitionIndexer:
    """A Ray Data actor: one model and one store, loaded once, indexing partition after
    partition."""

    def __init__(self, settings: Settings, root: str, target: Target,
                 sidecar: dict[str, dict] | None, indexed_at: str, version: str):
        from imgsearch.embedder import Embedder

        self.settings, self.root, self.target = settings, Path(root), target
        self.sidecar, self.indexed_at = sidecar, indexed_at
        self.embedder = Embedder(settings)
        if self.embedder.version != version:
            raise RuntimeError(
                f"this worker's model is {self.embedder.version}, the driver's {version}: give "
                "every worker the same model (IMGSEARCH_MODEL, weights cache, model store)")
        self.store = ImageStore.from_settings(settings)

    def __call__(self, batch: dict) -> dict:
        results = []
        for paths in batch["paths"]:
            part = run_partition(
                [Path(p) for p in paths], self.root, self.target, settings=self.settings,
                embedder=self.embedder, store=self.store, indexed_at=self.indexed_at,
                sidecar=self.sidecar,
            )
            results.append(_encode(part.stats, part.embedded, part.aborted))
        return {"result": results}


def index_folder_ray(
    root: Path,
    *,
    settings: Settings,
    embedder,
    store: ImageStore,
    sidecar: dict[str, dict] | None = None,
    sync: bool = False,
    new_index: bool = False,
    address: str | None = None,
    max_workers: int = 8,
    cpus_per_worker: float = 1.0,
    progress: bool = True,
):
    """Index every image below ``root`` on a Ray cluster (``address``; a local Ray when
    None): same report as :func:`indexer.index.index_folder`."""
    import ray

    from .index import IndexReport

    root = Path(os.path.abspath(root))
    started = time.perf_counter()
    target = prepare(store, settings, embedder, new_index=new_index)
    paths = [str(p) for p in walk_files(root)]
    stats = RunStats()
    report = IndexReport(stats, 0.0, target.index,
                         regions=target.regions.name if target.regions else None)
    try:
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        partitions = [{"paths": paths[i:i + PARTITION_FILES]}
                      for i in range(0, len(paths), PARTITION_FILES)]
        results = ray.data.from_items(partitions, override_num_blocks=max(1, len(partitions)))
        results = results.map_batches(
            PartitionIndexer, batch_size=1, num_cpus=cpus_per_worker,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, max_workers)),
            fn_constructor_kwargs={
                "settings": settings, "root": str(root), "target": target, "sidecar": sidecar,
                "indexed_at": now_iso(), "version": embedder.version,
            },
        )
        for row in results.iter_rows():
            part, embedded, aborted = _decode(row["result"])
            stats.merge(part)
            report.embedded += embedded
            report.aborted = report.aborted or aborted
        if not report.aborted:
            finish(store, target, root, stats, sync=sync)
    except StoreUnavailable as exc:
        report.aborted = UNREACHABLE.format(exc)
    except StoreError as exc:
        report.aborted = str(exc)
    except KeyboardInterrupt:
        report.aborted = INTERRUPTED
    finally:
        report.seconds = time.perf_counter() - started
    return report


def _encode(stats: RunStats, embedded: int, aborted: str | None) -> str:
    """A partition's outcome as one JSON string (one column of plain text: no schema for
    Ray's Arrow blocks to infer from rows that differ)."""
    out = dataclasses.asdict(stats)
    out["hashes"] = sorted(stats.hashes)
    return json.dumps({"stats": out, "embedded": embedded, "aborted": aborted})


def _decode(text: str) -> tuple[RunStats, int, str | None]:
    row = json.loads(text)
    raw = row["stats"]
    raw["failed"] = [Failure(**f) for f in raw["failed"]]
    raw["hashes"] = set(raw["hashes"])
    return RunStats(**raw), int(row["embedded"]), row["aborted"]
