"""The JSON API against the real node, the indexed clothing split and the real model."""

from __future__ import annotations

import io
from urllib.parse import parse_qsl

import pytest

HIT_KEYS = {
    "id", "score", "cosine", "path", "file_name", "thumbnail_url", "detail_url", "similar_url",
    "metadata",
}
METADATA_KEYS = {
    "label", "folder", "width", "height", "format", "byte_size", "exif_datetime", "camera",
    "tags", "extra",
}


def upload(client, data: bytes, name: str = "photo.jpg", **fields):
    form = {"image": (io.BytesIO(data), name), **fields}
    return client.post("/api/search", data=form, content_type="multipart/form-data")


def error_of(response) -> dict:
    body = response.get_json()
    assert set(body) == {"error"}, body
    assert body["error"]["code"] and body["error"]["message"], body
    return body["error"]


# -- search -----------------------------------------------------------------------------


def test_search_finds_the_photo_itself_first(client, shoe):
    _, data, doc_id = shoe
    response = upload(client, data, k="5")
    assert response.status_code == 200
    body = response.get_json()
    hits = body["hits"]
    assert len(hits) == 5
    assert hits[0]["id"] == doc_id  # the same photo is indexed: cosine ~1
    assert hits[0]["cosine"] == pytest.approx(1.0, abs=1e-3)
    cosines = [h["cosine"] for h in hits]
    assert cosines == sorted(cosines, reverse=True)
    for hit in hits:
        assert HIT_KEYS <= set(hit) <= HIT_KEYS | {"model_classes"}  # classes: when tagged
        assert set(hit["metadata"]) >= METADATA_KEYS
        assert hit["score"] == pytest.approx((1 + hit["cosine"]) / 2, abs=1e-5)
        assert hit["thumbnail_url"] == f"/thumbnails/{hit['id']}.webp"
        assert hit["detail_url"] == f"/images/{hit['id']}"
        assert hit["similar_url"] == f"/api/images/{hit['id']}/similar"
        assert hit["metadata"]["format"] == "JPEG" and hit["metadata"]["width"] >= 400
    assert set(body["timings_ms"]) == {"decode", "embed", "search", "total"}
    assert body["timings_ms"]["embed"] > 0
    assert body["query"]["k"] == 5 and body["query"]["offset"] == 0
    assert body["query"]["width"] == 400 and body["query"]["format"] == "JPEG"


def test_result_thumbnails_load_with_cache_headers(client, shoe):
    hits = upload(client, shoe[1], k="3").get_json()["hits"]
    for hit in hits:
        response = client.get(hit["thumbnail_url"])
        assert response.status_code == 200
        assert response.mimetype == "image/webp"
        assert response.data[:4] == b"RIFF" and response.data[8:12] == b"WEBP"
        cache = response.cache_control
        assert cache.immutable and cache.public and cache.max_age >= 30 * 24 * 3600
        assert response.headers["ETag"] == f'"{hit["id"]}"'
        again = client.get(hit["thumbnail_url"], headers={"If-None-Match": f'"{hit["id"]}"'})
        assert again.status_code == 304


def test_label_filter_returns_only_that_label_and_still_k_results(client, shoe):
    # A shoe photo's nearest neighbours are shoes; the filter must still find 10 hats.
    response = upload(client, shoe[1], k="10", label="hat")
    hits = response.get_json()["hits"]
    assert len(hits) == 10
    assert {h["metadata"]["label"] for h in hits} == {"hat"}
    assert response.get_json()["query"]["filters"] == {"label": ["hat"]}


def test_several_labels_and_a_size_range(client, shoe):
    form = {"image": (io.BytesIO(shoe[1]), "shoe.jpg"), "label": ["pants", "skirt"],
            "min_height": "600", "k": "20"}
    response = client.post("/api/search", data=form, content_type="multipart/form-data")
    hits = response.get_json()["hits"]
    assert hits
    assert {h["metadata"]["label"] for h in hits} <= {"pants", "skirt"}
    assert all(h["metadata"]["height"] >= 600 for h in hits)


def test_filters_as_query_arguments(client, shoe):
    form = {"image": (io.BytesIO(shoe[1]), "shoe.jpg")}
    response = client.post(
        "/api/search?label=dress&k=4", data=form, content_type="multipart/form-data"
    )
    hits = response.get_json()["hits"]
    assert len(hits) == 4 and {h["metadata"]["label"] for h in hits} == {"dress"}


def test_offset_pages_do_not_overlap(client, shoe):
    first = upload(client, shoe[1], k="6", num_candidates="400").get_json()["hits"]
    second = upload(client, shoe[1], k="6", offset="6", num_candidates="400").get_json()["hits"]
    assert len(second) == 6
    assert not {h["id"] for h in first} & {h["id"] for h in second}
    assert min(h["cosine"] for h in first) >= max(h["cosine"] for h in second) - 1e-6


def test_filter_that_matches_nothing_is_an_empty_result(client, shoe):
    response = upload(client, shoe[1], label="no-such-label")
    assert response.status_code == 200
    assert response.get_json()["hits"] == []


