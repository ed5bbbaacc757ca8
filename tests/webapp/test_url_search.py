"""Search by URL through the API: the real app, node and model, and a real HTTP server on
127.0.0.1 that serves photos of the indexed clothing split (tests/imagehost.py).

The app under test may reach 127.0.0.1 (an allowed host) and knows the private names only from
the test's resolver; nothing connects beyond loopback.
"""

from __future__ import annotations

import io

import pytest

from imgsearch.fetch import UrlFetcher
from tests.imagehost import ImageHost, resolver
from tests.support import build_app

NAMES = {"intranet.test": "10.1.2.3", "metadata.test": "169.254.169.254"}


@pytest.fixture(scope="module")
def host(photos):
    with ImageHost(photos["shoes"][0].read_bytes()) as host:
        yield host


@pytest.fixture
def url_client(clothing_index, embedder, host):
    """The app on the indexed split, allowed to fetch from 127.0.0.1 on the test server's
    port, with a 2 s deadline."""
    settings, store, _ = clothing_index
    fetcher = UrlFetcher(allow_hosts=[f"127.0.0.1:{host.port}"], resolve=resolver(NAMES),
                         timeout=2.0,
                         max_bytes=settings.max_upload_bytes)
    return build_app(settings, embedder, store, url_fetcher=fetcher).test_client()


def by_url(client, url: str, **fields):
    return client.post("/api/search", data={"url": url, **fields})


