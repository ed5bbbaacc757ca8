"""The search service's counts agree with its searches (imgsearch/search.py): an image hidden as
a copy of another is left out of the facets' counts, total and ranges as it is left out of
searches by photo and by words; an index made before images could be hidden counts all of
its documents. Real node, real model, real photos (a JPEG q50 copy made here)."""

from __future__ import annotations

import shutil

import pytest

from imgsearch.decisions import Decisions
from imgsearch.images import content_hash
from imgsearch.resolution import Resolver
from imgsearch.search import FACET_FIELDS, NOT_HIDDEN, SearchService
from tests.support import jpeg_q50


@pytest.fixture
def pair(test_settings, store, embedder, clothing_test_dir, tmp_path):
    """A dress photo with its q50 copy and a hat photo, in folders named by their labels:
    ``(dress, dress copy, hat)`` ids, indexed."""
    from indexer.index import index_folder

    folder = tmp_path / "photos"
    (folder / "dress").mkdir(parents=True)
    (folder / "hat").mkdir()
    dress = sorted((clothing_test_dir / "dress").glob("*.jpg"))[2]
    hat = sorted((clothing_test_dir / "hat").glob("*.jpg"))[2]
    shutil.copyfile(dress, folder / "dress" / "dress.jpg")
    copy = folder / "dress" / "dress-q50.jpg"
    copy.write_bytes(jpeg_q50(dress))
    shutil.copyfile(hat, folder / "hat" / "hat.jpg")
    index_folder(folder, settings=test_settings, embedder=embedder, store=store,
                 progress=False)
    store.refresh()
    return (content_hash(dress.read_bytes()), content_hash(copy.read_bytes()),
            content_hash(hat.read_bytes()))


def _labels(facets: dict) -> dict[str, int]:
    return {b["value"]: b["count"] for b in facets["fields"]["label"]}


def test_a_hidden_copy_leaves_the_counts_as_it_leaves_the_searches(pair, test_settings,
                                                                   store, embedder):
    dress, copy, hat = pair
    service = SearchService(test_settings, store, embedder)
    resolver = Resolver(store, Decisions(store.es, test_settings.image_decisions_index))
    before = service.facets()
    assert before["total"] == 3 and _labels(before) == {"dress": 2, "hat": 1}
    folders = {b["value"]: b["count"] for b in before["fields"]["folder"]}
    assert folders == {"dress": 2, "hat": 1}
    # Words: the copy's own first tag finds it (the two dresses carry the same tags).
    word = store.get(copy)["model_tags"][0]
    assert copy in [h.id for h in service.search_words(word, k=10).hits]

    resolver.keep_one(dress, hide=[copy])
    hidden = service.facets()
    assert hidden["total"] == 2
    assert _labels(hidden) == {"dress": 1, "hat": 1}
    assert {b["value"]: b["count"] for b in hidden["fields"]["folder"]} == {"dress": 1, "hat": 1}
    assert sum(b["count"] for b in hidden["fields"]["format"]) == 2
    # The searches leave it out as the counts do: by words now too, and by photo.
    assert copy not in [h.id for h in service.search_words(word, k=10).hits]
    assert copy not in [h.id for h in service.similar(dress, k=10).hits]
    # The whole index still holds it: a read by id finds it (to undo), the count says 3.
    assert store.get(copy)["hidden"] is True and store.count() == 3

    assert resolver.undo("hidden", [copy]) is True
    assert service.facets() == before
    assert copy in [h.id for h in service.search_words(word, k=10).hits]


def test_an_index_without_the_hidden_field_counts_every_document(store):
    """An index made before duplicates could be hidden has no ``hidden`` in its mapping: the
    filter excludes nothing there (a must_not of a term on a field it lacks)."""
    es, index = store.es, f"{store.alias}-old"
    es.indices.create(index=index, mappings={"properties": {
        name: {"type": "keyword"} for name in FACET_FIELDS} | {
        "width": {"type": "integer"}, "height": {"type": "integer"},
        "exif_datetime": {"type": "date"}}}, aliases={store.alias: {}})
    for i, label in enumerate(("dress", "dress", "hat")):
        es.index(index=index, id=str(i), document={"label": label, "width": 400 + i})
    store.refresh()
    assert "hidden" not in es.indices.get_mapping(index=index)[index]["mappings"]["properties"]
    facets = store.facets(FACET_FIELDS, filters=[NOT_HIDDEN])
    assert facets["total"] == 3 and _labels(facets) == {"dress": 2, "hat": 1}
    assert facets["ranges"]["width"] == {"min": 400, "max": 402}
