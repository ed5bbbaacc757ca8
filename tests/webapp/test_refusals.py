"""Refusals the app makes about a request's form (not its image), and long lists in a POST body.

The refusals made before the app sees a request (request line, headers, a body too large or
too slow) are nginx's: tests/reliability/test_slow_clients.py."""

from __future__ import annotations

import io

import pytest

from webapp.limits import FORM_MEMORY_BYTES, FORM_PARTS


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    error = response.get_json()["error"]
    assert error["code"] == code and error["message"]
    return error


def test_too_many_form_parts_is_413_form_too_large_not_an_image_too_large(client):
    boundary = "b0undary"
    parts = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="tag"\r\n\r\nt{n}\r\n'
                    for n in range(FORM_PARTS + 5)) + f"--{boundary}--\r\n"
    error = _error(client.post("/api/search", data=parts.encode(),
                               content_type=f"multipart/form-data; boundary={boundary}"),
                   413, "form_too_large")
    assert error["max_form_parts"] == FORM_PARTS and "smaller image" not in error["message"]


@pytest.mark.parametrize("body", [
    "tag=" + "x" * (FORM_MEMORY_BYTES + 10),
    "&".join(["a"] * (FORM_PARTS + 1)),
    "a&" * (FORM_MEMORY_BYTES // 2),
], ids=["long-field", "many-fields", "many-fields-at-the-length-limit"])
def test_an_urlencoded_form_over_the_limits_is_413_form_too_large(client, shoe, body):
    """Werkzeug parses an urlencoded body whole, unbounded but by the upload limit: the app
    bounds its length and field count before it is parsed."""
    _, _, doc_id = shoe
    error = _error(client.post(f"/api/images/{doc_id}/similar", data=body,
                               content_type="application/x-www-form-urlencoded"),
                   413, "form_too_large")
    assert error["max_form_memory_bytes"] == FORM_MEMORY_BYTES


def test_an_image_over_the_upload_limit_is_still_upload_too_large(make_client, shoe):
    _, data, _ = shoe
    small = make_client(max_upload_bytes=len(data) // 2)
    _error(small.post("/api/search", data={"image": (io.BytesIO(data), "shoe.jpg")}), 413,
           "upload_too_large")


def test_similar_by_post_equals_similar_by_get(client, shoe):
    _, _, doc_id = shoe
    got = client.get(f"/api/images/{doc_id}/similar?k=5&label=shoes").get_json()
    posted = client.post(f"/api/images/{doc_id}/similar", data={"k": "5", "label": "shoes"})
    assert posted.status_code == 200
    assert [h["id"] for h in posted.get_json()["hits"]] == [h["id"] for h in got["hits"]]


@pytest.mark.parametrize("form", [{"k": "many"}, {"colour": "red"}, {"like": "nope"}])
def test_similar_by_post_refuses_what_get_refuses(client, shoe, form):
    _, _, doc_id = shoe
    response = client.post(f"/api/images/{doc_id}/similar", data=form)
    assert response.status_code == 400 and response.is_json


@pytest.mark.parametrize("path", ["/api/search", "/api/images/{id}/explain",
                                  "/api/images/{id}/similar"])
def test_a_multipart_part_without_a_name_is_a_400_not_a_500(client, shoe, path):
    """Werkzeug names such a part None; every view's parameter check failed on it (a 500 that
    Schemathesis found on both upload endpoints)."""
    _, data, doc_id = shoe
    body = (b'--b\r\nContent-Disposition: form-data; name="image"; filename="s.jpg"\r\n\r\n'
            + data + b"\r\n--b\r\nContent-Disposition: form-data\r\n\r\n5\r\n--b--\r\n")
    response = client.post(path.format(id=doc_id), data=body,
                           content_type="multipart/form-data; boundary=b")
    _error(response, 400, "invalid_form")
