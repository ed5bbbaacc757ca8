"""The web app while Elasticsearch goes away and comes back: 503 with a clear message during
the outage, answers again afterwards, without restarting the app."""

from __future__ import annotations

import uuid

from imgsearch.store import ImageStore
from indexer.index import index_folder
from tests.support import build_app


def test_elasticsearch_restart_while_serving(
    fault_node, settings, embedder, photo_dir, tmp_path
):
    local = settings.with_(es_url=fault_node.url, es_index=f"serve-{uuid.uuid4().hex[:8]}",
                           thumbnail_dir=tmp_path / "thumbs")
    store = ImageStore.from_settings(local)
    report = index_folder(photo_dir, settings=local, embedder=embedder, store=store,
                          progress=False)
    assert report.stats.indexed == 10
    client = build_app(local, embedder).test_client()  # its own store and ES client
    query = sorted(photo_dir.rglob("*.jpg"))[0].read_bytes()

    def search():
        return client.post("/api/search", data={"image": (_file(query), "q.jpg"), "k": "3"})

    assert client.get("/healthz").status_code == 200
    assert len(search().get_json()["hits"]) == 3

    fault_node.stop()
    try:
        health = client.get("/healthz")
        assert health.status_code == 503
        assert "not reachable" in health.get_json()["reason"]
        down = search()
        assert down.status_code == 503
        assert down.get_json()["error"]["code"] == "elasticsearch_unavailable"
        # Where Elasticsearch lives is the deployment's detail: admin keys only.
        assert fault_node.url not in down.get_json()["error"]["message"]
        page = client.get("/")
        assert page.status_code == 503 and b"not reachable" in page.data
        assert client.get("/api/facets").status_code == 503
        detail = client.get(f"/images/{report.stats.hashes.copy().pop()}")
        assert detail.status_code == 503
    finally:
        fault_node.start()

    assert client.get("/healthz").status_code == 200
    again = search()
    assert again.status_code == 200 and len(again.get_json()["hits"]) == 3
    assert client.get("/").status_code == 200
    store.es.indices.delete(index=f"{store.alias}-*")


def _file(data: bytes):
    import io

    return io.BytesIO(data)
