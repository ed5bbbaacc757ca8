"""Resolving near-duplicates through the web app (webapp/duplicates.py): the API's scope table,
its answers and refusals, and the page's forms for a signed-in write key, on the real node
and model with real photos and copies made here."""

from __future__ import annotations

import io
import shutil
import uuid

import pytest
from PIL import Image

from imgsearch.images import content_hash
from imgsearch.keys import KeyStore
from tests.support import build_app, jpeg_q50

LABELS = ("hat", "shoes", "skirt")



@pytest.fixture
def dups(test_settings, store, embedder, clothing_test_dir, tmp_path):
    """``(client, keys, ids)``: an app on three photos each with a JPEG q50 copy, keys of
    each scope, ids as ``{label: (original, copy)}``."""
    from indexer.index import index_folder

    folder = tmp_path / "photos"
    folder.mkdir()
    ids = {}
    for label in LABELS:
        path = sorted((clothing_test_dir / label).glob("*.jpg"))[3]
        shutil.copyfile(path, folder / f"{label}.jpg")
        (folder / f"{label}-q50.jpg").write_bytes(jpeg_q50(path))
        ids[label] = (content_hash(path.read_bytes()),
                      content_hash((folder / f"{label}-q50.jpg").read_bytes()))
    settings = test_settings.with_(keys_index=f"{store.alias}-keys",
                                   upload_dir=tmp_path / "uploads")
    index_folder(folder, settings=settings, embedder=embedder, store=store, progress=False)
    key_store = KeyStore(store.es, settings.api_keys_index)
    keys = {scope: key_store.create(f"{scope}-{uuid.uuid4().hex[:6]}", scope)[0]
            for scope in ("read", "write")}
    client = build_app(settings, embedder, store).test_client()
    client.folder = folder
    return client, keys, ids


def _bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def _groups(client) -> set[frozenset[str]]:
    body = client.get("/api/duplicates").get_json()
    return {frozenset(m["id"] for m in g["members"]) for g in body["groups"]}


def test_the_api_resolves_with_a_write_key_only(dups):
    client, keys, ids = dups
    all_pairs = {frozenset(pair) for pair in ids.values()}
    assert _groups(client) == all_pairs
    body = client.get("/api/duplicates").get_json()
    assert (body["floor"], body["unvisited"], body["pairs"]) == (0.9, 0, 3)
    hat, hat_copy = ids["hat"]
    calls = [
        ("/api/duplicates/resolve", {"keep": hat, "hide": [hat_copy]}),
        ("/api/duplicates/distinct", {"images": list(ids["shoes"])}),
        ("/api/duplicates/undo", {"kind": "hidden", "images": [hat_copy]}),
    ]
    for path, body in calls:
        anonymous = client.post(path, json=body)
        assert anonymous.status_code == 401
        assert anonymous.get_json()["error"]["code"] == "key_required"
        read = client.post(path, json=body, headers=_bearer(keys["read"]))
        assert read.status_code == 403
        assert read.get_json()["error"]["code"] == "insufficient_scope"
    assert client.get("/api/duplicates/decisions",
                      headers=_bearer(keys["read"])).status_code == 403
    write = _bearer(keys["write"])

    done = client.post("/api/duplicates/resolve", json=calls[0][1], headers=write)
    assert done.status_code == 200
    assert done.get_json() == {"kept": hat, "hidden": [hat_copy], "deleted": []}
    distinct = client.post("/api/duplicates/distinct", json=calls[1][1], headers=write)
    assert distinct.status_code == 200
    assert distinct.get_json()["images"] == sorted(ids["shoes"])
    assert distinct.get_json()["decided_by"].startswith("write-")
    assert _groups(client) == {frozenset(ids["skirt"])}
    listed = client.get("/api/duplicates/decisions", headers=write).get_json()["decisions"]
    assert {d["kind"] for d in listed} == {"hidden", "distinct"}
    # The hidden copy is no search result, and its page still answers.
    similar = client.get(f"/api/images/{hat}/similar?k=20").get_json()
    assert hat_copy not in [h["id"] for h in similar["hits"]]
    assert client.get(f"/api/images/{hat_copy}").status_code == 200

    undone = client.post("/api/duplicates/undo", json=calls[2][1], headers=write)
    assert undone.get_json() == {"kind": "hidden", "images": [hat_copy], "undone": True}
    client.post("/api/duplicates/undo", data={"kind": "distinct",
                                              "images": ",".join(ids["shoes"])}, headers=write)
    assert _groups(client) == all_pairs

    # Delete, as a form: the copy's document goes, with its group.
    skirt, skirt_copy = ids["skirt"]
    deleted = client.post("/api/duplicates/resolve", data={"keep": skirt, "delete": skirt_copy},
                          headers=write)
    assert deleted.get_json()["deleted"] == [skirt_copy]
    assert client.get(f"/api/images/{skirt_copy}").status_code == 404
    assert _groups(client) == all_pairs - {frozenset(ids["skirt"])}


