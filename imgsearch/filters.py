"""Metadata filters for kNN queries, parsed from user input and turned into ES clauses.

Values are always used as literal ``terms``/``range`` values, never as query syntax.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime

from .errors import BadInput


class FilterError(BadInput):
    """A filter value a person typed that cannot be used; the message says which and why."""

    code = "invalid_filter"


@dataclass(frozen=True)
class Filters:
    labels: tuple[str, ...] = ()
    folders: tuple[str, ...] = ()
    formats: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    # The model's own tags (imgsearch/tags.py: a class's name or a broader WordNet word).
    model_tags: tuple[str, ...] = ()
    # A tuned model's predicted label (imgsearch/labels.py).
    predicted_labels: tuple[str, ...] = ()
    min_width: int | None = None
    max_width: int | None = None
    min_height: int | None = None
    max_height: int | None = None
    date_from: str | None = None
    date_to: str | None = None
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def is_empty(self) -> bool:
        return not self.to_es()

    def to_es(self) -> list[dict]:
        """Clauses for ``knn.filter`` (AND across fields, OR within one field)."""
        clauses: list[dict] = []
        for name, values in (
            ("label", self.labels),
            ("folder", self.folders),
            ("format", self.formats),
            ("tags", self.tags),
            ("model_tags", self.model_tags),
            ("predicted_label", self.predicted_labels),
        ):
            if values:
                clauses.append({"terms": {name: list(values)}})
        for key, values in sorted(self.extra.items()):
            clauses.append({"terms": {f"extra.{key}": list(values)}})
        for name, low, high in (
            ("width", self.min_width, self.max_width),
            ("height", self.min_height, self.max_height),
            ("exif_datetime", self.date_from, _whole_day(self.date_to)),
        ):
            bounds = {op: v for op, v in (("gte", low), ("lte", high)) if v is not None}
            if bounds:
                clauses.append({"range": {name: bounds}})
        return clauses

    @classmethod
    def from_params(cls, params: Mapping) -> Filters:
        """Parse query/form parameters (a werkzeug MultiDict or a plain dict of lists/strings).

        Recognised: ``label``, ``folder``, ``format``, ``tag``, ``model_tag``,
        ``predicted_label`` (repeatable),
        ``min_width``,
        ``max_width``, ``min_height``, ``max_height``, ``date_from``, ``date_to`` and
        ``extra.<name>``.
        """
        return cls(
            labels=_strings(params, "label"),
            folders=_strings(params, "folder"),
            formats=tuple(v.upper() for v in _strings(params, "format")),
            tags=_strings(params, "tag"),
            model_tags=_strings(params, "model_tag"),
            predicted_labels=_strings(params, "predicted_label"),
            min_width=_int(params, "min_width"),
            max_width=_int(params, "max_width"),
            min_height=_int(params, "min_height"),
            max_height=_int(params, "max_height"),
            date_from=_date(params, "date_from"),
            date_to=_date(params, "date_to"),
            extra={
                key.split(".", 1)[1]: _strings(params, key)
                for key in params
                if key.startswith("extra.") and len(key) > 6 and _strings(params, key)
            },
        )


def _whole_day(value: str | None) -> str | None:
    """A bare date as an upper bound means the end of that day (ES date-math rounding)."""
    return f"{value}||/d" if value and len(value) == 10 else value


MAX_VALUES = 100
MAX_VALUE_LENGTH = 512


def _getlist(params: Mapping, name: str) -> list:
    if hasattr(params, "getlist"):
        return params.getlist(name)
    value = params.get(name)
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _strings(params: Mapping, name: str) -> tuple[str, ...]:
    values = [str(v) for v in _getlist(params, name) if str(v) != ""]
    if len(values) > MAX_VALUES:
        raise FilterError(f"too many values for {name!r} (at most {MAX_VALUES})")
    if any(len(v) > MAX_VALUE_LENGTH for v in values):
        raise FilterError(f"a value for {name!r} is longer than {MAX_VALUE_LENGTH} characters")
    return tuple(dict.fromkeys(values))


def _single(params: Mapping, name: str) -> str | None:
    values = [v for v in _getlist(params, name) if str(v) != ""]
    if len(values) > 1:
        raise FilterError(f"{name!r} takes one value")
    return str(values[0]) if values else None


def _int(params: Mapping, name: str) -> int | None:
    value = _single(params, name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise FilterError(f"{name!r} must be a whole number, not {value[:40]!r}") from None
    if not 0 <= number <= 1_000_000:
        raise FilterError(f"{name!r} must be between 0 and 1000000")
    return number


def _date(params: Mapping, name: str) -> str | None:
    value = _single(params, name)
    if value is None:
        return None
    for parse in (date.fromisoformat, datetime.fromisoformat):
        try:
            return parse(value).isoformat()
        except ValueError:
            continue
    raise FilterError(f"{name!r} must be a date like 2024-05-31, not {value[:40]!r}")
