"""When to try a task again: a small value object, as procrastinate's RetryStrategy.

The first retry waits ``backoff_seconds``; each further one doubles, capped at
``max_delay``, with "full jitter" on the upper half (so a burst of failures against
one endpoint does not come back as a burst). A processor that was told when to
come back (HTTP ``Retry-After``) is honoured: the delay is never shorter than that.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryStrategy:
    max_attempts: int = 5
    backoff_seconds: float = 30.0
    max_delay: float = 6 * 3600.0

    def should_retry(self, attempts: int) -> bool:
        """``attempts`` counts the runs so far, the one that just failed included."""
        return attempts < self.max_attempts

    def delay(self, attempts: int, retry_after: float | None = None, *, rng: random.Random | None = None) -> float:
        base = min(self.backoff_seconds * (2 ** max(attempts - 1, 0)), self.max_delay)
        # Half fixed, half random: never sooner than base/2, never later than base.
        jittered = base / 2 + (rng or random).uniform(0, base / 2)
        if retry_after is not None:
            return max(jittered, min(retry_after, self.max_delay))
        return jittered
