"""The indexer end to end: real photos, real weights, a real Elasticsearch node."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgsearch.search import SearchService
from imgsearch.store import ModelVersionMismatch
from indexer.cli import EXIT_ABORTED, EXIT_PARTIAL
from indexer.index import format_summary, index_folder

PROJECT = Path(__file__).resolve().parents[2]

# Measured on the clothing test split (372 photos, 10 labels) with the default settings
# (centre crop): mean same-label precision@10 = 0.695 by exact search (docs/BENCHMARKS.md).
# The floor leaves room for HNSW's approximation, not for a regression.
PRECISION_AT_10_FLOOR = 0.68


def test_indexes_the_whole_split(clothing_index, clothing_test_dir):
    _, store, report = clothing_index
    files = sorted(clothing_test_dir.rglob("*.jpg"))
    assert report.aborted is None
    assert report.stats.failed == []
    assert report.stats.indexed == len(files) == 372
    assert store.count() == 372
    doc = store.get(_any_id(store))
    assert doc["label"] == Path(doc["rel_path"]).parent.name
    assert doc["width"] > 0 and doc["format"] == "JPEG"
    assert "vector" not in doc


def _any_id(store):
    return store.es.search(index=store.alias, size=1, source=False).body["hits"]["hits"][0]["_id"]


def test_every_image_finds_itself_first(clothing_index, embedder, clothing_test_dir):
    local, store, _ = clothing_index
    service = SearchService(local, store, embedder)
    misses = []
    for path in sorted(clothing_test_dir.rglob("*.jpg")):
        result = service.search_image(path.read_bytes(), k=1)
        top = result.hits[0]
        if top.source["rel_path"] != path.relative_to(clothing_test_dir).as_posix():
            misses.append(path.name)
        assert top.cosine > 0.999 or path.name in misses
    assert misses == []


def test_same_label_precision_at_10(clothing_index, embedder):
    local, store, _ = clothing_index
    service = SearchService(local, store, embedder)
    ids = [h["_id"] for h in store.es.search(index=store.alias, size=1000, source=False)
           .body["hits"]["hits"]]
    precisions = []
    for doc_id in ids:
        label = store.get(doc_id)["label"]
        hits = service.similar(doc_id, k=10).hits
        assert len(hits) == 10 and doc_id not in {h.id for h in hits}
        precisions.append(np.mean([h.source["label"] == label for h in hits]))
    mean = float(np.mean(precisions))
    print(f"same-label precision@10 over {len(ids)} queries: {mean:.4f}")
    assert mean >= PRECISION_AT_10_FLOOR


def test_second_run_embeds_nothing(clothing_index, embedder, clothing_test_dir):
    local, store, _ = clothing_index
    report = index_folder(
        clothing_test_dir, settings=local, embedder=embedder, store=store, progress=False
    )
    assert report.embedded == 0
    assert report.stats.indexed == 0
    assert report.stats.already_present == 372
    assert store.count() == 372


def test_label_filter_keeps_k_results(clothing_index, embedder, clothing_test_dir):
    from imgsearch.filters import Filters

    local, store, _ = clothing_index
    service = SearchService(local, store, embedder)
    query = next((clothing_test_dir / "dress").glob("*.jpg")).read_bytes()
    result = service.search_image(query, k=10, filters=Filters(labels=("shoes",)))
    assert len(result.hits) == 10
    assert {h.source["label"] for h in result.hits} == {"shoes"}


def test_sync_removes_documents_of_deleted_files(test_settings, store, embedder, photo_dir):
    first = index_folder(photo_dir, settings=test_settings, embedder=embedder, store=store,
                         progress=False)
    assert first.stats.indexed == 10
    gone = sorted(photo_dir.rglob("*.jpg"))[0]
    gone.unlink()
    second = index_folder(photo_dir, settings=test_settings, embedder=embedder, store=store,
                          sync=True, progress=False)
    assert second.embedded == 0
    assert second.stats.deleted == 1
    assert store.count() == 9
    paths = {h["_source"]["path"] for h in store.es.search(index=store.alias, size=20)
             .body["hits"]["hits"]}
    assert str(gone) not in paths


def test_sync_moves_documents_of_moved_files_and_keeps_bytes_held_elsewhere(
        test_settings, store, embedder, photo_dir):
    """A moved file keeps its document (no embedding) with its new path and folder label; a
    file gone whose bytes another file still holds keeps its document, at that file's path."""
    from imgsearch.images import content_hash

    index_folder(photo_dir, settings=test_settings, embedder=embedder, store=store,
                 progress=False)
    moved = sorted((photo_dir / "hat").glob("*.jpg"))[0]
    moved_id = content_hash(moved.read_bytes())
    (photo_dir / "bags").mkdir()
    moved.rename(photo_dir / "bags" / "was-a-hat.jpg")
    original = sorted((photo_dir / "dress").glob("*.jpg"))[0]
    original_id = content_hash(original.read_bytes())
    (photo_dir / "zz").mkdir()
    (photo_dir / "zz" / "copy.jpg").write_bytes(original.read_bytes())
    original.unlink()
    report = index_folder(photo_dir, settings=test_settings, embedder=embedder, store=store,
                          sync=True, progress=False)
    assert report.embedded == 0 and report.stats.deleted == 0
    assert report.stats.moved == 2
    assert store.count() == 10
    doc = store.get(moved_id)
    assert (doc["rel_path"], doc["folder"], doc["file_name"], doc["label"]) == (
        "bags/was-a-hat.jpg", "bags", "was-a-hat.jpg", "bags")
    assert doc["path"] == str(photo_dir / "bags" / "was-a-hat.jpg")
    assert store.get(original_id)["rel_path"] == "zz/copy.jpg"
    summary = format_summary(report)
    assert "moved:            2" in summary


