"""Keys, scopes, the session cookie and what readers may see, on the real node and model
(Flask's test client; tests/webapp/test_auth_gunicorn.py does the scope table through gunicorn).
"""

from __future__ import annotations

import re
import uuid

import pytest

from imgsearch.esclient import connect
from imgsearch.keys import KeyStore
from tests.support import build_app

SCOPES = ("read", "write", "admin")


@pytest.fixture
def keyed(clothing_index, embedder):
    """``make(public_read)``: a client on the indexed split with a keys index of its own;
    ``keys``: a key of each scope."""
    settings, store, _ = clothing_index
    index = f"t-keys-{uuid.uuid4().hex[:12]}"
    key_store = KeyStore(connect(settings), index)
    keys = {scope: key_store.create(f"{scope}-key", scope)[0] for scope in SCOPES}

    def make(public_read: bool):
        local = settings.with_(public_read=public_read, keys_index=index)
        return build_app(local, embedder, store).test_client()

    yield make, keys, key_store
    key_store.es.indices.delete(index=index, ignore_unavailable=True)


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def error_of(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    return body["error"]


def test_bad_credentials_get_401_json_with_a_challenge(keyed):
    make, keys, key_store = keyed
    client = make(public_read=True)
    for headers, code in [
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "malformed_authorization"),
        ({"Authorization": "Bearer"}, "malformed_authorization"),
        ({"Authorization": "Bearer a b"}, "malformed_authorization"),
        (bearer("isk_" + "x" * 43), "invalid_key"),
        (bearer("hunter2"), "invalid_key"),
        (bearer(keys["read"] + "x"), "invalid_key"),
    ]:
        for path in ("/api/facets", "/healthz"):
            response = client.get(path, headers=headers)
            error_of(response, 401, code)
            assert response.headers["WWW-Authenticate"].startswith('Bearer realm="imgsearch"')
    key_store.revoke("read-key")
    error_of(client.get("/api/facets", headers=bearer(keys["read"])), 401, "invalid_key")


def test_a_key_in_the_query_string_is_refused_and_says_why(keyed):
    make, keys, _ = keyed
    client = make(public_read=False)
    for name in ("key", "api_key", "access_token"):
        response = client.get(f"/api/facets?{name}={keys['admin']}")
        message = error_of(response, 400, "key_in_query")["message"]
        assert "Authorization: Bearer" in message and "logs" in message
        assert keys["admin"] not in response.get_data(as_text=True)


def test_scopes_without_public_reads(keyed):
    make, keys, _ = keyed
    client = make(public_read=False)
    error_of(client.get("/api/facets"), 401, "key_required")
    page = client.get("/")
    assert page.status_code == 401 and b'id="signin-key"' in page.data  # the form to sign in
    assert client.get("/openapi.yaml").status_code == 200  # the document stays public
    assert client.get("/healthz").status_code == 200
    for scope in SCOPES:
        assert client.get("/api/facets", headers=bearer(keys[scope])).status_code == 200
    for scope in ("read", "write"):
        response = client.get("/api/keys", headers=bearer(keys[scope]))
        message = error_of(response, 403, "insufficient_scope")["message"]
        assert f"has scope {scope}" in message
        assert 'error="insufficient_scope", scope="admin"' in response.headers["WWW-Authenticate"]
    assert client.get("/api/keys", headers=bearer(keys["admin"])).status_code == 200


def test_keys_are_managed_by_admin_over_the_api(keyed):
    make, keys, _ = keyed
    client = make(public_read=True)
    error_of(client.post("/api/keys", json={"name": "x", "scope": "read"}), 401, "key_required")
    made = client.post("/api/keys", json={"name": "ci", "scope": "write"},
                       headers=bearer(keys["admin"]))
    assert made.status_code == 201 and made.headers["Cache-Control"] == "no-store"
    new = made.get_json()["key"]
    assert client.get("/api/facets", headers=bearer(new)).status_code == 200
    listed = client.get("/api/keys", headers=bearer(keys["admin"])).get_json()["keys"]
    assert {k["name"] for k in listed} == {"read-key", "write-key", "admin-key", "ci"}
    assert not any(re.search(r"isk_", str(k)) for k in listed)
    error_of(client.post("/api/keys", json={"name": "ci", "scope": "read"},
                         headers=bearer(keys["admin"])), 409, "key_exists")
    error_of(client.post("/api/keys", json={"name": "y", "scope": "root"},
                         headers=bearer(keys["admin"])), 400, "invalid_key_request")
    error_of(client.post("/api/keys", json=["no"], headers=bearer(keys["admin"])), 400,
             "invalid_parameter")
    gone = client.delete("/api/keys/ci", headers=bearer(keys["admin"]))
    assert gone.status_code == 200 and gone.get_json()["revoked_at"]
    error_of(client.get("/api/facets", headers=bearer(new)), 401, "invalid_key")


