"""Why it matched: a result's cosine split exactly over the cells of both images' feature maps.

The model's vector is the average of its last convolutional map (7 x 7 cells of 2,048
channels for a 224² input), normalised. With ``m_q`` and ``m_r`` the two averages and ``q``,
``r`` the unit vectors::

    cos = q . r = (1/49) sum_i f_i . r / |m_q|    (f_i: the query's cells)

so cell ``i`` of the query contributes ``f_i . r / (49 |m_q|)`` and the 49 contributions sum to
the cosine, exactly; the same holds for the result's cells against ``q``. The cells lie evenly
over the part of the photo the model's input was made from (its resize mode's frame: the
central square for ``crop``), which the explanation carries so a page can place them.

:class:`Explainer` computes explanations for the web app. The result's map comes from its
indexed file (read on demand, refused if its bytes no longer hash to the id) and is cached per
worker: a map is 7 x 7 x 2,048 float32 = 401 KB, so 32 of them hold 12.8 MB. Nothing here
writes to the index.
"""

from __future__ import annotations

import base64
import io
import time
from dataclasses import dataclass, field
from pathlib import PurePath

import numpy as np

from .errors import Conflict
from .images import ImageError, decode_rgb, read_indexed, thumbnail_webp
from .model import ImageModel
from .recent import Recent
from .search import SearchService, UnknownId, milliseconds
from .store import VECTOR_FIELD

SIDES = ("query", "result")
MAP_CACHE_SIZE = 32
# The heat map PNG: the photo's longer side at most this, and the overlay's strongest opacity.
PNG_SIZE = 512
HEAT_OPACITY = 0.8
# Inferno-like colour stops (share from low to high): deep purple, orange, pale yellow.
HEAT_STOPS = ((0.0, (60, 15, 110)), (0.55, (230, 95, 45)), (1.0, (252, 250, 160)))


class ExplainUnavailable(Conflict):
    """This result cannot be explained now (``code`` names why; the message says what to do)."""


@dataclass(frozen=True, eq=False)
class CellMap:
    """One image's last convolutional map and where its cells lie on the photo."""

    cells: np.ndarray  # float32 [rows, cols, channels]
    width: int  # the photo's size, after EXIF orientation
    height: int
    frame: tuple[float, float, float, float]  # fractions of the photo the cells cover


