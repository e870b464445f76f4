import threading

from syncer.proxy.pacing import Budget, TokenBucket, kick_count, message_cost


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
