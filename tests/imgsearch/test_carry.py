"""A model switch that loses nothing (imgsearch/carry.py, the metadata decisions of
imgsearch/decisions.py and imgsearch/metadata.py ``with_decision``): on the session's real node,
real photos copied into per-test folders, a photo added through the real write API (the Flask
test client with a write key), and a real second model version (the same weights with the
``squash`` resize mode: other vectors, another version, loaded in ~2 s)."""

from __future__ import annotations

import io
import json
import shutil
import uuid

import pytest

from imgsearch.decisions import Decisions
from imgsearch.esclient import connect
from imgsearch.images import content_hash
from imgsearch.keys import KeyStore
from imgsearch.metadata import with_decision
from indexer.index import format_summary, index_folder
from tests.support import build_app


@pytest.fixture(scope="module")
def squash_model(settings):
    """Another model version than the session's ``embedder``: the squash resize mode."""
    from imgsearch.embedder import Embedder

    model = Embedder(settings.with_(resize_mode="squash"))
    model.warm_up()
    return model


@pytest.fixture(scope="module")
def write_key(settings) -> dict:
    key, _ = KeyStore(connect(settings), settings.api_keys_index).create(
        f"carry-{uuid.uuid4().hex[:8]}", "write")
    return {"Authorization": f"Bearer {key}"}


def _copy(src_dir, dest, labels, per_label, skip=0):
    for label in labels:
        (dest / label).mkdir(parents=True, exist_ok=True)
        for f in sorted((src_dir / label).glob("*.jpg"))[skip:skip + per_label]:
            shutil.copyfile(f, dest / label / f.name)
    return dest


def _docs(store) -> dict[str, dict]:
    store.refresh()
    hits = store.es.search(index=store.alias, size=100).body["hits"]["hits"]
    return {h["_id"]: h["_source"] for h in hits}


def _nearest(store, model, data: bytes) -> dict:
    vector = model.embed(model.decode(data).pixels[None])[0]
    return store.knn(vector, k=1)[0]


def test_a_model_switch_carries_uploads_other_folders_and_metadata(
        test_settings, store, embedder, squash_model, clothing_test_dir, tmp_path, write_key):
    settings = test_settings.with_(upload_dir=tmp_path / "uploads",
                                   decisions_index=f"{store.alias}-decisions")
    folder_a = _copy(clothing_test_dir, tmp_path / "a", ("dress", "hat"), 2)
    folder_b = _copy(clothing_test_dir, tmp_path / "b", ("shoes", "pants"), 1)
    dress = sorted((folder_a / "dress").glob("*.jpg"))[0]
    sidecar = {f"dress/{dress.name}": {"label": "dress", "tags": ["catalogue"]}}
    index_folder(folder_a, settings=settings, embedder=embedder, store=store, sidecar=sidecar,
                 progress=False)
    index_folder(folder_b, settings=settings, embedder=embedder, store=store, progress=False)
    client = build_app(settings, embedder, store, check_interval=0.0).test_client()

    # A photo added through the API, with its metadata; a label changed on one of folder A's
    # (over its sidecar's) and tags on one of folder B's.
    upload = sorted((clothing_test_dir / "skirt").glob("*.jpg"))[0].read_bytes()
    added = client.post("/api/images", headers=write_key, content_type="multipart/form-data",
                        data={"image": (io.BytesIO(upload), "u.jpg"), "label": "skirt",
                              "extra.sku": "S-1"})
    assert added.status_code == 201, added.get_json()
    upload_id, dress_id = content_hash(upload), content_hash(dress.read_bytes())
    shoe = next((folder_b / "shoes").glob("*.jpg"))
    shoe_id = content_hash(shoe.read_bytes())
    for doc_id, change in ((dress_id, {"label": "party-dress"}), (shoe_id, {"tags": ["red"]})):
        r = client.patch(f"/api/images/{doc_id}", json=change, headers=write_key)
        assert r.status_code == 200, r.get_json()
    # One of folder B's files is gone before the switch.
    gone = next((folder_b / "pants").glob("*.jpg"))
    gone_id = content_hash(gone.read_bytes())
    gone.unlink()
    old = store.indices.current_index()

    report = index_folder(folder_a, settings=settings, embedder=squash_model, store=store,
                          sidecar=sidecar, new_index=True, progress=False)
    assert report.exit_code == 0 and not report.aborted
    assert store.indices.current_index() == report.index != old
    carry = report.carry
    assert (carry.replaced, carry.looked_at, carry.missing, carry.carried) == (old, 7, 3, 2)
    assert [(n.id, n.path, n.reason) for n in carry.not_carried] == [(gone_id, str(gone),
                                                                      "gone")]
    summary = format_summary(report)
    assert "carried:          2 of 3" in summary and f"{gone}: [gone]" in summary
    body = report.to_json()
    assert body["carried"] == 2 and body["carry"]["not_carried"][0]["reason"] == "gone"
    json.dumps(body)

    docs = _docs(store)
    assert len(docs) == 6 and gone_id not in docs
    assert {d["model_version"] for d in docs.values()} == {squash_model.version}
    # Each is found by the new model's vector of its own bytes.
    for data, doc_id in ((upload, upload_id), (shoe.read_bytes(), shoe_id)):
        hit = _nearest(store, squash_model, data)
        assert hit["id"] == doc_id and hit["cosine"] > 0.999
    up = docs[upload_id]
    assert (up["label"], up["extra"], up["folder"]) == ("skirt", {"sku": "S-1"}, ".")
    assert up["path"].startswith(str(settings.upload_dir))
    assert docs[shoe_id]["tags"] == ["red"] and docs[shoe_id]["label"] == "shoes"
    # Folder A was rebuilt from its files and sidecar: the person's label holds over it.
    assert docs[dress_id]["label"] == "party-dress" and docs[dress_id]["tags"] == ["catalogue"]

    again = index_folder(folder_a, settings=settings, embedder=squash_model, store=store,
                         sidecar=sidecar, progress=False)
    assert again.carry is None and again.stats.already_present == 4
    assert _docs(store)[dress_id]["label"] == "party-dress"


