"""Hostile input at the web app and the indexer: every upload, parameter and path below gets
a clear 4xx (or is handled as the image it is), never a 500 or a stack trace, and the server
stays healthy afterwards. Markup in any metadata value is always escaped."""

from __future__ import annotations

import io
import json
import random
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from PIL import Image

from imgsearch.images import content_hash
from indexer.cli import EXIT_PARTIAL
from indexer.index import index_folder
from indexer.sidecar import load_sidecar
from tests.support import build_app

PROJECT = Path(__file__).resolve().parents[2]
HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "Referrer-Policy")


# -- files ----------------------------------------------------------------------------------


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("payload.txt", "hello from inside a zip")
    return buf.getvalue()


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (64, 64), c) for c in ("red", "green", "blue")]
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def _sixteen_bit_png() -> bytes:
    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    img = Image.fromarray(ramp)  # uint16 -> mode I;16
    assert img.mode == "I;16"
    return _save(img, "PNG")


def _cmyk_jpeg() -> bytes:
    return _save(Image.new("CMYK", (64, 64), (0, 160, 160, 0)), "JPEG")


SVG = (b'<svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
       b'<script>alert(1)</script><rect width="100" height="100"/></svg>')
BOMB = _save(Image.new("1", (40_000, 40_000)), "PNG")  # 1.6 Gpx in a few hundred KB
HTML_TAIL = b"<html><body><script>alert(document.cookie)</script></body></html>"


@pytest.fixture(scope="module")
def jpeg(clothing_test_dir) -> bytes:
    return sorted((clothing_test_dir / "shoes").glob("*.jpg"))[0].read_bytes()


def _post(client, data: bytes | None, name: str = "q.jpg", field: str = "image", **form):
    body = dict(form)
    if data is not None:
        body[field] = (io.BytesIO(data), name)
    return client.post("/api/search", data=body, content_type="multipart/form-data")


def _error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    error = response.get_json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    if code:
        assert error["code"] == code, error
    return error


# -- uploads --------------------------------------------------------------------------------


