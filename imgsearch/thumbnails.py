"""Content-addressed thumbnail store: ``<root>/<first two hex>/<sha256>.webp``.

Keys are content hashes, so a thumbnail is written once whatever the number of runs, and a
lookup that is not a 64-hex-digit key can never name a file outside the store.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

_KEY = re.compile(r"^[0-9a-f]{64}$")
SUFFIX = ".webp"
MEDIA_TYPE = "image/webp"


class ThumbnailStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    @staticmethod
    def is_key(key: str) -> bool:
        return bool(_KEY.match(key))

    def ref(self, key: str) -> str:
        """The reference stored in the document (relative to the store root)."""
        return f"{key[:2]}/{key}{SUFFIX}"

    def path(self, key: str) -> Path | None:
        """The file for ``key`` if the key is valid and the thumbnail exists, else None."""
        if not self.is_key(key):
            return None
        path = self.root / self.ref(key)
        return path if path.is_file() else None

    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key`` (atomically; a no-op when already there)."""
        if not self.is_key(key):
            raise ValueError(f"not a sha256 hex key: {key!r}")
        ref = self.ref(key)
        target = self.root / ref
        if target.exists():
            return ref
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write then rename so that a crash never leaves a half-written thumbnail behind.
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ref

    def remove(self, key: str) -> bool:
        """Delete the thumbnail of ``key`` (an image removed from the collection); True if
        there was one."""
        path = self.path(key)
        if path is None:
            return False
        path.unlink(missing_ok=True)
        return True
