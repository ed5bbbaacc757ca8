"""People's decisions on the real node: keyed by content, real-time, idempotent, undone."""

from __future__ import annotations

import pytest

from imgsearch.decisions import DecisionError, Decisions
from imgsearch.esclient import connect

A, B, C = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture
def decisions(test_settings):
    return Decisions(connect(test_settings), test_settings.image_decisions_index)


def test_no_index_yet_means_no_decisions(decisions):
    assert decisions.excluded([A, B]) == set()
    assert decisions.hidden([A]) == {}
    assert decisions.distinct([(A, B)]) == set()
    assert decisions.all() == []


def test_each_kind_is_seen_at_once_by_another_process_and_undone(decisions, test_settings):
    decisions.decide("excluded", A, path="shoes/red.jpg", by="ci")
    decisions.decide("hidden", B, kept=C)
    decisions.decide("distinct", C, A)
    decisions.decide("distinct", A, C)  # the same pair, said again: one decision
    other = Decisions(connect(test_settings), decisions.index)  # another worker
    assert other.excluded([A, B, C]) == {A}
    assert other.hidden([A, B, C]) == {B: C}
    assert other.distinct([(A, C), (A, B)]) == {frozenset((A, C))}
    assert len(other.all()) == 3 and len(other.all("distinct")) == 1
    assert other.all("excluded")[0].to_json()["path"] == "shoes/red.jpg"
    assert decisions.undo("excluded", A) is True
    assert decisions.undo("excluded", A) is False
    assert other.excluded([A]) == set()


@pytest.mark.parametrize("call", [
    lambda d: d.decide("distinct", A, A),
    lambda d: d.decide("distinct", A),
    lambda d: d.decide("hidden", A),
    lambda d: d.decide("hidden", A, kept=A),
    lambda d: d.decide("forgotten", A),
])
def test_a_decision_that_makes_no_sense_is_refused(decisions, call):
    with pytest.raises(DecisionError):
        call(decisions)


def test_lookups_through_the_stores_retries_work_before_the_index_exists(decisions, store):
    """The indexer sends its lookups through ImageStore.read_retrying (retried like its
    writes): no decisions index yet still means no decisions, and one made is seen."""
    retried = Decisions(decisions.es, decisions.index, read=store.read_retrying)
    assert retried.excluded([A]) == set()
    decisions.decide("excluded", A)
    assert retried.excluded([A, B]) == {A}