UPLOADS = {
    # name: (bytes or a function of the real JPEG, expected status, code or None)
    "text": (b"this is not a picture\n", 400, "invalid_image"),
    "html": (b"<!doctype html><script>alert(1)</script>", 400, "invalid_image"),
    "svg": (SVG, 400, "invalid_image"),
    "zip": (_zip(), 400, "invalid_image"),
    "pdf": (b"%PDF-1.4\n1 0 obj<<>>endobj\n%%EOF", 400, "invalid_image"),
    "truncated": (lambda j: j[: len(j) // 3], 400, "invalid_image"),
    "header_only": (lambda j: j[:200], 400, "invalid_image"),
    "tiny": (_save(Image.new("RGB", (1, 1)), "PNG"), 400, "invalid_image"),
    "bomb": (BOMB, 400, "invalid_image"),
    "empty": (b"", 400, "empty_upload"),
    "jpeg_plus_zip": (lambda j: j + _zip(), 200, None),
    "jpeg_plus_html": (lambda j: j + HTML_TAIL, 200, None),
    "animated_gif": (_animated_gif(), 200, None),
    "sixteen_bit_png": (_sixteen_bit_png(), 200, None),
    "cmyk_jpeg": (_cmyk_jpeg(), 200, None),
}


@pytest.mark.parametrize("name", sorted(UPLOADS))
def test_hostile_uploads(name, client, jpeg):
    data, status, code = UPLOADS[name]
    data = data(jpeg) if callable(data) else data
    started = time.perf_counter()
    response = _post(client, data)
    elapsed = time.perf_counter() - started
    if status == 200:
        assert response.status_code == 200, response.get_json()
        assert len(response.get_json()["hits"]) == 10
    else:
        _error(response, status, code)
    if name == "bomb":
        # Refused from the header: 1.6 Gpx are never decoded (that would take many seconds
        # and gigabytes).
        assert response.get_json()["error"]["reason"] == "too_many_pixels"
        assert elapsed < 2.0
    assert client.get("/healthz").status_code == 200


def test_polyglots_are_searched_as_the_image_they_are(client, jpeg):
    """A JPEG with a ZIP or an HTML page appended decodes as that JPEG (trailing bytes are
    ignored); it is never stored or served back, so the appendix can do nothing."""
    plain = _post(client, jpeg, k="3").get_json()["hits"]
    for tail in (_zip(), HTML_TAIL):
        hits = _post(client, jpeg + tail, k="3").get_json()["hits"]
        assert [h["id"] for h in hits] == [h["id"] for h in plain]
        assert hits[0]["id"] == content_hash(jpeg)


def test_upload_over_the_byte_limit_is_refused_before_decoding(
    clothing_index, embedder, jpeg, monkeypatch
):
    settings, store, _ = clothing_index
    client = build_app(settings.with_(max_upload_bytes=len(jpeg) - 1), embedder,
                       store).test_client()

    def never(*args, **kwargs):
        raise AssertionError("an over-limit upload reached the decoder")

    monkeypatch.setattr("imgsearch.embedder.decode_image", never)
    error = _error(_post(client, jpeg), 413, "upload_too_large")
    assert str(len(jpeg) - 1) in error["message"]
    # A huge body (21 MB, over the default 20 MB) on the default app too.
    default = build_app(settings, embedder, store).test_client()
    _error(_post(default, b"\xff\xd8\xff" + b"\0" * (21 * 1024 * 1024)), 413, "upload_too_large")
    assert default.get("/healthz").status_code == 200


def test_pixel_limit_is_checked_from_the_header(clothing_index, embedder, jpeg):
    settings, store, _ = clothing_index
    client = build_app(settings.with_(max_image_pixels=10_000), embedder, store).test_client()
    error = _error(_post(client, jpeg), 400, "invalid_image")
    assert error["reason"] == "too_many_pixels"


def test_decodes_are_bounded_per_worker(clothing_index, embedder, jpeg, shoe_id):
    """With every decode slot of the worker taken, a search and an explanation heat map are
    answered 503 busy with Retry-After after the short wait, instead of queueing; the other
    endpoints, and the same requests once a slot is free, are served."""
    settings, store, _ = clothing_index
    app = build_app(settings.with_(decode_slots=1, decode_wait=0.1), embedder, store)
    client = app.test_client()
    heat = f"/api/images/{shoe_id}/explain?query={shoe_id}&format=png"
    with app.extensions["imgsearch"].decodes.hold():
        for response in (_post(client, jpeg), client.get(heat)):
            error = _error(response, 503, "busy")
            assert response.headers["Retry-After"] == "1" and error["retry_after"] == 1
            assert "1 at once per worker" in error["message"]
        assert client.get(f"/api/images/{shoe_id}/similar").status_code == 200
        assert client.get("/healthz").status_code == 200
    assert _post(client, jpeg).status_code == 200
    assert client.get(heat).status_code == 200


def test_malformed_requests(client, jpeg):
    _error(client.post("/api/search"), 400, "missing_image")  # no body at all
    _error(client.post("/api/search", data=jpeg, content_type="image/jpeg"), 400,
           "missing_image")  # the raw bytes, not a form
    _error(client.post("/api/search", data=b"--x\r\n\r\n", content_type="multipart/form-data;"
                       " boundary=x"), 400, "missing_image")  # a broken multipart body
    _error(_post(client, jpeg, field="file"), 400, "missing_image")  # wrong field name
    many = {"image": [(io.BytesIO(jpeg), f"{i}.jpg") for i in range(20)]}
    _error(client.post("/api/search", data=many), 400, "too_many_files")
    extra_file = {"image": (io.BytesIO(jpeg), "a.jpg"), "other": (io.BytesIO(jpeg), "b.jpg")}
    _error(client.post("/api/search", data=extra_file), 400, "too_many_files")
    _error(client.get("/api/search"), 405, "method_not_allowed")
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("name", ["../../etc/passwd.jpg", "ĉu 🙂.jpg", "..\\..\\boot.ini",
                                  "<script>alert(1)</script>.jpg", "a\x00b.jpg", "x" * 5000])
def test_file_names_do_not_matter(name, client, jpeg):
    """The upload's file name is never used: not as a path, not in the answer."""
    response = _post(client, jpeg, name=name, k="1")
    assert response.status_code == 200
    assert response.get_json()["hits"][0]["id"] == content_hash(jpeg)
    assert name.encode() not in response.data


def _mutations():
    """(marker, byte replacements at positions taken modulo the length, fraction kept)."""
    return st.tuples(
        st.just(None),
        st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=20),
        st.floats(0.01, 1.0),
    )


@hsettings(max_examples=50, deadline=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blob=st.one_of(st.binary(max_size=4096), _mutations()))
def test_random_bytes_and_mutated_jpegs_get_a_clean_answer(blob, client, small_jpeg):
    if isinstance(blob, tuple):
        _, edits, cut = blob
        out = bytearray(small_jpeg)
        for pos, value in edits:
            out[pos % len(out)] = value
        blob = bytes(out[: max(1, int(len(out) * cut))])
    response = _post(client, blob)
    assert response.status_code in (200, 400, 413), response.status_code
    body = response.get_json()
    if response.status_code == 200:
        assert isinstance(body["hits"], list)
    else:
        assert set(body) == {"error"}
        assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str)


