"""Optional metadata sidecar: CSV or JSONL rows keyed by the image's path relative to the root.

Known columns become document fields (``label``, ``tags``); any other column lands in the
``extra`` object so that it is filterable without a mapping change.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path, PurePosixPath

from imgsearch.errors import BadInput

KEY_COLUMNS = ("path", "rel_path", "file")


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
        table[_normalise_key(str(key))] = _fields(row)
    return table


def _normalise_key(key: str) -> str:
    return PurePosixPath(key.replace("\\", "/")).as_posix()


def _fields(row: dict) -> dict:
    out: dict = {}
    extra = {}
    for name, value in row.items():
        if name in KEY_COLUMNS or value is None or value == "":
            continue
        if name == "label":
            out["label"] = str(value)
        elif name == "tags":
            out["tags"] = _tags(value)
        else:
            extra[name] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
    if extra:
        out["extra"] = extra
    return out


def _tags(value) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    sep = ";" if ";" in str(value) else ","
    return [t.strip() for t in str(value).split(sep) if t.strip()]
