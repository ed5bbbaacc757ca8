"""The near-duplicate pairs kept as images are indexed (imgsearch/pairs.py), on a real node with
real photos and near-copies made from them here.

Photos arrive in three runs; each run's pairs are found when its batches are written (two
photos a batch, so a copy meets its original in an earlier batch of the same run, in an
earlier run, or in its own batch), and the kept groups equal the exhaustive search's after
every run.
"""

from __future__ import annotations

import io
import shutil

import pytest
from PIL import Image

from imgsearch.decisions import Decisions
from imgsearch.duplicates import DuplicateGroups, find_duplicates
from imgsearch.images import content_hash
from imgsearch.pairs import PairState, state_index_name

LABELS = ("dress", "hat", "pants", "shoes", "skirt", "t-shirt")


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality)
    return out.getvalue()


def _copy(path, how: str) -> bytes:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if how == "half":
            return _jpeg(im.resize((im.width // 2, im.height // 2), Image.LANCZOS), 90)
        if how == "crop":
            w, h = im.size
            return _jpeg(im.crop((w // 20, h // 20, w - w // 20, h - h // 20)), 90)
        return _jpeg(im, 50)


def _kept(store, settings, threshold):
    groups = DuplicateGroups(store, Decisions(store.es, settings.image_decisions_index),
                             settings.duplicate_threshold)
    return {frozenset(c) for c in groups.groups(threshold)[0].components}


def _exhaustive(store, threshold):
    return {frozenset(m.id for m in g.members) for g in find_duplicates(store, threshold).groups}


def _queries(store) -> int:
    """Searches run on the alias's image index so far (kNN queries among them)."""
    index = store.indices.current_index()
    stats = store.es.indices.stats(index=index, metric="search").body
    return stats["indices"][index]["total"]["search"]["query_total"]


@pytest.fixture
def originals(clothing_test_dir) -> dict[str, object]:
    return {label: sorted((clothing_test_dir / label).glob("*.jpg"))[1] for label in LABELS}


def test_pairs_are_kept_as_images_arrive_in_several_runs(test_settings, store, embedder,
                                                         originals, tmp_path):
    from indexer.index import index_folder

    settings = test_settings.with_(batch_size=2)
    runs = [tmp_path / f"run{n}" for n in range(3)]
    for folder in runs:
        folder.mkdir()
    # Run 0: three originals and a copy of one of them (a later batch of the same run).
    for label in ("dress", "hat", "pants"):
        shutil.copyfile(originals[label], runs[0] / f"a-{label}.jpg")
    (runs[0] / "z-hat-q50.jpg").write_bytes(_copy(originals["hat"], "q50"))
    # Run 1: copies of run 0's photos, and two more originals.
    (runs[1] / "dress-half.jpg").write_bytes(_copy(originals["dress"], "half"))
    (runs[1] / "pants-crop.jpg").write_bytes(_copy(originals["pants"], "crop"))
    for label in ("shoes", "skirt"):
        shutil.copyfile(originals[label], runs[1] / f"{label}.jpg")
    # Run 2: an original and its copy in one batch, a copy of run 1's.
    shutil.copyfile(originals["t-shirt"], runs[2] / "a-t-shirt.jpg")
    (runs[2] / "b-t-shirt-q50.jpg").write_bytes(_copy(originals["t-shirt"], "q50"))
    (runs[2] / "c-shoes-half.jpg").write_bytes(_copy(originals["shoes"], "half"))

    ids = {p.name: content_hash(p.read_bytes()) for f in runs for p in f.iterdir()}
    expected = [
        {frozenset({ids["a-hat.jpg"], ids["z-hat-q50.jpg"]})},
        {frozenset({ids["a-dress.jpg"], ids["dress-half.jpg"]}),
         frozenset({ids["a-pants.jpg"], ids["pants-crop.jpg"]})},
        {frozenset({ids["a-t-shirt.jpg"], ids["b-t-shirt-q50.jpg"]}),
         frozenset({ids["shoes.jpg"], ids["c-shoes-half.jpg"]})},
    ]
    total = 0
    for n, folder in enumerate(runs):
        before = _queries(store) if n else 0
        new = len(list(folder.iterdir()))
        report = index_folder(folder, settings=settings, embedder=embedder, store=store,
                              progress=False)
        assert report.stats.indexed == new
        total += new
        state = PairState(store.es, store.indices.current_index())
        assert state.counts()[0] == total  # every image visited, once
        if n:
            # One kNN query per new image (and a few other searches), never one per image
            # of the index.
            assert _queries(store) - before <= new + 4
        wanted = set().union(*expected[: n + 1])
        for threshold in (settings.duplicate_floor, settings.duplicate_threshold):
            kept = _kept(store, settings, threshold)
            assert kept == _exhaustive(store, threshold), (n, threshold)
        assert _kept(store, settings, settings.duplicate_threshold) == wanted, n
    assert new + 4 < total
    assert state.name == state_index_name(store.indices.current_index())
    assert state.name.startswith(f"{store.alias}-")  # removed with the alias's indices

    # Deleting an image (the store's delete: --sync, the watcher, the write API) removes its
    # pairs, and the change is seen at once.
    version = state.info().version
    store.delete_ids([ids["c-shoes-half.jpg"]])
    assert state.info().version != version
    assert _kept(store, settings, settings.duplicate_floor) == set().union(*expected) - {
        frozenset({ids["shoes.jpg"], ids["c-shoes-half.jpg"]})}
    assert state.visited([ids["c-shoes-half.jpg"], ids["shoes.jpg"]]) == {ids["shoes.jpg"]}
    assert state.counts()[0] == total - 1

    # --sync of a folder whose copy is gone: the same.
    (runs[1] / "dress-half.jpg").unlink()
    report = index_folder(runs[1], settings=settings, embedder=embedder, store=store,
                          progress=False, sync=True)
    assert report.stats.deleted == 1
    assert frozenset({ids["a-dress.jpg"], ids["dress-half.jpg"]}) not in _kept(
        store, settings, settings.duplicate_floor)


def test_a_new_index_gets_pairs_of_its_own(test_settings, store, embedder, originals,
                                           tmp_path):
    from indexer.index import index_folder

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copyfile(originals["hat"], folder / "hat.jpg")
    (folder / "hat-q50.jpg").write_bytes(_copy(originals["hat"], "q50"))
    index_folder(folder, settings=test_settings, embedder=embedder, store=store,
                 progress=False)
    first = store.indices.current_index()
    index_folder(folder, settings=test_settings, embedder=embedder, store=store,
                 progress=False, new_index=True)
    second = store.indices.current_index()
    assert second != first
    for index in (first, second):
        assert PairState(store.es, index).counts() == (2, 1)