@pytest.fixture(scope="module")
def small_jpeg(clothing_test_dir) -> bytes:
    """A real photo, made small so that 50 mutations stay quick."""
    img = Image.open(sorted((clothing_test_dir / "hat").glob("*.jpg"))[0]).convert("RGB")
    img.thumbnail((96, 96))
    return _save(img, "JPEG", quality=85)


def test_the_same_app_answers_correctly_after_an_onslaught(client, jpeg, small_jpeg):
    """The app that took the hostile uploads, not a fresh one, still finds a real photo and
    reports itself healthy."""
    rng = random.Random(0)
    for _ in range(30):
        blob = bytearray(small_jpeg)
        for _ in range(rng.randint(1, 20)):
            blob[rng.randrange(len(blob))] = rng.randrange(256)
        response = _post(client, bytes(blob[: rng.randint(1, len(blob))]))
        assert response.status_code in (200, 400), response.status_code
    for blob in (b"\xff\xd8\xff", bytes(range(256)) * 16, b"GIF89a" + b"\0" * 64):
        assert _post(client, blob).status_code == 400
    response = _post(client, jpeg, k="1")
    assert response.status_code == 200
    assert response.get_json()["hits"][0]["id"] == content_hash(jpeg)
    assert client.get("/healthz").status_code == 200


# -- parameters and filters -----------------------------------------------------------------


@pytest.mark.parametrize("params", [
    {"k": "0"}, {"k": "101"}, {"k": "-1"}, {"k": "abc"}, {"k": "1e3"}, {"k": "9" * 40},
    {"k": "10", "num_candidates": "5"}, {"num_candidates": "10001"}, {"offset": "-1"},
    {"offset": "1001"}, {"min_width": "abc"}, {"min_width": "-5"}, {"max_height": "1e9"},
    {"date_from": "yesterday"}, {"date_to": "2024-13-45"}, {"label": "x" * 600},
    {"min_width": ["1", "2"]},
])
def test_out_of_range_and_malformed_parameters(params, client, jpeg, shoe_id):
    error = _error(_post(client, jpeg, **params), 400)
    assert error["code"] in ("invalid_parameter", "invalid_filter")
    similar = client.get(f"/api/images/{shoe_id}/similar", query_string=params)
    _error(similar, 400)


def test_unknown_parameters_are_refused(client, jpeg, shoe_id):
    for params in ({"lable": "dress"}, {"size": "10"}, {"query": "*"}, {"extra.": "x"},
                   {"knn": '{"k": 1}'}):
        error = _error(_post(client, jpeg, **params), 400, "unknown_parameter")
        assert next(iter(params)) in error["message"]
        _error(client.get(f"/api/images/{shoe_id}/similar", query_string=params), 400,
               "unknown_parameter")
    # q is words (search by words), never query syntax: "*" names nothing.
    _error(_post(client, jpeg, q="*"), 400, "invalid_words")
    _error(client.get(f"/api/images/{shoe_id}/similar", query_string={"q": "shoe"}), 400,
           "unknown_parameter")


@pytest.mark.parametrize("value", ["*", "dress OR 1=1", "dress*", '{"match_all": {}}',
                                   "label:dress", "' OR ''='", "dress\u0000", "_all"])
