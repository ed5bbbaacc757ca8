"""The stages of a partition run on their own, against a stand-in store (no model, no node):
the bulk writer and its give-up rule, the near-duplicate filter and its refresh rule."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import imgsearch.indexing as run
from imgsearch.indexing import BulkWriter, NearDuplicateFilter
from imgsearch.pipeline import Candidate, Decoded, RunStats
from imgsearch.store import BulkResult, StoreError


def _decoded(i: int) -> Decoded:
    candidate = Candidate(Path(f"/photos/{i}.jpg"), f"{i}.jpg", b"", f"{i:064x}")
    return Decoded(candidate, image=None, thumbnail_ref="")


def _docs(group: list[Decoded]) -> list[dict]:
    return [{"content_hash": d.candidate.content_hash} for d in group]


class Writes:
    """A store whose bulk writes are recorded; ``fail_on`` (the n-th write, from 1) raises,
    ``hold`` keeps each write waiting until it is set."""

    def __init__(self, fail_on: int | None = None, refuse: set[str] = frozenset()):
        self.calls: list[list[str]] = []
        self.fail_on = fail_on
        self.refuse = refuse
        self.hold = threading.Event()
        self.hold.set()

    def bulk_index(self, docs, index=None) -> BulkResult:
        self.calls.append([d["content_hash"] for d in docs])
        self.hold.wait(10)
        if len(self.calls) == self.fail_on:
            raise StoreError("Elasticsearch bulk write failed after 7 attempt(s): down")
        ids = [d["content_hash"] for d in docs]
        return BulkResult(sum(i not in self.refuse for i in ids),
                          [(i, "mapper_parsing_exception: no") for i in ids if i in self.refuse])


def test_the_writer_counts_what_was_stored_and_what_was_refused():
    store, stats = Writes(refuse={f"{4:064x}"}), RunStats()
    groups = [[_decoded(i), _decoded(i + 1)] for i in range(0, 8, 2)]
    with BulkWriter(store, "images-v1", stats) as writer:
        for group in groups:
            writer.write(_docs(group), group)
            assert writer.in_flight <= 2 * run.MAX_IN_FLIGHT
        writer.drain()
        assert writer.in_flight == 0
    assert len(store.calls) == 4 and stats.indexed == 7
    assert [(f.rel_path, f.reason) for f in stats.failed] == [("4.jpg", "rejected")]


def test_once_a_write_gives_up_the_queued_ones_give_up_at_once():
    """The second write fails: the third and fourth, queued behind it, are never sent."""
    store, stats = Writes(fail_on=2), RunStats()
    groups = [[_decoded(i)] for i in range(4)]
    store.hold.clear()  # every write waits until all four are queued
    with pytest.raises(StoreError, match="after 7 attempt"), \
            BulkWriter(store, "images-v1", stats) as writer:
        writer.write(_docs(groups[0]), groups[0])
        writer.write(_docs(groups[1]), groups[1])
        store.hold.set()
        writer.write(_docs(groups[2]), groups[2])  # collects the first
        writer.write(_docs(groups[3]), groups[3])  # collects the second: it failed
    writer.give_up()
    assert len(store.calls) == 2  # the third and fourth were not attempted
    assert stats.indexed == 1  # the first write, stored before the failure, is counted


def test_giving_up_still_counts_the_writes_that_finished():
    store, stats = Writes(), RunStats()
    writer = BulkWriter(store, "images-v1", stats)
    with writer:
        writer.write(_docs([_decoded(0)]), [_decoded(0)])
        writer.write(_docs([_decoded(1)]), [_decoded(1)])
    writer.give_up()  # as after Ctrl-C: both writes finished while the run wound down
    assert stats.indexed == 2 and writer.in_flight == 0


def test_a_write_is_counted_once_stored_even_while_its_hook_runs():
    """Ctrl-C while the after-write hook (the batch's pairs) still runs: the write is stored,
    so the summary counts it (a re-run's total must match what is in the index)."""
    store, stats = Writes(), RunStats()
    in_hook, release = threading.Event(), threading.Event()

    def hook(docs, failed):
        in_hook.set()
        release.wait(10)

    writer = BulkWriter(store, "images-v1", stats, after_write=hook)
    with writer:
        writer.write(_docs([_decoded(0)]), [_decoded(0)])
        assert in_hook.wait(10)
        writer.give_up()
        assert stats.indexed == 1
        release.set()


class Searchable:
    """A store whose kNN check finds nothing (an empty index) and whose refreshes are
    recorded, with the writes that were drained before each."""

    def __init__(self):
        self.events: list[str] = []

    def knn_many(self, vectors, **kwargs):
        return [[] for _ in vectors]

    def refresh(self, index=None):
        self.events.append("refresh")


def _unit(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_the_filter_drops_copies_of_earlier_images_and_of_its_own_batch():
    store, stats = Searchable(), RunStats()
    unique = NearDuplicateFilter(store, "images-v1", 0.94, stats,
                                 lambda: store.events.append("drain"))
    vectors = _unit(3, 0)
    group = [_decoded(i) for i in range(3)]
    kept, kept_vectors, regions = unique((group, vectors, None))
    assert kept == group and regions is None
    again = np.vstack([vectors[1], vectors[1] * 0.999])  # a copy of an earlier one, twice
    kept, kept_vectors, _ = unique(([_decoded(3), _decoded(4)], again, None))
    assert kept == [] and kept_vectors.shape == (0, 16) and stats.near_duplicates == 2
    assert store.events == []


def test_the_filter_refreshes_once_enough_images_wait_to_be_searchable(monkeypatch):
    monkeypatch.setattr(run, "MAX_UNSEARCHABLE", 4)
    store, stats = Searchable(), RunStats()
    unique = NearDuplicateFilter(store, "images-v1", 0.94, stats,
                                 lambda: store.events.append("drain"))
    for b in range(4):  # batches of 3 distinct images
        group = [_decoded(10 * b + i) for i in range(3)]
        regions = [f"r{i}" for i in range(3)]
        kept, _, kept_regions = unique((group, _unit(3, b + 1), regions))
        assert kept == group and kept_regions == regions
        store.events.append(f"batch {b}")
    # 3 waiting after the first batch, 6 after the second: the third begins with the
    # writes drained and a refresh (which empties the list: 3 again after it).
    assert store.events == ["batch 0", "batch 1", "drain", "refresh", "batch 2", "batch 3"]
