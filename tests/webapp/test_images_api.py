"""The write API (webapp/images.py): add, change and remove images, on the session's real node
and model, real photos copied into a per-test folder and a per-test alias (the Flask test
client; every response is checked for a stack trace)."""

from __future__ import annotations

import http.client
import io
import json
import shutil
import time
import uuid
from dataclasses import fields
from datetime import UTC, datetime

import pytest
from PIL import Image

from imgsearch.decisions import Decisions
from imgsearch.esclient import connect
from imgsearch.images import content_hash
from imgsearch.keys import KeyStore
from imgsearch.pipeline import RunStats
from indexer.index import index_folder
from tests.support import build_app, gunicorn_server

# A 1-bit PNG of 40,000² pixels: 1.6 Gpx in a few hundred bytes.
_buffer = io.BytesIO()
Image.new("1", (40_000, 40_000)).save(_buffer, "PNG")
BOMB = _buffer.getvalue()


@pytest.fixture(scope="module")
def keys(settings):
    """A key of each scope in the session's keys index: ``{scope: (key, name)}``."""
    store = KeyStore(connect(settings), settings.api_keys_index)
    out = {}
    for scope in ("read", "write"):
        name = f"{scope}-{uuid.uuid4().hex[:8]}"
        out[scope] = (store.create(name, scope)[0], name)
    return out


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def folder(clothing_test_dir, tmp_path):
    """Six real photos (two of each of three labels), indexed; and three others, not."""
    root = tmp_path / "photos"
    for label in ("dress", "hat", "shoes"):
        (root / label).mkdir(parents=True)
        for f in sorted((clothing_test_dir / label).glob("*.jpg"))[:2]:
            shutil.copyfile(f, root / label / f.name)
    others = [sorted((clothing_test_dir / label).glob("*.jpg"))[0]
              for label in ("skirt", "pants", "shorts")]
    return root, others


@pytest.fixture
def world(test_settings, store, embedder, folder, keys, tmp_path):
    """An app on a per-test alias holding ``folder``'s indexed photos, with an upload folder
    of its own: a namespace with client, store, settings, paths and keys."""
    root, others = folder
    settings = test_settings.with_(upload_dir=tmp_path / "uploads",
                                   decisions_index=f"{store.alias}-decisions")
    index_folder(root, settings=settings, embedder=embedder, store=store, progress=False)
    app = build_app(settings, embedder, store, check_interval=0.0)
    write = bearer(keys["write"][0])
    yield _World(app.test_client(), store, settings, root, others, write, keys, embedder)
    store.es.indices.delete(index=settings.image_decisions_index, ignore_unavailable=True)


class _World:
    def __init__(self, client, store, settings, root, others, write, keys, embedder):
        self.client, self.store, self.settings = client, store, settings
        self.root, self.others, self.write, self.keys = root, others, write, keys
        self.embedder = embedder

    def add(self, data: bytes, headers=None, name="photo.jpg", **form):
        body = {**form, "image": (io.BytesIO(data), name)}
        return self.client.post("/api/images", data=body, content_type="multipart/form-data",
                                headers=self.write if headers is None else headers)

    def search_first(self, data: bytes) -> dict:
        response = self.client.post("/api/search", data={"image": (io.BytesIO(data), "q.jpg")},
                                    content_type="multipart/form-data")
        assert response.status_code == 200, response.get_json()
        return response.get_json()["hits"][0]

    def uploaded_files(self) -> list:
        up = self.settings.upload_dir
        return sorted(p for p in up.rglob("*") if p.is_file()) if up.exists() else []

    def count(self) -> int:
        self.store.refresh()
        return self.store.count()


def until_searchable(body: dict) -> None:
    """Sleep until the time an add's answer says searches will see the image."""
    at = datetime.fromisoformat(body["searchable_at"])
    time.sleep(max(0.0, (at - datetime.now(UTC)).total_seconds()))


