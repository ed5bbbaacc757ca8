"""The two runtimes compute the same vectors; OpenVINO's converted models are cached safely.

Everything runs the real ResNet50 (base and fine-tuned) on real photos of the clothing set.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from imgsearch import runtime
from imgsearch.ircache import IRCache
from imgsearch.runtime import OpenVINOForward, RuntimeUnavailable, convert, resolve_runtime
from imgsearch.settings import PROJECT_ROOT, Settings

pytest.importorskip("openvino")

# The bound under which both runtimes may share a model version (and so an index).
SAME_VECTORS = 0.99999


@pytest.fixture(scope="module")
def photos(embedder, clothing_test_dir) -> np.ndarray:
    """Ten real photos of the test split, of several labels, decoded by the model."""
    paths = sorted(clothing_test_dir.rglob("*.jpg"))[::37][:10]
    return np.stack([embedder.decode(p.read_bytes()).pixels for p in paths])


@pytest.fixture(scope="module")
def converted(embedder):
    return convert(embedder.model, embedder.input_size)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1)


# Both runtimes in one fresh process at strict fp32: TensorFlow's oneDNN maths mode is fixed
# per process (bf16 under `auto` on AMX machines, which would compare precisions, not runtimes).
COMPARE_RUNTIMES = """
import json, sys
from pathlib import Path
import numpy as np
from imgsearch.embedder import Embedder
from imgsearch.settings import PROJECT_ROOT, Settings
paths, model_dir, cache = sys.argv[1].split(","), sys.argv[2] or None, Path(sys.argv[3])
out = {}
for name, folder in (("base", None), ("tuned", model_dir)):
    tf = Embedder(Settings.from_env(runtime="tensorflow"), model_dir=folder)
    ov = Embedder(Settings.from_env(runtime="openvino", cache_dir=cache), model_dir=folder)
    assert (tf.precision, ov.precision) == ("fp32", "fp32")
    pixels = np.stack([tf.decode(Path(p).read_bytes()).pixels for p in paths])
    reference, batched = tf.embed(pixels), ov.embed(pixels)
    single = np.concatenate([ov.embed(p[None]) for p in pixels])
    out[name] = {
        "versions": [tf.version, ov.version], "runtimes": [tf.runtime, ov.runtime],
        "batched": np.sum(reference * batched, axis=1).tolist(),
        "single": np.sum(reference * single, axis=1).tolist(),
        "norms": np.linalg.norm(batched, axis=1).tolist(),
    }
