"""What every image model of this product offers: the interface the indexer, the search service,
the explainer and the web app program against.

Three kinds of model satisfy it, all :class:`imgsearch.embedder.Embedder` today: the base
ImageNet ResNet50, a fine-tuned one (``python -m indexer finetune``: its own weights, resize mode
and model card) and an int8 one (``python -m indexer quantize``: OpenVINO only, a version of its
own, and no feature maps). Code that needs to know which asks the capability flags, never a
string or an attribute that happens to be missing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np

    from .images import DecodedImage
    from .regions import RegionMode, Regions

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the photo


@runtime_checkable
class ImageModel(Protocol):
    """An embedding model with its whole input contract and identity."""

    # -- identity: two models with one version give comparable vectors ----------------------
    version: str
    architecture: str
    dims: int
    input_size: int
    resize_mode: str
    preprocessing: str
    # What the network computes in on this CPU, measured by its runtime ("fp32", "bf16") or
    # "int8"; not what was asked for (imgsearch/runtime.py).
    precision: str
    runtime: str  # "tensorflow" or "openvino"
    card: dict | None  # the model card of a tuned or int8 model; None for the base model
    # The Keras network that defines it (an int8 model's fp32 source): what fine-tuning,
    # quantising and the OpenVINO conversion start from.
    model: Any
    # What adds fields to each document from the vectors' pass: the base model's ImageNet
    # tagger (imgsearch/tags.py), a tuned model's label predictions (imgsearch/labels.py), or
    # None. Each has ``version``, ``uses_norms`` and ``tag(vectors[, norms]) -> [fields]``.
    tagger: Any

    # -- capabilities -----------------------------------------------------------------------
    @property
    def is_base(self) -> bool:
        """The base ImageNet model (no model card): the one any server can load."""

    @property
    def is_quantized(self) -> bool:
        """An int8 model: a version of its own, quantised from an fp32 source."""

    @property
    def has_feature_maps(self) -> bool:
        """It can give its last convolutional maps: region vectors and explanations need them
        (an int8 model's graph keeps only its vectors)."""

    # -- the whole photo ---------------------------------------------------------------------
    def decode(self, data: bytes, *, thumbnail_size: int = 0,
               max_pixels: int | None = None) -> DecodedImage: ...

    def embed(self, pixels: np.ndarray) -> np.ndarray: ...

    def embed_bytes(self, data: bytes) -> np.ndarray: ...

    def embed_and_tag(self, pixels: np.ndarray) -> tuple[np.ndarray, list[dict] | None]: ...

    def warm_up(self) -> None: ...

    # -- feature maps (has_feature_maps) ------------------------------------------------------
    def feature_map(self, pixels: np.ndarray) -> np.ndarray: ...

    def input_frame(self, width: int, height: int) -> Box: ...

    def region_input(self, data: bytes, mode: RegionMode) -> np.ndarray: ...

    def region_vectors(self, inputs: list[np.ndarray], mode: RegionMode) -> list[Regions]: ...

    def regions(self, data: bytes, mode: RegionMode) -> Regions: ...

    def box_input(self, data: bytes, box: Box, mode: RegionMode,
                  max_pixels: int | None = None) -> np.ndarray: ...

    def embed_region(self, pixels: np.ndarray) -> np.ndarray: ...

    def embed_box(self, data: bytes, box: Box, mode: RegionMode) -> np.ndarray: ...
