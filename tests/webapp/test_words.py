"""Search by words through the API (``q`` on POST /api/search), on the clothing test split
indexed with its tags: alone, with a photo, unknown words, the tag filter and facet."""

from __future__ import annotations

import io

import pytest


def search(client, **form):
    return client.post("/api/search", data=form, content_type="multipart/form-data")


def test_words_alone_rank_images_by_their_tags(client):
    response = search(client, q="Shoes", k="10")
    assert response.status_code == 200, response.json
    body = response.json
    assert body["query"]["words"]["terms"][0]["names"] == ["shoe"]
    assert len(body["hits"]) == 10
    assert {h["metadata"]["label"] for h in body["hits"]} == {"shoes"}
    assert all(h["cosine"] is None for h in body["hits"])
    assert all("shoe" in h["metadata"]["model_tags"] for h in body["hits"])
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    assert "model_synsets" not in body["hits"][0]["metadata"]
    # A urlencoded body (curl -d q=...) works too.
    urlencoded = client.post("/api/search", data={"q": "Shoes", "k": "10"})
    assert [h["id"] for h in urlencoded.json["hits"]] == [h["id"] for h in body["hits"]]


def test_unknown_words_answer_no_hits_and_suggestions(client):
    response = search(client, q="sheo")
    assert response.status_code == 200
    words = response.json["query"]["words"]
    assert response.json["hits"] == [] and words["unknown"] == ["sheo"]
    assert "shoe" in words["suggestions"]["sheo"]


def test_words_with_a_photo_rerank_its_neighbours(client, photos):
    data = photos["t-shirt"][0].read_bytes()
    plain = client.post("/api/search", data={"image": (io.BytesIO(data), "q.jpg")},
                        content_type="multipart/form-data").json
    worded = client.post("/api/search", data={"image": (io.BytesIO(data), "q.jpg"),
                                              "q": "jersey"},
                         content_type="multipart/form-data").json
    assert worded["query"]["words"]["terms"][0]["text"] == "jersey"
    assert {h["id"] for h in worded["hits"]} != set() and all(
        h["cosine"] is not None and h["score"] >= h["cosine"] for h in worded["hits"])
    assert sum(h["metadata"]["label"] == "t-shirt" for h in worded["hits"]) >= sum(
        h["metadata"]["label"] == "t-shirt" for h in plain["hits"])


def test_the_model_tags_filter_and_facet(client):
    facets = client.get("/api/facets").json["fields"]["model_tags"]
    assert facets and {"value", "count"} <= set(facets[0])
    top = facets[0]["value"]
    response = search(client, q="footwear", model_tag=top, k="20")
    assert response.status_code == 200
    assert all(top in h["metadata"]["model_tags"] for h in response.json["hits"])
    assert response.json["query"]["filters"] == {"model_tag": [top]}


@pytest.mark.parametrize(("form", "code"), [
    ({"q": ""}, "missing_query"),
    ({"q": "shoe " * 25}, "invalid_words"),
    ({"q": "shoe", "like": "a" * 64}, "invalid_parameter"),
    ({"q": "shoe", "num_candidates": "200"}, "invalid_parameter"),
    ({"q": "shoe", "box": "0,0,1,1"}, "unknown_parameter"),
])
def test_words_that_cannot_be_searched_are_refused(client, form, code):
    response = search(client, **form)
    assert response.status_code == 400
    assert response.json["error"]["code"] == code
