"""The walk below a folder (imgsearch/walk.py) that indexing, fine-tuning and calibration share."""

from __future__ import annotations

import os

from imgsearch.walk import walk_files


def test_walk_is_sorted_recursive_and_skips_hidden(tmp_path):
    for rel in ("b/2.jpg", "a/1.jpg", "a/.hidden.jpg", ".git/x.jpg", "top.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = [p.relative_to(tmp_path).as_posix() for p in walk_files(tmp_path)]
    assert found == ["top.png", "a/1.jpg", "b/2.jpg"]


def test_walk_does_not_follow_directory_links(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.jpg").write_bytes(b"x")
    os.symlink(tmp_path, tmp_path / "d" / "loop")
    assert [p.name for p in walk_files(tmp_path)] == ["f.jpg"]
