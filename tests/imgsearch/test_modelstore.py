"""Model directories and the model store: found by version, and never loaded unverified."""

from __future__ import annotations

import json
import shutil

import pytest

from imgsearch.embedder import Embedder
from imgsearch.modelstore import (
    CARD_FILE,
    WEIGHTS_FILE,
    ModelStore,
    load_model_dir,
    resolve_model_dir,
)
from imgsearch.weights import WeightsError


@pytest.fixture
def model_copy(tuned_model, tmp_path):
    """A copy of the tuned model directory that a test may damage."""
    source, _ = tuned_model
    target = tmp_path / "store" / "copy"
    shutil.copytree(source, target)
    return target


def test_the_store_finds_a_model_by_its_version(tuned_model, model_copy):
    _, result = tuned_model
    store = ModelStore(model_copy.parent)
    (model_copy.parent / "not-a-model").mkdir()
    assert store.models() == {result.card["model_version"]: model_copy}
    assert store.find(result.card["model_version"]) == model_copy
    assert store.find("resnet50-avg/w=0000000000000000/other") is None
    assert ModelStore(model_copy.parent / "missing").models() == {}


def test_imgsearch_model_names_a_directory_or_a_version(tuned_model, model_copy, settings):
    version = tuned_model[1].card["model_version"]
    store = model_copy.parent
    assert resolve_model_dir(settings.with_(model="")) is None
    assert resolve_model_dir(settings.with_(model=str(model_copy))) == model_copy
    assert resolve_model_dir(settings.with_(model=version, model_store=store)) == model_copy
    with pytest.raises(WeightsError, match="neither a model directory nor a model version"):
        resolve_model_dir(settings.with_(model="no-such-model", model_store=store))
    with pytest.raises(WeightsError, match="has no model_card.json"):
        resolve_model_dir(settings.with_(model=str(store)))


def test_weights_that_do_not_match_their_card_are_refused(model_copy, settings, embedder):
    """A foreign weights file (here the base model's) in a model directory: a clear error,
    never vectors of another model under this one's version."""
    embedder.model.save_weights(str(model_copy / WEIGHTS_FILE))
    with pytest.raises(WeightsError, match="corrupt or not this model's"):
        load_model_dir(model_copy)
    with pytest.raises(WeightsError, match="corrupt or not this model's"):
        Embedder(settings, model_dir=model_copy)


def test_a_corrupt_weights_file_is_refused(model_copy):
    data = (model_copy / WEIGHTS_FILE).read_bytes()
    (model_copy / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="cannot load"):
        load_model_dir(model_copy)


@pytest.mark.parametrize("damage,message", [
    (lambda card: "{not json", "cannot read the model card"),
    (lambda card: json.dumps({k: v for k, v in card.items() if k != "weights_digest"}),
     "lacks weights_digest"),
])
def test_a_damaged_card_is_refused(model_copy, damage, message):
    card = json.loads((model_copy / CARD_FILE).read_text())
    (model_copy / CARD_FILE).write_text(damage(card))
    with pytest.raises(WeightsError, match=message):
        load_model_dir(model_copy)
    assert ModelStore(model_copy.parent).models() == {}
