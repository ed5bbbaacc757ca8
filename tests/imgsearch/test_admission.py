"""imgsearch/admission.py: refuse at once what would wait longer than the bound."""

from __future__ import annotations

import time

import pytest

from imgsearch.admission import Admission, Ticket


def test_admits_until_the_wait_would_pass_the_bound():
    admission = Admission(max_wait_s=0.35, initial_cost_s=0.1)
    tickets = [admission.enter() for _ in range(4)]
    assert all(isinstance(t, Ticket) for t in tickets)  # waits 0, 0.1, 0.2, 0.3
    refused = admission.enter()
    assert refused == pytest.approx(0.4)  # the wait it would have had
    admission.leave(tickets[0])
    assert isinstance(admission.enter(), Ticket)


def test_an_idle_worker_always_admits_one():
    assert isinstance(Admission(max_wait_s=0.001, initial_cost_s=10).enter(), Ticket)


def test_the_cost_is_learnt_from_the_requests():
    admission = Admission(max_wait_s=1.0, initial_cost_s=1.0)
    for _ in range(30):
        ticket = admission.enter()
        time.sleep(0.01)
        admission.leave(ticket)
    # 10 ms a request measured (sleep overshoots a little on a busy machine).
    assert 0.005 < admission.cost_s < 0.1
    assert admission.in_flight == 0
