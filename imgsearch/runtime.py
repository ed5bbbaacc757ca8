"""Where the network runs: TensorFlow, the reference, or OpenVINO, converted from it.

Keras/TensorFlow stays the model's definition, the training framework and the reference.
:func:`make_forward` turns a Keras model into one callable, ``uint8 [N,224,224,3]`` ->
``float32 [N,2048]`` unit vectors, with preprocessing and normalisation inside, on the runtime
that ``IMGSEARCH_RUNTIME`` names:

- ``tensorflow``: one compiled ``tf.function`` (oneDNN kernels);
- ``openvino``: the same ``tf.function`` converted by ``openvino.convert_model`` once per model
  version and cached (:mod:`imgsearch.ircache`). Its vectors agree with TensorFlow's to cosine
  0.9999998 on real photos (tests/imgsearch/test_runtime.py asks >= 0.99999), so both runtimes
  share a model version and an index. On a 2-core AVX2 EPYC it ran batch 32 at 1.4x and batch 1
  at 1.5-1.6x TensorFlow's rate (docs/BENCHMARKS.md, "Runtimes");
- ``auto``: OpenVINO where it is installed (the faster one in that benchmark), else TensorFlow.
  Naming ``openvino`` where it cannot run is an error, never a quiet change of runtime.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
from pathlib import Path

import numpy as np

from .errors import Unavailable

log = logging.getLogger(__name__)

# The compile-time precision of an fp32 model on OpenVINO, for IMGSEARCH_PRECISION's values.
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16"}
# Relative error of one convolution and one matrix product against float64 (the probe of
# :func:`tensorflow_precision`). fp32 kernels land at ~1e-6; kernels that round their inputs
# to bf16 (8 bits of mantissa) at ~1e-3 (bf16's unit roundoff is 2**-9 = 2e-3). The threshold
# sits two decades from each.
BF16_ERROR_FLOOR = 1e-4
_tensorflow_precision: str | None = None


class RuntimeUnavailable(Unavailable):
    """The configured runtime cannot run the model: not installed, or it refused to compile."""

    code = "model_unavailable"


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def resolve_runtime(requested: str) -> str:
    """``auto`` becomes ``openvino`` where the package is installed, else ``tensorflow``."""
    if requested == "auto":
        return "openvino" if openvino_installed() else "tensorflow"
    if requested == "openvino" and not openvino_installed():
        raise RuntimeUnavailable(
            "IMGSEARCH_RUNTIME=openvino, but the openvino package is not installed in this "
            "environment (it is in requirements.txt: run `make setup`), or set "
            "IMGSEARCH_RUNTIME=tensorflow"
        )
    return requested


def make_forward(
    runtime: str, model, *, input_size: int, version: str, precision: str, cache_dir: Path,
    threads: int = 0,
):
    """The forward pass of Keras ``model`` (square RGB inputs of ``input_size``) on ``runtime``
    (``tensorflow`` or ``openvino``; resolve ``auto`` first). ``version`` keys the cache of
    converted models; ``threads`` > 0 caps OpenVINO's inference threads (TensorFlow's are
    set for the whole process: :func:`limit_tensorflow_threads`)."""
    if runtime == "tensorflow":
        return TensorFlowForward(model, input_size)
    if runtime == "openvino":
        from .ircache import IRCache

        # The key names the graph's outputs: an IR cached before the norms were an output
        # (keyed by the bare version) is another graph and is never read back as this one.
        ov_model = IRCache(cache_dir).get_or_convert(
            f"{version}#vectors+norms", lambda: convert(model, input_size)
        )
        return OpenVINOForward(ov_model, precision, name=version, threads=threads)
    raise ValueError(f"unknown runtime {runtime!r}")


def make_map_forward(runtime: str, model, *, version: str, precision: str, cache_dir: Path,
                     threads: int = 0):
    """``uint8 [N, H, W, 3]`` of any size (multiples of 32) -> the last convolutional maps
    ``float32 [N, H/32, W/32, C]`` of Keras ``model``, on ``runtime``, for region vectors."""
    if runtime == "tensorflow":
        forward, lock = compile_feature_map(model), threading.Lock()

        def run(pixels: np.ndarray) -> np.ndarray:
            with lock:
                return forward(pixels).numpy()

        return run
    if runtime == "openvino":
        from .ircache import IRCache

        ov_model = IRCache(cache_dir).get_or_convert(
            f"{version}#conv-maps", lambda: convert_function(compile_feature_map(model))
        )
        # One model with free height and width. Copies compiled for each recurring size ran
        # the indexer's region passes at 95-102 ms a photo against 108-113 ms, for 1-1.8 GB
        # more memory (6 sizes in the clothing set): not worth it (docs/BENCHMARKS.md).
        return OpenVINOForward(ov_model, precision, name=f"{version} (feature map)",
                               normalize=False, threads=threads)
    raise ValueError(f"unknown runtime {runtime!r}")


def limit_tensorflow_threads(threads: int) -> None:
    """Cap TensorFlow's threads for this process (intra- and inter-op), before it runs
    anything; later, TensorFlow keeps the threads it has and this only logs why."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as exc:
        log.warning("TensorFlow already runs; its threads stay as they are (%s)", exc)