# -- more like this, single images, facets ----------------------------------------------


def test_similar_excludes_the_image_itself(client, shoe):
    _, _, doc_id = shoe
    response = client.get(f"/api/images/{doc_id}/similar?k=8")
    assert response.status_code == 200
    body = response.get_json()
    assert len(body["hits"]) == 8
    assert doc_id not in {h["id"] for h in body["hits"]}
    assert body["query"]["like"] == doc_id
    # Nothing is decoded or embedded: the stored vector is the query.
    assert body["timings_ms"]["decode"] == 0 and body["timings_ms"]["embed"] == 0
    assert set(body["timings_ms"]) == {"decode", "embed", "search", "total"}


def test_similar_honours_filters(client, shoe):
    _, _, doc_id = shoe
    response = client.get(f"/api/images/{doc_id}/similar?k=12&label=t-shirt&min_height=500")
    hits = response.get_json()["hits"]
    assert len(hits) == 12
    assert {h["metadata"]["label"] for h in hits} == {"t-shirt"}
    assert all(h["metadata"]["height"] >= 500 for h in hits)


def test_similar_paging(client, shoe):
    doc_id = shoe[2]
    first = client.get(f"/api/images/{doc_id}/similar?k=5").get_json()["hits"]
    second = client.get(f"/api/images/{doc_id}/similar?k=5&offset=5").get_json()["hits"]
    assert len(second) == 5
    ids = [h["id"] for h in first + second]
    assert len(set(ids)) == 10 and doc_id not in ids


def test_image_by_id(client, shoe, admin_headers):
    path, data, doc_id = shoe
    response = client.get(f"/api/images/{doc_id}")
    assert response.status_code == 200
    image = response.get_json()
    assert image["id"] == doc_id
    assert image["file_name"] == path.name
    # Readers see the path below the indexed folder (test/), admin keys the server's.
    assert image["path"] == f"test/shoes/{path.name}"
    full = client.get(f"/api/images/{doc_id}", headers=admin_headers).get_json()
    assert full["path"] == str(path.absolute())
    assert image["metadata"]["label"] == "shoes"
    assert image["metadata"]["byte_size"] == len(data)
    assert "vector" not in image["metadata"] and "score" not in image


def test_facet_counts_cover_the_whole_index(client):
    facets = client.get("/api/facets").get_json()
    assert facets["total"] == 372
    labels = {b["value"]: b["count"] for b in facets["fields"]["label"]}
    assert sum(labels.values()) == 372
    assert labels["shoes"] == 73 and labels["hat"] == 12
    assert sum(b["count"] for b in facets["fields"]["folder"]) == 372
    assert facets["fields"]["format"] == [{"value": "JPEG", "count": 372}]
    assert facets["ranges"]["width"]["min"] == 400
    assert facets["ranges"]["height"]["max"] >= facets["ranges"]["height"]["min"] > 0
    assert facets["ranges"]["exif_datetime"] == {"min": None, "max": None}


def test_healthz_when_all_is_well(client, embedder, admin_headers):
    response = client.get("/healthz", headers=admin_headers)
    assert response.status_code == 200, response.get_json()
    health = response.get_json()
    assert health["ok"] is True and health["reason"] is None
    assert health["elasticsearch"]["reachable"] is True
    assert health["index"]["present"] is True and health["index"]["documents"] == 372
    assert health["model"] == {"loaded": True, "version": embedder.version,
                               "precision": embedder.precision, "runtime": embedder.runtime}
    assert health["index"]["model_version"] == embedder.version


# -- bad requests -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"just some text, not a photo\n" * 10, "not_an_image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 40, None),
    ],
    ids=["text", "corrupt-png"],
)
def test_non_image_upload_is_a_clear_400(client, data, reason):
    response = upload(client, data, name="photo.jpg")
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_image"
    assert error["message"].startswith("The upload is not an image we can use")
    if reason:
        assert error["reason"] == reason


