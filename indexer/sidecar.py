"""Optional metadata sidecar: CSV or JSONL rows keyed by the image's path relative to the root.

Known columns become document fields (``label``, ``tags``); any other column lands in the
``extra`` object so that it is filterable without a mapping change (the rules are
imgsearch/metadata.py's, which the write API shares).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path, PurePosixPath

from imgsearch.errors import BadInput
from imgsearch.metadata import KEY_COLUMNS, row_fields


class SidecarError(BadInput):
    pass


def load_sidecar(path: Path) -> dict[str, dict]:
    """``{relative path: {"label": ..., "tags": [...], "extra": {...}}}``."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise SidecarError(f"cannot read metadata file {path}: {exc.strerror}") from exc
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise SidecarError(f"{path}:{n}: not valid JSON ({exc.msg})") from exc
    else:
        rows = list(csv.DictReader(text.splitlines()))
    table: dict[str, dict] = {}
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise SidecarError(f"{path}: row {n} is not an object")
        key = next((row[k] for k in KEY_COLUMNS if row.get(k)), None)
        if key is None:
            raise SidecarError(f"{path}: row {n} has no 'path' column")
        table[_normalise_key(str(key))] = row_fields(row)
    return table


def _normalise_key(key: str) -> str:
    return PurePosixPath(key.replace("\\", "/")).as_posix()