def tensorflow_precision() -> str:
    """The precision TensorFlow's oneDNN kernels compute in, in this process: ``bf16`` or
    ``fp32``, by measurement.

    ``ONEDNN_DEFAULT_FPMATH_MODE=BF16`` (:func:`imgsearch.embedder.apply_precision`) is a
    request that oneDNN may ignore: on Intel AMX it rounds convolution and matrix product
    inputs to bf16, but on an AMD EPYC with AVX512_BF16 and no AMX its kernels stay fp32,
    bit for bit. CPU flags cannot tell the two apart, so this runs one small convolution and
    one matrix product of fixed random data (~0.1 s, once per process: oneDNN fixes its
    mode with its first kernel) and compares them with float64.
    """
    global _tensorflow_precision
    if _tensorflow_precision is None:
        import tensorflow as tf

        rng = np.random.default_rng(0)
        x = rng.standard_normal((1, 14, 14, 64)).astype(np.float32)
        w = rng.standard_normal((3, 3, 64, 64)).astype(np.float32)
        conv = tf.function(lambda a, b: tf.nn.conv2d(a, b, 1, "SAME"))
        matmul = tf.function(tf.matmul)
        a, b = x.reshape(196, 64), w.reshape(576, 64)[:64]
        errors = [
            relative_error(conv(x, w).numpy(),
                           tf.nn.conv2d(x.astype(np.float64), w.astype(np.float64), 1,
                                        "SAME").numpy()),
            relative_error(matmul(a, b).numpy(), a.astype(np.float64) @ b.astype(np.float64)),
        ]
        _tensorflow_precision = "bf16" if max(errors) > BF16_ERROR_FLOOR else "fp32"
        log.debug("TensorFlow computes in %s (probe errors %s)", _tensorflow_precision, errors)
    return _tensorflow_precision


def relative_error(value: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(value - reference).max() / np.abs(reference).max())


def openvino_precision(compiled, core) -> str:
    """The precision a compiled OpenVINO model computes in: ``bf16`` where the plugin kept a
    bf16 hint and the CPU does bf16 natively (its ``BF16`` capability), else ``fp32``."""
    import openvino as ov

    kept = compiled.get_property("INFERENCE_PRECISION_HINT") == ov.Type.bf16
    native = "BF16" in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "bf16" if kept and native else "fp32"


def compile_feature_map(model):
    """The network of ``model`` without its pooling, on inputs of any size: ``uint8 [N, H, W,
    3]`` -> ``float32 [N, H/32, W/32, C]``."""
    import keras
    import tensorflow as tf

    # The same architecture with free spatial dimensions, holding the same weights.
    net = keras.applications.ResNet50(weights=None, include_top=False,
                                      input_shape=(None, None, 3))
    net.set_weights(model.get_weights())
    preprocess = preprocess_fn()

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)],
                 reduce_retracing=True)
    def forward(pixels):
        return tf.cast(net(preprocess(tf.cast(pixels, tf.float32)), training=False), tf.float32)

    return forward