def test_truncated_jpeg_is_a_clear_400(client, shoe):
    response = upload(client, shoe[1][: len(shoe[1]) // 3])
    assert response.status_code == 400
    assert error_of(response)["reason"] == "truncated"


def test_missing_image_field(client):
    response = client.post("/api/search", data={"k": "5"}, content_type="multipart/form-data")
    assert response.status_code == 400
    assert error_of(response)["code"] == "missing_image"
    # Not multipart at all: the same answer.
    assert client.post("/api/search", json={"image": "x"}).status_code == 400


def test_empty_file(client):
    response = upload(client, b"")
    assert response.status_code == 400
    assert error_of(response)["code"] == "empty_upload"


@pytest.mark.parametrize(
    "fields",
    [{"k": "abc"}, {"k": "0"}, {"k": "101"}, {"offset": "-1"}, {"offset": "5000"},
     {"num_candidates": "3", "k": "10"}, {"num_candidates": "99999"}],
    ids=lambda f: "&".join(f"{k}={v}" for k, v in f.items()),
)
def test_bad_paging_parameters(client, shoe, fields):
    response = upload(client, shoe[1], **fields)
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_parameter"


@pytest.mark.parametrize(
    "query", ["min_width=wide", "max_height=-3", "date_from=yesterday", "min_width=1&min_width=2"]
)
def test_bad_filters(client, shoe, query):
    response = client.get(f"/api/images/{shoe[2]}/similar?{query}")
    assert response.status_code == 400
    assert error_of(response)["code"] == "invalid_filter"
    fields: dict[str, list[str]] = {}
    for name, value in parse_qsl(query):
        fields.setdefault(name, []).append(value)
    form_response = upload(client, shoe[1], **fields)
    assert form_response.status_code == 400
    assert error_of(form_response)["code"] == "invalid_filter"


def test_upload_over_the_limit_is_413_with_the_limit(make_client, shoe):
    client = make_client(max_upload_bytes=10_000)
    assert len(shoe[1]) > 10_000
    response = upload(client, shoe[1])
    assert response.status_code == 413
    error = error_of(response)
    assert error["code"] == "upload_too_large"
    assert "9.8 KB" in error["message"] and "10000 bytes" in error["message"]


@pytest.mark.parametrize(
    "path",
    [
        "/api/images/" + "0" * 64,
        "/api/images/" + "0" * 64 + "/similar",
        "/api/images/not-a-hash",
        "/api/images/" + "A" * 64,
        "/api/images/..%2F..%2Fetc%2Fpasswd",
        "/api/nothing-here",
    ],
)
def test_unknown_ids_and_paths_are_json_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.is_json
    assert error_of(response)["code"] == "not_found"


def test_wrong_method_is_json_405(client):
    response = client.get("/api/search")
    assert response.status_code == 405
    assert error_of(response)["code"] == "method_not_allowed"
    assert "POST" in response.headers["Allow"]


# -- an empty index, Elasticsearch down -------------------------------------------------


def test_missing_index_says_how_to_index(missing_alias_client, shoe, admin_headers):
    response = upload(missing_alias_client, shoe[1])
    assert response.status_code == 503
    error = error_of(response)
    assert error["code"] == "index_empty"
    assert "make index IMAGES=<dir>" in error["message"]
    assert error_of(missing_alias_client.get("/api/facets"))["code"] == "index_empty"
    assert missing_alias_client.get(f"/api/images/{shoe[2]}").status_code == 404
    health = missing_alias_client.get("/healthz")
    assert health.status_code == 503
    assert health.get_json()["reason"] == "nothing is indexed yet"
    health = missing_alias_client.get("/healthz", headers=admin_headers)
    assert "no index behind the alias" in health.get_json()["reason"]
    assert health.get_json()["index"]["present"] is False


def test_empty_index_says_how_to_index(make_client, store, settings, embedder, shoe,
                                       admin_headers):
    store.indices.ensure_index(embedder.version, settings)
    client = make_client(es_index=store.alias)
    response = upload(client, shoe[1])
    assert response.status_code == 503
    assert "make index IMAGES=<dir>" in error_of(response)["message"]
    # An index that exists but is empty is healthy: there is simply nothing in it yet.
    health = client.get("/healthz", headers=admin_headers).get_json()
    assert health["ok"] is True and health["index"]["documents"] == 0


def test_elasticsearch_down_is_a_friendly_503(make_client, shoe):
    client = make_client(es_url="http://127.0.0.1:9")
    for response in (
        upload(client, shoe[1]),
        client.get(f"/api/images/{shoe[2]}/similar"),
        client.get(f"/api/images/{shoe[2]}"),
        client.get("/api/facets"),
    ):
        assert response.status_code == 503
        error = error_of(response)
        assert error["code"] == "elasticsearch_unavailable"
        # Where Elasticsearch lives is for admin keys (which cannot be checked while it is
        # down): an anonymous reader is told what is wrong, not the address.
        assert "not reachable" in error["message"] and "127.0.0.1:9" not in error["message"]
    health = client.get("/healthz")
    assert health.status_code == 503
    body = health.get_json()
    assert body["ok"] is False and body["elasticsearch"]["reachable"] is False
    assert "not reachable" in body["reason"]
    assert body["model"]["loaded"] is True


def test_security_headers_on_every_kind_of_response(client, shoe):
    for response in (
        client.get("/"),
        client.get("/api/facets"),
        client.get(f"/thumbnails/{shoe[2]}.webp"),
        client.get("/api/nothing"),
    ):
        headers = response.headers
        csp = headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "img-src 'self' blob: data:" in csp
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Referrer-Policy"]


def test_every_api_route_is_documented(app, client):
    spec = client.get("/openapi.yaml")
    assert spec.status_code == 200
    text = spec.get_data(as_text=True)
    assert text.startswith("openapi: 3.1.0")
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("api.") or rule.rule.startswith("/thumbnails"):
            path = rule.rule.replace("<doc_id>", "{id}").replace("<name>", "{id}.webp")
            assert f"\n  {path}:\n" in text, f"{path} is not in openapi.yaml"
