"""More / less like these: ``like`` / ``unlike`` on search and similar, on the indexed
clothing split (real vectors, real labels)."""

from __future__ import annotations

import pytest

from imgsearch.images import content_hash
from imgsearch.search import FEEDBACK_WEIGHTS, MAX_FEEDBACK
from tests.webapp.test_api import error_of, upload


def marks(hits: list[dict], label: str) -> dict:
    return {
        "like": [h["id"] for h in hits if h["metadata"]["label"] == label],
        "unlike": [h["id"] for h in hits if h["metadata"]["label"] != label],
    }


def precision(hits: list[dict], label: str) -> float:
    return sum(h["metadata"]["label"] == label for h in hits) / len(hits)


def test_one_round_of_marks_raises_precision(client, photos):
    """Marks on the top 10 by the true labels, for the first photo of every label: the next
    ten are better on average, and never show an unliked image again."""
    before, after = [], []
    for label, files in photos.items():
        doc_id = content_hash(files[0].read_bytes())
        first = client.get(f"/api/images/{doc_id}/similar?k=10").get_json()["hits"]
        marked = marks(first, label)
        query = "&".join(f"{name}={i}" for name, ids in marked.items() for i in ids)
        response = client.get(f"/api/images/{doc_id}/similar?k=10&{query}")
        assert response.status_code == 200
        body = response.get_json()
        assert body["query"]["feedback"]["like"] == marked["like"]
        assert body["query"]["feedback"]["unlike"] == marked["unlike"]
        again = body["hits"]
        assert not {h["id"] for h in again} & set(marked["unlike"])
        assert doc_id not in {h["id"] for h in again}
        before.append(precision(first, label))
        after.append(precision(again, label))
    assert sum(after) / len(after) > sum(before) / len(before) + 0.05, (before, after)


def test_an_upload_moves_towards_what_is_liked(client, photos):
    """A shoe photo with a hat liked: hats come up among the shoes."""
    shoe = photos["shoes"][0].read_bytes()
    hat_id = content_hash(photos["hat"][0].read_bytes())
    plain = upload(client, shoe, k="10").get_json()["hits"]
    moved = upload(client, shoe, k="10", like=hat_id).get_json()
    alpha, beta, gamma = FEEDBACK_WEIGHTS
    assert moved["query"]["feedback"]["weights"] == {"query": alpha, "like": beta,
                                                     "unlike": gamma}
    labels = [h["metadata"]["label"] for h in moved["hits"]]
    assert labels.count("hat") > [h["metadata"]["label"] for h in plain].count("hat")
    assert hat_id in [h["id"] for h in moved["hits"][:3]]


def test_ids_may_be_repeated_or_comma_separated(client, photos):
    ids = [content_hash(p.read_bytes()) for p in photos["dress"][:3]]
    query = content_hash(photos["dress"][5].read_bytes())
    repeated = client.get(f"/api/images/{query}/similar?unlike={ids[0]}&unlike={ids[1]},{ids[2]}"
                          f"&unlike={ids[0]}")
    assert repeated.status_code == 200
    assert repeated.get_json()["query"]["feedback"]["unlike"] == ids


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ("like=" + "0" * 64, "unknown_id"),
        ("unlike=nothex", "invalid_parameter"),
        ("like={id}&unlike={id}", "invalid_parameter"),
    ],
)
def test_bad_marks_are_refused(client, shoe, params, code):
    _, _, shoe_id = shoe
    response = client.get(f"/api/images/{shoe_id}/similar?" + params.format(id=shoe_id))
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == code


def test_too_many_marks_are_refused(client, shoe):
    _, _, shoe_id = shoe
    many = ",".join(f"{n:064x}" for n in range(MAX_FEEDBACK + 1))
    response = client.get(f"/api/images/{shoe_id}/similar?like={many}")
    assert response.status_code == 400
    assert f"at most {MAX_FEEDBACK}" in error_of(response)["message"]


def test_marks_and_a_box_do_not_mix(client, shoe):
    _, data, shoe_id = shoe
    response = upload(client, data, box="0.1,0.1,0.9,0.9", like=shoe_id)
    assert response.status_code == 400
    assert "box" in error_of(response)["message"]