def compile_forward(model, input_size: int, *, with_norms: bool = False):
    """``uint8 [N,224,224,3]`` -> unit vectors: preprocessing, the network and L2
    normalisation in one compiled graph over whole batches (per-image ``predict`` is several
    times slower on a CPU). ``with_norms``: ``(vectors, norms)``, the pooled features' L2
    norms too, which the ImageNet head needs (:mod:`imgsearch.tags`); the vectors are the
    same ops on the same tensor, bit for bit (tests/imgsearch/test_tags.py)."""
    import tensorflow as tf

    preprocess = preprocess_fn()

    @tf.function(
        input_signature=[tf.TensorSpec([None, input_size, input_size, 3], tf.uint8)],
        reduce_retracing=True,
    )
    def forward(pixels):
        features = tf.cast(model(preprocess(tf.cast(pixels, tf.float32)), training=False),
                           tf.float32)
        vectors = tf.math.l2_normalize(features, axis=1)
        if not with_norms:
            return vectors
        return vectors, tf.norm(features, axis=1)

    return forward


def preprocess_fn():
    """RGB floats in 0-255 -> the network's input (BGR, ImageNet channel means subtracted)."""
    from keras.applications.resnet50 import preprocess_input

    return preprocess_input


def decline_openvino_telemetry() -> None:
    """OpenVINO's model converter and NNCF send usage events to a web analytics service unless
    the user has declined: an opt-out, recorded per user in ``~/intel/openvino_telemetry``.
    This product's traffic stays on the networks it is given, so it declines before it first
    converts or quantises, by writing that file as OpenVINO's own opt-out does (whose command,
    ``opt_in_out --opt_out``, would itself send an event first). A choice already made, either
    way, is left alone."""
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:
        return
    checker = OptInChecker()
    try:
        if checker.consent_file_base_dir() and not os.path.exists(checker.consent_file()):
            checker.update_result(ConsentCheckResult.DECLINED)
    except OSError as exc:  # an unwritable home: OpenVINO then cannot keep a client id either
        log.warning("could not record the OpenVINO telemetry opt-out: %s", exc)


def convert(model, input_size: int):
    """The Keras model's whole forward pass (:func:`compile_forward` with its norms) as an
    OpenVINO model: uint8 pixels in, unit vectors (output 0) and the pooled features' norms
    (output 1) out, so both runtimes compute exactly the same function."""
    return convert_function(compile_forward(model, input_size, with_norms=True))


def convert_function(function):
    """A ``tf.function`` with an input signature as an OpenVINO model."""
    import openvino as ov

    decline_openvino_telemetry()
    return ov.convert_model(function.get_concrete_function())