def test_signing_in_sets_a_strict_session_cookie_and_signing_out_ends_it(keyed):
    make, keys, key_store = keyed
    client = make(public_read=False)
    refused = client.post("/signin", data={"key": "isk_wrong"})
    assert refused.status_code == 401 and b"unknown or has been revoked" in refused.data
    response = client.post("/signin", data={"key": keys["read"]})
    assert response.status_code == 303 and response.headers["Location"] == "/"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP here; over TLS it is Secure (below)
    assert keys["read"] not in cookie
    page = client.get("/")
    assert page.status_code == 200 and b"read-key (read)" in page.data
    assert client.get("/api/facets").status_code == 200  # the page's own API calls
    error_of(client.get("/api/keys"), 403, "insufficient_scope")
    out = client.post("/signout")
    assert out.status_code == 303 and "imgsearch_session=;" in out.headers["Set-Cookie"]
    error_of(client.get("/api/facets"), 401, "key_required")

    tls = client.post("/signin", data={"key": keys["read"]}, base_url="https://localhost")
    assert "Secure" in tls.headers["Set-Cookie"]
    # Revoking the key ends its sessions too.
    client.post("/signin", data={"key": keys["write"]})
    assert client.get("/api/facets").status_code == 200
    key_store.revoke("write-key")
    import time
    time.sleep(0.6)
    error_of(client.get("/api/facets"), 401, "invalid_session")


def test_a_cookie_tampered_with_or_from_another_server_is_refused_and_cleared(keyed):
    make, keys, _ = keyed
    client = make(public_read=True)
    client.post("/signin", data={"key": keys["admin"]})
    value = client.get_cookie("imgsearch_session").value
    for forged in (value[:-2] + ("AA" if value[-2:] != "AA" else "BB"),
                   # Signed by another deployment's secret: a well-formed value, wrong MAC.
                   "eyJrIjoiMDAwMCJ9.aUvSvQ.N0tTaGlzU2VydmVyc1NpZ25hdHVyZQ",
                   "nonsense"):
        client.set_cookie("imgsearch_session", forged)
        response = client.get("/api/facets")
        error_of(response, 401, "invalid_session")
        assert "imgsearch_session=;" in response.headers["Set-Cookie"]
        assert client.get_cookie("imgsearch_session") is None  # cleared: the next one works
        assert client.get("/api/facets").status_code == 200


def test_readers_see_paths_below_the_indexed_folder_and_admin_the_full_one(
        keyed, clothing_index, clothing_test_dir):
    make, keys, _ = keyed
    _, store, _ = clothing_index
    client = make(public_read=True)
    doc_id = store.es.search(index=store.alias, size=1).body["hits"]["hits"][0]["_id"]
    server_dir = str(clothing_test_dir.parent)
    for headers in ({}, bearer(keys["read"]), bearer(keys["write"])):
        image = client.get(f"/api/images/{doc_id}", headers=headers).get_json()
        assert image["path"].startswith("test/") and server_dir not in str(image)
        assert "root" not in image["metadata"]
        similar = client.get(f"/api/images/{doc_id}/similar?k=3", headers=headers)
        assert server_dir not in similar.get_data(as_text=True)
        page = client.get(f"/images/{doc_id}", headers=headers)
        assert page.status_code == 200 and server_dir.encode() not in page.data
        health = client.get("/healthz", headers=headers).get_json()
        assert set(health) == {"ok", "reason", "model_version", "model", "elasticsearch",
                               "index"}
        assert "url" not in health["elasticsearch"] and "alias" not in health["index"]
    admin = client.get(f"/api/images/{doc_id}", headers=bearer(keys["admin"])).get_json()
    assert admin["path"].startswith(server_dir) and admin["metadata"]["root"]
    health = client.get("/healthz", headers=bearer(keys["admin"])).get_json()
    assert health["elasticsearch"]["url"] and health["index"]["alias"] == store.alias


def test_an_unreachable_node_says_why_in_words_to_anonymous_clients(make_client):
    health = make_client(es_url="http://127.0.0.1:9").get("/healthz")
    assert health.status_code == 503
    body = health.get_json()
    assert body["reason"] == "the search engine is not reachable"
    assert "127.0.0.1:9" not in health.get_data(as_text=True)


def test_metrics_are_prometheus_text_for_admin_only(keyed, shoe):
    make, keys, _ = keyed
    client = make(public_read=True)
    error_of(client.get("/metrics"), 401, "key_required")
    error_of(client.get("/metrics", headers=bearer(keys["read"])), 403, "insufficient_scope")
    client.post("/api/search", data={"image": (__import__("io").BytesIO(shoe[1]), "s.jpg")})
    client.get("/api/facets", headers=bearer("isk_" + "x" * 43))  # a 401, counted too
    response = client.get("/metrics", headers=bearer(keys["admin"]))
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.get_data(as_text=True)
    for line in (
        'imgsearch_http_requests_total{endpoint="/api/search",method="POST",status="200"}',
        'imgsearch_http_requests_total{endpoint="/api/facets",method="GET",status="401"}',
        'imgsearch_http_request_duration_seconds_bucket{endpoint="/api/search",le="30.0",'
        'status="200"}',
        'imgsearch_search_stage_seconds_count{stage="embed"}',
        'imgsearch_search_stage_seconds_count{stage="decode"}',
        'imgsearch_search_stage_seconds_count{stage="search"}',
        'imgsearch_index_documents{alias="clothing-test"} 372.0',
        "imgsearch_model_info{model_version=",
        "imgsearch_up 1.0",
        # Counted by this process's earlier tests too (decode slots refused, limits): named.
        "# TYPE imgsearch_admission_refusals_total counter",
        "# TYPE imgsearch_rate_limit_refusals_total counter",
        "# TYPE imgsearch_elasticsearch_errors_total counter",
    ):
        assert line in text, line
    assert keys["admin"] not in text
