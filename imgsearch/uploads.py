"""The upload folder: photos added through the API, content-addressed like the thumbnails.

``<root>/<first two hex>/<sha256>.<ext>``, the extension from the bytes' format (never from a
name a client sent), so the same bytes always land in the same file, a second upload of them
writes nothing, and no name a client chooses can reach outside the folder. Files are written
to a temporary name beside their place and renamed, so a crash never leaves half a photo
where the index or a later request would read it.

This is the one folder whose files the product deletes (``DELETE /api/images/<id>``): files
of an indexed or watched folder are the owner's and are never touched (imgsearch/decisions.py
records their exclusion instead). :meth:`UploadStore.holds` is what tells the two apart.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from .errors import Unavailable

# The extension of each format that imgsearch/images.py sniff_format names.
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp",
              "TIFF": ".tif"}
_KEY = re.compile(r"^[0-9a-f]{64}$")


class UploadFolderUnavailable(Unavailable):
    """The upload folder cannot be written (missing permissions, a file in its way, a full
    disk): nothing was stored, and the same add may work once an operator fixes it."""

    code = "upload_folder_unavailable"


class UploadStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def rel_path(self, key: str, fmt: str) -> str:
        """Where the bytes of ``key`` (their sha256) in format ``fmt`` live, below the root."""
        if not _KEY.match(key):
            raise ValueError(f"not a sha256 hex key: {key!r}")
        return f"{key[:2]}/{key}{EXTENSIONS[fmt]}"

    def path(self, key: str, fmt: str) -> Path:
        return self.root / self.rel_path(key, fmt)

    def put(self, key: str, fmt: str, data: bytes) -> tuple[Path, bool]:
        """Store ``data`` (whose sha256 is ``key``) atomically: ``(its path, whether this
        call wrote it)``; bytes already there are not written again."""
        target = self.path(key, fmt)
        if target.is_file():
            return target, False
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".tmp")
        except OSError as exc:
            raise UploadFolderUnavailable(
                f"The upload folder (IMGSEARCH_UPLOAD_DIR) cannot be written: "
                f"{exc.strerror or exc}. Nothing was stored.") from exc
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                # The index will say the photo is here: it must be on disk before that.
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except OSError as exc:  # a full disk, say: the half-written file goes
            Path(tmp).unlink(missing_ok=True)
            raise UploadFolderUnavailable(
                f"The upload folder (IMGSEARCH_UPLOAD_DIR) cannot be written: "
                f"{exc.strerror or exc}. Nothing was stored.") from exc
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target, True

    def holds(self, path: str | Path | None) -> bool:
        """Whether ``path`` (a document's ``path``) is a file of this folder: one the API
        stored, and may delete. Compared after resolving links and ``..``, so a path that only
        starts with the folder's name is not one."""
        if not path:
            return False
        try:
            resolved = Path(path).resolve()
            root = self.root.resolve()
        except (OSError, RuntimeError):
            return False
        return resolved != root and resolved.is_relative_to(root)

    def remove(self, path: str | Path) -> bool:
        """Delete a file of this folder (True if there was one); refuses any other path."""
        if not self.holds(path):
            raise ValueError(f"{path} is not in the upload folder {self.root}")
        try:
            Path(path).unlink()
        except FileNotFoundError:
            return False
        return True