def test_filter_values_are_literal_values_never_query_syntax(value, client, jpeg, shoe_id):
    for field in ("label", "folder", "tag", "format", "extra.season"):
        response = _post(client, jpeg, **{field: value})
        assert response.status_code == 200, response.get_json()
        assert response.get_json()["hits"] == [], (field, value)
        similar = client.get(f"/api/images/{shoe_id}/similar", query_string={field: value})
        assert similar.get_json()["hits"] == []


@pytest.fixture(scope="module")
def shoe_id(clothing_test_dir) -> str:
    return content_hash(sorted((clothing_test_dir / "shoes").glob("*.jpg"))[0].read_bytes())


# -- paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [
    "/thumbnails/..%2F..%2Fetc%2Fpasswd", "/thumbnails/../../etc/passwd",
    "/thumbnails/%2e%2e%2f%2e%2e%2fetc%2fpasswd.webp", "/thumbnails/" + "0" * 64 + ".webp",
    "/thumbnails/" + "0" * 64, "/thumbnails/" + "A" * 64 + ".webp",
    "/thumbnails/" + "0" * 64 + ".webp%00.png", "/thumbnails/.webp",
    "/images/" + "0" * 64, "/images/..%2F..%2Fetc%2Fpasswd", "/images/../../etc/passwd",
    "/images/" + "0" * 64 + "/file", "/images/%2e%2e/file", "/api/images/" + "0" * 64,
    "/api/images/..%2Fsecret", "/api/images/" + "0" * 64 + "/similar",
    "/static/..%2F..%2Fimgsearch%2Fsettings.py", "/static/../webapp/__init__.py",
    "/%2e%2e/%2e%2e/etc/passwd",
])
def test_path_traversal_and_unknown_ids_are_404(path, client):
    response = client.get(path)
    assert response.status_code == 404, (path, response.status_code)
    assert b"root:" not in response.data and b"import" not in response.data


# -- markup in metadata ---------------------------------------------------------------------


MARKUP_NAME = "<img src=x onerror=alert(1)>.jpg"
MARKUP_FOLDER = '"><svg onload=alert(2)>'
MARKUP_VALUES = {
    "label": "<script>alert(3)</script>",
    "tags": ["<i>tag</i>", "\"'><b>quoted"],
    "note": "<iframe src=javascript:alert(4)>",
}
RAW = ("<img src=x", "<svg onload", "<script>alert", "<iframe", "<i>tag", "<b>quoted")


@pytest.fixture
def hostile_dir(photo_dir, tmp_path, jpeg) -> tuple[Path, Path]:
    """The photos plus files that test the indexer's handling of hostile content."""
    weird = photo_dir / MARKUP_FOLDER
    weird.mkdir()
    (weird / MARKUP_NAME).write_bytes(jpeg + HTML_TAIL)  # a polyglot, with a markup name
    (photo_dir / "ĉu 🙂.jpg").write_bytes(_cmyk_jpeg())
    (photo_dir / "anim.gif").write_bytes(_animated_gif())
    (photo_dir / "deep.png").write_bytes(_sixteen_bit_png())
    (photo_dir / "zipped.jpg").write_bytes(jpeg[:-2] + _zip())  # JPEG without its end marker
    (photo_dir / "drawing.svg").write_bytes(SVG)
    (photo_dir / "bomb.png").write_bytes(BOMB)
    sidecar = tmp_path / "meta.jsonl"
    rel = f"{MARKUP_FOLDER}/{MARKUP_NAME}"
    sidecar.write_text(json.dumps({"path": rel, "label": MARKUP_VALUES["label"],
                                   "tags": MARKUP_VALUES["tags"],
                                   "note": MARKUP_VALUES["note"]}) + "\n")
    return photo_dir, sidecar


def test_indexer_handles_hostile_files(hostile_dir, test_settings, store, embedder):
    root, sidecar = hostile_dir
    report = index_folder(root, settings=test_settings, embedder=embedder, store=store,
                          sidecar=load_sidecar(sidecar), progress=False)
    failed = {f.rel_path: f.reason for f in report.stats.failed}
    assert failed == {"drawing.svg": "not_an_image", "bomb.png": "too_many_pixels"}
    assert report.exit_code == EXIT_PARTIAL
    # 10 photos + the polyglot, CMYK, animated, 16-bit and zip-tailed JPEG.
    assert report.stats.indexed == 15 and store.count() == 15
    doc = store.get(content_hash(jpeg_plus_html(root)))
    assert doc["file_name"] == MARKUP_NAME and doc["folder"] == MARKUP_FOLDER
    assert doc["label"] == MARKUP_VALUES["label"] and doc["extra"]["note"].startswith("<iframe")