def error_of(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"]["code"] == code, body
    return body["error"]


def test_an_add_is_stored_indexed_and_searchable_then_a_second_is_idempotent(world):
    data = world.others[0].read_bytes()
    doc_id = content_hash(data)
    before = world.count()
    response = world.add(data, label="skirt", tags="red, summer", **{"extra.sku": "A-1"})
    assert response.status_code == 201, response.get_json()
    body = response.get_json()
    assert body["id"] == doc_id and body["created"] and body["searchable_after_s"] == 1.0
    assert body["exclusion_lifted"] is False
    assert response.headers["Location"] == f"/api/images/{doc_id}"
    meta = body["metadata"]
    assert (meta["label"], meta["tags"], meta["extra"]) == ("skirt", ["red", "summer"],
                                                            {"sku": "A-1"})
    assert meta["folder"] == "." and meta["format"] == "JPEG" and meta["model_tags"]
    # Content-addressed, atomically written: exactly the bytes, at <dir>/ab/<hash>.jpg.
    stored = world.settings.upload_dir / doc_id[:2] / f"{doc_id}.jpg"
    assert world.uploaded_files() == [stored] and stored.read_bytes() == data
    assert (world.settings.thumbnail_dir / doc_id[:2] / f"{doc_id}.webp").is_file()
    # Searchable when the answer says (no refresh here): the same photo finds it first.
    until_searchable(body)
    first = world.search_first(data)
    assert first["id"] == doc_id and first["cosine"] > 0.999
    assert world.store.count() == before + 1
    # The same bytes again: 200, nothing written twice; metadata given is applied.
    again = world.add(data, name="other-name.jpg")
    assert again.status_code == 200 and again.get_json()["created"] is False
    assert again.get_json()["metadata"]["label"] == "skirt"
    relabel = world.add(data, label="dress", tags="blue")
    assert relabel.status_code == 200
    assert relabel.get_json()["metadata"]["label"] == "dress"
    assert relabel.get_json()["metadata"]["tags"] == ["blue"]
    assert relabel.get_json()["metadata"]["extra"] == {"sku": "A-1"}
    assert world.count() == before + 1 and world.uploaded_files() == [stored]
    # Bytes already indexed from a folder: 200, and no copy in the upload folder.
    indexed = next(world.root.rglob("*.jpg")).read_bytes()
    assert world.add(indexed).status_code == 200
    assert world.uploaded_files() == [stored]


def test_an_add_to_an_index_with_regions_gets_region_vectors(test_settings, store, embedder,
                                                             folder, keys, tmp_path):
    root, others = folder
    settings = test_settings.with_(upload_dir=tmp_path / "uploads", regions="standard")
    shutil.rmtree(root / "dress")
    shutil.rmtree(root / "hat")  # two photos are enough to make the index
    index_folder(root, settings=settings, embedder=embedder, store=store, progress=False)
    # The server's own setting says nothing about regions: the index's mode decides.
    client = build_app(settings.with_(regions="off"), embedder, store).test_client()
    data = others[1].read_bytes()
    response = client.post("/api/images", data={"image": (io.BytesIO(data), "p.jpg")},
                           content_type="multipart/form-data", headers=bearer(keys["write"][0]))
    assert response.status_code == 201, response.get_json()
    doc = store.es.get(index=store.alias, id=content_hash(data),
                       source_includes=["regions.box"]).body["_source"]
    assert len(doc["regions"]) >= 4
    until_searchable(response.get_json())
    # A part of the photo finds it through the region vectors.
    hit = client.post("/api/search", data={"image": (io.BytesIO(data), "q.jpg"),
                                           "box": "0.1,0.1,0.9,0.9"},
                      content_type="multipart/form-data").get_json()["hits"][0]
    assert hit["id"] == content_hash(data) and "region" in hit


def test_deleting_an_upload_removes_its_file_document_and_thumbnail(world):
    data = world.others[0].read_bytes()
    doc_id = content_hash(data)
    assert world.add(data).status_code == 201
    thumbnail = world.settings.thumbnail_dir / doc_id[:2] / f"{doc_id}.webp"
    assert thumbnail.is_file() and world.uploaded_files()
    response = world.client.delete(f"/api/images/{doc_id}", headers=world.write)
    assert response.status_code == 204 and response.get_data() == b""
    assert world.uploaded_files() == [] and not thumbnail.exists()
    error_of(world.client.get(f"/api/images/{doc_id}"), 404, "not_found")
    assert world.search_first(data)["id"] != doc_id
    # An upload is not excluded: the same bytes may come back by any way.
    assert not Decisions(world.store.es, world.settings.image_decisions_index).excluded([doc_id])
    error_of(world.client.delete(f"/api/images/{doc_id}", headers=world.write), 404,
             "not_found")


def test_deleting_a_folder_file_leaves_it_on_disk_and_excludes_its_bytes(world):
    path = sorted((world.root / "hat").glob("*.jpg"))[0]
    data = path.read_bytes()
    doc_id = content_hash(data)
    response = world.client.delete(f"/api/images/{doc_id}", headers=world.write)
    assert response.status_code == 204
    assert path.read_bytes() == data  # never touched
    error_of(world.client.get(f"/api/images/{doc_id}"), 404, "not_found")
    found = Decisions(world.store.es, world.settings.image_decisions_index).find(
        [f"excluded:{doc_id}"])
    decision = found[f"excluded:{doc_id}"]
    assert decision.path == str(path) and decision.decided_by == world.keys["write"][1]
    # A person adding those bytes again asks for them: the exclusion is lifted, and said so.
    back = world.add(data)
    assert back.status_code == 201, back.get_json()
    assert back.get_json()["exclusion_lifted"] is True and "lifted" in back.get_json()["message"]
    decisions = Decisions(world.store.es, world.settings.image_decisions_index)
    assert not decisions.excluded([doc_id])


@pytest.mark.skipif("excluded" not in {f.name for f in fields(RunStats)},
                    reason="RunStats has no `excluded` count yet: the indexer's exclusion check "
                           "(the watch helper's) has not landed")
def test_an_excluded_file_stays_out_when_its_folder_is_indexed_again(world):
    path = sorted((world.root / "shoes").glob("*.jpg"))[0]
    doc_id = content_hash(path.read_bytes())
    assert world.client.delete(f"/api/images/{doc_id}", headers=world.write).status_code == 204
    report = index_folder(world.root, settings=world.settings, embedder=world.embedder,
                          store=world.store, progress=False)
    assert report.stats.excluded == 1
    world.store.refresh()
    assert world.store.get(doc_id) is None and path.exists()


def test_patch_sets_metadata_only(world):
    path = sorted((world.root / "dress").glob("*.jpg"))[0]
    data = path.read_bytes()
    doc_id = content_hash(data)
    url = f"/api/images/{doc_id}"
    response = world.client.patch(url, json={"label": "gown", "tags": ["evening", "long"],
                                             "extra": {"price": 120, "colour": "red"}},
                                  headers=world.write)
    assert response.status_code == 200, response.get_json()
    meta = response.get_json()["metadata"]
    assert (meta["label"], meta["tags"], meta["extra"]) == (
        "gown", ["evening", "long"], {"price": 120, "colour": "red"})
    # extra is replaced, not merged; null clears a field.
    response = world.client.patch(url, json={"extra": {"colour": "blue"}, "label": None,
                                             "tags": ["a", " b", "a"]}, headers=world.write)
    meta = response.get_json()["metadata"]
    assert (meta["label"], meta["tags"], meta["extra"]) == (None, ["a", "b"], {"colour": "blue"})
    # Searchable by the new metadata at once, and its vector is untouched.
    hits = world.client.post("/api/search", data={"image": (io.BytesIO(data), "q.jpg"),
                                                  "extra.colour": "blue"},
                             content_type="multipart/form-data").get_json()["hits"]
    assert [h["id"] for h in hits] == [doc_id] and hits[0]["cosine"] > 0.999
    assert meta["width"] and meta["model_version"] == world.embedder.version


def test_bad_patches_are_refused_and_change_nothing(world):
    doc_id = content_hash(sorted((world.root / "dress").glob("*.jpg"))[0].read_bytes())
    url = f"/api/images/{doc_id}"
    before = world.client.get(url).get_json()
    for body, code in [
        ({"label": "x", "width": 3}, "invalid_metadata"),
        ({"path": "/etc/passwd"}, "invalid_metadata"),
        ({}, "invalid_body"),
        ({"label": 5}, "invalid_metadata"),
        ({"label": "x" * 513}, "invalid_metadata"),
        ({"tags": [f"t{i}" for i in range(101)]}, "invalid_metadata"),
        ({"tags": [1]}, "invalid_metadata"),
        ({"tags": "a,b"}, "invalid_metadata"),  # JSON has lists: text is a form's way
        ({"tags": ["a"] * 101}, "invalid_metadata"),
        ({"label": " " + "x" * 512}, "invalid_metadata"),
        ({"label": " "}, "invalid_metadata"),
        ({"extra": {"a.b": "dotted"}}, "invalid_metadata"),
        ({"extra": [1, 2]}, "invalid_metadata"),
        ({"extra": {"nested": {"x": 1}}}, "invalid_metadata"),
    ]:
        error_of(world.client.patch(url, json=body, headers=world.write), 400, code)
    error_of(world.client.patch(url, data="label=x", headers=world.write,
                                content_type="application/x-www-form-urlencoded"),
             400, "invalid_body")
    error_of(world.client.patch(url, data="{not json", headers=world.write,
                                content_type="application/json"), 400, "invalid_body")
    error_of(world.client.patch(f"/api/images/{'0' * 64}", json={"label": "x"},
                                headers=world.write), 404, "not_found")
    assert world.client.get(url).get_json() == before


def test_writes_need_a_write_key(world):
    data = world.others[0].read_bytes()
    doc_id = content_hash(sorted((world.root / "dress").glob("*.jpg"))[0].read_bytes())
    read = bearer(world.keys["read"][0])
    for headers, status, code in [({}, 401, "key_required"), (read, 403, "insufficient_scope")]:
        # Reads are public here (IMGSEARCH_PUBLIC_READ=1): writes still need a key.
        error_of(world.add(data, headers=headers), status, code)
        error_of(world.client.patch(f"/api/images/{doc_id}", json={"label": "x"},
                                    headers=headers), status, code)
        error_of(world.client.delete(f"/api/images/{doc_id}", headers=headers), status, code)
    assert world.uploaded_files() == []
    assert world.client.get(f"/api/images/{doc_id}").status_code == 200


def test_bad_adds_are_refused_and_leave_nothing(world, build_app):
    data = world.others[0].read_bytes()
    before = world.count()
    cases = [
        (world.add(b"GIF89a" + b"\0" * 20), 400, "invalid_image"),
        (world.add(b"<html>not an image</html>"), 400, "invalid_image"),
        (world.add(data[: len(data) // 3]), 400, "invalid_image"),
        (world.add(BOMB, name="bomb.png"), 400, "invalid_image"),
        (world.add(b""), 400, "empty_upload"),
        (world.add(data, label="x" * 513), 400, "invalid_metadata"),
        (world.add(data, tags=",".join(f"t{i}" for i in range(101))), 400, "invalid_metadata"),
        (world.add(data, **{"extra.a b": "space"}), 400, "invalid_metadata"),
        (world.add(data, **{"extra.": "no name"}), 400, "invalid_metadata"),
        (world.add(data, path="/etc/passwd"), 400, "unknown_parameter"),
        (world.client.post("/api/images", data={"label": "x"}, headers=world.write,
                           content_type="multipart/form-data"), 400, "missing_image"),
    ]
    for response, status, code in cases:
        error_of(response, status, code)
    bomb = world.add(BOMB, name="bomb.png").get_json()["error"]
    assert bomb["reason"] == "too_many_pixels"
    twice = world.client.post(
        "/api/images", headers=world.write, content_type="multipart/form-data",
        data={"image": (io.BytesIO(data), "a.jpg"), "label": ["a", "b"]})
    error_of(twice, 400, "invalid_metadata")
    small = build_app(world.settings.with_(max_upload_bytes=10_000), world.store).test_client()
    too_big = small.post("/api/images", data={"image": (io.BytesIO(data), "a.jpg")},
                         content_type="multipart/form-data", headers=world.write)
    error_of(too_big, 413, "upload_too_large")
    assert world.uploaded_files() == [] and world.count() == before
    assert not list(world.settings.thumbnail_dir.glob(f"{content_hash(data)[:2]}/*"))


def test_writes_are_refused_while_a_new_index_is_being_built(world):
    data = world.others[0].read_bytes()
    doc_id = content_hash(sorted((world.root / "dress").glob("*.jpg"))[0].read_bytes())
    before = world.count()
    # What `python -m indexer <dir> --new-index` makes first: a newer index, alias untouched.
    newer = world.store.indices.create_index(world.embedder.version, world.settings)
    for response in (world.add(data),
                     world.client.patch(f"/api/images/{doc_id}", json={"label": "x"},
                                        headers=world.write),
                     world.client.delete(f"/api/images/{doc_id}", headers=world.write)):
        message = error_of(response, 409, "index_swap_in_progress")["message"]
        assert "--new-index" in message and "Try again" in message
    assert world.uploaded_files() == [] and world.count() == before
    assert world.client.get(f"/api/images/{doc_id}").get_json()["metadata"]["label"] == "dress"
    # The build finishes (its index replaces the old one) or is deleted: writes work again.
    world.store.es.indices.delete(index=newer)
    assert world.add(data).status_code == 201


def test_a_write_the_index_refuses_leaves_nothing_behind(world):
    """Elasticsearch's own refusal of writes (the block it sets on an index when the disk
    passes its flood-stage watermark): the add is a 503, and its file and thumbnail are gone
    again; a delete is a 503 that leaves the image and no exclusion."""
    data = world.others[0].read_bytes()
    doc_id = content_hash(data)
    indexed = content_hash(sorted((world.root / "hat").glob("*.jpg"))[0].read_bytes())
    index = world.store.indices.current_index()
    before = world.count()
    world.store.es.indices.put_settings(index=index,
                                        settings={"index.blocks.read_only_allow_delete": True})
    try:
        error_of(world.add(data), 503, "elasticsearch_error")
        world.store.es.indices.put_settings(index=index, settings={"index.blocks.write": True})
        error_of(world.client.delete(f"/api/images/{indexed}", headers=world.write), 503,
                 "elasticsearch_error")
    finally:
        world.store.es.indices.put_settings(index=index, settings={
            "index.blocks.read_only_allow_delete": None, "index.blocks.write": None})
    assert world.uploaded_files() == [] and world.count() == before
    assert not (world.settings.thumbnail_dir / doc_id[:2] / f"{doc_id}.webp").exists()
    assert not Decisions(world.store.es, world.settings.image_decisions_index).excluded([indexed])
    assert world.add(data).status_code == 201


def _http(port: int, method: str, path: str, key: str | None, body: bytes = b"",
          content_type: str | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if content_type:
        headers["Content-Type"] = content_type
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _multipart(data: bytes, **fields: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'
             .encode() for k, v in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
                 f'filename="p.jpg"\r\nContent-Type: image/jpeg\r\n\r\n'.encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), \
        f"multipart/form-data; boundary={boundary}"


def test_through_gunicorn_with_its_settings_from_the_environment(world, tmp_path):
    """The product's server (one worker) reads the upload folder and the decisions index from
    its environment; the scope table of the three writes holds there."""
    data = world.others[2].read_bytes()
    doc_id = content_hash(data)
    folder_file = sorted((world.root / "shoes").glob("*.jpg"))[0]
    folder_id = content_hash(folder_file.read_bytes())
    uploads = tmp_path / "served-uploads"
    with gunicorn_server(world.settings, tmp_path / "gunicorn.log", WEBAPP_WORKERS="1",
                         WEBAPP_THREADS="2", IMGSEARCH_UPLOAD_DIR=str(uploads),
                         IMGSEARCH_DECISIONS_INDEX=world.settings.image_decisions_index
                         ) as (_, port):
        body, content_type = _multipart(data, label="shorts", tags="a,b")
        read_key, write_key = world.keys["read"][0], world.keys["write"][0]
        for key, status in ((None, 401), (read_key, 403), (write_key, 201), (write_key, 200)):
            assert _http(port, "POST", "/api/images", key, body, content_type)[0] == status
        assert (uploads / doc_id[:2] / f"{doc_id}.jpg").read_bytes() == data
        patch = json.dumps({"label": "trunks"}).encode()
        for key, status in ((None, 401), (read_key, 403), (write_key, 200)):
            assert _http(port, "PATCH", f"/api/images/{doc_id}", key, patch,
                         "application/json")[0] == status
        for key, status in ((None, 401), (read_key, 403), (write_key, 204), (write_key, 404)):
            assert _http(port, "DELETE", f"/api/images/{doc_id}", key)[0] == status
        assert not (uploads / doc_id[:2] / f"{doc_id}.jpg").exists()
        assert _http(port, "DELETE", f"/api/images/{folder_id}", write_key)[0] == 204
    assert folder_file.exists()
    assert Decisions(world.store.es, world.settings.image_decisions_index).excluded([folder_id])


def test_an_upload_folder_that_cannot_be_written_is_a_503_that_stores_nothing(world,
                                                                              build_app):
    data = world.others[0].read_bytes()
    blocked = world.settings.upload_dir.parent / "not-a-folder"
    blocked.write_text("a file where the upload folder should be")
    client = build_app(world.settings.with_(upload_dir=blocked), world.store).test_client()
    before = world.count()
    response = client.post("/api/images", data={"image": (io.BytesIO(data), "a.jpg")},
                           content_type="multipart/form-data", headers=world.write)
    message = error_of(response, 503, "upload_folder_unavailable")["message"]
    assert "IMGSEARCH_UPLOAD_DIR" in message and str(blocked) not in message
    assert world.count() == before and blocked.read_text().startswith("a file")
    doc_id = content_hash(data)
    assert not (world.settings.thumbnail_dir / doc_id[:2] / f"{doc_id}.webp").exists()


def test_adds_wait_for_the_model_of_the_index_the_alias_moved_to(world):
    """The alias swapped to an index of another model, which this server cannot load: adds
    are 503 model_switching with Retry-After (an image is embedded by its index's model)."""
    other = world.store.indices.create_index("another-model/v1", world.settings)
    world.store.indices.point_alias(other)
    response = world.add(world.others[0].read_bytes())
    error_of(response, 503, "model_switching")
    assert int(response.headers["Retry-After"]) >= 1 and world.uploaded_files() == []


def test_the_first_add_makes_the_index(test_settings, store, embedder, keys, clothing_test_dir,
                                       tmp_path):
    client = build_app(test_settings.with_(upload_dir=tmp_path / "uploads"), embedder,
                       store).test_client()
    for f in sorted((clothing_test_dir / "hat").glob("*.jpg"))[:2]:
        response = client.post("/api/images", data={"image": (io.BytesIO(f.read_bytes()),
                                                              "a.jpg")},
                               content_type="multipart/form-data",
                               headers=bearer(keys["write"][0]))
        assert response.status_code == 201, response.get_json()
    store.refresh()
    assert store.count() == 2
    assert store.indices.index_model_version() == embedder.version
