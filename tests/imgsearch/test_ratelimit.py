"""imgsearch/ratelimit.py: token buckets in a SQLite file, shared by processes."""

from __future__ import annotations

import multiprocessing

import pytest

from imgsearch.ratelimit import RateLimiter


def test_a_burst_then_the_rate(tmp_path):
    limiter = RateLimiter(tmp_path / "b.sqlite", rate=2.0, burst=3)
    verdicts = [limiter.check("a", now=100.0) for _ in range(4)]
    assert [v.allowed for v in verdicts] == [True, True, True, False]
    assert verdicts[-1].retry_after == pytest.approx(0.5)
    assert not limiter.check("a", now=100.4).allowed
    assert limiter.check("a", now=100.5).allowed  # one token back after 1 / rate s
    # Another client has a bucket of its own.
    assert limiter.check("b", now=100.5).allowed


def test_an_idle_client_gets_its_burst_back_and_no_more(tmp_path):
    limiter = RateLimiter(tmp_path / "b.sqlite", rate=1.0, burst=2)
    for _ in range(2):
        assert limiter.check("a", now=0.0).allowed
    allowed = [limiter.check("a", now=1000.0).allowed for _ in range(3)]
    assert allowed == [True, True, False]


def _take(path, n, now, out):
    limiter = RateLimiter(path, rate=0.001, burst=50)
    out.put(sum(limiter.check("shared", now=now).allowed for _ in range(n)))


def test_processes_share_one_bucket(tmp_path):
    """Four processes (as gunicorn's workers are) take 30 tokens each from one bucket of 50:
    50 are granted in all, not 50 each."""
    path = tmp_path / "b.sqlite"
    RateLimiter(path, rate=0.001, burst=50)
    out = multiprocessing.get_context("spawn").Queue()
    procs = [multiprocessing.get_context("spawn").Process(target=_take, args=(path, 30, 10.0, out))
             for _ in range(4)]
    for p in procs:
        p.start()
    granted = sum(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert granted == 50
