"""R-MAC windows over a feature map, their pooling, query boxes (imgsearch/regions.py), and the
model's region vectors on real photos."""

from __future__ import annotations

import numpy as np
import pytest

from imgsearch.regions import (
    REGION_MODES,
    BoxError,
    check_box,
    mode_from_meta,
    parse_box,
    pool,
    windows,
)

STANDARD = REGION_MODES["standard"]


def test_one_scale_on_a_square_map_is_the_whole_map():
    (only,) = windows(7, 7, 1)
    assert (only.y0, only.x0, only.y1, only.x1) == (0, 0, 7, 7)
    assert only.box == (0.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize("height,width", [(7, 7), (10, 10), (14, 14), (12, 9), (9, 17), (3, 3)])
@pytest.mark.parametrize("scales", [1, 2, 3, 4])
def test_windows_cover_the_map_inside_its_bounds_without_repeats(height, width, scales):
    wins = windows(height, width, scales)
    covered = np.zeros((height, width), bool)
    for w in wins:
        assert 0 <= w.y0 < w.y1 <= height and 0 <= w.x0 < w.x1 <= width
        x0, y0, x1, y1 = w.box
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        assert (x0, y0, x1, y1) == (w.x0 / width, w.y0 / height, w.x1 / width, w.y1 / height)
        covered[w.y0 : w.y1, w.x0 : w.x1] = True
    assert covered.all()
    assert len({(w.y0, w.x0, w.y1, w.x1) for w in wins}) == len(wins)


def test_finer_scales_add_smaller_overlapping_windows():
    counts = [len(windows(10, 13, s)) for s in (1, 2, 3)]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    level2 = [w for w in windows(10, 10, 2) if (w.y1 - w.y0) == 7]
    assert len(level2) == 4  # a 2 x 2 grid of 7-cell windows, overlapping by 4 cells
    assert sorted({w.x0 for w in level2}) == [0, 3]


def test_pooling_averages_each_window_and_normalises():
    rng = np.random.default_rng(0)
    feature_map = rng.random((9, 12, 16), np.float32)
    wins = windows(9, 12, 3)
    pooled = pool(feature_map, wins)
    assert pooled.shape == (len(wins), 16) and pooled.dtype == np.float32
    for w, vector in zip(wins, pooled, strict=True):
        mean = feature_map[w.y0 : w.y1, w.x0 : w.x1].mean(axis=(0, 1))
        np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), rtol=1e-5)


def test_the_whole_map_window_is_the_global_average_pool():
    feature_map = np.random.default_rng(1).random((7, 7, 8), np.float32)
    (whole,) = pool(feature_map, windows(7, 7, 1))
    gap = feature_map.mean(axis=(0, 1))
    np.testing.assert_allclose(whole, gap / np.linalg.norm(gap), rtol=1e-5)


# --- the model's region vectors, on real photos ------------------------------------------------


@pytest.fixture(scope="module")
def photo_bytes(clothing_test_dir) -> list[bytes]:
    return [p.read_bytes() for p in sorted(clothing_test_dir.rglob("*.jpg"))[::31][:12]]


@pytest.fixture(scope="module")
def indexed_regions(embedder, photo_bytes):
    """As the indexer makes them: inputs of one size run as one batch."""
    inputs = [embedder.region_input(data, STANDARD) for data in photo_bytes]
    return embedder.region_vectors(inputs, STANDARD)


def test_batched_region_vectors_are_those_of_one_photo_at_a_time(indexed_regions, photo_bytes,
                                                                  embedder):
    for data, batched in zip(photo_bytes[:3], indexed_regions, strict=False):
        alone = embedder.regions(data, STANDARD)
        assert alone.boxes == batched.boxes
        cosines = np.sum(alone.vectors * batched.vectors, axis=1)
        assert cosines.min() > 0.9999


def test_region_vectors_are_unit_vectors_with_boxes_inside_the_photo(indexed_regions, embedder):
    for vectors, boxes in indexed_regions:
        assert vectors.shape == (len(boxes), embedder.dims) and len(boxes) >= 5
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
        for x0, y0, x1, y1 in boxes:
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        assert (0.0, 0.0) in {(b[0], b[1]) for b in boxes}


def test_boxes_of_photos_find_their_photo_first(indexed_regions, photo_bytes, embedder):
    """A box drawn on an indexed photo (16-25 % of it) finds that photo first among twelve by
    its regions alone (no global vector): 34 of 36 here; docs/BENCHMARKS.md has the recall at
    scale."""
    boxes = [(0.3, 0.3, 0.7, 0.7), (0.0, 0.5, 0.5, 1.0), (0.5, 0.1, 1.0, 0.5)]
    firsts = []
    for i, data in enumerate(photo_bytes):
        for box in boxes:
            query = embedder.embed_box(data, box, STANDARD)
            assert np.linalg.norm(query) == pytest.approx(1.0, abs=1e-5)
            best = [float((vectors @ query).max()) for vectors, _ in indexed_regions]
            firsts.append(int(np.argmax(best)) == i)
    print(f"{sum(firsts)} of {len(firsts)} boxes found their photo first")
    assert sum(firsts) >= 0.85 * len(firsts)


# --- query boxes ---------------------------------------------------------------------------------


def test_a_box_is_four_finite_numbers():
    assert parse_box("0.1,0.2,0.5,0.75") == (0.1, 0.2, 0.5, 0.75)
    assert parse_box(" 0, 0 ,1,1") == (0.0, 0.0, 1.0, 1.0)
    for bad in ("", "0.1,0.2,0.5", "0.1,0.2,0.5,0.6,0.7", "a,b,c,d", "0,0,1,nan", "0,0,inf,1",
                "0;0;1;1"):
        with pytest.raises(BoxError):
            parse_box(bad)


@pytest.mark.parametrize("box,why", [
    ((-0.1, 0.0, 0.5, 0.5), "inside the image"),
    ((0.0, 0.0, 1.2, 0.5), "inside the image"),
    ((0.5, 0.2, 0.5, 0.6), "must have a size"),
    ((0.6, 0.2, 0.4, 0.6), "must have a size"),
    ((0.5, 0.5, 0.55, 0.9), "too small"),
])
def test_bad_boxes_are_refused_with_the_reason(box, why):
    with pytest.raises(BoxError, match=why):
        check_box(box, 600, 800, STANDARD.area * 224**2)


def test_the_smallest_box_is_one_map_cell_a_side_at_the_region_scale():
    pixels = STANDARD.area * 224**2  # a 600 x 800 photo's region pass is 237 x 316 pixels
    scale = (pixels / (600 * 800)) ** 0.5
    one_cell_w, one_cell_h = 32 / (600 * scale), 32 / (800 * scale)
    check_box((0.2, 0.2, 0.2 + one_cell_w * 1.01, 0.2 + one_cell_h * 1.01), 600, 800, pixels)
    with pytest.raises(BoxError, match=r"13\.5% of the width"):
        check_box((0.2, 0.2, 0.2 + one_cell_w * 0.9, 0.5), 600, 800, pixels)
    check_box((0.0, 0.0, 1.0, 1.0), 600, 800, pixels)


def test_a_mode_survives_the_index_meta():
    for mode in REGION_MODES.values():
        assert mode_from_meta(mode.to_meta()) == mode
    assert mode_from_meta(None) is None
