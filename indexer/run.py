"""The parts of an indexing run, each with one job.

    prepare (target index: created or checked, its region mode)
      -> run_partition, once per partition of the files (read, skip known, decode, embed, bulk)
      -> finish (sync, alias swap, refresh)

The local indexer runs one partition holding every file (:func:`indexer.index.index_folder`);
the Ray engine runs many partitions on many machines (:mod:`indexer.distributed`) and merges
their :class:`~indexer.pipeline.RunStats`. Documents are keyed by content hash, so a partition
run twice (a retry, a lost worker) writes nothing twice.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from imgsearch.model import ImageModel
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
    ordered_map,
    read_file,
    skip_known,
    to_document,
)

log = logging.getLogger("indexer")

# --skip-near-duplicates: this run's images are checked in memory until this many are waiting
# to be searchable, then the run waits for its writes and refreshes the index (8 MB of vectors;
# a refresh every 1,024 images rather than a wait for each batch's write and a refresh).
MAX_UNSEARCHABLE = 1024

UNREACHABLE = ("Elasticsearch became unreachable ({}); start it again and re-run the same "
               "command (nothing already stored is embedded twice)")
INTERRUPTED = "interrupted; run the same command again to finish (no work is lost)"


@dataclass(frozen=True)
class Target:
    """Where a run writes: the concrete index, the region mode every document of it gets, and
    with ``--new-index`` the index the alias pointed at when the run began (the swap at the
    end moves it from there, and fails if another run has moved it meanwhile)."""

    index: str
    regions: RegionMode | None
    new_index: bool = False
    replaces: str | None = None


@dataclass
class PartitionResult:
    stats: RunStats
    embedded: int = 0
    aborted: str | None = None  # why the partition stopped early; a re-run finishes it


def prepare(store: ImageStore, settings: Settings, embedder: ImageModel, *,
            new_index: bool) -> Target:
    """The index this run writes to: a new one, or the alias's (created on first use),
    checked against the model's version and the regions asked for."""
    if new_index:
        replaces = store.indices.current_index()
        index = store.indices.create_index(embedder.version, settings)
    else:
        replaces, index = None, store.indices.ensure_index(embedder.version, settings)
    return Target(index, region_mode(store, index, settings, embedder), new_index, replaces)


def region_mode(store: ImageStore, index: str, settings: Settings,
                embedder: ImageModel) -> RegionMode | None:
    """The region mode of ``index``, which every document written to it gets (an index
    built with regions keeps getting them, asked or not); a run asking for other regions
    than the index holds is refused, as is an int8 model (regions come from fp32 maps)."""
    mode = store.indices.index_regions(index)
    asked = REGION_MODES.get(settings.regions)
    if asked is not None and asked != mode:
        holds = "no region vectors" if mode is None else f"{mode.name} region vectors"
        raise StoreError(
            f"index {index} holds {holds}, and this run asks for {asked.name} ones; an index "
            "has one kind for all its images. Build a new one behind the alias with "
            f"`python -m indexer <dir> --new-index --regions {asked.name}` (the current index "
            "stays searchable until it is complete)."
        )
    if mode is not None and not embedder.has_feature_maps:
        raise StoreError(
            f"index {index} holds region vectors, which come from fp32 models, and this run's "
            "model is int8: index with its fp32 source model, or build an index without "
            "regions for the int8 model."
        )
    if mode is not None and asked is None:
        log.info("index %s holds %s region vectors: this run adds them too", index, mode.name)
    return mode


