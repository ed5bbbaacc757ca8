"""A person's metadata about an image: ``label``, ``tags`` and ``extra`` columns.

One set of rules for the two ways it arrives: a row of the indexer's sidecar (CSV or JSONL,
indexer/sidecar.py) and the write API's fields (``POST /api/images`` form fields,
``PATCH /api/images/<id>`` JSON; webapp/images.py). :func:`row_fields` is the sidecar's
reading of a row; :func:`checked` adds the limits that a request from the network must keep.

A person's change through the API is also recorded as a decision (imgsearch/decisions.py,
``metadata``) and written over the sidecar's fields by every later indexing run
(:func:`with_decision`, which holds the rule for a sidecar edited afterwards).

The limits are the search filters' (imgsearch/filters.py): a label, tag or extra value longer
than a filter value may be, or more tags than a filter may name, could be stored but never
asked for. Column names are what a filter's ``extra.<column>`` parameter can spell and
Elasticsearch's ``flattened`` field keeps as one key (no dots: a dot would split the key).
"""

from __future__ import annotations

import json
import re

from .errors import BadInput
from .filters import MAX_VALUE_LENGTH, MAX_VALUES

# Columns of a sidecar row that say which file it is about, not metadata.
KEY_COLUMNS = ("path", "rel_path", "file")
# The fields a person may set; everything else about an image comes from its bytes.
FIELDS = ("label", "tags", "extra")
MAX_EXTRA_COLUMNS = 50
COLUMN_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class MetadataError(BadInput):
    code = "invalid_metadata"


def row_fields(row: dict) -> dict:
    """A sidecar row as document fields: ``label``, ``tags`` (a list, or text split at ``;``
    if it has one, else at ``,``) and every other non-empty column in ``extra``."""
    out: dict = {}
    extra = {}
    for name, value in row.items():
        if name in KEY_COLUMNS or value is None or value == "":
            continue
        if name == "label":
            out["label"] = str(value)
        elif name == "tags":
            out["tags"] = split_tags(value)
        else:
            extra[name] = value if isinstance(value, (str, int, float, bool)) else json.dumps(value)
    if extra:
        out["extra"] = extra
    return out


def split_tags(value) -> list[str]:
    """Tags from a list, or from text separated by ``;`` (if it has one) or ``,``."""
    if isinstance(value, list):
        return [str(v) for v in value]
    sep = ";" if ";" in str(value) else ","
    return [t.strip() for t in str(value).split(sep) if t.strip()]


def checked(fields: dict) -> dict:
    """``fields`` (any of label, tags, extra; None clears one) within the network's limits,
    tags de-duplicated in order; a MetadataError that says what is wrong otherwise."""
    unknown = sorted(set(fields) - set(FIELDS))
    if unknown:
        raise MetadataError(f"unknown field(s) {', '.join(repr(n[:40]) for n in unknown[:5])}: "
                            "an image's metadata is label, tags and extra")
    out: dict = {}
    if "label" in fields:
        out["label"] = _text("label", fields["label"]) if fields["label"] is not None else None
    if "tags" in fields:
        tags = fields["tags"]
        if tags is not None:
            if not isinstance(tags, list):
                raise MetadataError("tags must be a list of strings")
            if len(tags) > MAX_VALUES:  # counted as given: a list the API documents as too long
                raise MetadataError(f"at most {MAX_VALUES} tags, not {len(tags)}")
            tags = list(dict.fromkeys(_text("a tag", t) for t in tags))
        out["tags"] = tags
    if "extra" in fields:
        out["extra"] = _extra(fields["extra"])
    return out


def _text(what: str, value) -> str:
    if not isinstance(value, str):
        raise MetadataError(f"{what} must be a string, not {type(value).__name__}")
    if len(value) > MAX_VALUE_LENGTH:
        raise MetadataError(f"{what} is longer than {MAX_VALUE_LENGTH} characters "
                            "(a search filter could never ask for it)")
    value = value.strip()
    if not value:
        raise MetadataError(f"{what} must not be empty")
    return value


def _extra(extra) -> dict | None:
    if extra is None:
        return None
    if not isinstance(extra, dict):
        raise MetadataError("extra must be an object of column -> value")
    if len(extra) > MAX_EXTRA_COLUMNS:
        raise MetadataError(f"at most {MAX_EXTRA_COLUMNS} extra columns, not {len(extra)}")
    out = {}
    for name, value in extra.items():
        if not COLUMN_NAME.match(str(name)):
            raise MetadataError(
                f"extra column {str(name)[:70]!r} must be 1-64 letters, digits, '_' or '-'")
        if isinstance(value, (bool, int, float)):
            out[name] = value
        else:
            out[name] = _text(f"extra.{name}", value)
    return out or None


def with_decision(doc: dict, row: dict, fields: dict, replaced: dict) -> dict:
    """``doc`` (made from its sidecar row ``row``, :func:`row_fields`' form; empty when there
    is none) with the metadata a person set through the API written over it: ``fields`` (each
    field set; None cleared it) and ``replaced`` (the value each held before the person's first
    change of it). Changed in place, and returned.

    The rule against the sidecar, per field: the person's value holds unless the sidecar now
    states a value of its own for that field, other than the one the person replaced. Such a
    value is one the person never saw when deciding: written into the sidecar after the
    change (the newer word), or before it but never indexed (the person decided without
    knowing it); either way the sidecar's owner said something the change did not answer, and
    it wins. A sidecar re-exported
    unchanged, a folder's name, a row without that column: the person's value holds. A
    timestamp rule (the sidecar file's mtime against the change) was not chosen: one edited
    row, or a file regenerated by a script, would then undo every person's change in it."""
    for name, value in fields.items():
        if name not in FIELDS:
            continue
        said = row.get(name)
        if said is not None and said != replaced.get(name):
            continue
        if value is None:
            doc.pop(name, None)
        else:
            doc[name] = value
    return doc
