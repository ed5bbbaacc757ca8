"""Images in, unit-length 2,048-d ResNet50 vectors out.

The model runs through one compiled ``tf.function`` over whole batches (``predict`` per image
is several times slower on CPU); preprocessing and L2 normalisation are inside the graph.
"""

from __future__ import annotations

import os
import threading

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from .settings import Settings  # noqa: E402

INPUT_SIZE = 224
DIMS = 2048
PREPROCESSING = "caffe-bgr-mean"  # keras.applications.resnet50.preprocess_input


def model_version(weights_digest: str, resize_mode: str) -> str:
    """The identity of the vectors: architecture, weights, preprocessing and resizing.

    Two runs that produce the same string produce comparable vectors; anything else is refused
    by the store.
    """
    return (
        f"resnet50-avg/w={weights_digest[:16]}/pre={PREPROCESSING}"
        f"/in={INPUT_SIZE}/resize={resize_mode}"
    )


class Embedder:
    """ResNet50 (include_top=False, pooling='avg') with real weights, loaded once.

    Thread-safe: a web worker's threads share one instance.
    """

    def __init__(self, settings: Settings):
        import tensorflow as tf

        from .weights import load_resnet50

        self.settings = settings
        self.model, self.weights_digest = load_resnet50(
            settings.weights, settings.cache_dir, include_top=False, pooling="avg"
        )
        self.version = model_version(self.weights_digest, settings.resize_mode)
        self._lock = threading.Lock()
        model = self.model
        preprocess = _preprocess_fn()

        @tf.function(
            input_signature=[tf.TensorSpec([None, INPUT_SIZE, INPUT_SIZE, 3], tf.uint8)],
            reduce_retracing=True,
        )
        def forward(pixels):
            features = model(preprocess(tf.cast(pixels, tf.float32)), training=False)
            return tf.math.l2_normalize(tf.cast(features, tf.float32), axis=1)

        self._forward = forward

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """``uint8 [N, 224, 224, 3]`` RGB -> ``float32 [N, 2048]`` unit vectors."""
        if pixels.ndim == 3:
            pixels = pixels[None]
        if pixels.shape[1:] != (INPUT_SIZE, INPUT_SIZE, 3) or pixels.dtype != np.uint8:
            raise ValueError(f"expected uint8 [N,224,224,3], got {pixels.dtype} {pixels.shape}")
        if len(pixels) == 0:
            return np.zeros((0, DIMS), np.float32)
        # TF already spreads one batch over every core; concurrent calls would only thrash.
        with self._lock:
            return self._forward(pixels).numpy()

    def warm_up(self) -> None:
        """Trace the graph now rather than on the first user's request."""
        self.embed(np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.uint8))


def _preprocess_fn():
    from keras.applications.resnet50 import preprocess_input

    return preprocess_input
