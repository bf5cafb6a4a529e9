"""The retry policy: a pure function of the attempt count, the limits and the error."""

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_seconds: float = 0.0


def backoff_seconds(attempt: int, base: float, cap: float, jitter: float = 0.0) -> float:
    """Delay before the attempt after `attempt` (1-based): immediate, then base·2^k, capped.

    Attempt 1 failed → retry at once; attempt 2 failed → base; 3 → 2·base; 4 → 4·base.
    `jitter` in [-1, 1] spreads the delay by up to ±10% (still within the cap), so a
    burst of failures does not retry in lockstep while delays keep growing.
    """
    if attempt <= 1:
        return 0.0
    delay = min(cap, base * (2 ** (attempt - 2)))
    return min(cap, delay * (1 + 0.1 * max(-1.0, min(1.0, jitter))))


def decide(
    attempts: int,
    max_attempts: int,
    *,
    retryable: bool,
    base: float,
    cap: float,
    rng: random.Random | None = None,
) -> RetryDecision:
    if not retryable or attempts >= max_attempts:
        return RetryDecision(retry=False)
    jitter = (rng or random).uniform(-1.0, 1.0)
    return RetryDecision(retry=True, delay_seconds=backoff_seconds(attempts, base, cap, jitter))
