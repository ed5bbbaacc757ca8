"""Why it matched: ``/api/images/<id>/explain`` on the indexed clothing split, the real model
and the real files. The cell shares must add up to the cosine and sit where the match is."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imgsearch.images import content_hash
from indexer.index import index_folder
from tests.webapp.test_api import error_of, upload


def explain_upload(client, doc_id: str, data: bytes, **params):
    form = {"image": (io.BytesIO(data), "query.jpg"), **params}
    return client.post(f"/api/images/{doc_id}/explain", data=form,
                       content_type="multipart/form-data")


def check_shares(body: dict) -> None:
    """Both grids are 7 x 7 and each sums to the cosine (the decomposition is exact)."""
    assert body["grid"] == [7, 7]
    for side in ("query", "result"):
        cells = np.asarray(body[side]["cells"])
        assert cells.shape == (7, 7)
        assert cells.min() >= 0  # ReLU features and non-negative vectors: no cell takes away
        assert cells.sum() == pytest.approx(body["cosine"], abs=1e-9)


def test_shares_of_a_similar_hit_sum_to_its_cosine(client, shoe):
    _, _, shoe_id = shoe
    hits = client.get(f"/api/images/{shoe_id}/similar?k=5").get_json()["hits"]
    for hit in hits[:3]:
        response = client.get(f"/api/images/{hit['id']}/explain?query={shoe_id}")
        assert response.status_code == 200
        body = response.get_json()
        check_shares(body)
        assert body["id"] == hit["id"] and body["query"]["id"] == shoe_id
        # The maps are recomputed from the files: the same cosine the search reported.
        assert body["cosine"] == pytest.approx(hit["cosine"], abs=2e-3)
        assert body["indexed_cosine"] == pytest.approx(hit["cosine"], abs=2e-3)
        # Crop mode: the cells cover the central square of each photo.
        for side in ("query", "result"):
            x0, y0, x1, y1 = body[side]["frame"]
            w, h = body[side]["width"], body[side]["height"]
            assert (x1 - x0) * w == pytest.approx((y1 - y0) * h, abs=1)
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1


def test_an_uploaded_query_is_explained_too(client, photos):
    data = photos["pants"][3].read_bytes()
    hit = upload(client, data, k="3").get_json()["hits"][1]  # [0] is the photo itself
    response = explain_upload(client, hit["id"], data)
    assert response.status_code == 200
    body = response.get_json()
    check_shares(body)
    assert body["query"]["id"] is None
    assert body["cosine"] == pytest.approx(hit["cosine"], abs=2e-3)


def test_an_image_against_itself_shares_evenly_on_both_sides(client, shoe):
    _, _, shoe_id = shoe
    body = client.get(f"/api/images/{shoe_id}/explain?query={shoe_id}").get_json()
    assert body["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert body["query"]["cells"] == body["result"]["cells"]


def test_the_cells_that_count_are_where_the_match_is(client, photos):
    """A shoe pasted on the left of a wide canvas, a hat on the right: explained against the
    shoe's indexed photo, the left half of the query gives most of the cosine."""
    shoe, hat = (Image.open(photos[label][0]).convert("RGB").resize((300, 300))
                 for label in ("shoes", "hat"))
    canvas = Image.new("RGB", (600, 300), "white")
    canvas.paste(shoe, (0, 0))
    canvas.paste(hat, (300, 0))
    buffer = io.BytesIO()
    canvas.save(buffer, format="JPEG", quality=92)
    shoe_id = content_hash(photos["shoes"][0].read_bytes())
    body = explain_upload(client, shoe_id, buffer.getvalue()).get_json()
    check_shares(body)
    # Crop mode sees the central 300 x 300: its left half is shoe, its right half hat.
    assert body["query"]["frame"] == pytest.approx([0.25, 0.0, 0.75, 1.0])
    cells = np.asarray(body["query"]["cells"])
    left, right = cells[:, :3].sum(), cells[:, 4:].sum()
    # Measured 0.41 against 0.23 (conv5 cells see far past their own 32 pixels).
    assert left > 1.5 * right, (left, right)