def contributions(query: np.ndarray, result: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Two maps ``[rows, cols, C]`` -> (each query cell's share, each result cell's share, the
    cosine of the two average-pooled vectors); either grid of shares sums to the cosine."""
    fq, fr = query.astype(np.float64), result.astype(np.float64)
    mq, mr = fq.mean(axis=(0, 1)), fr.mean(axis=(0, 1))
    nq, nr = max(np.linalg.norm(mq), 1e-12), max(np.linalg.norm(mr), 1e-12)
    q, r = mq / nq, mr / nr
    cells = fq.shape[0] * fq.shape[1]
    query_share = fq @ r / (cells * nq)
    result_share = fr @ q / (result.shape[0] * result.shape[1] * nr)
    return query_share, result_share, float(q @ r)


@dataclass(eq=False)
class Side:
    """One image of an explanation: its id (None for an upload), cell shares and placement."""

    id: str | None
    shares: np.ndarray  # float64 [rows, cols], row-major from the top left
    map: CellMap
    data: bytes = field(repr=False)  # the file, for drawing; not part of the JSON

    def thumbnail_data_url(self, size: int = 256) -> str:
        """The photo, longer side at most ``size``, as a ``data:`` URL (WebP)."""
        rgb = decode_rgb(self.data, short_side=size)
        return "data:image/webp;base64," + base64.b64encode(thumbnail_webp(rgb, size)).decode()

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "cells": self.shares.tolist(),
            "frame": [round(v, 6) for v in self.map.frame],
            "width": self.map.width,
            "height": self.map.height,
        }


@dataclass(eq=False)
class Explanation:
    cosine: float  # of the two maps' vectors: what the cells sum to
    indexed_cosine: float  # the query's vector against the result's indexed vector
    query: Side
    result: Side
    model_version: str
    index: str
    timings_ms: dict[str, float]

    def side(self, name: str) -> Side:
        return self.query if name == "query" else self.result

    def share_range(self) -> tuple[float, float]:
        """The lowest and highest cell share over both images: the heat maps' scale."""
        shares = (self.query.shares, self.result.shares)
        return float(min(s.min() for s in shares)), float(max(s.max() for s in shares))

    def to_json(self) -> dict:
        rows, cols = self.result.shares.shape
        return {
            "model_version": self.model_version,
            "index": self.index,
            "id": self.result.id,
            "cosine": self.cosine,
            "indexed_cosine": round(self.indexed_cosine, 6),
            "grid": [rows, cols],
            "query": self.query.to_json(),
            "result": self.result.to_json(),
            "timings_ms": self.timings_ms,
        }


class Explainer:
    """Explanations of search results for the web app, on the service's current route (the
    model serving queries and the index it built)."""

    def __init__(self, service: SearchService, cache_size: int = MAP_CACHE_SIZE):
        self.service = service
        self.maps: Recent[CellMap] = Recent(cache_size)  # by (model version, image id)

    def explain(self, doc_id: str, *, query_id: str | None = None,
                query_data: bytes | None = None) -> Explanation | None:
        """Why ``doc_id`` matches the indexed image ``query_id`` or the photo ``query_data``;
        None when ``doc_id`` is unknown. UnknownId for an unknown ``query_id``, ImageError
        for a bad upload, ExplainUnavailable when a file cannot be read as indexed."""
        if (query_id is None) == (query_data is None):
            raise ValueError("give exactly one of query_id and query_data")
        route = self.service.route()
        model, store = route.model, self.service.store
        if not model.has_feature_maps:
            raise ExplainUnavailable(
                "explain_unavailable",
                "The int8 model serving now has no feature map to explain with; explanations "
                "need an fp32 or bf16 model.")
        t0 = time.perf_counter()
        source = store.get(doc_id, with_vector=True, index=route.index)
        if source is None:
            return None
        if query_id is not None:
            query_source = store.get(query_id, index=route.index)  # its map, not its vector
            if query_source is None:
                raise UnknownId(f"No indexed image has the id {query_id} (parameter query).")
            query_bytes = self._indexed_file(query_id, query_source)
            query_map = self._cached_map(model, query_id, query_bytes)
        else:
            query_bytes = query_data
            query_map = self._map(model, query_data, self.service.settings.query_pixel_cap)
        result_bytes = self._indexed_file(doc_id, source)
        result_map = self._cached_map(model, doc_id, result_bytes)
        t1 = time.perf_counter()
        query_share, result_share, cosine = contributions(query_map.cells, result_map.cells)
        q = query_map.cells.mean(axis=(0, 1))
        stored = np.asarray(source[VECTOR_FIELD], np.float32)
        indexed_cosine = float(q @ stored / max(np.linalg.norm(q), 1e-12))
        t2 = time.perf_counter()
        return Explanation(
            cosine=cosine,
            indexed_cosine=indexed_cosine,
            query=Side(query_id, query_share, query_map, query_bytes),
            result=Side(doc_id, result_share, result_map, result_bytes),
            model_version=route.model_version,
            index=route.index,
            timings_ms=milliseconds(maps=t1 - t0, explain=t2 - t1, total=t2 - t0),
        )

    def _indexed_file(self, doc_id: str, source: dict) -> bytes:
        """The indexed file's bytes, only while they still hash to the id."""
        try:
            return read_indexed(doc_id, source.get("path"))
        except ImageError as exc:
            # Said to readers of the web app: the path below the indexed folder, never where
            # that folder is on the server.
            root, rel = source.get("root"), source.get("rel_path")
            path = f"{PurePath(root).name}/{rel}" if root and rel else source.get("file_name")
            if exc.reason == "changed":
                raise ExplainUnavailable(
                    "file_unavailable",
                    f"The file of image {doc_id} ({path}) has changed since it was indexed; "
                    "re-index its folder to explain matches with it.") from None
            raise ExplainUnavailable(
                "file_unavailable",
                f"The file of image {doc_id} ({path}) cannot be read any more; explaining a "
                "match needs the indexed file. Re-index its folder if it moved.") from None

    def _cached_map(self, model: ImageModel, doc_id: str, data: bytes) -> CellMap:
        key = (model.version, doc_id)
        cell_map = self.maps.get(key)
        if cell_map is None:
            cell_map = self._map(model, data)
            self.maps.put(key, cell_map)
        return cell_map

    def _map(self, model: ImageModel, data: bytes, max_pixels: int | None = None) -> CellMap:
        """The feature map of ``data``; a query photo's (``max_pixels``: the query cap) or an
        indexed file's (the indexer's cap). The decode holds one of the service's slots."""
        with self.service.decodes.hold():
            image = model.decode(data, max_pixels=max_pixels)
        return CellMap(model.feature_map(image.pixels), image.width, image.height,
                       model.input_frame(image.width, image.height))


def heatmap_png(side: Side, low: float, high: float, size: int = PNG_SIZE) -> bytes:
    """The photo of ``side`` (longer side at most ``size``) with its cell shares drawn over
    the cells' frame, warmer and more opaque where a cell gave more, from ``low`` to ``high``
    (the range over both sides, so the two pictures compare; the page draws the same)."""
    from PIL import Image

    rgb = decode_rgb(side.data, short_side=size)
    rgb.thumbnail((size, size), Image.Resampling.BILINEAR)
    width, height = rgb.size
    x0, y0, x1, y1 = side.map.frame
    left, top = round(x0 * width), round(y0 * height)
    frame_size = (max(1, round((x1 - x0) * width)), max(1, round((y1 - y0) * height)))
    strength = np.clip((side.shares - low) / max(high - low, 1e-12), 0, 1).astype(np.float32)
    grid = Image.fromarray(strength, mode="F").resize(frame_size, Image.Resampling.BILINEAR)
    heat = Image.new("F", (width, height), 0.0)
    heat.paste(grid, (left, top))  # a pad frame reaches past the photo: paste clips it
    v = np.asarray(heat)[..., None]
    alpha = 0.15 + (HEAT_OPACITY - 0.15) * v
    photo = np.asarray(rgb, np.float32) * 0.72  # dimmed, as the page dims it
    out = photo * (1 - alpha) + _inferno(v) * alpha
    buffer = io.BytesIO()
    Image.fromarray(out.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def _inferno(v: np.ndarray) -> np.ndarray:
    """Strengths ``[..., 1]`` in 0..1 -> RGB ``[..., 3]`` along HEAT_STOPS."""
    positions = [p for p, _ in HEAT_STOPS]
    return np.stack([np.interp(v[..., 0], positions, [c[k] for _, c in HEAT_STOPS])
                     for k in range(3)], axis=-1)
