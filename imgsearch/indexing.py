"""The parts of an indexing run, each with one job.

    prepare (target index: created or checked, its region mode)
      -> run_partition, once per partition of the files:
           embedded_batches (read, skip known, decode, embed)
           -> NearDuplicateFilter (with --skip-near-duplicates) -> documents -> BulkWriter
      -> finish (sync, alias swap, refresh)

The local indexer runs one partition holding every file (``indexer/index.py``);
the Ray engine runs many partitions on many machines (``indexer/distributed.py``) and merges
their :class:`~imgsearch.pipeline.RunStats`. Documents are keyed by content hash, so a partition
run twice (a retry, a lost worker) writes nothing twice.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Container, Iterator, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .decisions import Decision, Decisions
from .images import ImageError, content_hash
from .metadata import with_decision
from .model import ImageModel
from .pairs import PairFinder
from .pipeline import (
    Candidate,
    Decoded,
    Failure,
    RunStats,
    batches,
    embed_batches,
    make_decoder,
    ordered_map,
    read_file,
    relocated_fields,
    skip_known,
    to_document,
)
from .regions import REGION_MODES, RegionMode, Regions
from .settings import Settings
from .store import BulkResult, ImageStore, StoreError, StoreUnavailable
from .thumbnails import ThumbnailStore

log = logging.getLogger(__name__)

# --skip-near-duplicates: this run's images are checked in memory until this many are waiting
# to be searchable, then the run waits for its writes and refreshes the index (8 MB of vectors;
# a refresh every 1,024 images rather than a wait for each batch's write and a refresh).
MAX_UNSEARCHABLE = 1024
# Bulk writes in flight: two keep Elasticsearch busy without holding many vectors in memory.
MAX_IN_FLIGHT = 2

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
    # The version of the tagger whose fields every document gets (imgsearch/tags.py); None
    # when the model does not tag.
    tagger: str | None = None
    # The floor of the near-duplicate pairs kept for the index (imgsearch/pairs.py), when it
    # has no pairs state yet.
    duplicate_floor: float = 0.90


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
    tagger = getattr(embedder.tagger, "version", None)
    if tagger:
        # An index made before tags existed: its strict mapping would refuse the tag fields.
        store.indices.ensure_tag_fields(index)
    store.indices.ensure_hidden_field(index)  # an index made before duplicates were resolved
    return Target(index, region_mode(store, index, settings, embedder), new_index, replaces,
                  tagger, settings.duplicate_floor)


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


# A batch of decoded images, their vectors, and their regions when the index has them.
Embedded = tuple[list[Decoded], np.ndarray, list[Regions] | None]


class BulkWriter:
    """The writer stage: each batch's documents written by one bulk request on a thread of
    its own, at most :data:`MAX_IN_FLIGHT` in flight, and their outcomes counted into
    ``stats`` (documents refused are failures of their files).

    Its give-up rule: once one write has given up, the writes still queued give up at once
    instead of each waiting out its own retry window (the run is over, and a re-run finishes
    it); :meth:`give_up` stops the rest the same way, and still counts the writes that
    succeeded, so that the summary says what is really stored."""

    def __init__(self, store: ImageStore, index: str, stats: RunStats, *,
                 after_write: Callable[[list[dict], list[str]], None] | None = None):
        self._store = store
        self._index = index
        self._stats = stats
        # Told each written batch's documents and the ids refused (PairFinder.after_write).
        self._after_write = after_write
        self._thread = ThreadPoolExecutor(1, "bulk")
        self._pending: deque[tuple[Future[BulkResult], list[Decoded]]] = deque()
        self._gave_up = threading.Event()
        # A write's outcome is counted as soon as Elasticsearch has answered it, on the bulk
        # thread, before the after_write hook runs (a kNN pass for the batch's pairs): a run
        # stopped meanwhile still counts what is stored.
        self._counting = threading.Lock()

    def __enter__(self) -> BulkWriter:
        return self

    def __exit__(self, *exc) -> None:
        self._thread.shutdown(wait=True)  # the writes already queued are made (or give up)

    def write(self, docs: list[dict], group: list[Decoded]) -> None:
        """Queue ``docs`` (made from ``group``); wait for the oldest writes beyond
        :data:`MAX_IN_FLIGHT`, raising the StoreError of one that failed."""
        self._pending.append((self._thread.submit(self._bulk, docs, group), group))
        while len(self._pending) > MAX_IN_FLIGHT:
            self._collect(*self._pending.popleft())

    @property
    def in_flight(self) -> int:
        """Images whose write is queued or running."""
        return sum(len(group) for _, group in self._pending)

    def drain(self) -> None:
        """Wait for every queued write (all of this run's writes are then stored)."""
        while self._pending:
            self._collect(*self._pending.popleft())

    def give_up(self) -> None:
        """The run stops: queued writes not yet begun give up at once; those Elasticsearch
        answered are counted already."""
        self._gave_up.set()
        self._pending.clear()

    def _bulk(self, docs: list[dict], group: list[Decoded]) -> BulkResult:
        if self._gave_up.is_set():
            raise StoreError("an earlier bulk write failed; this one was not attempted")
        try:
            written = self._store.bulk_index(docs, self._index)
        except Exception:
            self._gave_up.set()
            raise
        self._count(written, group)
        if self._after_write:
            self._after_write(docs, [doc_id for doc_id, _ in written.failed])
        return written

    def _count(self, written: BulkResult, group: list[Decoded]) -> None:
        by_id = {d.candidate.content_hash: d.candidate.rel_path for d in group}
        with self._counting:
            self._stats.indexed += written.indexed
            for doc_id, reason in written.failed:
                self._stats.failed.append(Failure(by_id.get(doc_id, doc_id), "rejected",
                                                  reason))

    def _collect(self, future: Future[BulkResult], group: list[Decoded]) -> None:
        future.result()  # counted on the bulk thread; this raises the write's StoreError


class NearDuplicateFilter:
    """The ``--skip-near-duplicates`` stage: of each batch, keeps the images with no image at
    ``threshold`` or closer among the indexed ones, this run's earlier ones and the batch's
    own (:func:`near_duplicates`).

    It owns the list of this run's kept images that may not be searchable yet (a write in
    flight, or before Elasticsearch's next refresh), which it checks in memory; its refresh
    rule: once :data:`MAX_UNSEARCHABLE` are waiting, it waits for the run's writes
    (``wait_for_writes``) and refreshes the index, so that the kNN check covers them."""

    def __init__(self, store: ImageStore, index: str, threshold: float, stats: RunStats,
                 wait_for_writes: Callable[[], None]):
        self._store = store
        self._index = index
        self._threshold = threshold
        self._stats = stats
        self._wait_for_writes = wait_for_writes
        self._unsearchable: list[tuple[str, np.ndarray]] = []

    def __call__(self, batch: Embedded) -> Embedded:
        group, vectors, regions = batch
        if len(self._unsearchable) >= MAX_UNSEARCHABLE:
            self._wait_for_writes()
            self._store.refresh(self._index)
            self._unsearchable.clear()
        keep = near_duplicates(self._store, self._index, group, vectors, self._threshold,
                               self._stats, self._unsearchable)
        group = [group[i] for i in keep]
        vectors = vectors[keep]
        regions = [regions[i] for i in keep] if regions else None
        self._unsearchable.extend(
            (d.candidate.content_hash, v) for d, v in zip(group, vectors, strict=True))
        return group, vectors, regions


def embedded_batches(paths: list[Path], root: Path, target: Target, *, settings: Settings,
                     embedder: ImageModel, store: ImageStore, stats: RunStats, pool: Executor,
                     window: int,
                     relocate: Callable[[Candidate, dict], None] | None = None,
                     ) -> Iterator[Embedded]:
    """The reader and mapper stages: ``paths`` read and hashed, those already indexed (or met
    earlier) or excluded by a person dropped, decoded with their thumbnails (on ``pool``,
    ``window`` in flight), batched and embedded; every file that fails is counted in
    ``stats`` on the way, and each moved one (indexed, met at a new path) goes to
    ``relocate``."""
    read = ordered_map(partial(read_file, root=root), paths, pool, window)
    # A document without this model's tags (indexed before tags, or by another tagger) is
    # embedded again and overwritten: same id, same vector, now with its tags.
    tagger = target.tagger
    decisions = Decisions(store.es, settings.image_decisions_index, read=store.read_retrying)
    fresh = skip_known(read, partial(store.indexed, index=target.index, tagged_by=tagger),
                       stats, excluded=decisions.excluded, relocate=relocate)
    decoder = make_decoder(embedder, ThumbnailStore(settings.thumbnail_dir),
                           settings.thumbnail_size, settings.max_image_pixels, target.regions)
    decoded = ordered_map(decoder, fresh, pool, window)
    return embed_batches(
        batches(decoded, settings.batch_size, stats),
        embedder.embed_and_tag if tagger else embedder.embed,
        partial(embedder.region_vectors, mode=target.regions) if target.regions else None,
    )


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
    record_paths: bool = False,
    kept: dict[str, dict] | None = None,
) -> PartitionResult:
    """Read, skip known, decode, embed and write ``paths`` (files below ``root``); with
    ``skip_near`` (a cosine), leave out each image that close to one already indexed or to an
    earlier one of this run (:class:`NearDuplicateFilter`). An indexed image met at a new
    path, its old file gone, keeps its document and vector and gets the new path fields
    (``stats.moved``). ``record_paths``: ``stats.by_path`` holds every read file's hash.
    ``kept``: fields by relative path written over each new document's, last (carrying a
    replaced index's documents: imgsearch/carry.py). People's decisions apply to every
    document: hidden duplicates stay hidden, metadata set through the API is written over
    the sidecar's (:func:`documents`).

    Reading and decoding run in a thread pool (Pillow releases the GIL) while this thread runs
    inference, and bulk writes go to a writer thread (:class:`BulkWriter`), so the model never
    waits on disk or on Elasticsearch. ``progress`` hears how many files are done or in flight.
    """
    stats = RunStats(seen=len(paths), by_path={} if record_paths else None)
    result = PartitionResult(stats)
    moves: dict[str, dict] = {}

    def relocate(candidate: Candidate, stored: dict) -> None:
        moves[candidate.content_hash] = relocated_fields(
            candidate.path, candidate.rel_path, root=root, sidecar=sidecar or {},
            stored=stored)
    workers = workers or min(4, len(os.sched_getaffinity(0)) + 1)
    window = max(2 * settings.batch_size, 4 * workers)
    # Each written batch's near-duplicate pairs, found on the writer's thread.
    pairs = PairFinder(store, target.index, target.duplicate_floor)
    writer = BulkWriter(store, target.index, stats, after_write=pairs.after_write)
    decisions = Decisions(store.es, settings.image_decisions_index, read=store.read_retrying)
    unique = (NearDuplicateFilter(store, target.index, skip_near, stats, writer.drain)
              if skip_near is not None else None)
    try:
        with ThreadPoolExecutor(workers, "decode") as pool, writer:
            for batch in embedded_batches(paths, root, target, settings=settings,
                                          embedder=embedder, store=store, stats=stats,
                                          pool=pool, window=window, relocate=relocate):
                result.embedded += len(batch[0])
                group, vectors, regions = unique(batch) if unique else batch
                if not group:
                    continue
                # One lookup a batch for both kinds (by id: real-time, whatever the size).
                hidden, metadata = decisions.for_documents(
                    d.candidate.content_hash for d in group)
                writer.write(documents(group, vectors, regions, root=root, sidecar=sidecar or {},
                                       model_version=embedder.version, indexed_at=indexed_at,
                                       hidden=hidden, metadata=metadata, kept=kept),
                             group)
                if progress:
                    progress(stats.done + writer.in_flight)
            writer.drain()
            if moves:  # one bulk request of partial updates, no embedding
                stats.moved += store.update_many(moves, target.index)
                log.info("%d moved file(s): their documents now have the new paths",
                         stats.moved)
            if progress:
                progress(stats.done)
    except (StoreError, KeyboardInterrupt) as exc:
        writer.give_up()
        result.aborted = aborted_because(exc)
    return result


