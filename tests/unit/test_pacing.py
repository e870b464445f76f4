import threading
import time

from syncer.proxy.pacing import Budget, FairSlots, TokenBucket, kick_count, message_cost


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_budget_keeps_any_timer_window_inside_the_zone():
    b = Budget.for_zone(2 * 1024 * 1024, 1.0)
    assert b.burst + b.rate * 1.0 <= 2 * 1024 * 1024


def test_bucket_paces_to_the_rate():
    clock = Clock()
    bucket = TokenBucket(Budget(rate=1000, burst=1000), clock=clock)
    assert bucket.delay_for(1000) == 0
    bucket.spend(1000)
    assert bucket.delay_for(500) == 0.5
    clock.t = 0.5
    assert bucket.delay_for(500) == 0
    bucket.spend(500)
    bucket.drain()
    assert bucket.delay_for(100) > 0


def test_a_body_larger_than_the_burst_still_goes_through():
    clock = Clock()
    bucket = TokenBucket(Budget(rate=100, burst=100), clock=clock)
    assert bucket.delay_for(10_000) == 0
    assert bucket.acquire(10_000, threading.Event())
    assert bucket.delay_for(1) > 0


def test_acquire_stops_when_asked():
    bucket = TokenBucket(Budget(rate=1, burst=1))
    bucket.spend(100)
    stop = threading.Event()
    stop.set()
    assert bucket.acquire(1, stop) is False


def test_kick_count_matches_the_measurement():
    assert kick_count(2) == 16
    assert kick_count(1) == 1
    assert kick_count(8) > kick_count(4) > kick_count(2)
    assert message_cost("x" * 611) > 611


def test_fair_slots_go_to_the_longest_waiter_not_back_to_the_releaser():
    slots = FairSlots(1)
    assert slots.acquire(timeout=0)
    order: list[str] = []
    waiting = threading.Event()

    def waiter() -> None:
        waiting.set()
        assert slots.acquire(timeout=5)
        order.append("waiter")
        slots.release()

    t = threading.Thread(target=waiter)
    t.start()
    assert waiting.wait(5)
    # Until the waiter is queued, a re-acquire by the holder could still win; wait
    # for the queue rather than sleep.
    deadline = time.monotonic() + 5
    while not slots.waiting and time.monotonic() < deadline:
        time.sleep(0.001)
    slots.release()
    assert not slots.acquire(timeout=0)  # the slot was handed over, not freed
    t.join(5)
    assert order == ["waiter"]
    assert slots.acquire(timeout=0)  # and freed once the waiter released it


def test_fair_slots_timeout_leaves_the_queue_clean():
    slots = FairSlots(1)
    assert slots.acquire(timeout=0)
    assert not slots.acquire(timeout=0.01)
    assert not slots.waiting
    slots.release()
    assert slots.acquire(timeout=0)