def jpeg_plus_html(root: Path) -> bytes:
    return (root / MARKUP_FOLDER / MARKUP_NAME).read_bytes()


def test_markup_in_metadata_is_always_escaped(hostile_dir, test_settings, store, embedder):
    root, sidecar = hostile_dir
    index_folder(root, settings=test_settings, embedder=embedder, store=store,
                 sidecar=load_sidecar(sidecar), progress=False)
    store.refresh()
    client = build_app(test_settings, embedder, store).test_client()
    doc_id = content_hash(jpeg_plus_html(root))
    pages = {
        "detail": client.get(f"/images/{doc_id}"),
        "search page with facets": client.get("/"),
        "search page with filters": client.get("/", query_string={
            "label": MARKUP_VALUES["label"], "folder": MARKUP_FOLDER, "like": doc_id}),
        "error page": client.get(f"/images/{'0' * 64}"),
    }
    for other in store.es.search(index=store.alias, size=20, source=False).body["hits"]["hits"]:
        pages[other["_id"]] = client.get(f"/images/{other['_id']}")
    for what, response in pages.items():
        html = response.get_data(as_text=True)
        assert response.status_code in (200, 404), what
        for raw in RAW:
            assert raw not in html, f"{raw!r} unescaped in the {what}"
    detail = pages["detail"].get_data(as_text=True)
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in detail
    assert "&lt;img src=x onerror=alert(1)&gt;.jpg" in detail
    facets = pages["search page with facets"].get_data(as_text=True)
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in facets
    # The API answers with JSON (never sniffed as HTML); the page's scripts only ever set
    # textContent and attributes, never HTML.
    api = client.get(f"/api/images/{doc_id}")
    assert api.mimetype == "application/json"
    assert api.headers["X-Content-Type-Options"] == "nosniff"
    assert api.get_json()["metadata"]["label"] == MARKUP_VALUES["label"]
    for script in (PROJECT / "webapp" / "static").glob("*.js"):
        text = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in text, f"{script.name} uses {sink}"


# -- security headers and cross-site posts --------------------------------------------------


def test_security_headers_on_every_response(client, jpeg, shoe_id, clothing_index, embedder):
    settings, store, _ = clothing_index
    thumb = store.get(shoe_id)["thumbnail"]
    responses = {
        "page": client.get("/"),
        "detail": client.get(f"/images/{shoe_id}"),
        "original": client.get(f"/images/{shoe_id}/file"),
        "thumbnail": client.get(f"/thumbnails/{shoe_id}.webp"),
        "api": client.get(f"/api/images/{shoe_id}"),
        "search": _post(client, jpeg, k="1"),
        "healthz": client.get("/healthz"),
        "openapi": client.get("/openapi.yaml"),
        "static": client.get("/static/style.css"),
        "404": client.get("/nowhere"),
        "404 api": client.get("/api/images/" + "0" * 64),
        "405": client.post("/healthz"),
        "400": _post(client, b"nope"),
        "413": build_app(settings.with_(max_upload_bytes=10), embedder, store).test_client()
        .post("/api/search", data={"image": (io.BytesIO(jpeg), "a.jpg")}),
        "403": client.post(
            "/api/search", data={"image": (io.BytesIO(jpeg), "a.jpg")},
            headers={"Sec-Fetch-Site": "cross-site"}),
        "503": build_app(settings.with_(es_url="http://127.0.0.1:9"), embedder).test_client()
        .get("/healthz"),
    }
    assert thumb  # the indexed image has a thumbnail
    for what, response in responses.items():
        for header in HEADERS:
            assert header in response.headers, f"{header} missing on the {what} response"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert responses["thumbnail"].status_code == 200
    assert responses["403"].status_code == 403


