"""``python -m indexer <folder> --engine ray [--address HOST:PORT]``: the same run on Ray.

:func:`indexer.index.index_folder` prepares the target index and lists the files as for a
local run; its engine, :class:`RayEngine`, cuts them into partitions of
:data:`PARTITION_FILES`. Ray Data maps the partitions over an
**elastic** pool of actors (``concurrency=(1, N)``): each actor loads the model and connects to
Elasticsearch once, then runs the local pipeline on each partition it gets
(:func:`imgsearch.indexing.run_partition`: read, skip known, decode in threads, embed, bulk with the
store's retries) and returns the partition's counts, which the driver merges into the same
summary and exit status as the local indexer; then :func:`imgsearch.indexing.finish` (sync, alias
swap) runs on the driver, as after a local run.

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
document carries the version its worker embedded with, and the driver's tags (a worker whose
tagger differs refuses to start).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from pathlib import Path

from imgsearch.indexing import PartitionResult, Target, run_partition
from imgsearch.pipeline import Failure, RunStats
from imgsearch.settings import Settings
from imgsearch.store import ImageStore

log = logging.getLogger("indexer")

# Files a partition holds: small enough that a lost worker costs little work again, large
# enough that each actor call fills several inference batches.
PARTITION_FILES = 64


class PartitionIndexer:
    """A Ray Data actor: one model and one store, loaded once, indexing partition after
    partition."""

    def __init__(self, settings: Settings, root: str, target: Target,
                 sidecar: dict[str, dict] | None, indexed_at: str, version: str):
        import ray

        from imgsearch.embedder import Embedder

        if not settings.inference_threads:
            # The CPUs Ray gave this actor, not every core of its machine: actors sharing a
            # machine would otherwise each size their threads for all of it.
            cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 0)
            settings = settings.with_(inference_threads=max(1, round(cpus)))
        self.settings, self.root, self.target = settings, Path(root), target
        self.sidecar, self.indexed_at = sidecar, indexed_at
        self.embedder = Embedder(settings)
        if self.embedder.version != version:
            raise RuntimeError(
                f"this worker's model is {self.embedder.version}, the driver's {version}: give "
                "every worker the same model (IMGSEARCH_MODEL, weights cache, model store)")
        tagger = getattr(self.embedder.tagger, "version", None)
        if tagger != target.tagger:
            # Documents of one run all get the driver's tags (or none): the same fields.
            raise RuntimeError(f"this worker tags with {tagger}, the driver with "
                               f"{target.tagger}: give every worker the same IMGSEARCH_TAGS")
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


class RayEngine:
    """Runs partitions of a run's files on a Ray cluster (``address``; a local Ray when
    None), over an elastic pool of 1 to ``max_workers`` model actors of ``cpus_per_worker``
    CPUs each. Give it to :func:`indexer.index.index_folder` as its ``engine``."""

    def __init__(self, address: str | None = None, *, max_workers: int = 8,
                 cpus_per_worker: float = 1.0, progress: bool = True):
        self.address, self.max_workers = address, max(1, max_workers)
        self.cpus_per_worker, self.progress = cpus_per_worker, progress

    def run(self, paths: list[Path], root: Path, target: Target, *, settings: Settings,
            version: str, indexed_at: str, sidecar: dict[str, dict] | None = None,
            progress: Callable[[int], None] | None = None) -> PartitionResult:
        """Every partition of ``paths`` indexed by the actors, their outcomes merged; a job
        that Ray cannot finish (an actor that cannot start) is an aborted run."""
        import ray

        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = self.progress
        files = [str(p) for p in paths]
        partitions = [{"paths": files[i:i + PARTITION_FILES]}
                      for i in range(0, len(files), PARTITION_FILES)]
        merged = PartitionResult(RunStats())
        if not partitions:
            return merged
        results = ray.data.from_items(partitions, override_num_blocks=len(partitions))
        results = results.map_batches(
            PartitionIndexer, batch_size=1, num_cpus=self.cpus_per_worker,
            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=self.max_workers),
            fn_constructor_kwargs={
                "settings": settings, "root": str(root), "target": target, "sidecar": sidecar,
                "indexed_at": indexed_at, "version": version,
            },
        )
        try:
            for row in results.iter_rows():
                stats, embedded, aborted = _decode(row["result"])
                merged.stats.merge(stats)
                merged.embedded += embedded
                merged.aborted = merged.aborted or aborted
                if progress:
                    progress(merged.stats.seen)
        except ray.exceptions.RayError as exc:
            merged.aborted = f"the Ray job failed: {exc}"
        return merged


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
