"""Exponential backoff with jitter: a pure function, so retry timing is testable."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_seconds(attempt: int, *, initial: float, maximum: float,
                    retry_after: float | None = None,
                    rng: Callable[[], float] = random.random) -> float:
    """Delay before retry number ``attempt`` (1 = the first retry).

    "Equal jitter": half the exponential delay is fixed and half random, so retries from many
    jobs spread out but none comes back almost at once. A server's ``Retry-After`` is a floor.
    """
    ceiling = min(maximum, initial * 2 ** max(0, attempt - 1))
    delay = ceiling / 2 + rng() * ceiling / 2
    if retry_after is not None:
        delay = max(delay, retry_after)
    return delay
