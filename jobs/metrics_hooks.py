"""Process-local counters the engine bumps; /metrics reads these and Postgres.

Kept dependency-free so the engine does not import the metrics layer.
"""

from collections import Counter

counters: Counter[str] = Counter()


def dispatched(n: int) -> None:
    counters["dispatched"] += n


def bump(name: str, n: int = 1) -> None:
    counters[name] += n