def test_excluded_bytes_are_not_indexed(test_settings, store, embedder, photo_dir):
    from imgsearch.decisions import Decisions
    from imgsearch.images import content_hash

    photo = sorted(photo_dir.rglob("*.jpg"))[3]
    decisions = Decisions(store.es, test_settings.image_decisions_index)
    decisions.decide("excluded", content_hash(photo.read_bytes()), path=str(photo))
    try:
        report = index_folder(photo_dir, settings=test_settings, embedder=embedder,
                              store=store, progress=False)
        assert (report.stats.indexed, report.stats.excluded) == (9, 1)
        assert report.exit_code == 0 and report.to_json()["excluded"] == 1
        assert "excluded:         1" in format_summary(report)
        assert store.get(content_hash(photo.read_bytes())) is None
    finally:
        store.es.indices.delete(index=test_settings.image_decisions_index,
                                ignore_unavailable=True)


def test_sidecar_metadata_is_merged(test_settings, store, embedder, photo_dir, tmp_path):
    from indexer.sidecar import load_sidecar

    one = sorted(photo_dir.rglob("*.jpg"))[0].relative_to(photo_dir).as_posix()
    sidecar = tmp_path / "meta.jsonl"
    sidecar.write_text(
        f'{{"path": "{one}", "label": "special", "tags": ["a", "b"], "season": "summer"}}\n'
    )
    index_folder(photo_dir, settings=test_settings, embedder=embedder, store=store,
                 sidecar=load_sidecar(sidecar), progress=False)
    store.refresh()
    hits = store.es.search(index=store.alias, query={"term": {"rel_path": one}}).body["hits"]
    doc = hits["hits"][0]["_source"]
    assert doc["label"] == "special" and doc["tags"] == ["a", "b"]
    assert doc["extra"] == {"season": "summer"}


def test_version_guard_refuses_another_models_index(test_settings, store, embedder, photo_dir):
    index = store.indices.create_index("resnet50-avg/w=0000000000000000/other", test_settings)
    store.indices.point_alias(index)
    with pytest.raises(ModelVersionMismatch, match="--new-index"):
        index_folder(photo_dir, settings=test_settings, embedder=embedder, store=store,
                     progress=False)
    assert store.count() == 0