def test_an_excluded_image_stays_excluded_and_a_changed_file_is_named(
        test_settings, store, embedder, squash_model, clothing_test_dir, tmp_path):
    folder_a = _copy(clothing_test_dir, tmp_path / "a", ("hat",), 1)
    folder_b = _copy(clothing_test_dir, tmp_path / "b", ("shoes",), 2)
    index_folder(folder_a, settings=test_settings, embedder=embedder, store=store,
                 progress=False)
    index_folder(folder_b, settings=test_settings, embedder=embedder, store=store,
                 progress=False)
    first, second = sorted((folder_b / "shoes").glob("*.jpg"))
    excluded_id, changed_id = (content_hash(f.read_bytes()) for f in (first, second))
    # What DELETE /api/images/<id> does to a folder's file: an exclusion, the document gone.
    Decisions(store.es, test_settings.image_decisions_index).decide(
        "excluded", excluded_id, path=str(first))
    other = sorted((clothing_test_dir / "shoes").glob("*.jpg"))[5].read_bytes()
    second.write_bytes(other)  # the file now holds other bytes

    report = index_folder(folder_a, settings=test_settings, embedder=squash_model,
                          store=store, new_index=True, progress=False)
    reasons = {n.id: n.reason for n in report.carry.not_carried}
    assert reasons == {excluded_id: "excluded", changed_id: "changed"}
    assert report.carry.carried == 0 and report.exit_code == 0
    # The changed file's new bytes are carried in its place, with the new model.
    docs = _docs(store)
    assert set(docs) == {content_hash((folder_a / "hat" / f.name).read_bytes())
                         for f in (folder_a / "hat").iterdir()} | {content_hash(other)}
    assert {d["model_version"] for d in docs.values()} == {squash_model.version}


