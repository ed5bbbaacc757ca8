"""Optional metadata sidecar: CSV or JSONL rows keyed by the image's path relative to the root.

Known columns become document fields (``label``, ``tags``); any other column lands in the
``extra`` object so that it is filterable without a mapping change (the rules are
imgsearch/metadata.py's, which the write API shares). :func:`changed_rows` and
:func:`metadata_fields` are what the watcher needs to apply an edited sidecar to documents
already indexed (indexer/watch.py).
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path, PurePosixPath

from imgsearch.errors import BadInput
from imgsearch.metadata import KEY_COLUMNS, row_fields


class SidecarError(BadInput):
    pass


def load_sidecar(path: Path) -> dict[str, dict]:
    """``{relative path: {"label": ..., "tags": [...], "extra": {...}}}``."""
    return read_sidecar(path)[0]


def read_sidecar(path: Path) -> tuple[dict[str, dict], str]:
    """:func:`load_sidecar`'s table and the sha256 of the bytes it was parsed from (read
    once: a file replaced meanwhile cannot give a digest of other bytes than the rows')."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SidecarError(f"cannot read metadata file {path}: {exc.strerror}") from exc
    return parse_sidecar(path, data), hashlib.sha256(data).hexdigest()


def parse_sidecar(path: Path, data: bytes) -> dict[str, dict]:
    """The table of the sidecar ``data`` (read from ``path``, whose suffix says CSV or JSONL);
    SidecarError naming the line or row at fault."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SidecarError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
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


def changed_rows(old: dict[str, dict], new: dict[str, dict]) -> dict[str, dict | None]:
    """The rows of ``new`` that differ from ``old``'s (added or changed), and None for the
    rows ``old`` had and ``new`` lacks (removed): ``{relative path: row or None}``."""
    return {rel: new.get(rel) for rel in sorted(old.keys() | new.keys())
            if old.get(rel) != new.get(rel)}


def describe_change(old: dict | None, new: dict | None) -> str:
    """What changed between two rows, for a log line: ``label 'a' -> 'b'; tags [...] -> []``
    (values cut at 60 characters)."""
    old, new = old or {}, new or {}

    def shown(value) -> str:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."

    parts = [f"{name} {shown(old.get(name))} -> {shown(new.get(name))}"
             for name in ("label", "tags", "extra") if old.get(name) != new.get(name)]
    return "; ".join(parts) or "unchanged"
