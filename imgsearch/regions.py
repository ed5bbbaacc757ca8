"""Region vectors: a convolutional feature map pooled over multi-scale overlapping windows.

R-MAC (Tolias et al., 2016) lays square windows over the last convolutional map at ``L`` scales:
at scale ``l`` the side is ``2 * min(H, W) / (l + 1)`` cells, and the windows are spread evenly
along each axis so that neighbours overlap by about 40 %. Each window's cells are pooled into
one vector, L2-normalised, with its box as fractions of the image. Average pooling (not R-MAC's
max) keeps a region vector comparable with the global vector of a photo of that region alone,
which the network also average-pools: a crop searched as a query then meets its region.

Pure numpy over maps computed elsewhere (:meth:`imgsearch.embedder.Embedder.region_vectors`),
plus the region modes and the checks of a query box. Measured design (docs/BENCHMARKS.md,
"Region search"): the photo's region pass at 1.5 x 224² pixels, scales 1-2 (8 windows a
photo), and box queries described at the scale of the indexed regions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .errors import BadInput

CELL = 32  # input pixels per cell of ResNet50's last map


@dataclass(frozen=True)
class RegionMode:
    """How an index's region vectors are made: the region pass's pixels in multiples of the
    model input's (``area``) and the R-MAC scales. Queries must use the index's mode: it is
    recorded in the index's ``_meta`` (:meth:`to_meta`) and read back (:func:`mode_from_meta`)."""

    name: str
    area: float
    scales: int

    def to_meta(self) -> dict:
        return {"mode": self.name, "area": self.area, "scales": self.scales}


# standard: 10-20 % crops R@1 0.875, 20-40 % R@1 0.995, 5-10 % R@10 0.940, 8 windows a photo,
# at 1.45x the global pass's pixels. fine: 5-10 % R@10 0.950 and 10-20 % R@1 0.950, 22.5
# windows, 2x the pixels (docs/BENCHMARKS.md, "Region search: design measurements").
REGION_MODES = {
    "standard": RegionMode("standard", 1.5, 2),
    "fine": RegionMode("fine", 2.0, 3),
}


class Regions(NamedTuple):
    """One photo's region vectors ``float32 [R, C]`` (unit length) and their boxes."""

    vectors: np.ndarray
    boxes: list[tuple[float, float, float, float]]


def mode_from_meta(meta: dict | None) -> RegionMode | None:
    """The region mode an index's ``_meta.regions`` records; None for an index without."""
    if not meta:
        return None
    return RegionMode(str(meta["mode"]), float(meta["area"]), int(meta["scales"]))


class BoxError(BadInput):
    """A query box that cannot be searched with; the message says why."""

    code = "invalid_box"


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x0,y0,x1,y1"`` (fractions of the image) -> four floats; BoxError if malformed."""
    parts = text.split(",")
    if len(parts) != 4:
        raise BoxError(
            f"box must be four numbers x0,y0,x1,y1 (fractions of the image), not {text[:60]!r}")
    try:
        numbers = tuple(float(p) for p in parts)
    except ValueError:
        raise BoxError(f"box must be four numbers x0,y0,x1,y1, not {text[:60]!r}") from None
    if not all(math.isfinite(n) for n in numbers):
        raise BoxError("box numbers must be finite")
    return numbers  # type: ignore[return-value]