def documents(group: list[Decoded], vectors: np.ndarray, regions: list[Regions] | None, *,
              root: Path, sidecar: dict[str, dict], model_version: str,
              indexed_at: str, hidden: Container[str] = (),
              metadata: Mapping[str, Decision] | None = None,
              kept: Mapping[str, dict] | None = None) -> list[dict]:
    """The Elasticsearch documents of an embedded batch; those in ``hidden`` (hidden as
    duplicates, imgsearch/decisions.py) are marked so, those in ``metadata`` get the fields a
    person set through the API over their sidecar row's (imgsearch/metadata.py
    ``with_decision`` says when the sidecar wins), and then ``kept``'s fields of their
    relative path (None: left out) over everything."""
    docs = []
    for i, (d, v) in enumerate(zip(group, vectors, strict=True)):
        c = d.candidate
        doc = to_document(d, v, root=root, sidecar=sidecar, model_version=model_version,
                          indexed_at=indexed_at, regions=regions[i] if regions else None,
                          hidden=c.content_hash in hidden)
        decision = (metadata or {}).get(c.content_hash)
        if decision is not None:
            with_decision(doc, sidecar.get(c.rel_path, {}), decision.fields or {},
                          decision.replaced or {})
        for name, value in ((kept or {}).get(c.rel_path) or {}).items():
            if value is None:
                doc.pop(name, None)
            else:
                doc[name] = value
        docs.append(doc)
    return docs