def test_cross_site_posts_are_refused(client, jpeg):
    def post(**headers):
        return client.post("/api/search", data={"image": (io.BytesIO(jpeg), "a.jpg"),
                                                "k": "1"}, headers=headers)

    _error(post(**{"Sec-Fetch-Site": "cross-site"}), 403, "cross_site_request")
    _error(post(**{"Sec-Fetch-Site": "same-site"}), 403, "cross_site_request")
    _error(post(Origin="http://evil.example"), 403, "cross_site_request")
    _error(post(Origin="null"), 403, "cross_site_request")
    # The page itself, and clients that are not browsers (curl sends neither header).
    assert post(**{"Sec-Fetch-Site": "same-origin", "Origin": "http://localhost"}).status_code \
        == 200
    assert post(Origin="http://localhost").status_code == 200
    assert post().status_code == 200
    # Reads are never refused: a link from another site to a page works.
    assert client.get("/", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_costly_gets_from_other_sites_are_refused(client, jpeg):
    """Explanations (their heat-map PNGs too), similar images and near-duplicates cost
    inference or more: another site's page may not make a browser load them (an <img>, a
    fetch), though a person who follows a link is served (Sec-Fetch-User)."""
    doc_id = content_hash(jpeg)
    costly = [f"/api/images/{doc_id}/explain?query={doc_id}&format=png",
              f"/api/images/{doc_id}/explain?query={doc_id}", f"/api/images/{doc_id}/similar",
              "/api/duplicates", "/duplicates"]
    for url in costly:
        for headers in ({"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Dest": "image"},
                        {"Sec-Fetch-Site": "same-site"}, {"Origin": "http://evil.example"}):
            response = client.get(url, headers=headers)
            assert response.status_code == 403, (url, headers)
            if url.startswith("/api/"):
                assert response.get_json()["error"]["code"] == "cross_site_request"
            else:
                assert "costly requests" in response.get_data(as_text=True)
    for url in costly[:3]:  # the page's own requests, and clients that are not browsers
        assert client.get(url, headers={"Sec-Fetch-Site": "same-origin"}).status_code == 200
        assert client.get(url).status_code == 200
    navigate = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "navigate",
                "Sec-Fetch-User": "?1"}
    assert client.get(costly[2], headers=navigate).status_code == 200
    # Cheap reads stay open to links and embeds from anywhere.
    for url in ("/", f"/api/images/{doc_id}", f"/images/{doc_id}", "/healthz"):
        assert client.get(url, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 200


def test_only_write_keys_write(app):
    """Every route is GET/HEAD/OPTIONS except those that take a query in a body and only read
    (the search upload, the explanation of a match against an uploaded photo, "more like
    this" with lists too long for a query string), the page's sign-in and sign-out (a
    cookie), the admin's key management (webapp/auth.py: the keys index, not the images), and
    the writes to the collection (webapp/images.py, webapp/duplicates.py), each of which needs
    a key of scope write or more."""
    writes = {
        (rule.rule, m) for rule in app.url_map.iter_rules()
        for m in rule.methods - {"GET", "HEAD", "OPTIONS"}
    }
    reads = {("/api/search", "POST"), ("/api/images/<doc_id>/explain", "POST"),
             ("/api/images/<doc_id>/similar", "POST")}
    keys = {("/signin", "POST"), ("/signout", "POST"), ("/api/keys", "POST"),
            ("/api/keys/<name>", "DELETE")}
    collection = {("/api/images", "POST"), ("/api/images/<doc_id>", "PATCH"),
                  ("/api/images/<doc_id>", "DELETE"), ("/api/duplicates/resolve", "POST"),
                  ("/api/duplicates/distinct", "POST"), ("/api/duplicates/undo", "POST"),
                  ("/duplicates/resolve", "POST"), ("/duplicates/distinct", "POST"),
                  ("/duplicates/undo", "POST")}
    assert writes == reads | keys | collection
    guarded = collection | {k for k in keys if k[0].startswith("/api/keys")}
    for rule in app.url_map.iter_rules():
        for method in rule.methods:
            if (rule.rule, method) in guarded:
                scope = getattr(app.view_functions[rule.endpoint], "required_scope", "read")
                assert scope in ("write", "admin"), (rule.rule, method, scope)