def check_box(box: tuple[float, float, float, float], width: int, height: int,
              pixels: float) -> None:
    """Refuse a box outside the image, of no size, or smaller than one map cell a side at the
    region scale (``pixels``: the region pass's pixel count). Why that minimum: a box of less
    than one cell has no cell of the network's last map of its own; its vector would be an
    upsampled blur of the one cell around it, and it would meet indexed regions (the smallest
    2/3 of the photo's shorter side at scale 2) at a scale none of them has."""
    x0, y0, x1, y1 = box
    if not (0.0 <= x0 <= 1.0 and 0.0 <= y0 <= 1.0 and 0.0 <= x1 <= 1.0 and 0.0 <= y1 <= 1.0):
        raise BoxError("box corners must lie inside the image: x0, y0, x1, y1 between 0 and 1")
    if x1 <= x0 or y1 <= y0:
        raise BoxError("box must have a size: x1 greater than x0 and y1 greater than y0")
    scale = math.sqrt(pixels / (width * height))
    side_w, side_h = (x1 - x0) * width * scale, (y1 - y0) * height * scale
    if min(side_w, side_h) < CELL:
        least_w = CELL / (width * scale)
        least_h = CELL / (height * scale)
        raise BoxError(
            f"box is too small to describe: on this {width}x{height} image it must span at "
            f"least {least_w:.1%} of the width and {least_h:.1%} of the height (one cell of "
            "the network's feature map at the scale regions are indexed)")


@dataclass(frozen=True)
class Window:
    """Cells ``[y0, y1) x [x0, x1)`` of a map, and the same box as fractions of the image."""

    y0: int
    x0: int
    y1: int
    x1: int
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in [0, 1]


def windows(height: int, width: int, scales: int, *, overlap: float = 0.4) -> list[Window]:
    """R-MAC windows over an ``height x width`` map at ``scales`` scales (1: one window of the
    whole shorter side, slid along the longer one), in order of scale."""
    out: list[Window] = []
    seen: set[tuple[int, int, int, int]] = set()
    short = min(height, width)
    for level in range(1, scales + 1):
        side = max(1, round(2 * short / (level + 1)))
        for y0 in _starts(height, side, overlap):
            for x0 in _starts(width, side, overlap):
                cells = (y0, x0, min(height, y0 + side), min(width, x0 + side))
                if cells in seen:
                    continue
                seen.add(cells)
                y, x, y1, x1 = cells
                out.append(Window(y, x, y1, x1, (x / width, y / height, x1 / width,
                                                 y1 / height)))
    return out


def _starts(length: int, side: int, overlap: float) -> list[int]:
    """Evenly spaced window starts along one axis, neighbours overlapping by ~``overlap``."""
    if side >= length:
        return [0]
    count = 1 + int(np.ceil((length - side) / (side * (1 - overlap))))
    return sorted({round(i * (length - side) / (count - 1)) for i in range(count)})



def pass_size(width: int, height: int, pixels: float) -> tuple[int, int]:
    """The size a ``width x height`` photo is resized to for its region pass: about ``pixels``
    pixels, aspect kept, both sides whole cells, the longer at most 3 times the shorter."""
    w, h = box_pass_size(width, height, width, height, pixels)  # the whole photo as its box
    return min(w, 3 * h), min(h, 3 * w)


def box_pass_size(box_width: float, box_height: float, width: int, height: int,
                  pixels: float) -> tuple[int, int]:
    """The size of a box (pixels of a ``width x height`` photo) resized by the factor its whole
    photo gets in the region pass: its features then have the scale of the indexed regions.
    At least one cell a side."""
    scale = np.sqrt(pixels / (width * height))
    return tuple(max(CELL, round(side * scale / CELL) * CELL) for side in (box_width, box_height))


def pool(feature_map: np.ndarray, wins: list[Window]) -> np.ndarray:
    """``[H, W, C]`` map -> ``[len(wins), C]`` unit vectors, each window average-pooled."""
    # An integral image makes each window's sum four lookups, whatever its size.
    integral = np.zeros((feature_map.shape[0] + 1, feature_map.shape[1] + 1,
                         feature_map.shape[2]), np.float64)
    integral[1:, 1:] = feature_map.astype(np.float64).cumsum(0).cumsum(1)
    vectors = np.empty((len(wins), feature_map.shape[2]), np.float32)
    for i, w in enumerate(wins):
        total = (integral[w.y1, w.x1] - integral[w.y0, w.x1] - integral[w.y1, w.x0]
                 + integral[w.y0, w.x0])
        vectors[i] = total / ((w.y1 - w.y0) * (w.x1 - w.x0))
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors
