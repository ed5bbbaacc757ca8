"""Search by words: the parser on the real vocabulary, and the scores Elasticsearch computes
for the words against the clothing test split indexed with its tags."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgsearch.search import SearchService, WordsUnavailable
from imgsearch.words import WordParser, WordsError


@pytest.fixture(scope="module")
def parser():
    return WordParser()


def test_phrases_synonyms_plurals_and_stop_words(parser):
    query = parser.parse("Running-shoes and a cowboy hat")
    assert [t.text for t in query.terms] == ["running shoes", "cowboy hat"]
    assert query.terms[0].names == ("running shoe",)  # the plural's singular
    assert query.unknown == ()
    assert parser.parse("T-shirt").terms[0].names == ("jersey",)  # a synonym
    assert parser.parse("pants").terms[0].names == ("trouser",)


def test_unknown_words_are_reported_with_the_nearest_known_ones(parser):
    query = parser.parse("red sheo")
    assert not query and query.unknown == ("red", "sheo")
    assert "shoe" in query.suggestions["sheo"]
    partly = parser.parse("red shoe")
    assert [t.text for t in partly.terms] == ["shoe"] and partly.unknown == ("red",)


def test_punctuation_and_query_syntax_are_never_syntax(parser):
    query = parser.parse('"dog" AND (cat*), shoes?')
    assert [t.text for t in query.terms] == ["dog", "cat", "shoes"]
    odd = parser.parse("label:shoe~2 собака 犬")
    assert not odd and odd.unknown == ("label:shoe~2", "собака", "犬")
    with pytest.raises(WordsError):
        parser.parse("!!! ... ***")


def test_too_long_is_refused(parser):
    with pytest.raises(WordsError):
        parser.parse("shoe " * 30)
    with pytest.raises(WordsError):
        parser.parse("x" * 201)


@pytest.fixture(scope="module")
def service(clothing_index, embedder):
    settings, store, _ = clothing_index
    return SearchService(settings, store, embedder)


def test_elasticsearch_scores_each_image_as_its_tags_say(service, clothing_index):
    """The sparse_vector query's score of every hit is the sum of the words' senses in the
    document's own model_synsets (what the re-rank computes in Python too), best first."""
    result = service.search_words("shoe hat", k=50)
    assert result.hits and result.query["words"]["unknown"] == []
    words = service._parser.parse("shoe hat")
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    _, store, _ = clothing_index
    synsets = {h["_id"]: h["_source"]["model_synsets"] for h in store.es.search(
        index=store.alias, size=400, source_includes=["model_synsets"],
        source_exclude_vectors=False).body["hits"]["hits"]}
    for hit in result.hits:
        assert hit.cosine is None
        assert hit.score == pytest.approx(words.score(synsets[hit.id]), rel=1e-2)
    # No image left out: every one with a positive score is among the hits (50 is enough).
    assert sum(words.score(s) > 0 for s in synsets.values()) <= 50 or len(result.hits) == 50
    # Shoes are what ImageNet knows best: the first ten are all shoes (bench/words.py P@10 1.0).
    assert {h.source["label"] for h in result.hits[:10]} == {"shoes"}


def test_words_rerank_a_photo_search_and_unknown_words_find_nothing(service, clothing_index):
    _, store, _ = clothing_index
    tee = next(h for h in store.es.search(index=store.alias, size=400).body["hits"]["hits"]
               if h["_source"]["label"] == "t-shirt")
    data = Path(tee["_source"]["path"]).read_bytes()
    plain = service.search_image(data, k=10)
    worded = service.search_image(data, k=10, words="jersey")
    assert worded.query["words"]["terms"][0]["names"] == ["jersey"]
    tshirts = lambda r: sum(h.source["label"] == "t-shirt" for h in r.hits)  # noqa: E731
    assert tshirts(worded) >= tshirts(plain)
    assert any(h.score > h.cosine + 0.1 for h in worded.hits)  # the words did count
    assert all(h.score >= h.cosine for h in worded.hits)  # cosine + a weight x words' score
    nothing = service.search_image(data, k=10, words="xyzzy")
    assert nothing.hits == [] and nothing.query["words"]["unknown"] == ["xyzzy"]


def test_an_index_whose_model_does_not_tag_refuses_words(service, monkeypatch):
    route = service.route()
    monkeypatch.setattr(route.model, "tagger", None)
    monkeypatch.setattr(service, "route", lambda: route)
    with pytest.raises(WordsUnavailable) as err:
        service.search_words("shoe")
    assert "without tags" in str(err.value)