def test_new_index_swaps_the_alias_atomically(test_settings, store, embedder, photo_dir):
    old = store.indices.create_index("resnet50-avg/w=0000000000000000/other", test_settings)
    store.indices.point_alias(old)
    report = index_folder(photo_dir, settings=test_settings, embedder=embedder, store=store,
                          new_index=True, progress=False)
    assert report.index != old
    assert store.indices.current_index() == report.index
    assert store.indices.index_model_version() == embedder.version
    assert store.count() == 10


def test_documents_carry_the_model_version(test_settings, store, embedder, photo_dir):
    index_folder(photo_dir, settings=test_settings, embedder=embedder, store=store,
                 progress=False)
    versions = {h["_source"]["model_version"] for h in store.es.search(
        index=store.alias, size=20, source_includes=["model_version"]).body["hits"]["hits"]}
    assert versions == {embedder.version}
    assert store.indices.index_model_version() == embedder.version


# -- region vectors ----------------------------------------------------------------------------


def _regions_of(store) -> dict[str, list[dict]]:
    hits = store.es.search(index=store.alias, size=50, source_includes=["regions"],
                           source_exclude_vectors=False).body["hits"]["hits"]
    return {h["_id"]: h["_source"].get("regions") for h in hits}


def test_regions_come_with_their_boxes_and_an_index_keeps_its_kind(test_settings, store,
                                                                   embedder, photo_dir):
    first = sorted(photo_dir.rglob("*.jpg"))[0]
    held_back = photo_dir.parent / first.name
    first.rename(held_back)
    report = index_folder(photo_dir, settings=test_settings.with_(regions="fine"),
                          embedder=embedder, store=store, progress=False)
    assert report.regions == "fine" and report.to_json()["regions"] == "fine"
    assert store.indices.index_regions().name == "fine"
    store.refresh()
    for doc_id, regions in _regions_of(store).items():
        assert 10 <= len(regions) <= 40, doc_id  # scales 1-3: 20-23 windows on these photos
        for region in regions:
            assert len(region["vector"]) == embedder.dims
            x0, y0, x1, y1 = region["box"]
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    # A later run that does not ask for regions still adds them: the index decides.
    held_back.rename(first)
    again = index_folder(photo_dir, settings=test_settings, embedder=embedder, store=store,
                         progress=False)
    assert again.stats.indexed == 1 and again.regions == "fine"
    store.refresh()
    regions = _regions_of(store)
    assert len(regions) == 10 and all(regions.values())


def test_asking_for_regions_on_an_index_without_them_is_refused(test_settings, store,
                                                                embedder, photo_dir):
    from imgsearch.store import StoreError

    index_folder(photo_dir, settings=test_settings, embedder=embedder, store=store,
                 progress=False)
    with pytest.raises(StoreError, match="--new-index --regions standard"):
        index_folder(photo_dir, settings=test_settings.with_(regions="standard"),
                     embedder=embedder, store=store, progress=False)
    # --new-index builds one with them, and the alias moves to it once it is complete.
    report = index_folder(photo_dir, settings=test_settings.with_(regions="standard"),
                          embedder=embedder, store=store, new_index=True, progress=False)
    assert store.indices.current_index() == report.index
    assert store.indices.index_regions().name == "standard"
    assert store.count() == 10


# -- bad input: every file below is skipped with its reason while the good ones are indexed --


