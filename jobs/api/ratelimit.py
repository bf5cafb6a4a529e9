"""A token bucket per tenant on create calls, kept in Redis.

    ratelimit.check(tenant)            # in a create view, before reading the body
    ratelimit.check(tenant, cost=n)    # a call that creates n things at once

A bucket holds up to ``max`` tokens and gains ``refill`` tokens every
``refill_seconds`` (continuously). ``RATE_LIMIT_MAX`` / ``RATE_LIMIT_REFILL`` /
``RATE_LIMIT_REFILL_SECONDS`` are the defaults; a tenant's non-null
``rate_limit_*`` fields override them. Refill, take and the answer happen in one Lua
script, so concurrent API processes cannot both spend the last token, and the clock
is Redis's own (``TIME``), never a web host's.

An empty bucket raises ``ApiError`` 429 ``rate_limited`` with ``Retry-After`` (whole
seconds until the cost is available). If Redis cannot be reached (short socket
timeouts) the call is ALLOWED and a warning is logged: an outage of the limiter must
never stop job intake. ``RATE_LIMIT_REDIS_URL`` (optional setting) points the limiter
at another Redis than the broker's.
"""

import logging
import math
from dataclasses import dataclass
from functools import lru_cache

import redis
from django.conf import settings

from jobs.models import Tenant

from .errors import rate_limited

logger = logging.getLogger("jobs.api.ratelimit")

SOCKET_TIMEOUT_SECONDS = 0.25

# KEYS[1] bucket; ARGV max, refill, refill_seconds, cost.
# Returns {allowed (0/1), tokens left, seconds until `cost` tokens} (strings: Lua
# numbers would be truncated to integers on the way out).
_SCRIPT = """
local max = tonumber(ARGV[1])
local rate = tonumber(ARGV[2]) / tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = max
  ts = now
end
tokens = math.min(max, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= cost then
  tokens = tokens - cost
  allowed = 1
else
  wait = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((max / rate) * 1000) + 1000)
return {allowed, tostring(tokens), tostring(wait)}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: float
    retry_after: int  # whole seconds; 0 when allowed
    checked: bool = True  # False: Redis unreachable, allowed without checking


@dataclass(frozen=True)
class Limits:
    max: int
    refill: int
    refill_seconds: float


def limits_for(tenant: Tenant) -> Limits:
    return Limits(
        max=tenant.rate_limit_max or settings.RATE_LIMIT_MAX,
        refill=tenant.rate_limit_refill or settings.RATE_LIMIT_REFILL,
        refill_seconds=tenant.rate_limit_refill_seconds or settings.RATE_LIMIT_REFILL_SECONDS,
    )


@lru_cache(maxsize=8)
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url, socket_timeout=SOCKET_TIMEOUT_SECONDS, socket_connect_timeout=SOCKET_TIMEOUT_SECONDS,
        retry_on_timeout=False,
    )


def _bucket_key(tenant: Tenant) -> str:
    return f"{settings.BROKER_KEY_PREFIX}ratelimit:{tenant.id}"


def consume(tenant: Tenant, cost: int = 1) -> Decision:
    """Take ``cost`` tokens from the tenant's bucket if it holds them.

    A cost above the bucket's size is charged as a full bucket, so a large call
    waits for a full bucket instead of never passing.
    """
    limits = limits_for(tenant)
    cost = max(1, min(cost, limits.max))
    url = getattr(settings, "RATE_LIMIT_REDIS_URL", "") or settings.REDIS_URL
    client = _client(url)
    try:
        allowed, remaining, wait = client.register_script(_SCRIPT)(
            keys=[_bucket_key(tenant)], args=[limits.max, limits.refill, limits.refill_seconds, cost]
        )
    except redis.RedisError as exc:
        logger.warning("rate limiter unavailable, allowing the call (fail open): %s", exc)
        return Decision(allowed=True, remaining=float(limits.max), retry_after=0, checked=False)
    if int(allowed):
        return Decision(allowed=True, remaining=float(remaining), retry_after=0)
    return Decision(allowed=False, remaining=float(remaining), retry_after=max(1, math.ceil(float(wait))))


def check(tenant: Tenant, cost: int = 1) -> None:
    """Raise 429 ``rate_limited`` (with Retry-After) unless the bucket holds ``cost``."""
    decision = consume(tenant, cost)
    if not decision.allowed:
        raise rate_limited(decision.retry_after)