print(json.dumps(out))
"""


def test_openvino_vectors_match_tensorflow_base_and_tuned(tuned_model, clothing_test_dir,
                                                          tmp_path):
    model_dir, _ = tuned_model
    paths = sorted(clothing_test_dir.rglob("*.jpg"))[::37][:10]
    env = dict(os.environ, IMGSEARCH_PRECISION="fp32", PYTHONPATH=str(PROJECT_ROOT))
    run = subprocess.run(
        [sys.executable, "-c", COMPARE_RUNTIMES, ",".join(map(str, paths)), str(model_dir),
         str(tmp_path)], env=env, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    for name in ("base", "tuned"):
        r = result[name]
        assert r["runtimes"] == ["tensorflow", "openvino"]
        assert r["versions"][0] == r["versions"][1]  # one version: one index for both
        # batched: split between the throughput streams; single: the latency request.
        assert min(r["batched"]) >= SAME_VECTORS, (name, r["batched"])
        assert min(r["single"]) >= SAME_VECTORS, (name, r["single"])
        assert np.allclose(r["norms"], 1.0, atol=1e-5)
    assert result["base"]["versions"] != result["tuned"]["versions"]


def test_odd_batches_split_between_streams_keep_their_order(converted, photos):
    forward = OpenVINOForward(converted, "fp32")
    whole = forward(photos[:7])
    for i in range(7):
        assert float(whole[i] @ forward(photos[i : i + 1])[0]) >= SAME_VECTORS


def test_the_cache_converts_once_and_reuses(converted, tmp_path):
    cache = IRCache(tmp_path)
    calls = []

    def convert_counted():
        calls.append(1)
        return converted

    cache.get_or_convert("model-a", convert_counted)
    again = cache.get_or_convert("model-a", convert_counted)
    assert len(calls) == 1
    assert again.inputs[0].get_element_type().get_type_name() == "u8"
    cache.get_or_convert("model-b", convert_counted)  # another version, another entry
    assert len(calls) == 2
    assert cache.entry("model-a") != cache.entry("model-b")


@pytest.mark.parametrize("damage", ["truncate weights", "flip a byte", "other openvino",
                                    "other model", "garbled manifest"])
def test_a_damaged_cache_entry_is_converted_again(damage, converted, photos, tmp_path, caplog):
    cache = IRCache(tmp_path)
    cache.get_or_convert("model-a", lambda: converted)
    entry = cache.entry("model-a")
    weights, manifest_path = entry / "model.bin", entry / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    if damage == "truncate weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "flip a byte":
        data = bytearray(weights.read_bytes())
        data[len(data) // 3] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif damage == "other openvino":
        manifest_path.write_text(json.dumps({**manifest, "openvino": "2000.0"}))
    elif damage == "other model":
        manifest_path.write_text(json.dumps({**manifest, "model_version": "model-z"}))
    else:
        manifest_path.write_text("{not json")
    assert cache.check(entry, "model-a") is not None

    calls = []
    with caplog.at_level(logging.WARNING, logger="imgsearch.ircache"):
        model = cache.get_or_convert("model-a", lambda: calls.append(1) or converted)
    assert calls == [1]
    assert "converting it again" in caplog.text
    assert cache.check(entry, "model-a") is None  # repaired on disk
    reference = OpenVINOForward(converted, "fp32")(photos[:2])
    assert _cosines(reference, OpenVINOForward(model, "fp32")(photos[:2])).min() >= SAME_VECTORS


def test_an_unwritable_cache_costs_only_a_conversion(converted, tmp_path, caplog):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="imgsearch.ircache"):
        model = IRCache(blocked).get_or_convert("model-a", lambda: converted)
    assert model is converted
    assert "could not cache" in caplog.text


def test_auto_prefers_openvino_where_installed(monkeypatch):
    assert resolve_runtime("auto") == "openvino"
    assert resolve_runtime("tensorflow") == "tensorflow"
    monkeypatch.setattr(runtime, "openvino_installed", lambda: False)
    assert resolve_runtime("auto") == "tensorflow"  # the same vectors, so the same version


def test_openvino_named_but_missing_is_an_error_naming_the_setting(monkeypatch, settings):
    from imgsearch.embedder import Embedder

    monkeypatch.setattr(runtime, "openvino_installed", lambda: False)
    with pytest.raises(RuntimeUnavailable, match="IMGSEARCH_RUNTIME=openvino.*not installed"):
        Embedder(settings.with_(runtime="openvino"))


def test_a_model_openvino_cannot_compile_is_an_error_naming_the_setting(converted):
    # A valid model that the CPU plugin has no kernel for: strings converted to numbers.
    import openvino as ov

    param = ov.opset13.parameter([4], ov.Type.string, name="text")
    broken = ov.Model([ov.opset13.convert(param, ov.Type.f32)], [param], "unrunnable")
    with pytest.raises(RuntimeUnavailable, match="IMGSEARCH_RUNTIME=openvino could not compile"):
        OpenVINOForward(broken, "fp32", name="unrunnable")


def test_the_runtime_setting_is_checked():
    with pytest.raises(ValueError, match="IMGSEARCH_RUNTIME must be one of"):
        Settings.from_env(runtime="onnx")


def test_openvino_telemetry_is_declined_without_overriding_a_choice(tmp_path, monkeypatch):
    from imgsearch.runtime import decline_openvino_telemetry

    monkeypatch.setenv("HOME", str(tmp_path))
    decline_openvino_telemetry()
    consent = tmp_path / "intel" / "openvino_telemetry"
    assert consent.read_text().strip() == "0"  # what OpenVINO's opt-out writes
    consent.write_text("1")  # the user's own choice stands
    decline_openvino_telemetry()
    assert consent.read_text() == "1"


def test_the_thread_cap_reaches_openvinos_compiled_model(settings):
    """IMGSEARCH_INFERENCE_THREADS (a Ray actor sets it to its CPUs) caps OpenVINO's
    inference threads; 0 leaves them to OpenVINO."""
    pytest.importorskip("openvino")
    from imgsearch.embedder import Embedder

    capped = Embedder(settings.with_(runtime="openvino", inference_threads=1))
    compiled, _ = capped._forward._single
    assert int(compiled.get_property("INFERENCE_NUM_THREADS")) == 1