def error_of(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


def test_a_url_finds_what_uploading_the_same_bytes_finds(url_client, host, shoe):
    path, data, doc_id = shoe
    assert host.photo == data
    response = by_url(url_client, host.url("/photo.jpg"), k="5")
    assert response.status_code == 200
    body = response.get_json()
    form = {"image": (io.BytesIO(data), path.name), "k": "5"}
    uploaded = url_client.post("/api/search", data=form).get_json()
    assert body["hits"][0]["id"] == doc_id
    assert [h["id"] for h in body["hits"]] == [h["id"] for h in uploaded["hits"]]
    assert [h["cosine"] for h in body["hits"]] == pytest.approx(
        [h["cosine"] for h in uploaded["hits"]], abs=1e-6)
    query = body["query"]
    assert query["url"] == host.url("/photo.jpg")
    assert (query["width"], query["format"], query["k"]) == (400, "JPEG", 5)
    assert body["timings_ms"]["embed"] > 0


def test_url_as_a_query_argument_with_filters_and_redirects(url_client, host):
    response = url_client.post(f"/api/search?url={host.url('/hops/2')}&label=hat&k=4")
    assert response.status_code == 200
    body = response.get_json()
    assert len(body["hits"]) == 4 and {h["metadata"]["label"] for h in body["hits"]} == {"hat"}
    assert body["query"]["url"] == host.url("/hops/0")  # where the image came from
    assert body["query"]["filters"] == {"label": ["hat"]}


# Every bad URL: (URL or test-server path, status code, reason).
BAD = [
    ("", "url_refused", "invalid_url"),
    ("not a url", "url_refused", "invalid_url"),
    ("http://", "url_refused", "invalid_url"),
    ("http://example.com:99999/a.jpg", "url_refused", "invalid_url"),
    ("http://user:secret@127.0.0.1/photo.jpg", "url_refused", "invalid_url"),
    ("ftp://example.com/photo.jpg", "url_refused", "unsupported_scheme"),
    ("file:///etc/passwd", "url_refused", "unsupported_scheme"),
    ("http://intranet.test/photo.jpg", "url_refused", "forbidden_address"),
    ("http://metadata.test/latest/meta-data/", "url_refused", "forbidden_address"),
    ("http://[::1]/photo.jpg", "url_refused", "forbidden_address"),
    # The test server is an allowed host on a private address: whatever went wrong there
    # is "failed", and the client learns nothing of what answered (tests/imgsearch/
    # test_fetch.py checks what the fetcher found in each case).
    ("/to/intranet.test", "url_fetch_failed", "failed"),
    ("/to-file", "url_fetch_failed", "failed"),
    ("/hops/4", "url_fetch_failed", "failed"),
    ("/big", "url_fetch_failed", "failed"),
    ("/endless", "url_fetch_failed", "failed"),
    ("/drip", "url_fetch_failed", "failed"),
    ("/page.jpg", "url_fetch_failed", "failed"),
    ("/missing", "url_fetch_failed", "failed"),
    ("http://no-such-host.test/photo.jpg", "url_fetch_failed", "unreachable"),
]


def test_every_bad_url_is_a_clear_400_and_nothing_is_written(url_client, host,
                                                             clothing_index):
    _, store, _ = clothing_index
    documents = store.count()
    for url, code, reason in BAD:
        full = host.url(url) if url.startswith("/") else url
        error = error_of(by_url(url_client, full), 400, code)
        assert error["reason"] == reason, (url, error)
        assert "secret" not in error["message"] and "10.1.2.3" not in error["message"]
    assert store.count() == documents  # a search never writes
    assert url_client.get("/healthz").status_code == 200


def test_messages_say_what_was_wrong(url_client, host):
    error = error_of(by_url(url_client, "http://metadata.test/latest/"), 400, "url_refused")
    assert error["message"] == (
        "That URL is refused: metadata.test resolves to an address that is not public; only "
        "public addresses are fetched.")
    error = error_of(by_url(url_client, "http://[fe80::1]/a.jpg"), 400, "url_refused")
    assert "fe80::1 is a link-local address (RFC 4291)" in error["message"]
    # A 404 and a body over the cap on an allowed private host: one sentence, no status code,
    # no size, no content type.
    said = {error_of(by_url(url_client, host.url(path)), 400, "url_fetch_failed")["message"]
            for path in ("/big", "/missing", "/page.jpg")}
    assert said == {"No image could be fetched from that URL: no image could be fetched from "
                    "127.0.0.1 (what happened on a private address is in the server's log, "
                    "not told here)."}


def test_the_test_server_is_refused_by_a_default_app(clothing_index, embedder, host):
    settings, store, _ = clothing_index
    client = build_app(settings, embedder, store).test_client()
    before = len(host.requests)
    error = error_of(by_url(client, host.url("/photo.jpg")), 400, "url_refused")
    assert error["reason"] == "forbidden_address" and "loopback" in error["message"]
    assert len(host.requests) == before
    # The setting opens it, on the port it names (without one: 80 and 443 only).
    bare = build_app(settings.with_(url_allow_hosts=("127.0.0.1",)), embedder, store)
    error_of(by_url(bare.test_client(), host.url("/photo.jpg")), 400, "url_refused")
    assert len(host.requests) == before
    opened = build_app(settings.with_(url_allow_hosts=(f"127.0.0.1:{host.port}",)), embedder,
                       store)
    assert by_url(opened.test_client(), host.url("/photo.jpg")).status_code == 200


def test_a_broken_image_at_a_url_is_invalid_image(url_client, host):
    error = error_of(by_url(url_client, host.url("/half.jpg")), 400, "invalid_image")
    assert error["reason"] == "truncated"
    assert error["message"].startswith("The image at that URL is not one we can use")


def test_image_and_url_together_or_two_urls(url_client, host, shoe):
    form = {"image": (io.BytesIO(shoe[1]), "shoe.jpg"), "url": host.url("/photo.jpg")}
    error_of(url_client.post("/api/search", data=form), 400, "image_and_url")
    both = url_client.post(f"/api/search?url={host.url('/photo.jpg')}",
                           data={"image": (io.BytesIO(shoe[1]), "shoe.jpg")})
    error_of(both, 400, "image_and_url")
    two = url_client.post("/api/search", data={"url": [host.url("/photo.jpg")] * 2})
    error_of(two, 400, "too_many_urls")
    nothing = error_of(url_client.post("/api/search", data={"k": "3"}), 400, "missing_image")
    assert "'url'" in nothing["message"]


@pytest.mark.parametrize("fields,code", [
    ({"k": "0"}, "invalid_parameter"), ({"box": "1,2,3"}, "invalid_box"),
    ({"bogus": "1"}, "unknown_parameter"), ({"min_width": "wide"}, "invalid_filter"),
], ids=lambda v: str(v))
def test_other_parameters_are_checked_before_anything_is_fetched(url_client, host, fields,
                                                                 code):
    before = len(host.requests)
    error_of(by_url(url_client, host.url("/photo.jpg"), **fields), 400, code)
    assert len(host.requests) == before


def test_a_match_is_explained_against_the_image_at_a_url(url_client, host, shoe):
    """``POST /api/images/<id>/explain`` with ``url=``: the same guards, the shares sum to the
    cosine the search reported, and the query comes back as a small picture of itself."""
    hit = by_url(url_client, host.url("/hops/1"), k="3").get_json()["hits"][1]
    response = url_client.post(f"/api/images/{hit['id']}/explain",
                               data={"url": host.url("/hops/1")})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["query"]["url"] == host.url("/hops/0")
    assert body["query"]["thumbnail"].startswith("data:image/webp;base64,")
    for side in ("query", "result"):
        assert sum(map(sum, body[side]["cells"])) == pytest.approx(body["cosine"], abs=1e-9)
    assert body["cosine"] == pytest.approx(hit["cosine"], abs=2e-3)

    _, _, shoe_id = shoe
    refused = url_client.post(f"/api/images/{shoe_id}/explain",
                              data={"url": "http://metadata.test/latest/"})
    assert error_of(refused, 400, "url_refused")["reason"] == "forbidden_address"
    as_get = url_client.get(f"/api/images/{shoe_id}/explain?url={host.url('/photo.jpg')}")
    error_of(as_get, 400, "invalid_parameter")
    both = url_client.post(f"/api/images/{shoe_id}/explain",
                           data={"url": host.url("/photo.jpg"),
                                 "image": (io.BytesIO(b"x"), "q.jpg")},
                           content_type="multipart/form-data")
    error_of(both, 400, "invalid_parameter")