class TensorFlowForward:
    """The compiled forward pass on TensorFlow; :attr:`precision` is what it computes in."""

    runtime = "tensorflow"

    def __init__(self, model, input_size: int):
        self._forward = compile_forward(model, input_size, with_norms=True)
        self._lock = threading.Lock()
        self.precision = tensorflow_precision()

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.with_norms(pixels)[0]

    def with_norms(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(unit vectors, pooled features' norms)`` of one pass."""
        # TF already spreads one batch over every core; concurrent calls would only thrash.
        with self._lock:
            vectors, norms = self._forward(pixels)
            return vectors.numpy(), norms.numpy()


class OpenVINOForward:
    """An OpenVINO model compiled twice, lazily, for the two ways this product calls it.

    - One image (a web query): the LATENCY hint, one stream whose threads share each
      convolution, on a copy of the model with a static batch of 1.
    - A batch (the indexer): the THROUGHPUT hint, one stream per pair of cores' worth of
      work, the batch split between them and run at once. On the same machine a batch of 32
      as one LATENCY request ran 14.6-14.9 images/s; split over two THROUGHPUT streams
      (16 each) 16.4-19.9 (docs/BENCHMARKS.md, "Runtimes", has the figures of both modes).

    Compiling takes 0.1-0.2 s, so an indexer that never sees a single image never compiles the
    first, and a web worker never the second. Thread-safe: each mode serialises its own
    requests (a second concurrent request would only share the same cores).

    :attr:`precision` is what the compiled model computes in (:func:`openvino_precision`):
    a bf16 request on a CPU without native bf16 computes, and says, fp32.
    """

    runtime = "openvino"

    def __init__(self, ov_model, precision: str, *, name: str = "model", normalize: bool = True,
                 threads: int = 0):
        import openvino as ov

        if precision not in OPENVINO_PRECISIONS:
            raise ValueError(f"OpenVINO runs fp32 models in {sorted(OPENVINO_PRECISIONS)}, "
                             f"not {precision!r}")
        self._core = ov.Core()
        self._model = ov_model
        self._name = name
        self._normalize = normalize
        self._config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision]}
        if threads:
            self._config["INFERENCE_NUM_THREADS"] = threads
        self._lock = threading.Lock()
        self._single = None  # (compiled model, infer request)
        self._batched = None  # (compiled model, async queue, streams)
        # Fail here, at startup, rather than on the first query.
        self.precision = openvino_precision(self.compile("LATENCY"), self._core)

    def compile(self, hint: str):
        import openvino as ov

        model = self._model
        if hint == "LATENCY":
            # One image at a time: a static batch of 1 lets the plugin plan its kernels and
            # memory ahead (57-67 ms against 68-76 ms with the dynamic batch, same machine).
            model = model.clone()
            shape = model.inputs[0].get_partial_shape()
            shape[0] = 1
            model.reshape({model.inputs[0]: shape})
        try:
            compiled = self._core.compile_model(
                model, "CPU", {**self._config, "PERFORMANCE_HINT": hint}
            )
        except RuntimeError as exc:
            raise RuntimeUnavailable(
                f"IMGSEARCH_RUNTIME=openvino could not compile {self._name} for the CPU "
                f"({hint}): {exc}"
            ) from exc
        if hint == "LATENCY":
            self._single = compiled, compiled.create_infer_request()
        else:
            streams = max(1, int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
            self._batched = compiled, ov.AsyncInferQueue(compiled, streams), streams
        return compiled

    @property
    def has_norms(self) -> bool:
        """The graph's second output is the pooled features' norms (:func:`convert`); an
        IR converted before that, or an int8 model quantised from one, has only vectors."""
        return len(self._model.outputs) > 1

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.with_norms(pixels)[0]

    def with_norms(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(vectors, norms)`` of one pass; norms None when the graph has no such output."""
        with self._lock:
            if len(pixels) == 1:
                if self._single is None:
                    self.compile("LATENCY")
                outputs = self._single[1].infer({0: pixels})
                vectors = outputs[0].copy()
                norms = outputs[1].copy() if self.has_norms else None
            else:
                if self._batched is None:
                    self.compile("THROUGHPUT")
                vectors, norms = self._run_split(pixels)
        if self._normalize:
            # The graph normalises already; an int8 model's last ops do it only to within ~1 %.
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors, norms

    def _run_split(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        _, queue, streams = self._batched
        parts: dict[int, list[np.ndarray]] = {}
        outputs = 2 if self.has_norms else 1

        def collect(request, start):
            parts[start] = [request.get_output_tensor(i).data.copy() for i in range(outputs)]

        queue.set_callback(collect)
        step = -(-len(pixels) // streams)
        for start in range(0, len(pixels), step):
            queue.start_async({0: np.ascontiguousarray(pixels[start : start + step])}, start)
        queue.wait_all()
        ordered = [parts[start] for start in sorted(parts)]
        vectors = np.concatenate([p[0] for p in ordered])
        return vectors, np.concatenate([p[1] for p in ordered]) if outputs > 1 else None