REFUSED = [
    ("/api/duplicates/resolve", {"hide": ["a" * 64]}, "invalid_parameter", "keep is required"),
    ("/api/duplicates/resolve", {"keep": "x", "hide": ["a" * 64]}, "invalid_parameter",
     "64 hex digits"),
    ("/api/duplicates/resolve", {"keep": "a" * 64, "hide": ["b" * 64]}, "unknown_id",
     "not indexed"),
    ("/api/duplicates/resolve", {"keep": "a" * 64, "drop": ["b" * 64]}, "unknown_parameter",
     "Known: keep, hide, delete"),
    ("/api/duplicates/distinct", {"images": ["a" * 64]}, "invalid_parameter", "two images"),
    ("/api/duplicates/undo", {"kind": "kept", "images": ["a" * 64]}, "invalid_decision",
     "kind must be one of"),
    ("/api/duplicates/resolve", {"keep": 3}, "invalid_parameter", "string"),
]


def test_the_api_refuses_what_cannot_be_resolved_or_grouped(dups):
    client, keys, _ = dups
    for path, body, code, words in REFUSED:
        response = client.post(path, json=body, headers=_bearer(keys["write"]))
        assert response.status_code == 400, (path, body)
        error = response.get_json()["error"]
        assert error["code"] == code and words in error["message"], (path, body)
    # Below the floor: refused, with the way to lower it.
    response = client.get("/api/duplicates?threshold=0.8")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "below_floor" and "IMGSEARCH_DUPLICATE_FLOOR=0.8" in error["message"]


def test_the_page_resolves_for_a_signed_in_write_key(dups):
    client, keys, ids = dups
    page = client.get("/duplicates").get_data(as_text=True)
    assert page.count('class="dup-group"') == 3 and "Hide the others" not in page
    client.post("/signin", data={"key": keys["read"]})
    assert "Hide the others" not in client.get("/duplicates").get_data(as_text=True)
    client.post("/signin", data={"key": keys["write"]})
    page = client.get("/duplicates").get_data(as_text=True)
    assert page.count("Hide the others") == 3 and "Not duplicates" in page

    hat, hat_copy = ids["hat"]
    form = {"keep": hat_copy, "members": [hat, hat_copy], "action": "hide",
            "back": "/duplicates?limit=20"}
    # Another site's page cannot post it through the visitor's session.
    refused = client.post("/duplicates/resolve", data=form,
                          headers={"Sec-Fetch-Site": "cross-site"})
    assert refused.status_code == 403
    done = client.post("/duplicates/resolve", data=form,
                       headers={"Sec-Fetch-Site": "same-origin"})
    assert done.status_code == 303 and done.headers["Location"].endswith("/duplicates?limit=20")
    page = client.get("/duplicates").get_data(as_text=True)
    assert page.count('class="dup-group"') == 2 and 'id="decisions"' in page
    assert f'value="{hat}"' in page  # the hidden original's undo form
    undone = client.post("/duplicates/undo", data={"kind": "hidden", "images": hat,
                                                   "back": "https://elsewhere.example/"})
    assert undone.status_code == 303 and undone.headers["Location"].endswith("/duplicates")
    distinct = client.post("/duplicates/distinct", data={"images": list(ids["shoes"])})
    assert distinct.status_code == 303
    assert client.get("/duplicates").get_data(as_text=True).count('class="dup-group"') == 2


def test_an_image_added_through_the_write_api_joins_its_group_and_leaves_it_deleted(dups):
    client, keys, ids = dups
    with Image.open(client.folder / "skirt.jpg") as im:
        out = io.BytesIO()
        im.convert("RGB").resize((im.width // 2, im.height // 2)).save(out, "JPEG", quality=90)
    data = out.getvalue()
    added = client.post("/api/images", data={"image": (io.BytesIO(data), "skirt-half.jpg")},
                        content_type="multipart/form-data", headers=_bearer(keys["write"]))
    assert added.status_code == 201, added.get_json()
    copy = content_hash(data)
    assert frozenset({*ids["skirt"], copy}) in _groups(client)
    hidden = client.post("/api/duplicates/resolve", json={"keep": ids["skirt"][0],
                                                         "hide": [copy]},
                         headers=_bearer(keys["write"]))
    assert hidden.status_code == 200
    deleted = client.delete(f"/api/images/{copy}", headers=_bearer(keys["write"]))
    assert deleted.status_code == 204
    assert _groups(client) == {frozenset(pair) for pair in ids.values()}

    # Added again (still hidden: the decision is about its bytes), then deleted as a copy
    # from its group: an upload goes with its file, and is not excluded.
    again = client.post("/api/images", data={"image": (io.BytesIO(data), "skirt-half.jpg")},
                        content_type="multipart/form-data", headers=_bearer(keys["write"]))
    assert again.status_code == 201
    store = client.application.extensions["imgsearch.resolver"].store
    assert store.get(copy)["hidden"] is True
    uploads = client.application.extensions["imgsearch.uploads"].root
    assert [p.name for p in uploads.rglob("*.jpg")] == [f"{copy}.jpg"]
    done = client.post("/api/duplicates/resolve", json={"keep": ids["skirt"][0],
                                                       "delete": [copy]},
                       headers=_bearer(keys["write"]))
    assert done.get_json()["deleted"] == [copy]
    assert list(uploads.rglob("*.jpg")) == []
    assert _groups(client) == {frozenset(pair) for pair in ids.values()}
    decisions = client.application.extensions["imgsearch.resolver"].decisions
    assert decisions.excluded([copy]) == set()
