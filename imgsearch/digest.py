"""Content digests of files, read in blocks (weights, archives and converted models are large),
and the check of a folder's files against digests recorded for them."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_digests(folder: Path, names) -> dict[str, str]:
    """``{name: sha256}`` of the files ``names`` in ``folder``."""
    return {name: file_sha256(Path(folder) / name) for name in names}


def digest_problem(folder: Path, names, expected: dict) -> str | None:
    """None when each of ``names`` in ``folder`` has the SHA-256 that ``expected`` records for
    it, else what is wrong with the first that does not."""
    for name in names:
        try:
            actual = file_sha256(Path(folder) / name)
        except OSError as exc:
            return f"{name}: {exc}"
        if actual != expected.get(name):
            return f"{name} does not match the checksum recorded for it"
    return None