def embed_one(data: bytes, path: Path, root: Path, target: Target, *, settings: Settings,
              embedder: ImageModel, metadata: dict, indexed_at: str,
              decode_slot: Callable[[], AbstractContextManager] = nullcontext) -> dict:
    """The document of one image's bytes, stored at ``path`` below ``root`` (the write API's
    upload), through the indexer's own stages: decoded under the query pixel cap (the bytes
    come from the network) while holding ``decode_slot()``, its thumbnail stored, embedded
    (tags and the region vectors of ``target``'s mode with it) and made a document with
    ``metadata`` (label, tags, extra) as its sidecar row. Raises ImageError for bytes that
    are not a usable image. Its label is the one given or none: the folders of the upload
    store are hash prefixes, not the labels a folder's name is elsewhere."""
    rel = path.relative_to(root).as_posix()
    candidate = Candidate(path, rel, data, content_hash(data))
    decode = make_decoder(embedder, ThumbnailStore(settings.thumbnail_dir),
                          settings.thumbnail_size, settings.query_pixel_cap, target.regions)
    with decode_slot():
        decoded = decode(candidate)
    if isinstance(decoded, Failure):
        raise ImageError(decoded.reason, decoded.message)
    ((group, vectors, regions),) = embed_batches(
        [[decoded]], embedder.embed_and_tag if target.tagger else embedder.embed,
        partial(embedder.region_vectors, mode=target.regions) if target.regions else None)
    (doc,) = documents(group, vectors, regions, root=root, sidecar={rel: metadata},
                       model_version=embedder.version, indexed_at=indexed_at)
    doc["folder"] = "."
    doc.pop("label", None)
    if metadata.get("label"):
        doc["label"] = metadata["label"]
    return doc


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
        # (id, cosine) of the nearest indexed image that close; the image itself, indexed
        # before and embedded again to get its tags, is no twin of its own.
        twin = [hit for hit in nearest[i][:1] if hit[0] != item.candidate.content_hash]
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
    # This run's images whose pairs a batch could not store (Elasticsearch failed between the
    # write and the pairs; an earlier run stopped there): one mget per 200 of them.
    PairFinder(store, index, target.duplicate_floor).visit_missing(sorted(stats.hashes))
    if target.new_index:
        previous = store.indices.point_alias(index, target.replaces)
        if previous:
            log.warning(
                "alias %s now points at %s; the previous index %s is kept "
                "(delete it when you no longer need it)", store.alias, index, previous,
            )
    store.refresh(index)
