"""The embedding model: image bytes in, unit-length 2,048-d ResNet50 vectors out.

:class:`Embedder` is the one object that knows a model's input contract (size, resize mode,
preprocessing) and identity (:func:`model_version`). The network runs on TensorFlow or OpenVINO
(:mod:`imgsearch.runtime`, ``IMGSEARCH_RUNTIME``) over whole batches, preprocessing and L2
normalisation inside the graph. For region search it also describes parts of a photo: region
vectors pooled from the whole photo's feature map (:meth:`Embedder.region_vectors`) and a
box's vector at the same scale (:meth:`Embedder.embed_box`), per :mod:`imgsearch.regions` mode.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from .images import DecodedImage, decode_image, input_frame  # noqa: E402
from .quantize import is_quantized, load_quantized, require_openvino  # noqa: E402
from .regions import (  # noqa: E402
    RegionMode,
    Regions,
    box_pass_size,
    check_box,
    pass_size,
    pool,
    windows,
)
from .runtime import (  # noqa: E402
    OpenVINOForward,
    limit_tensorflow_threads,
    make_forward,
    make_map_forward,
    resolve_runtime,
)
from .settings import Settings  # noqa: E402

ARCHITECTURE = "resnet50-avg"
INPUT_SIZE = 224
DIMS = 2048
PREPROCESSING = "caffe-bgr-mean"  # keras.applications.resnet50.preprocess_input
# CPU features with native bf16 dot products; without them bf16 would only be emulated.
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})

log = logging.getLogger(__name__)
_process_precision: str | None = None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is not there)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def resolve_precision(requested: str, flags: frozenset[str] | None = None) -> str:
    """The precision to ask the runtime for: ``auto`` becomes ``bf16`` on CPUs with native
    bf16 dot products and ``fp32`` elsewhere. A request, not a fact: each runtime then says
    what it computes in (:attr:`Embedder.precision`), which on some of those CPUs is fp32."""
    if requested != "auto":
        return requested
    flags = cpu_flags() if flags is None else flags
    return "bf16" if flags & BF16_CPU_FLAGS else "fp32"


def apply_precision(precision: str) -> None:
    """Ask TensorFlow's oneDNN CPU kernels to do fp32 maths in ``precision``, for this whole
    process.

    ``bf16`` lets convolutions and matrix products round their inputs to bf16 and accumulate
    in fp32; everything else (batch norm, sums, pooling, the output) stays fp32, which keeps
    vectors within cosine 0.9998 of strict fp32 (docs/BENCHMARKS.md). oneDNN may not honour
    it (:func:`imgsearch.runtime.tensorflow_precision` measures whether it does), and it reads
    the mode once, when it builds its first kernel: set it before any model runs.
    """
    global _process_precision
    if _process_precision not in (None, precision):
        log.warning("precision %s requested, but this process already runs %s; oneDNN "
                    "keeps the first one", precision, _process_precision)
        return
    os.environ["ONEDNN_DEFAULT_FPMATH_MODE"] = "BF16" if precision == "bf16" else "STRICT"
    _process_precision = precision


def model_version(weights_digest: str, resize_mode: str) -> str:
    """The identity of the vectors: architecture, weights, preprocessing and resizing.

    Two runs that produce the same string produce comparable vectors; anything else is refused
    by the store. A fine-tuned model has other weights, hence another digest and version.
    """
    return (
        f"{ARCHITECTURE}/w={weights_digest[:16]}/pre={PREPROCESSING}"
        f"/in={INPUT_SIZE}/resize={resize_mode}"
    )


class Embedder:
    """One embedding model with its whole input contract: ResNet50 (include_top=False,
    pooling='avg') with real weights, loaded once.

    The model, not its callers, owns how an image becomes its input: :meth:`decode` resizes
    with the model's own mode and size, and :meth:`embed` applies its preprocessing and
    normalisation. Its identity (:attr:`version`) names all of that, so nothing outside needs
    to know a resize mode. Decoding a file stays shared (:func:`imgsearch.images.decode_image`).

    ``model_dir`` loads a fine-tuned model (``python -m indexer finetune``) or an int8 one
    (``python -m indexer quantize``, OpenVINO only) instead of the base one; without it,
    ``settings.model`` decides (see :mod:`imgsearch.modelstore`). Thread-safe: a web
    worker's threads share one instance.
    """

    architecture = ARCHITECTURE  # satisfies imgsearch.model.ImageModel
    dims = DIMS
    input_size = INPUT_SIZE
    preprocessing = PREPROCESSING

    def __init__(self, settings: Settings, model_dir: Path | None = None):
        requested = resolve_precision(settings.precision)
        apply_precision(requested)

        from .modelstore import load_model_dir, resolve_model_dir
        from .weights import load_resnet50_with_head

        self.settings = settings
        model_dir = model_dir if model_dir is not None else resolve_model_dir(settings)
        head = None
        if model_dir is None:
            self.model, self.weights_digest, head = load_resnet50_with_head(
                settings.weights, settings.cache_dir, pooling="avg"
            )
            self.resize_mode = settings.resize_mode
            self.card: dict | None = None
        else:
            # A tuned model was trained with its own resize mode: it comes with the model.
            self.model, self.weights_digest, self.card = load_model_dir(model_dir)
            self.resize_mode = self.card["resize_mode"]
        self.version = model_version(self.weights_digest, self.resize_mode)
        # Both runtimes compute the same vectors (cosine >= 0.99999): one version for both.
        self.runtime = resolve_runtime(settings.runtime)
        if settings.inference_threads and self.runtime == "tensorflow":
            limit_tensorflow_threads(settings.inference_threads)
        self._map_forward = None  # built on first use: only region indexing and queries need it
        self._map_lock = threading.Lock()
        if is_quantized(self.card):
            # int8 vectors are other vectors: the model has a version of its own.
            require_openvino(self.runtime, settings.runtime, model_dir)
            self.version = self.card["model_version"]
            self._forward = OpenVINOForward(
                load_quantized(model_dir, self.card), "fp32", name=self.version,
                threads=settings.inference_threads,
            )
            self.precision = "int8"
        else:
            self._forward = make_forward(
                self.runtime, self.model, input_size=self.input_size, version=self.version,
                precision=requested, cache_dir=settings.cache_dir,
                threads=settings.inference_threads,
            )
            # What the runtime computes in, measured, not what was asked for: on an AMD EPYC
            # with AVX512_BF16 and no AMX, TensorFlow's kernels stay fp32 while OpenVINO's run
            # bf16 (tests/imgsearch/test_embedder.py holds each runtime to what it reports).
            self.precision = self._forward.precision
            if requested != self.precision:
                # Under ``auto`` this is expected; a precision named by the user is not kept.
                log.log(logging.INFO if settings.precision == "auto" else logging.WARNING,
                        "%s computes in %s on this CPU (%s asked for)", self.runtime,
                        self.precision, requested)
        # Tags come from the base model's own ImageNet head only (imgsearch/tags.py says why
        # not a tuned or int8 model's); None: this model does not tag.
        # A tuned model predicts its own labels instead, from its proxies (imgsearch/labels.py)
        # when its card names them; an int8 model's vectors are other vectors: neither.
        self.tagger = None
        if head is not None and settings.tags == "on" and self.card is None:
            from .tags import Tagger

            self.tagger = Tagger(*head)
        elif (self.card is not None and self.card.get("proxies") and not self.is_quantized
              and settings.tags == "on"):
            from .labels import Labeler

            self.tagger = Labeler.from_model_dir(model_dir, self.card["proxies"])

    @property
    def is_base(self) -> bool:
        return self.card is None

    @property
    def is_quantized(self) -> bool:
        return is_quantized(self.card)

    @property
    def has_feature_maps(self) -> bool:
        return not self.is_quantized

    def decode(
        self, data: bytes, *, thumbnail_size: int = 0, max_pixels: int | None = None
    ) -> DecodedImage:
        """Image bytes -> this model's input (and a thumbnail when asked); ImageError if bad."""
        return decode_image(
            data,
            target=self.input_size,
            resize_mode=self.resize_mode,
            thumbnail_size=thumbnail_size,
            max_pixels=self.settings.max_image_pixels if max_pixels is None else max_pixels,
        )

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """``uint8 [N, 224, 224, 3]`` RGB (from :meth:`decode`) -> ``float32 [N, 2048]`` unit
        vectors."""
        pixels = self._batch(pixels)
        if len(pixels) == 0:
            return np.zeros((0, self.dims), np.float32)
        return self._forward(pixels)

    def _batch(self, pixels: np.ndarray) -> np.ndarray:
        """``pixels`` as a batch of this model's inputs (one image becomes a batch of one);
        ValueError for anything else."""
        if pixels.ndim == 3:
            pixels = pixels[None]
        size = self.input_size
        if pixels.shape[1:] != (size, size, 3) or pixels.dtype != np.uint8:
            raise ValueError(f"expected uint8 [N,{size},{size},3], got {pixels.dtype} "
                             f"{pixels.shape}")
        return pixels

    def embed_and_tag(self, pixels: np.ndarray) -> tuple[np.ndarray, list[dict] | None]:
        """:meth:`embed`'s vectors and, when the model tags (:attr:`tagger`), each image's
        tag fields (:meth:`imgsearch.tags.Tagger.tag`), from the same forward pass."""
        if self.tagger is None or len(pixels) == 0:
            return self.embed(pixels), None
        if not self.tagger.uses_norms:  # a tuned model's labels need the vectors only
            vectors = self.embed(pixels)
            return vectors, self.tagger.tag(vectors)
        vectors, norms = self.embed_with_norms(pixels)
        return vectors, self.tagger.tag(vectors, norms)

    def embed_with_norms(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`embed`'s vectors and the L2 norms of the pooled features they normalise (what
        the ImageNet head needs), from one pass; for a model whose graph gives them (a base
        or tuned fp32 model: not an int8 one quantised from a graph without them)."""
        pixels = self._batch(pixels)
        if len(pixels) == 0:
            return np.zeros((0, self.dims), np.float32), np.zeros(0, np.float32)
        vectors, norms = self._forward.with_norms(pixels)
        if norms is None:
            raise ValueError(f"the graph of {self.version} gives no norms")
        return vectors, norms

    def class_probabilities(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors, [N, 1000] ImageNet probabilities)`` of one pass, for a model that tags
        (what bench/tags.py chooses the tagger's threshold and count from)."""
        if self.tagger is None:
            raise ValueError(f"{self.version} does not tag: no ImageNet classifier")
        vectors, norms = self.embed_with_norms(pixels)
        return vectors, self.tagger.probabilities(vectors, norms)

    def feature_map(self, pixels: np.ndarray) -> np.ndarray:
        """One model input (``uint8 [224, 224, 3]`` from :meth:`decode`) -> its last
        convolutional map ``float32 [7, 7, 2048]``, whose cell average is the direction of
        :meth:`embed`'s vector (the network average-pools it, then the vector is normalised):
        what :mod:`imgsearch.explain` splits a cosine over."""
        return self._feature_maps(pixels[None])[0]

    def input_frame(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The part of a ``width`` x ``height`` photo this model's input covers (its resize
        mode's), as fractions of the photo: where the feature map's cells lie."""
        return input_frame(width, height, self.resize_mode)

    # -- regions -----------------------------------------------------------------------------

    def region_input(self, data: bytes, mode: RegionMode) -> np.ndarray:
        """Image bytes -> ``uint8 [H, W, 3]``: the whole photo (aspect kept) at ``mode``'s
        region-pass size, its sides whole map cells. ImageError if the bytes are bad."""
        from PIL import Image

        rgb = self._decode_whole(data)
        size = pass_size(rgb.width, rgb.height, self.region_pixels(mode))
        return np.asarray(rgb.resize(size, Image.Resampling.BILINEAR))

    def region_vectors(self, inputs: list[np.ndarray], mode: RegionMode) -> list[Regions]:
        """Region vectors and boxes (``x0, y0, x1, y1`` as fractions of the photo) of each
        :meth:`region_input`, pooled over R-MAC windows at ``mode``'s scales. Inputs of one
        size run through the network as one batch (photos of one aspect ratio share a size)."""
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, pixels in enumerate(inputs):
            by_size.setdefault(pixels.shape, []).append(i)
        out: list[Regions | None] = [None] * len(inputs)
        for members in by_size.values():
            maps = self._feature_maps(np.stack([inputs[i] for i in members]))
            wins = windows(maps.shape[1], maps.shape[2], mode.scales)
            boxes = [w.box for w in wins]
            for i, feature_map in zip(members, maps, strict=True):
                out[i] = Regions(pool(feature_map, wins), boxes)
        return out  # type: ignore[return-value]

    def regions(self, data: bytes, mode: RegionMode) -> Regions:
        """One photo's region vectors and boxes."""
        return self.region_vectors([self.region_input(data, mode)], mode)[0]

    def box_input(self, data: bytes, box: tuple[float, float, float, float],
                  mode: RegionMode, max_pixels: int | None = None) -> np.ndarray:
        """The part ``box`` (fractions ``x0, y0, x1, y1``) of a photo as the network's input,
        at the scale of ``mode``'s indexed regions: resized by the factor its whole photo gets
        in the region pass. ImageError for bad bytes, BoxError for a box outside the photo or
        under one map cell a side at that scale (:func:`imgsearch.regions.check_box`);
        ``max_pixels`` as :meth:`decode`'s."""
        from PIL import Image

        rgb = self._decode_whole(data, max_pixels)
        pixels = self.region_pixels(mode)
        check_box(box, rgb.width, rgb.height, pixels)
        x0, y0, x1, y1 = box
        crop = (x0 * rgb.width, y0 * rgb.height, x1 * rgb.width, y1 * rgb.height)
        size = box_pass_size(crop[2] - crop[0], crop[3] - crop[1], rgb.width, rgb.height, pixels)
        return np.asarray(rgb.resize(size, Image.Resampling.BILINEAR, box=crop))

    def embed_region(self, pixels: np.ndarray) -> np.ndarray:
        """A :meth:`box_input` -> its unit vector: the map average-pooled, as regions are."""
        vector = self._feature_maps(pixels[None])[0].mean(axis=(0, 1))
        return vector / max(float(np.linalg.norm(vector)), 1e-12)

    def embed_box(self, data: bytes, box: tuple[float, float, float, float],
                  mode: RegionMode) -> np.ndarray:
        """The unit vector of the part ``box`` of a photo, comparable with ``mode``'s regions."""
        return self.embed_region(self.box_input(data, box, mode))

    def region_pixels(self, mode: RegionMode) -> float:
        """Pixels of ``mode``'s region pass for this model."""
        return mode.area * self.input_size**2

    def _decode_whole(self, data: bytes, max_pixels: int | None = None):
        from .images import decode_rgb

        # Twice the input size on the shorter side is more than any region pass needs.
        return decode_rgb(data, short_side=2 * self.input_size,
                          max_pixels=self.settings.max_image_pixels if max_pixels is None
                          else max_pixels)

    def _feature_maps(self, pixels: np.ndarray) -> np.ndarray:
        """``uint8 [N, H, W, 3]`` -> ``float32 [N, H/32, W/32, 2048]``."""
        if self._map_forward is None:
            with self._map_lock:
                if self._map_forward is None:
                    if not self.has_feature_maps:
                        raise ValueError("feature maps come from fp32 models; this one is int8")
                    self._map_forward = make_map_forward(
                        self.runtime, self.model, version=self.version,
                        precision=self.precision, cache_dir=self.settings.cache_dir,
                        threads=self.settings.inference_threads)
        return self._map_forward(pixels)

    def embed_bytes(self, data: bytes) -> np.ndarray:
        """One image file's bytes -> its unit vector."""
        return self.embed(self.decode(data).pixels)[0]

    def warm_up(self) -> None:
        """Trace the graph now rather than on the first user's request."""
        self.embed(np.zeros((1, self.input_size, self.input_size, 3), np.uint8))