def test_metadata_decisions_merge_and_remember_what_they_replaced(test_settings, store):
    from imgsearch.decisions import MAPPING

    # A decisions index made before metadata decisions: its strict mapping lacks their fields.
    older = {k: v for k, v in MAPPING["mappings"]["properties"].items()
             if k not in ("fields", "replaced")}
    store.es.indices.create(index=test_settings.image_decisions_index,
                            mappings={"dynamic": "strict", "properties": older})
    decisions = Decisions(store.es, test_settings.image_decisions_index)
    image = "a" * 64
    first, before = decisions.set_metadata(image, {"label": "gown"}, {"label": "dress"},
                                           by="alice")
    assert before is None and first.fields == {"label": "gown"}
    second, before = decisions.set_metadata(image, {"label": "ballgown", "tags": None},
                                            {"label": "gown", "tags": ["x"]}, by="bob")
    assert before == first
    assert second.fields == {"label": "ballgown", "tags": None}
    # The label replaced is still the sidecar's, not the person's own earlier value.
    assert second.replaced == {"label": "dress", "tags": ["x"]}
    assert decisions.metadata([image, "b" * 64]) == {image: second}
    decisions.restore("metadata", image, first)
    assert decisions.metadata([image])[image].fields == {"label": "gown"}
    decisions.restore("metadata", image, None)
    assert decisions.metadata([image]) == {}


@pytest.mark.parametrize("row,expected", [
    ({}, "gown"),  # no sidecar row (a folder's name gave the label): the person's
    ({"label": "dress"}, "gown"),  # the sidecar unchanged since the person's change
    ({"label": "evening dress"}, "evening dress"),  # edited afterwards: the newer word
])
def test_a_later_sidecar_edit_wins_over_an_earlier_change(row, expected):
    doc = {"label": row.get("label", "dresses"), "tags": ["a"]}
    out = with_decision(doc, row, {"label": "gown", "tags": None}, {"label": "dress"})
    assert out["label"] == expected and "tags" not in out


def test_carrying_that_cannot_read_the_replaced_index_leaves_the_alias(
        test_settings, store, embedder, squash_model, clothing_test_dir, tmp_path):
    """A fault: the replaced index cannot be read when carrying begins (closed here, as an
    operator or a failing disk would leave it). The run aborts and the alias stays: nothing the
    new index lacks is dropped from search."""
    folder_a = _copy(clothing_test_dir, tmp_path / "a", ("hat",), 1)
    folder_b = _copy(clothing_test_dir, tmp_path / "b", ("shoes",), 1)
    for folder in (folder_a, folder_b):
        index_folder(folder, settings=test_settings, embedder=embedder, store=store,
                     progress=False)
    old = store.indices.current_index()
    store.es.indices.close(index=old)
    try:
        report = index_folder(folder_a, settings=test_settings, embedder=squash_model,
                              store=store, new_index=True, progress=False)
    finally:
        store.es.indices.open(index=old, wait_for_active_shards="1")
    assert report.exit_code == 1 and report.carry is None
    assert f"carrying the images of {old} into {report.index} stopped" in report.aborted
    assert "The alias was not moved" in format_summary(report)
    assert store.indices.current_index() == old and store.count() == 2
    assert store.indices.swap_in_progress() == report.index


def test_a_change_that_fails_leaves_the_decision_it_had(test_settings, store, embedder,
                                                        clothing_test_dir, tmp_path, write_key):
    settings = test_settings.with_(decisions_index=f"{store.alias}-decisions",
                                   upload_dir=tmp_path / "uploads")
    folder = _copy(clothing_test_dir, tmp_path / "a", ("hat",), 1)
    index_folder(folder, settings=settings, embedder=embedder, store=store, progress=False)
    (doc_id,) = _docs(store)
    client = build_app(settings, embedder, store, check_interval=0.0).test_client()
    decisions = Decisions(store.es, settings.image_decisions_index)
    index = store.indices.current_index()

    def patch(label: str) -> int:
        return client.patch(f"/api/images/{doc_id}", json={"label": label},
                            headers=write_key).status_code

    def blocked(label: str) -> int:
        store.es.indices.put_settings(index=index, settings={"index.blocks.write": True})
        try:
            return patch(label)
        finally:
            store.es.indices.put_settings(index=index, settings={"index.blocks.write": None})

    assert blocked("cap") == 503 and decisions.metadata([doc_id]) == {}
    assert patch("cap") == 200
    assert blocked("beanie") == 503
    assert decisions.metadata([doc_id])[doc_id].fields == {"label": "cap"}
    assert _docs(store)[doc_id]["label"] == "cap"
