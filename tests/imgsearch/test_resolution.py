"""Resolving near-duplicates (imgsearch/resolution.py): hide, delete, not duplicates, undo; what
searches and groups then show; and that the decisions hold in an index rebuilt with
``--new-index``. Real node, real photos, copies made here."""

from __future__ import annotations

import shutil

import pytest

from imgsearch.decisions import DecisionError, Decisions
from imgsearch.duplicates import DuplicateGroups
from imgsearch.images import content_hash
from imgsearch.pairs import PairState
from imgsearch.resolution import Resolver
from imgsearch.search import SearchService, UnknownId
from tests.support import jpeg_q50

LABELS = ("dress", "hat", "pants", "shoes")



@pytest.fixture
def indexed(test_settings, store, embedder, clothing_test_dir, tmp_path):
    """Four photos, each with a JPEG q50 copy: ``(settings, folder, {label: (original,
    copy)})``."""
    from indexer.index import index_folder

    folder = tmp_path / "photos"
    folder.mkdir()
    ids = {}
    for label in LABELS:
        path = sorted((clothing_test_dir / label).glob("*.jpg"))[2]
        shutil.copyfile(path, folder / f"{label}.jpg")
        (folder / f"{label}-q50.jpg").write_bytes(jpeg_q50(path))
        ids[label] = (content_hash(path.read_bytes()),
                      content_hash((folder / f"{label}-q50.jpg").read_bytes()))
    index_folder(folder, settings=test_settings, embedder=embedder, store=store,
                 progress=False)
    return test_settings, folder, ids


def _tools(settings, store):
    decisions = Decisions(store.es, settings.image_decisions_index)
    return (Resolver(store, decisions),
            DuplicateGroups(store, decisions, settings.duplicate_threshold), decisions)


def _groups(groups) -> set[frozenset[str]]:
    return {frozenset(c) for c in groups.groups()[0].components}


def _similar(settings, store, embedder, doc_id) -> list[str]:
    hits = SearchService(settings, store, embedder).similar(doc_id, k=20).hits
    return [h.id for h in hits]


def test_hide_distinct_delete_and_undo(indexed, store, embedder):
    settings, _, ids = indexed
    resolver, groups, decisions = _tools(settings, store)
    everything = {frozenset(pair) for pair in ids.values()}
    assert _groups(groups) == everything
    dress, dress_copy = ids["dress"]
    assert dress_copy in _similar(settings, store, embedder, dress)

    # Hide: the copy stays indexed, leaves searches and groups.
    done = resolver.keep_one(dress, hide=[dress_copy], by="tester")
    assert done.to_json() == {"kept": dress, "hidden": [dress_copy], "deleted": []}
    assert decisions.hidden([dress_copy]) == {dress_copy: dress}
    # The groups read every hidden/distinct decision in one scroll when they are fewer than
    # the images in pairs: the same answer as the lookups by id.
    assert decisions.count("hidden", "distinct") == 1
    assert [d.images[0] for d in decisions.every("hidden")] == [dress_copy]
    assert store.get(dress_copy)["hidden"] is True
    assert dress_copy not in _similar(settings, store, embedder, dress)
    assert _groups(groups) == everything - {frozenset(ids["dress"])}
    # Undo: back in both.
    assert resolver.undo("hidden", [dress_copy]) is True
    assert resolver.undo("hidden", [dress_copy]) is False  # nothing left to undo
    assert dress_copy in _similar(settings, store, embedder, dress)
    assert _groups(groups) == everything

    # Not duplicates: the pair never groups; undone, it does again.
    hat, hat_copy = ids["hat"]
    resolver.distinct(hat_copy, hat)
    assert _groups(groups) == everything - {frozenset(ids["hat"])}
    assert [frozenset(d.images) for d in decisions.every("distinct")] == [frozenset(ids["hat"])]
    assert resolver.undo("distinct", [hat, hat_copy]) is True
    assert _groups(groups) == everything

    # Delete: the document and its pairs go; the file stays, its bytes excluded.
    pants, pants_copy = ids["pants"]
    done = resolver.keep_one(pants, delete=[pants_copy])
    assert done.deleted == [pants_copy] and store.get(pants_copy) is None
    assert decisions.excluded([pants_copy]) == {pants_copy}
    assert _groups(groups) == everything - {frozenset(ids["pants"])}
    state = PairState(store.es, store.indices.current_index())
    assert state.visited([pants_copy]) == set()
    assert resolver.undo("excluded", [pants_copy]) is True  # the next run may index it again


A, B = "a" * 64, "b" * 64


@pytest.mark.parametrize("call,error", [
    (lambda r: r.keep_one(A), "name the images to hide or to delete"),
    (lambda r: r.keep_one(A, hide=[A]), "cannot also be hidden"),
    (lambda r: r.keep_one(A, hide=[B], delete=[B]), "both hidden and deleted"),
    (lambda r: r.keep_one(A, hide=[f"{n:064x}" for n in range(101)]), "at most 100"),
    (lambda r: r.undo("kept", [A]), "kind must be one of"),
    (lambda r: r.distinct(A, A), "two different images"),
])
def test_resolutions_that_cannot_be_made_say_why(test_settings, store, call, error):
    with pytest.raises(DecisionError, match=error):
        call(_tools(test_settings, store)[0])


def test_unknown_images_are_refused(indexed, store):
    settings, _, ids = indexed
    with pytest.raises(UnknownId, match="not indexed: " + "0" * 64):
        _tools(settings, store)[0].keep_one(ids["dress"][0], hide=["0" * 64])


def test_decisions_hold_in_an_index_rebuilt_with_new_index(indexed, store, embedder):
    from indexer.index import index_folder

    settings, folder, ids = indexed
    resolver, groups, _ = _tools(settings, store)
    dress, dress_copy = ids["dress"]
    resolver.keep_one(dress, hide=[dress_copy])
    resolver.distinct(*ids["hat"])
    first = store.indices.current_index()

    index_folder(folder, settings=settings, embedder=embedder, store=store, progress=False,
                 new_index=True)
    assert store.indices.current_index() != first
    assert store.get(dress_copy)["hidden"] is True  # written so by the indexer
    assert dress_copy not in _similar(settings, store, embedder, dress)
    assert _groups(groups) == {frozenset(ids["pants"]), frozenset(ids["shoes"])}
