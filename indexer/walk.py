"""Stage 1: find the files under a root, in a stable order."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path


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
