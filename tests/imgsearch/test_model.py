"""The model interface: what the base model offers, and that the interface names only what the
embedder really has (the tuned and int8 kinds are checked where they are made:
tests/imgsearch/test_finetune.py, tests/indexer/test_quantize.py)."""

from __future__ import annotations

import inspect

import numpy as np

from imgsearch.embedder import Embedder
from imgsearch.model import ImageModel


def test_every_member_of_the_interface_is_the_embedders_with_the_same_signature():
    members = {name for name in dir(ImageModel) if not name.startswith("_")}
    members |= set(inspect.get_annotations(ImageModel))
    for name in sorted(members):
        declared = getattr(ImageModel, name, None)
        if inspect.isfunction(declared):
            own = getattr(Embedder, name)
            assert inspect.signature(own).parameters.keys() == \
                inspect.signature(declared).parameters.keys(), name
        elif isinstance(declared, property):
            assert isinstance(getattr(Embedder, name), property), name


def test_the_base_model_is_an_image_model_with_feature_maps(embedder):
    assert isinstance(embedder, ImageModel)
    assert (embedder.is_base, embedder.is_quantized, embedder.has_feature_maps) == \
        (True, False, True)
    assert embedder.card is None and embedder.precision in ("fp32", "bf16")
    assert embedder.runtime in ("tensorflow", "openvino")
    pixels = np.zeros((224, 224, 3), np.uint8)
    assert embedder.feature_map(pixels).shape == (7, 7, embedder.dims)