def _jpeg_bytes(size=(64, 48), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def bad_dir(photo_dir) -> Path:
    real = sorted((photo_dir / "dress").glob("*.jpg"))[0].read_bytes()
    bad = photo_dir / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "truncated.jpg").write_bytes(real[: len(real) // 2])
    (bad / "text.jpg").write_text("this is not a picture\n")
    (bad / "tiny.png").write_bytes(_png(Image.new("RGB", (1, 1), "white")))
    # A bomb: 40,000 x 40,000 one-bit pixels compress to a few hundred kilobytes.
    (bad / "bomb.png").write_bytes(_png(Image.new("1", (40_000, 40_000))))
    os.symlink(bad / "does-not-exist.jpg", bad / "broken-link.jpg")
    os.mkfifo(bad / "fifo.jpg") if hasattr(os, "mkfifo") else None
    (bad / "notes.txt").write_text("a note that is not an image and says so by its name")
    return photo_dir


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


EXPECTED_REASONS = {
    "bad/empty.jpg": "empty",
    "bad/truncated.jpg": "truncated",
    "bad/text.jpg": "not_an_image",
    "bad/tiny.png": "too_small",
    "bad/bomb.png": "too_many_pixels",
    "bad/broken-link.jpg": "broken_symlink",
    "bad/fifo.jpg": "unreadable",
}


@pytest.mark.parametrize("name", sorted(EXPECTED_REASONS))
def test_bad_input_is_skipped_with_its_reason(name, test_settings, store, embedder, bad_dir):
    report = index_folder(bad_dir, settings=test_settings, embedder=embedder, store=store,
                          progress=False)
    reasons = {f.rel_path: f for f in report.stats.failed}
    assert name in reasons, f"{name} not reported; failures: {reasons}"
    failure = reasons[name]
    assert failure.reason == EXPECTED_REASONS[name], failure
    assert failure.message  # a sentence for a person, not just a code
    # The rest of the run went on: every good photo is indexed, the note is ignored.
    assert report.stats.indexed == 10
    assert report.stats.ignored == 1
    assert report.aborted is None and report.exit_code == EXIT_PARTIAL


def test_cli_summary_and_exit_status(test_settings, store, bad_dir, tmp_path, embedder):
    """The real command line: summary lines, a JSON report and the documented exit code."""
    env = dict(os.environ, ES_URL=test_settings.es_url, ES_INDEX=store.alias,
               IMGSEARCH_THUMBNAIL_DIR=str(test_settings.thumbnail_dir), PYTHONPATH=str(PROJECT))
    report_file = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "indexer", str(bad_dir), "--no-progress",
         "--report", str(report_file)],
        env=env, capture_output=True, text=True, timeout=600, cwd=PROJECT,
    )
    assert proc.returncode == EXIT_PARTIAL, proc.stderr[-3000:]
    assert "indexed:          10" in proc.stderr
    assert "bad/bomb.png: [too_many_pixels]" in proc.stderr
    data = json.loads(report_file.read_text())
    assert data["indexed"] == 10 and data["exit_code"] == EXIT_PARTIAL
    assert Counter(f["reason"] for f in data["failed"])["empty"] == 1
    # The same settings in another process: the same model, computing in the same precision.
    assert data["model"] == {"version": embedder.version, "precision": embedder.precision,
                             "runtime": embedder.runtime}
    assert f"computing in {embedder.precision} on {embedder.runtime}" in proc.stderr

    search = subprocess.run(
        [sys.executable, "-m", "indexer", "search", str(sorted(bad_dir.rglob("*.jpg"))[-1]),
         "-k", "3"],
        env=env, capture_output=True, text=True, timeout=600, cwd=PROJECT,
    )
    assert search.returncode == 0, search.stderr[-3000:]
    assert len(search.stdout.strip().splitlines()) == 3


def test_cli_aborts_when_elasticsearch_is_unreachable(photo_dir):
    env = dict(os.environ, ES_URL="http://127.0.0.1:9", PYTHONPATH=str(PROJECT))
    proc = subprocess.run(
        [sys.executable, "-m", "indexer", str(photo_dir), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=600, cwd=PROJECT,
    )
    assert proc.returncode == EXIT_ABORTED, proc.stderr[-3000:]
    # The message names the address and the fix, and nothing was half-done.
    assert "error: Elasticsearch at http://127.0.0.1:9 is not reachable" in proc.stderr, \
        proc.stderr[-3000:]
    assert "make es-up" in proc.stderr and "Traceback" not in proc.stderr
