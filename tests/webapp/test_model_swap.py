"""The web app follows the alias to an index built by another model, without a restart and
without one response that mixes a query vector of one model with an index of another."""

from __future__ import annotations

import io
import threading
import time

from imgsearch.embedder import Embedder
from indexer.index import index_folder
from tests.support import build_app


def _search(client, data: bytes):
    return client.post("/api/search", data={"image": (io.BytesIO(data), "q.jpg"), "k": "3"})


def test_the_app_follows_a_new_index_swap_to_the_tuned_model(
    tuned_model, test_settings, store, embedder, photo_dir, admin_headers
):
    model_dir, result = tuned_model
    settings = test_settings.with_(model_store=model_dir.parent)
    base_run = index_folder(photo_dir, settings=settings, embedder=embedder, store=store,
                            progress=False)
    app = build_app(settings, embedder, store, check_interval=0.2)
    photo = next((photo_dir / "shoes").iterdir())
    query, query_id = photo.read_bytes(), None

    responses: list[tuple[int, dict]] = []
    by_client: dict[str, list[str]] = {"upload": [], "similar": []}
    stop = threading.Event()

    def load(kind: str) -> None:
        client = app.test_client()
        while not stop.is_set():
            if kind == "upload":
                r = _search(client, query)
            else:
                r = client.get(f"/api/images/{query_id}/similar?k=3")
            responses.append((r.status_code, r.get_json()))
            by_client[kind].append(r.get_json().get("model_version"))

    first = _search(app.test_client(), query).get_json()
    assert first["model_version"] == embedder.version and first["index"] == base_run.index
    query_id = first["hits"][0]["id"]
    threads = [threading.Thread(target=load, args=(kind,)) for kind in ("upload", "similar")]
    for t in threads:
        t.start()
    try:
        tuned = Embedder(settings, model_dir=model_dir)
        new_run = index_folder(photo_dir, settings=settings, embedder=tuned, store=store,
                               new_index=True, progress=False)
        assert store.indices.current_index() == new_run.index
        deadline = time.monotonic() + 300
        while not any(body.get("model_version") == tuned.version for _, body in responses):
            assert time.monotonic() < deadline, "the app never switched to the tuned model"
            time.sleep(0.5)
        seen = len(responses)
        while len(responses) < seen + 6:
            time.sleep(0.2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)

    built_by = {base_run.index: embedder.version, new_run.index: tuned.version}
    assert {store.indices.index_model_version(i) for i in built_by} == set(built_by.values())
    assert [status for status, _ in responses] == [200] * len(responses)
    for _, body in responses:
        # The query's model is the one that built the index searched...
        assert built_by[body["index"]] == body["model_version"]
        # ...so the photo finds itself at cosine 1, which a mixed pair could not.
        assert body["hits"][0]["id"] == query_id or body["query"].get("like") == query_id
        if "like" not in body["query"]:
            assert body["hits"][0]["cosine"] > 0.999
    versions = [body["model_version"] for _, body in responses]
    for seen_by_one in by_client.values():
        # Each client sees the base model, then the tuned one, and never the base again.
        switch = seen_by_one.index(tuned.version)
        assert set(seen_by_one[:switch]) == {embedder.version}
        assert set(seen_by_one[switch:]) == {tuned.version}

    health = app.test_client().get("/healthz", headers=admin_headers).get_json()
    assert health["ok"] and health["model_version"] == tuned.version
    assert health["serving"] == {"model_version": tuned.version, "index": new_run.index}
    assert health["switching"] is None
    print(f"{len(responses)} responses through the swap; {versions.count(embedder.version)} "
          f"base, {versions.count(tuned.version)} tuned; card P@10 "
          f"{result.card['validation']['after']['p@10']}")


def test_a_model_missing_from_the_store_keeps_the_old_pair_serving(
    test_settings, store, embedder, photo_dir, tmp_path, admin_headers
):
    run = index_folder(photo_dir, settings=test_settings, embedder=embedder, store=store,
                       progress=False)
    app = build_app(test_settings.with_(model_store=tmp_path / "empty-store"), embedder, store,
                    check_interval=0)
    other = store.indices.create_index("resnet50-avg/w=0000000000000000/elsewhere", test_settings)
    store.indices.point_alias(other)
    client = app.test_client()
    photo = next((photo_dir / "hat").iterdir()).read_bytes()
    body = _search(client, photo).get_json()
    assert body["index"] == run.index and body["model_version"] == embedder.version
    deadline = time.monotonic() + 60
    while True:
        health = client.get("/healthz", headers=admin_headers).get_json()
        if health["switching"] and health["switching"]["error"]:
            break
        assert time.monotonic() < deadline, health
        time.sleep(0.2)
    assert health["ok"] and health["serving"]["index"] == run.index
    assert "not in the model store" in health["switching"]["error"]
    assert _search(client, photo).status_code == 200



def test_every_response_names_the_serving_model(client, embedder):
    for path in ("/api/facets", "/healthz", "/api/images/" + "0" * 64, "/", "/nowhere"):
        response = client.get(path)
        assert response.headers["X-Model-Version"] == embedder.version, path
    assert client.get("/api/facets").get_json()["model_version"] == embedder.version
