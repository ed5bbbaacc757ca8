"""The files below a folder, in a stable order, and the names that promise an image.

One walk for the indexer, fine-tuning and int8 calibration, so that they all see the same files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

# Names that promise an image: such a file that is not one is a failure worth reporting,
# while any other non-image (a README, a CSV) is merely ignored.
IMAGE_SUFFIXES = {
    ".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff",
    ".heic", ".heif", ".avif", ".svg", ".ico",
}


def walk_files(root: Path) -> Iterator[Path]:
    """Every file (and broken link) below ``root``, sorted, hidden entries skipped.

    Whether a file is an image is decided later from its content, not from its name.
    Directory symlinks are not followed, so a link loop cannot trap the walk.
    """
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name
