"""The upload folder (imgsearch/uploads.py): content-addressed, written atomically, and the
only folder whose files the product deletes."""

from __future__ import annotations

import os

import pytest

from imgsearch.images import content_hash
from imgsearch.uploads import UploadFolderUnavailable, UploadStore


@pytest.fixture
def photo(clothing_test_dir) -> bytes:
    return sorted((clothing_test_dir / "shoes").glob("*.jpg"))[0].read_bytes()


def test_bytes_land_once_under_their_hash(tmp_path, photo):
    uploads = UploadStore(tmp_path / "up")
    key = content_hash(photo)
    path, wrote = uploads.put(key, "JPEG", photo)
    assert path == tmp_path / "up" / key[:2] / f"{key}.jpg" and wrote
    assert path.read_bytes() == photo and oct(path.stat().st_mode & 0o777) == "0o644"
    assert uploads.put(key, "JPEG", photo) == (path, False)
    # No temporary file is left beside it.
    assert os.listdir(path.parent) == [path.name]
    assert uploads.rel_path(key, "PNG") == f"{key[:2]}/{key}.png"
    with pytest.raises(ValueError):
        uploads.rel_path("../../etc/passwd", "JPEG")


def test_only_its_own_files_are_held_and_removed(tmp_path, photo):
    uploads = UploadStore(tmp_path / "up")
    path, _ = uploads.put(content_hash(photo), "JPEG", photo)
    outside = tmp_path / "up-other" / "x.jpg"
    outside.parent.mkdir()
    outside.write_bytes(photo)
    link = tmp_path / "up" / "link.jpg"
    link.symlink_to(outside)
    assert uploads.holds(path) and uploads.holds(str(path))
    for other in (outside, tmp_path / "up" / ".." / "up-other" / "x.jpg", link,
                  tmp_path / "up", None, ""):
        assert not uploads.holds(other), other
        if other:
            with pytest.raises(ValueError):
                uploads.remove(other)
    assert outside.exists()
    assert uploads.remove(path) and not path.exists()
    assert uploads.remove(path) is False


def test_a_folder_that_cannot_be_written_says_so(tmp_path, photo):
    blocked = tmp_path / "a-file"
    blocked.write_text("in the way")
    with pytest.raises(UploadFolderUnavailable, match="IMGSEARCH_UPLOAD_DIR"):
        UploadStore(blocked).put(content_hash(photo), "JPEG", photo)
