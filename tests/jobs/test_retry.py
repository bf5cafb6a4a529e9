"""The retry policy is a pure function: no database."""

import random

from jobs.retry import backoff_seconds, decide


def test_backoff_is_immediate_then_doubles_from_base_up_to_the_cap() -> None:
    assert [backoff_seconds(a, base=2, cap=600) for a in range(1, 8)] == [0, 2, 4, 8, 16, 32, 64]
    assert backoff_seconds(30, base=2, cap=600) == 600


def test_jitter_stays_within_ten_percent_and_never_exceeds_the_cap() -> None:
    assert backoff_seconds(3, base=2, cap=600, jitter=1) == 4.4
    assert backoff_seconds(3, base=2, cap=600, jitter=-1) == 3.6
    assert backoff_seconds(20, base=2, cap=600, jitter=1) == 600


def test_decide_retries_until_max_attempts_and_never_beyond() -> None:
    rng = random.Random(7)
    assert decide(1, 3, retryable=True, base=2, cap=600, rng=rng).retry
    assert decide(2, 3, retryable=True, base=2, cap=600, rng=rng).retry
    assert not decide(3, 3, retryable=True, base=2, cap=600, rng=rng).retry
    assert not decide(4, 3, retryable=True, base=2, cap=600, rng=rng).retry


def test_a_permanent_error_is_not_retried() -> None:
    assert not decide(1, 10, retryable=False, base=2, cap=600).retry


def test_delays_grow_with_jitter() -> None:
    rng = random.Random(1)
    delays = [decide(a, 20, retryable=True, base=2, cap=600, rng=rng).delay_seconds for a in range(1, 9)]
    assert delays[0] == 0
    assert all(later > earlier for earlier, later in zip(delays, delays[1:]))
