"""When the client tries again: the retry policy, the retry budget and the per-call deadline.

A call is retried when its error is `retryable` (Overloaded, Unavailable): after the server's
hint (`retry_after`, from google.rpc.RetryInfo or REST's retry-after) when it gave one, else after
an exponential backoff, times a random jitter, and only while

  * the call has attempts left (`max_attempts`, the first included),
  * the wait ends before the call's deadline (one deadline covers every attempt), and
  * the client's retry budget allows it in time: retries may add at most `budget_percent` % to
    the calls made, plus `budget_min_per_second` retries per second (the budget is shared by every
    call of one client object). A retry beyond the budget waits for its share instead, and gives
    up when that share comes after the deadline: a gateway in trouble sees retries spread out at
    a bounded rate, never a storm, and a patient caller still gets its answers.

Otherwise the last error is raised. This is the only retry layer: the gRPC channel waits for a
connection (wait_for_ready) but has no retry policy of its own (see `channel.py`), so a call
reaches the gateway at most `max_attempts` times.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Optional

from .errors import ClassifierError, DeadlineExceeded


@dataclass(frozen=True)
class RetryPolicy:
    """How a call is retried; `RetryPolicy(max_attempts=1)` turns retries off."""

    max_attempts: int = 5            # attempts per call, the first one included
    initial_backoff: float = 0.1     # seconds before the first retry without a server hint
    max_backoff: float = 2.0         # longest backoff without a server hint
    multiplier: float = 2.0          # backoff growth per attempt
    jitter: float = 0.5              # each wait is multiplied by a random factor in [1, 1 + jitter]
    max_retry_after: float = 30.0    # longest server hint the client waits for
    budget_percent: float = 20.0     # retries as a share of calls, on top of ...
    budget_min_per_second: float = 10.0  # ... this many retries per second

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.initial_backoff, self.max_backoff, self.jitter, self.max_retry_after, self.budget_percent,
               self.budget_min_per_second) < 0 or self.multiplier < 1:
            raise ValueError("backoffs, jitter, max_retry_after and budget must be >= 0, multiplier >= 1")

    def delay(self, retry: int, hint: Optional[float], rng: random.Random) -> float:
        """Seconds to wait before retry number `retry` (1 for the first retry)."""
        if hint is not None:
            base = min(hint, self.max_retry_after)
        else:
            base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        return base * rng.uniform(1.0, 1.0 + self.jitter)


class RetryBudget:
    """A token bucket: each call deposits budget_percent/100 of a token, time adds
    budget_min_per_second tokens per second (up to one second's worth plus ten calls' deposits),
    each retry takes a whole token, possibly ahead of time (then it waits). Thread-safe."""

    def __init__(self, policy: RetryPolicy):
        self._ratio = policy.budget_percent / 100.0
        self._rate = policy.budget_min_per_second
        self._cap = max(1.0, self._rate) + 10.0 * self._ratio
        self._tokens = self._cap
        self._stamp = time.monotonic()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._tokens = min(self._cap, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def record_call(self) -> None:
        with self._lock:
            self._refill()
            self._tokens = min(self._cap, self._tokens + self._ratio)

    def reserve(self, within: Optional[float]) -> Optional[float]:
        """Take a token: seconds until it is this retry's (0: now), or None when that is not
        within `within` seconds (None: no limit) and no token was taken."""
        with self._lock:
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return 0.0
            if self._rate <= 0:
                return None
            wait = (1.0 - self._tokens) / self._rate
            if within is not None and wait >= within:
                return None
            self._tokens -= 1.0
            return wait


class Deadline:
    """One deadline for a call and all its retries (None: no deadline)."""

    def __init__(self, timeout: Optional[float]):
        self._at = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> Optional[float]:
        return None if self._at is None else self._at - time.monotonic()

    def timeout(self) -> Optional[float]:
        """The time left for the next attempt; DeadlineExceeded when none is left."""
        left = self.remaining()
        if left is not None and left <= 0:
            raise DeadlineExceeded("the call's deadline passed", code="DEADLINE_EXCEEDED")
        return left


class Retrier:
    """The retry decisions of one client object: `next_delay` says how long to wait, or re-raises."""

    def __init__(self, policy: RetryPolicy, seed: Optional[int] = None):
        self.policy = policy
        self.budget = RetryBudget(policy)
        self._rng = random.Random(seed)

    def next_delay(self, error: ClassifierError, attempt: int, deadline: Deadline) -> float:
        """After `attempt` failed attempts ended in `error`: seconds to wait, or raise `error`."""
        if not error.retryable or attempt >= self.policy.max_attempts:
            raise error
        delay = self.policy.delay(attempt, error.retry_after, self._rng)
        left = deadline.remaining()
        if left is not None and delay >= left:
            raise error
        share = self.budget.reserve(None if left is None else left - delay)
        if share is None:
            raise error
        return delay + share
