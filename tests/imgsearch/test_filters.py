"""Filters are parsed strictly and become literal ES clauses."""

import pytest
from werkzeug.datastructures import MultiDict

from imgsearch.filters import FilterError, Filters


def test_filters_from_form_become_knn_clauses():
    params = MultiDict([("label", "dress"), ("label", "hat"), ("folder", "a/b"),
                        ("format", "jpeg"), ("min_width", "100"), ("date_to", "2024-05-31"),
                        ("extra.split", "test")])
    clauses = Filters.from_params(params).to_es()
    assert {"terms": {"label": ["dress", "hat"]}} in clauses
    assert {"terms": {"folder": ["a/b"]}} in clauses
    assert {"terms": {"format": ["JPEG"]}} in clauses
    assert {"terms": {"extra.split": ["test"]}} in clauses
    assert {"range": {"width": {"gte": 100}}} in clauses
    assert {"range": {"exif_datetime": {"lte": "2024-05-31||/d"}}} in clauses


def test_query_syntax_is_a_literal_value():
    clauses = Filters.from_params({"label": ['dress" OR *:*']}).to_es()
    assert clauses == [{"terms": {"label": ['dress" OR *:*']}}]


def test_empty_filters():
    assert Filters.from_params({}).is_empty()


@pytest.mark.parametrize("params,message", [
    ({"min_width": "wide"}, "whole number"),
    ({"min_width": "-5"}, "between"),
    ({"date_from": "yesterday"}, "date like"),
    ({"label": ["x"] * 101}, "too many"),
    ({"label": ["x" * 600]}, "longer than"),
])
def test_bad_values_are_refused(params, message):
    with pytest.raises(FilterError, match=message):
        Filters.from_params(params)
