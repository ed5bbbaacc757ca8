"""Pages for people and the files they load: search page, detail page, thumbnails."""

from __future__ import annotations

import pytest

from imgsearch.images import content_hash
from indexer.index import index_folder


def test_search_page_lists_facets_with_counts(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert 'id="file-input"' in html and 'accept="image/*"' in html
    assert 'name="label" value="shoes"' in html
    assert '<span class="facet-count">73</span>' in html
    assert "372 images indexed" in html
    assert "Date taken" not in html  # no photo of the split has an EXIF date
    assert "Nothing to search yet" not in html


def test_search_page_keeps_the_query_from_the_address(client, shoe):
    doc_id = shoe[2]
    html = client.get(f"/?like={doc_id}&label=hat&min_height=500&k=48").get_data(as_text=True)
    assert f'data-like="{doc_id}"' in html
    assert 'value="hat" checked' in html
    assert 'value="shoes" checked' not in html
    assert 'name="min_height"' in html and 'value="500"' in html
    assert '<option value="48" selected>' in html


def test_search_page_ignores_a_like_that_is_not_an_id(client):
    html = client.get('/?like="><script>alert(1)</script>').get_data(as_text=True)
    assert 'data-like=""' in html
    assert "<script>alert(1)" not in html


def test_detail_page(client, shoe):
    path, _, doc_id = shoe
    response = client.get(f"/images/{doc_id}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert path.name in html
    assert f'href="/?like={doc_id}"' in html  # "more like this"
    assert f'src="/images/{doc_id}/file"' in html
    assert f'data-fallback="/thumbnails/{doc_id}.webp"' in html
    assert '<span class="badge label">shoes</span>' in html
    assert "<dt>byte_size</dt>" in html and "<dt>model_version</dt>" in html


def test_original_file_is_served_while_it_is_unchanged(client, shoe):
    _, data, doc_id = shoe
    response = client.get(f"/images/{doc_id}/file")
    assert response.status_code == 200
    assert response.mimetype == "image/jpeg"
    assert response.data == data
    assert response.cache_control.immutable


@pytest.mark.parametrize(
    "path",
    [
        "/images/" + "0" * 64,
        "/images/" + "0" * 64 + "/file",
        "/images/not-a-hash",
        "/thumbnails/" + "0" * 64 + ".webp",  # a valid key that is not in the store
        "/thumbnails/abc.webp",
        "/thumbnails/{id}.png",
        "/thumbnails/{id}",
        "/thumbnails/{ID}.webp",
        "/thumbnails/..%2F..%2Fetc%2Fpasswd",
        "/thumbnails/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/thumbnails/../../etc/passwd",
        "/thumbnails/%2Fetc%2Fpasswd",
        "/thumbnails/{id}.webp%00.png",
        "/no/such/page",
    ],
)
def test_not_found_pages(client, shoe, path):
    path = path.format(id=shoe[2], ID=shoe[2].upper())
    response = client.get(path)
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "Not found" in response.get_data(as_text=True)
    assert b"root:" not in response.data


def test_wrong_method_on_a_page_is_405(client):
    response = client.post("/")
    assert response.status_code == 405
    assert response.mimetype == "text/html"


def test_missing_index_page_says_how_to_index(missing_alias_client):
    response = missing_alias_client.get("/")
    assert response.status_code == 200  # the page works; it explains what to do first
    html = response.get_data(as_text=True)
    assert "Nothing to search yet" in html
    assert "<code>make index IMAGES=&lt;dir&gt;</code>" in html


def test_elasticsearch_down_is_a_friendly_503_page(make_client, shoe):
    client = make_client(es_url="http://127.0.0.1:9")
    for path in ("/", f"/images/{shoe[2]}", f"/images/{shoe[2]}/file"):
        response = client.get(path)
        assert response.status_code == 503
        assert response.mimetype == "text/html"
        html = response.get_data(as_text=True)
        assert "Search is unavailable" in html and "make es-up" in html
        assert "ConnectionError" not in html  # details go to the log, not to people


@pytest.fixture
def private_index(store, test_settings, embedder, photo_dir, build_app):
    """Ten photos indexed with hostile sidecar metadata, in an index of their own."""
    rel = "dress/" + sorted((photo_dir / "dress").iterdir())[0].name
    sidecar = {
        rel: {
            "label": "<b>bold</b>",
            "tags": ["<i>tag</i>"],
            "extra": {"note": "<script>alert(1)</script>", "sku": "A&B"},
        }
    }
    report = index_folder(
        photo_dir, settings=test_settings, embedder=embedder, store=store, sidecar=sidecar,
        progress=False,
    )
    assert report.stats.indexed == 10
    app = build_app(test_settings, store)
    path = photo_dir / rel
    return app.test_client(), path, content_hash(path.read_bytes())


def test_metadata_is_escaped_on_the_detail_page(private_index):
    client, _, doc_id = private_index
    html = client.get(f"/images/{doc_id}").get_data(as_text=True)
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert "<script>alert(1)" not in html
    assert "<i>tag</i>" not in html
    assert "A&amp;B" in html
    # And the facets on the search page.
    page = client.get("/").get_data(as_text=True)
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    # The API returns the values as they are: escaping is the page's job.
    assert client.get(f"/api/images/{doc_id}").get_json()["metadata"]["label"] == "<b>bold</b>"


def test_a_changed_file_is_not_served(private_index):
    client, path, doc_id = private_index
    assert client.get(f"/images/{doc_id}/file").status_code == 200
    path.write_bytes(path.read_bytes() + b"changed")
    assert client.get(f"/images/{doc_id}/file").status_code == 404
    # The detail page still works; it falls back to the thumbnail.
    assert client.get(f"/images/{doc_id}").status_code == 200
    assert client.get(f"/thumbnails/{doc_id}.webp").status_code == 200