def run_partition(
    paths: list[Path],
    root: Path,
    target: Target,
    *,
    settings: Settings,
    embedder: ImageModel,
    store: ImageStore,
    indexed_at: str,
    sidecar: dict[str, dict] | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    skip_near: float | None = None,
) -> PartitionResult:
    """Read, skip known, decode, embed and write ``paths`` (files below ``root``); with
    ``skip_near`` (a cosine), leave out each image that close to one already indexed or to an
    earlier one of this run (:func:`near_duplicates`).

    Reading and decoding run in a thread pool (Pillow releases the GIL) while this thread runs
    inference, and bulk writes go to a writer thread, so the model never waits on disk or on
    Elasticsearch. ``progress`` hears how many files are done or in flight.
    """
    stats = RunStats(seen=len(paths))
    result = PartitionResult(stats)
    workers = workers or min(4, len(os.sched_getaffinity(0)) + 1)
    window = max(2 * settings.batch_size, 4 * workers)
    thumbnails = ThumbnailStore(settings.thumbnail_dir)
    index = target.index

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
        written = future.result()
        stats.indexed += written.indexed
        by_id = {d.candidate.content_hash: d.candidate.rel_path for d in group}
        for doc_id, reason in written.failed:
            stats.failed.append(Failure(by_id.get(doc_id, doc_id), "rejected", reason))

    def collect_finished() -> None:
        # After an abort, the writes that still succeeded count too, so that the summary
        # says what is really stored.
        while pending:
            future, group = pending.popleft()
            if future.done() and not future.cancelled() and future.exception() is None:
                collect(future, group)

    pending: deque = deque()
    # With skip_near: (id, vector) of the images this run kept that may not be searchable yet
    # (a bulk write in flight, or before ES's next refresh); checked in memory.
    unsearchable: list[tuple[str, np.ndarray]] = []
    try:
        with ThreadPoolExecutor(workers, "decode") as pool, ThreadPoolExecutor(1, "bulk") as bulk:
            read = ordered_map(partial(read_file, root=root), paths, pool, window)
            fresh = skip_known(read, partial(store.existing_ids, index=index), stats)
            decoder = make_decoder(embedder, thumbnails, settings.thumbnail_size,
                                   settings.max_image_pixels, target.regions)
            decoded = ordered_map(decoder, fresh, pool, window)
            for group, vectors, group_regions in embed_batches(
                batches(decoded, settings.batch_size, stats), embedder.embed,
                partial(embedder.region_vectors, mode=target.regions) if target.regions
                else None,
            ):
                result.embedded += len(group)
                if skip_near is not None:
                    if len(unsearchable) >= MAX_UNSEARCHABLE:
                        # Make this run's writes searchable, so that they need no more
                        # checking in memory.
                        while pending:
                            collect(*pending.popleft())
                        store.refresh(index)
                        unsearchable.clear()
                    keep = near_duplicates(store, index, group, vectors, skip_near, stats,
                                           unsearchable)
                    group = [group[i] for i in keep]
                    vectors = vectors[keep]
                    group_regions = [group_regions[i] for i in keep] if group_regions else None
                    unsearchable.extend(
                        (d.candidate.content_hash, v) for d, v in zip(group, vectors, strict=True))
                    if not group:
                        continue
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
                if progress:
                    progress(stats.done + sum(len(g) for _, g in pending))
            while pending:
                collect(*pending.popleft())
            if progress:
                progress(stats.done)
    except (StoreError, KeyboardInterrupt) as exc:
        gave_up.set()
        collect_finished()
        result.aborted = aborted_because(exc)
    return result


def near_duplicates(store: ImageStore, index: str, group: list, vectors: np.ndarray,
                    threshold: float, stats: RunStats,
                    earlier: list[tuple[str, np.ndarray]] = ()) -> list[int]:
    """The positions in ``group`` to index: those with no image at ``threshold`` or closer
    among the indexed ones (one ``_msearch`` of k = 1 kNN queries with that ``similarity``),
    ``earlier`` (this run's, not searchable yet) and the group's own before it. The others are
    counted in ``stats.near_duplicates`` and logged."""
    nearest = store.knn_many(list(vectors), index=index, k=1, min_cosine=threshold)
    ids = [doc_id for doc_id, _ in earlier]
    to_earlier = np.stack([v for _, v in earlier]) @ vectors.T if earlier else None
    within = vectors @ vectors.T
    keep: list[int] = []
    for i, item in enumerate(group):
        twin = list(nearest[i][:1])  # (id, cosine) of the nearest indexed image that close
        if to_earlier is not None:
            j = int(np.argmax(to_earlier[:, i]))
            if to_earlier[j, i] >= threshold:
                twin.append((ids[j], float(to_earlier[j, i])))
        twin += [(group[j].candidate.content_hash, float(within[j, i])) for j in keep
                 if within[j, i] >= threshold]
        if not twin:
            keep.append(i)
            continue
        stats.near_duplicates += 1
        log.info("skipped %s: a near-duplicate of %s (cosine %.4f)",
                 item.candidate.rel_path, twin[0][0], twin[0][1])
    return keep


def aborted_because(exc: BaseException) -> str:
    """What a run's summary says when ``exc`` (a store error or an interrupt) stopped it."""
    if isinstance(exc, StoreUnavailable):
        return UNREACHABLE.format(exc)
    if isinstance(exc, KeyboardInterrupt):
        return INTERRUPTED
    return str(exc)


def finish(store: ImageStore, target: Target, root: Path, stats: RunStats, *,
           sync: bool) -> None:
    """After every partition: delete the documents of files gone from ``root`` (``sync``),
    move the alias to a new index, and make every write visible to searches."""
    index = target.index
    if sync:
        store.refresh(index)
        stale = set(store.ids_under_root(str(root), index)) - stats.hashes
        stats.deleted = store.delete_ids(stale, index) if stale else 0
    if target.new_index:
        previous = store.indices.point_alias(index, target.replaces)
        if previous:
            log.warning(
                "alias %s now points at %s; the previous index %s is kept "
                "(delete it when you no longer need it)", store.alias, index, previous,
            )
    store.refresh(index)
