"""Slots: at most ``size`` holders at once in a process, a short wait, then Busy."""

from __future__ import annotations

import threading

import pytest

from imgsearch.errors import Unavailable
from imgsearch.limits import Busy, Slots


def test_slots_bound_holders_and_refuse_after_the_wait():
    slots = Slots("image decodes", 2, wait=0.05)
    with slots.hold(), slots.hold(), pytest.raises(Busy) as caught, slots.hold():
        pass
    assert isinstance(caught.value, Unavailable) and caught.value.code == "busy"
    assert caught.value.retry_after == 1
    assert str(caught.value) == ("This server is busy with other image decodes (2 at once per "
                                 "worker); try again in 1 second")
    with slots.hold():  # every slot came back, an error inside included
        pass
    with pytest.raises(ValueError), slots.hold():
        raise ValueError("inside")
    with slots.hold(), slots.hold():
        pass


def test_a_waiting_request_gets_the_slot_that_is_given_back():
    slots = Slots("image decodes", 1, wait=5.0)
    held, release, got = threading.Event(), threading.Event(), []

    def holder():
        with slots.hold():
            held.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    waiter = threading.Thread(target=lambda: got.append(slots.hold().__enter__()))
    waiter.start()
    release.set()
    waiter.join(5)
    thread.join(5)
    assert got == [None]  # it waited for the slot rather than fail


def test_no_wait_fails_at_once_and_bad_sizes_are_refused():
    slots = Slots("fetches of images by URL", 1, wait=0.0, retry_after=2.0)
    with slots.hold(), pytest.raises(Busy) as caught, slots.hold():
        pass
    assert caught.value.retry_after == 2 and "try again in 2 seconds" in str(caught.value)
    for size, wait in ((0, 1.0), (1, -1.0)):
        with pytest.raises(ValueError):
            Slots("x", size, wait)
