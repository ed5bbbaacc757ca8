"""Decoding: every input becomes either a 224x224 RGB model input or an ImageError with a reason.

Synthetic images are built in memory; the real photos are read in place from the dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import struct
import threading
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image

from imgsearch.images import (
    DecodedImage,
    ImageError,
    content_hash,
    decode_image,
    read_bytes,
    sniff_format,
)
from imgsearch.settings import Settings

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255,) * 3, (0,) * 3


@pytest.fixture(scope="module")
def photo() -> Path:
    images = Settings.from_env().datasets_dir / "clothing-small" / "images" / "test"
    photos = sorted(images.glob("*/*.jpg"))
    if not photos:
        pytest.fail(f"no clothing photos under {images} (IMGSEARCH_DATASETS_DIR)", pytrace=False)
    return photos[0]


def decode(data: bytes, *, target: int = 224, resize_mode: str = "squash", **kw):
    """``decode_image`` at 224 px: these tests are about decoding, so the size and resize mode
    are theirs to pick (the product's come from its model, ``Embedder.decode``)."""
    return decode_image(data, target=target, resize_mode=resize_mode, **kw)


def read_image_file(path: Path, **kw):
    """A file's bytes and their decoding, as the indexer reads them."""
    data = read_bytes(Path(path))
    return data, decode(data, **kw)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()


def bands(size: tuple[int, int], colours: list[tuple[int, int, int]]) -> Image.Image:
    """Vertical bands of equal width, left to right."""
    img = Image.new("RGB", size)
    step = size[0] // len(colours)
    for i, colour in enumerate(colours):
        img.paste(colour, (i * step, 0, (i + 1) * step, size[1]))
    return img


def crafted_png(width: int, height: int) -> bytes:
    """A valid PNG header claiming any size, with a tiny (and insufficient) IDAT."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def close(pixel, colour, tol=12) -> bool:
    return all(abs(int(a) - b) <= tol for a, b in zip(pixel, colour, strict=True))


def assert_thumbnail(decoded: DecodedImage, limit: int = 256) -> Image.Image:
    thumb = Image.open(io.BytesIO(decoded.thumbnail))
    assert thumb.format == "WEBP" and thumb.mode == "RGB"
    assert max(thumb.size) <= limit
    return thumb


def reason_of(data: bytes, **kw) -> str:
    with pytest.raises(ImageError) as info:
        decode(data, **kw)
    assert str(info.value) and " " in str(info.value)  # a sentence, not just the code
    return info.value.reason


# --- real photos -----------------------------------------------------------------------------


def test_real_photo(photo):
    data, decoded = read_image_file(photo)
    assert data == photo.read_bytes()
    with Image.open(photo) as img:
        assert (decoded.width, decoded.height) == img.size
    assert decoded.pixels.shape == (224, 224, 3) and decoded.pixels.dtype == np.uint8
    assert decoded.format == "JPEG" and decoded.mode == "RGB" and decoded.frames == 1
    assert decoded.pixels.std() > 10  # a photo, not a blank
    thumb = assert_thumbnail(decoded)
    assert max(thumb.size) == 256  # the photos are bigger than 256, so exactly 256
    assert abs(thumb.size[0] / thumb.size[1] - decoded.width / decoded.height) < 0.02


def test_content_hash_is_sha256(photo):
    data = photo.read_bytes()
    assert content_hash(data) == hashlib.sha256(data).hexdigest()
    assert len(content_hash(b"")) == 64


@pytest.mark.parametrize("mode", ["squash", "crop", "pad"])
def test_draft_keeps_size_and_look(mode):
    # A big JPEG is where draft matters: libjpeg decodes it at a fraction of its size.
    big = bands((2400, 1800), [RED, GREEN, BLUE]).resize((2400, 1800), Image.Resampling.BILINEAR)
    data = encode(big, "JPEG", quality=90)
    fast = decode(data, resize_mode=mode)
    slow = decode(data, resize_mode=mode, draft=False)
    assert (fast.width, fast.height) == (slow.width, slow.height) == (2400, 1800)
    assert np.abs(fast.pixels.astype(int) - slow.pixels).mean() < 3
    assert max(Image.open(io.BytesIO(fast.thumbnail)).size) == 256


# --- geometry --------------------------------------------------------------------------------


def test_squash_keeps_whole_image():
    pixels = decode(encode(bands((400, 100), [RED, BLUE]), "PNG")).pixels
    assert pixels.shape == (224, 224, 3)
    assert close(pixels[112, 2], RED) and close(pixels[112, -3], BLUE)


def test_crop_keeps_the_centre():
    data = encode(bands((300, 100), [RED, GREEN, BLUE]), "PNG")
    pixels = decode(data, resize_mode="crop").pixels
    assert pixels.shape == (224, 224, 3)
    # The filter reaches one source pixel past the crop box, so the outermost columns blend.
    assert all(close(p, GREEN) for p in pixels[::20, 1:-1:20].reshape(-1, 3))
    assert close(pixels[112, 0], GREEN, tol=80) and close(pixels[112, -1], GREEN, tol=80)


@pytest.mark.parametrize(("size", "axis"), [((400, 200), 0), ((200, 400), 1)])
def test_pad_fills_with_white(size, axis):
    pixels = decode(encode(Image.new("RGB", size, BLACK), "PNG"), resize_mode="pad").pixels
    assert pixels.shape == (224, 224, 3)
    line = pixels[:, 112] if axis == 0 else pixels[112, :]  # across the padded direction
    assert close(line[0], WHITE) and close(line[-1], WHITE)
    assert close(line[112], BLACK)
    assert (line.min(axis=1) > 128).sum() in range(110, 115)  # 56 px of white each side


def test_small_image_thumbnail_not_enlarged():
    decoded = decode(encode(Image.new("RGB", (40, 30), RED), "PNG"))
    assert Image.open(io.BytesIO(decoded.thumbnail)).size == (40, 30)
    assert decoded.pixels.shape == (224, 224, 3)


def test_thumbnail_size_option():
    decoded = decode(encode(Image.new("RGB", (500, 100), RED), "PNG"), thumbnail_size=64)
    assert Image.open(io.BytesIO(decoded.thumbnail)).size == (64, 13)


def test_bad_resize_mode_is_a_programming_error():
    with pytest.raises(ValueError) as info:
        decode(encode(Image.new("RGB", (20, 20)), "PNG"), resize_mode="stretch")
    assert not isinstance(info.value, ImageError)


# --- EXIF ------------------------------------------------------------------------------------


def jpeg_with_exif(img: Image.Image, **tags) -> bytes:
    exif = Image.Exif()
    for name, value in tags.items():
        if name == "DateTimeOriginal":
            exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = value
        else:
            exif[ExifTags.Base[name]] = value
    return encode(img, "JPEG", exif=exif, quality=95)


@pytest.mark.parametrize("draft", [True, False])
def test_orientation_6_rotates(draft):
    # Stored 400x200 red|blue; orientation 6 means "rotate 90 degrees clockwise to display".
    data = jpeg_with_exif(bands((400, 200), [RED, BLUE]), Orientation=6)
    decoded = decode(data, draft=draft, resize_mode="pad")
    assert (decoded.width, decoded.height) == (200, 400)
    assert close(decoded.pixels[60, 112], RED) and close(decoded.pixels[164, 112], BLUE)
    assert close(decoded.pixels[112, 2], WHITE)  # pad now adds the borders left and right
    thumb = assert_thumbnail(decoded)
    assert thumb.size == (128, 256)


def test_exif_date_and_camera():
    data = jpeg_with_exif(
        Image.new("RGB", (32, 32)),
        Make="Canon",
        Model="Canon EOS 5D\x00",
        DateTimeOriginal="2019:05:04 13:22:01",
        DateTime="2020:01:01 00:00:00",
    )
    decoded = decode(data)
    assert decoded.exif_datetime == "2019-05-04T13:22:01"
    assert decoded.camera == "Canon EOS 5D"


@pytest.mark.parametrize(
    ("tags", "when", "camera"),
    [
        ({"Make": "Apple", "Model": "iPhone 12", "DateTime": "2021:02:03 04:05:06"},
         "2021-02-03T04:05:06", "Apple iPhone 12"),
        ({"Make": "NIKON CORPORATION", "Model": "NIKON D750"}, None, "NIKON D750"),
        ({"Model": " E-M5 "}, None, "E-M5"),
        ({"DateTimeOriginal": "0000:00:00 00:00:00"}, None, None),
        ({}, None, None),
    ],
)  # fmt: skip
def test_exif_variants(tags, when, camera):
    decoded = decode(jpeg_with_exif(Image.new("RGB", (16, 16)), **tags))
    assert (decoded.exif_datetime, decoded.camera) == (when, camera)


def test_png_has_no_exif():
    decoded = decode(encode(Image.new("RGB", (16, 16)), "PNG"))
    assert decoded.exif_datetime is None and decoded.camera is None


# --- modes and formats -----------------------------------------------------------------------


def test_cmyk_jpeg():
    img = Image.new("CMYK", (40, 20), (0, 0, 0, 0))  # left half paper white
    img.paste((255, 0, 0, 0), (20, 0, 40, 20))  # right half pure cyan
    decoded = decode(encode(img, "JPEG", quality=95))
    assert decoded.mode == "CMYK"
    assert close(decoded.pixels[112, 20], WHITE)
    assert close(decoded.pixels[112, 200], (0, 255, 255), tol=20)


def test_grayscale():
    img = Image.linear_gradient("L").resize((64, 64))
    decoded = decode(encode(img, "PNG"))
    assert decoded.mode == "L"
    p = decoded.pixels.astype(int)
    assert (p[..., 0] == p[..., 1]).all() and (p[..., 1] == p[..., 2]).all()
    assert p.min() < 10 and p.max() > 245


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_keeps_its_range(fmt):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    decoded = decode(encode(Image.fromarray(ramp), fmt))
    assert decoded.mode.startswith("I;16")
    assert decoded.pixels.min() < 10 and decoded.pixels.max() > 245
    assert 100 < decoded.pixels.mean() < 155  # a ramp, not all white


def test_32_bit_and_float_grayscale():
    ints = Image.fromarray(np.tile(np.arange(0, 4096, 64, dtype=np.int32), (16, 1)))
    floats = Image.fromarray(np.tile(np.linspace(0, 1, 64, dtype=np.float32), (16, 1)))
    for img in (ints, floats):
        pixels = decode(encode(img, "TIFF")).pixels
        assert pixels[:, 0].max() < 10 and pixels[:, -1].min() > 0


def test_palette_with_transparency():
    img = Image.new("P", (20, 20), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 red, 1 blue
    img.paste(1, (10, 0, 20, 20))
    decoded = decode(encode(img, "PNG", transparency=0))
    assert decoded.mode == "P"
    assert close(decoded.pixels[112, 20], WHITE)  # the transparent red
    assert close(decoded.pixels[112, 200], BLUE)


def test_rgba_composited_on_white():
    img = Image.new("RGBA", (30, 10), (0, 0, 0, 0))
    img.paste((255, 0, 0, 255), (10, 0, 20, 10))
    img.paste((0, 0, 0, 128), (20, 0, 30, 10))
    decoded = decode(encode(img, "PNG"))
    assert decoded.mode == "RGBA"
    row = decoded.pixels[112]
    assert close(row[20], WHITE) and close(row[112], RED) and close(row[205], (127,) * 3)
    assert_thumbnail(decoded)


def test_gray_alpha_and_one_bit():
    la = decode(encode(Image.new("LA", (10, 10), (0, 0)), "PNG"))
    bits = decode(encode(Image.new("1", (10, 10), 1), "PNG"))
    assert (la.mode, bits.mode) == ("LA", "1")
    assert (la.pixels == 255).all() and (bits.pixels == 255).all()


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animation_uses_first_frame(fmt):
    frames = [Image.new("RGB", (16, 16), c) for c in (RED, GREEN, BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    decoded = decode(data)
    assert decoded.format == fmt and decoded.frames == 3
    assert close(decoded.pixels[112, 112], RED)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_formats_decode_and_sniff(fmt):
    data = encode(Image.new("RGB", (20, 10), GREEN), fmt)
    assert sniff_format(data) == fmt
    decoded = decode(data)
    assert decoded.format == fmt and (decoded.width, decoded.height) == (20, 10)
    assert close(decoded.pixels[112, 112], GREEN, tol=20)
    assert_thumbnail(decoded)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, world\n",
        b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>',
        b"%PDF-1.7\n",
        b"<!doctype html><html></html>",
        b"BMW is a car maker, not a bitmap",
        b"\x00\x00\x01\x00",  # ICO: Pillow reads it, we don't
    ],
)
def test_sniff_rejects_non_rasters(data):
    assert sniff_format(data) is None


# --- bad input -------------------------------------------------------------------------------


def test_empty():
    assert reason_of(b"") == "empty"


def test_truncated_real_photo(photo):
    data = photo.read_bytes()
    assert reason_of(data[: len(data) // 2]) == "truncated"


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "WEBP", "BMP"])
def test_truncated_other_formats(fmt):
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), fmt)
    assert reason_of(data[: len(data) // 2]) == "truncated"


def test_text_named_jpg(tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_text("not a photo at all\n")
    with pytest.raises(ImageError) as info:
        read_image_file(path)
    assert info.value.reason == "not_an_image"


def test_svg():
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>'
    assert reason_of(svg) == "not_an_image"


@pytest.mark.parametrize("size", [(30000, 30000), (8000, 8000)])
def test_decompression_bomb_refused_before_decoding(size):
    # 30000^2 trips Pillow's own hard limit at open; 8000^2 only ours (50M by default).
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing may leak out as a warning either
        with pytest.raises(ImageError) as info:
            decode(crafted_png(*size))
    assert info.value.reason == "too_many_pixels"
    assert f"{size[0] * size[1]}" in str(info.value).replace(",", "")


def test_max_pixels_argument(photo):
    with pytest.raises(ImageError) as info:
        decode(photo.read_bytes(), max_pixels=10_000)
    assert info.value.reason == "too_many_pixels" and "10,000" in str(info.value)


def test_max_pixels_above_pillows_default_is_honoured():
    # 9800^2 = 96M is over Pillow's default warning limit but under ours: it gets past the
    # guard and fails only because the crafted file has no pixel data.
    assert reason_of(crafted_png(9800, 9800), max_pixels=100_000_000) == "truncated"


def test_globals_untouched():
    filters, limit = list(warnings.filters), Image.MAX_IMAGE_PIXELS
    for _ in range(3):
        with pytest.raises(ImageError):
            decode(crafted_png(8000, 8000))
        with pytest.raises(ImageError):
            decode(crafted_png(20000, 20000), max_pixels=10**9)
    assert warnings.filters == filters and limit == Image.MAX_IMAGE_PIXELS


def test_threads_restore_warning_filters():
    filters = list(warnings.filters)
    data = [crafted_png(9800, 9800), crafted_png(8000, 8000), encode(Image.new("L", (9, 9)), "PNG")]

    def work():
        for _ in range(30):
            for d in data:
                with contextlib.suppress(ImageError):
                    decode(d)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert warnings.filters == filters


@pytest.mark.parametrize("size", [(1, 1), (7, 100), (100, 7)])
def test_too_small(size):
    assert reason_of(encode(Image.new("RGB", size), "PNG")) == "too_small"


def test_min_side_argument():
    assert decode(encode(Image.new("RGB", (2, 2)), "PNG"), min_side=1).width == 2


def test_unsupported_compression():
    # A BMP claiming compression type 99, which no decoder knows.
    data = bytearray(encode(Image.new("RGB", (10, 10)), "BMP"))
    data[30:34] = (99).to_bytes(4, "little")
    assert reason_of(bytes(data)) == "unsupported"


# --- files -----------------------------------------------------------------------------------


def test_read_zero_byte_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.touch()
    with pytest.raises(ImageError) as info:
        read_image_file(path)
    assert info.value.reason == "empty" and str(path) in str(info.value)


def test_broken_symlink(tmp_path):
    path = tmp_path / "link.jpg"
    path.symlink_to(tmp_path / "gone.jpg")
    with pytest.raises(ImageError) as info:
        read_image_file(path)
    assert info.value.reason == "broken_symlink"


def test_symlink_to_photo(photo, tmp_path):
    path = tmp_path / "link.jpg"
    path.symlink_to(photo)
    assert read_image_file(path)[1].format == "JPEG"


def test_directory(tmp_path):
    (tmp_path / "album.jpg").mkdir()
    with pytest.raises(ImageError) as info:
        read_image_file(tmp_path / "album.jpg")
    assert info.value.reason == "unreadable" and "directory" in str(info.value)


def test_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "pipe.jpg"
    os.mkfifo(path)
    with pytest.raises(ImageError) as info:
        read_image_file(path)
    assert info.value.reason == "unreadable"


def test_missing_file(tmp_path):
    with pytest.raises(ImageError) as info:
        read_image_file(tmp_path / "nope.jpg")
    assert info.value.reason == "unreadable"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_permission_denied(tmp_path, photo):
    path = tmp_path / "secret.jpg"
    path.write_bytes(photo.read_bytes())
    path.chmod(0)
    with pytest.raises(ImageError) as info:
        read_image_file(path)
    assert info.value.reason == "unreadable"


def test_read_image_file_passes_options(photo):
    _, decoded = read_image_file(photo, target=96, thumbnail_size=64)
    assert decoded.pixels.shape == (96, 96, 3)
    assert max(Image.open(io.BytesIO(decoded.thumbnail)).size) == 64


def test_image_error_shape():
    err = ImageError("truncated", "the JPEG data ends early")
    assert isinstance(err, ValueError) and err.reason == "truncated"
    assert str(err) == "the JPEG data ends early"
    copy = pickle.loads(pickle.dumps(err))  # crosses process pools intact
    assert (copy.reason, str(copy)) == ("truncated", "the JPEG data ends early")


# --- fuzzing ---------------------------------------------------------------------------------

_SAMPLES = [
    encode(Image.new("RGB", (24, 16), RED), "JPEG"),
    encode(Image.new("RGBA", (24, 16), BLUE), "PNG"),
    encode(Image.new("P", (24, 16)), "GIF"),
    encode(Image.new("RGB", (24, 16), GREEN), "WEBP"),
    encode(Image.new("RGB", (24, 16)), "BMP"),
    encode(Image.new("L", (24, 16)), "TIFF"),
]
_MAGIC = [s[:16] for s in _SAMPLES]
_FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decodes_or_image_error(data: bytes) -> None:
    try:
        decoded = decode(data, max_pixels=4_000_000)
    except ImageError as exc:
        assert exc.reason and str(exc)
    else:
        assert decoded.pixels.shape == (224, 224, 3)


# Pillow warns about corrupt TIFF metadata before the ImageError; that is expected here.
corrupt_metadata_warnings = pytest.mark.filterwarnings("ignore::UserWarning")


@corrupt_metadata_warnings
@_FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_only_raise_image_error(data):
    decodes_or_image_error(data)


@corrupt_metadata_warnings
@_FUZZ
@given(st.sampled_from(_MAGIC), st.binary(max_size=512))
def test_random_bytes_after_magic_only_raise_image_error(magic, rest):
    decodes_or_image_error(magic + rest)


@corrupt_metadata_warnings
@_FUZZ
@given(st.sampled_from(_SAMPLES), st.data())
def test_damaged_images_only_raise_image_error(sample, draw):
    data = bytearray(sample)
    cut = draw.draw(st.integers(1, len(data)))
    for _ in range(draw.draw(st.integers(0, 4))):
        data[draw.draw(st.integers(0, len(data) - 1))] = draw.draw(st.integers(0, 255))
    decodes_or_image_error(bytes(data[:cut]))


# --- costly query images: reduced before conversion, or refused ------------------------------

# A worker-sized child process decodes each kind of large image at the query cap (25 Mpx) and
# reports its peak memory above what it held before: reduced before conversion, none may need
# more than its own decoded pixels (4 bytes a pixel at most in Pillow) plus 64 MB; converted at
# full size, a 16-bit one took 8x its pixels (+860 MB at 50 Mpx, docs/RELIABILITY.md).
BOMB_CHILD = r"""
import io, json, sys
import numpy as np
from PIL import Image
from imgsearch.images import decode_image

SIDE = 5000  # 25 Mpx

def peak_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024

def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

def encode(img, fmt, **kw):
    out = io.BytesIO()
    img.save(out, fmt, **kw)
    return out.getvalue()

def palette():
    img = Image.new("P", (SIDE, SIDE), 1)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    return encode(img, "PNG", transparency=0)

kinds = {
    "I;16": lambda: encode(Image.new("I;16", (SIDE, SIDE), 32768), "PNG"),
    "F": lambda: encode(Image.new("F", (SIDE, SIDE), 0.5), "TIFF",
                        compression="tiff_adobe_deflate"),
    "P": palette,
    "CMYK": lambda: encode(Image.new("CMYK", (SIDE, SIDE), (0, 255, 255, 0)), "TIFF",
                           compression="tiff_adobe_deflate"),
    "RGBA": lambda: encode(Image.new("RGBA", (SIDE, SIDE), (0, 0, 255, 128)), "PNG"),
    "1": lambda: encode(Image.new("1", (SIDE, SIDE), 1), "PNG"),
}
out = {}
for kind, make in kinds.items():
    data = make()
    open("/proc/self/clear_refs", "w").write("5")  # VmHWM starts again from VmRSS
    before = rss_mb()
    decoded = decode_image(data, target=224, resize_mode="crop", thumbnail_size=0,
                           max_pixels=25_000_000)
    out[kind] = {"extra_mb": peak_mb() - before, "mode": decoded.mode,
                 "size": [decoded.width, decoded.height],
                 "pixel": decoded.pixels[112, 112].tolist()}
    del data, decoded
print(json.dumps(out))
"""
BOMB_PIXELS = {  # what the centre of each decodes to
    "I;16": [128, 128, 128], "F": [128, 128, 128], "P": [0, 0, 255], "CMYK": [255, 0, 0],
    "RGBA": [127, 127, 255], "1": [255, 255, 255],
}
BOMB_BYTES_A_PIXEL = {"I;16": 2, "F": 4, "P": 1, "CMYK": 4, "RGBA": 4, "1": 1}


def test_large_query_images_are_reduced_before_any_full_size_conversion():
    import json
    import subprocess
    import sys

    from imgsearch.settings import PROJECT_ROOT

    done = subprocess.run([sys.executable, "-c", BOMB_CHILD], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(done.stdout)
    for kind, result in results.items():
        assert result["mode"] == kind and result["size"] == [5000, 5000]
        assert close(result["pixel"], BOMB_PIXELS[kind], tol=2), (kind, result)
        limit = 25 * BOMB_BYTES_A_PIXEL[kind] + 64  # MB: its decoded pixels, plus 64
        assert result["extra_mb"] < limit, (kind, result)


@pytest.mark.parametrize("mode", ["I;16", "F", "P", "CMYK", "LA", "RGBA"])
def test_reduced_conversion_matches_the_full_size_one(mode):
    """Reducing first changes the model input by little more than rounding: compared with
    converting the whole image and then resizing (what decoding did before)."""
    from imgsearch.images import model_input, to_rgb

    rng = np.random.default_rng(7)
    base = Image.fromarray(rng.integers(0, 256, (1800, 2400, 3), dtype=np.uint8)).resize(
        (2400, 1800), Image.Resampling.BILINEAR).filter(
        __import__("PIL.ImageFilter", fromlist=["GaussianBlur"]).GaussianBlur(12))
    if mode == "I;16":
        img = Image.fromarray(np.asarray(base.convert("L"), np.uint16) * 257)
    elif mode == "F":
        img = Image.fromarray(np.asarray(base.convert("L"), np.float32) / 255)
    elif mode == "P":
        img = base.quantize(64)
    else:
        img = base.convert(mode)
    full = model_input(to_rgb(img), 224, "crop").astype(int)
    reduced = model_input(to_rgb(img, reduce=4), 224, "crop").astype(int)
    assert np.abs(full - reduced).mean() < 2.0 and np.abs(full - reduced).max() < 40


def test_a_query_over_the_query_cap_is_refused_from_its_header():
    """A 7070 x 7070 16-bit PNG of 113 KB (the review's bomb) is under the indexer's 50 Mpx
    but over the query cap: refused before any pixel is decoded."""
    data = crafted_png(7070, 7070)
    assert reason_of(data, max_pixels=Settings().query_pixel_cap) == "too_many_pixels"
    assert Settings().query_pixel_cap == 25_000_000
    assert Settings(max_image_pixels=10_000).query_pixel_cap == 10_000


def test_orientation_is_applied_after_the_reduction():
    img = Image.new("LA", (2000, 1000), (0, 255))
    img.paste((255, 255), (0, 0, 1000, 1000))  # left half white
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # turned 90 degrees: the left half goes on top
    decoded = decode(encode(img, "PNG", exif=exif), resize_mode="squash")
    assert (decoded.width, decoded.height) == (1000, 2000)
    assert close(decoded.pixels[20, 112], WHITE) and close(decoded.pixels[200, 112], BLACK)