def test_the_heat_map_is_a_png_of_either_side(client, shoe, photos):
    _, _, shoe_id = shoe
    other = content_hash(photos["shoes"][1].read_bytes())
    url = f"/api/images/{other}/explain?query={shoe_id}"
    body = client.get(url).get_json()
    for side in ("result", "query"):
        response = client.get(f"{url}&format=png&side={side}")
        assert response.status_code == 200
        assert response.mimetype == "image/png"
        image = Image.open(io.BytesIO(response.data))
        image.load()
        assert image.format == "PNG" and max(image.size) <= 512
        # The cell that gave most is drawn pale yellow at 80 %, the one that gave least
        # nearly clear over the dimmed photo: brighter at the first whatever the photo.
        cells = np.asarray(body[side]["cells"])
        brightness = np.asarray(image.convert("L"), np.float32)
        strongest = cell_centre(brightness, body[side]["frame"], cells.argmax())
        weakest = cell_centre(brightness, body[side]["frame"], cells.argmin())
        assert strongest > weakest + 10, (strongest, weakest)


def cell_centre(pixels: np.ndarray, frame, cell: int) -> float:
    """The pixel at the centre of cell ``cell`` (row-major in the 7 x 7 grid over
    ``frame``)."""
    row, col = divmod(int(cell), 7)
    x0, y0, x1, y1 = frame
    height, width = pixels.shape
    x = (x0 + (col + 0.5) / 7 * (x1 - x0)) * width
    y = (y0 + (row + 0.5) / 7 * (y1 - y0)) * height
    return float(pixels[int(y), int(x)])


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("", "missing_query"),
        ("abc", "invalid_parameter"),
        ("0" * 64, "unknown_id"),
    ],
)
def test_a_bad_query_is_refused(client, shoe, query, code):
    _, _, shoe_id = shoe
    response = client.get(f"/api/images/{shoe_id}/explain?query={query}")
    assert response.status_code == 400
    assert error_of(response)["code"] == code


@pytest.mark.parametrize(
    "params", ["format=gif", "side=left", "colour=red"],
)
def test_bad_options_are_refused(client, shoe, params):
    _, _, shoe_id = shoe
    response = client.get(f"/api/images/{shoe_id}/explain?query={shoe_id}&{params}")
    assert response.status_code == 400
    assert error_of(response)["code"] in ("invalid_parameter", "unknown_parameter")


def test_an_unknown_image_is_404(client, shoe):
    _, _, shoe_id = shoe
    response = client.get(f"/api/images/{'f' * 64}/explain?query={shoe_id}")
    assert response.status_code == 404
    assert error_of(response)["code"] == "not_found"


def test_bad_uploads_are_refused(client, shoe):
    _, data, shoe_id = shoe
    both = explain_upload(client, shoe_id, data, query=shoe_id)
    assert both.status_code == 400 and error_of(both)["code"] == "invalid_parameter"
    none = client.post(f"/api/images/{shoe_id}/explain", data={},
                       content_type="multipart/form-data")
    assert none.status_code == 400 and error_of(none)["code"] == "missing_image"
    bad = explain_upload(client, shoe_id, b"not an image at all")
    assert bad.status_code == 400 and error_of(bad)["code"] == "invalid_image"


def test_a_moved_or_changed_file_is_said_so(build_app, test_settings, store, embedder,
                                            photo_dir):
    index_folder(photo_dir, settings=test_settings, embedder=embedder, store=store,
                 progress=False)
    client = build_app(test_settings, store).test_client()
    moved, changed, query = sorted(photo_dir.rglob("*.jpg"))[:3]
    moved_id, changed_id = content_hash(moved.read_bytes()), content_hash(changed.read_bytes())
    query_id = content_hash(query.read_bytes())
    moved.unlink()
    changed.write_bytes(changed.read_bytes() + b"\0")
    for doc_id in (moved_id, changed_id):
        response = client.get(f"/api/images/{doc_id}/explain?query={query_id}")
        assert response.status_code == 409
        error = error_of(response)
        assert error["code"] == "file_unavailable" and doc_id in error["message"]
    # The query's own file counts as much as the result's.
    response = client.get(f"/api/images/{query_id}/explain?query={moved_id}")
    assert response.status_code == 409
    assert client.get(f"/api/images/{query_id}/explain?query={query_id}").status_code == 200
