"""The thumbnail store only ever answers for 64-hex keys inside its root."""

import pytest

from imgsearch.thumbnails import ThumbnailStore

KEY = "ab" + "0" * 62


def test_put_then_path(tmp_path):
    store = ThumbnailStore(tmp_path)
    assert store.put(KEY, b"webp") == f"ab/{KEY}.webp"
    assert store.path(KEY).read_bytes() == b"webp"
    assert store.put(KEY, b"other") == f"ab/{KEY}.webp"  # content-addressed: first write wins
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("key", ["../../etc/passwd", "AB" + "0" * 62, "ab", KEY + "x", ""])
def test_invalid_keys_name_nothing(tmp_path, key):
    assert ThumbnailStore(tmp_path).path(key) is None
    with pytest.raises(ValueError):
        ThumbnailStore(tmp_path).put(key, b"x")


def test_missing_thumbnail_is_none(tmp_path):
    assert ThumbnailStore(tmp_path).path(KEY) is None
