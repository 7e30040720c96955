"""Protection for the model servers and for the gateway's callers: endpoint health and a retry budget.

`EndpointHealth` is one model server endpoint's circuit: it ejects the endpoint after
`failure_threshold` consecutive failed calls, or at once when the endpoint does not answer its
status check, so requests go to the others instead of each waiting for its own timeout. The
periodic status check (gateway/fleet.py) is the probe that lets it back: an endpoint ejected as
unreachable returns at its first good check; one ejected for failing calls while reachable (a
broken model, say) returns at the first good check after `eject_seconds`. With every endpoint
ejected, the gateway's circuit is open: requests fail fast with UNAVAILABLE.

The retry budget lets failed idempotent calls (Predict) be retried without multiplying load when
everything fails: each call earns `percent/100` of a retry, and a retry spends one.
"""

from __future__ import annotations

import time
from typing import Callable


class EndpointHealth:
    HEALTHY = "healthy"
    EJECTED = "ejected"

    def __init__(self, failure_threshold: int, eject_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.failure_threshold = failure_threshold
        self.eject_seconds = eject_seconds
        self._clock = clock
        self.failures = 0            # consecutive failed calls
        self.ejected_at: float | None = None
        self.reason: str | None = None   # why it is out: "unreachable" or "failing"

    @property
    def healthy(self) -> bool:
        return self.ejected_at is None

    @property
    def state(self) -> str:
        return self.HEALTHY if self.healthy else self.EJECTED

    def record_success(self) -> None:
        self.failures = 0

    def record_failure(self) -> bool:
        """A call failed; True when this ejected the endpoint."""
        self.failures += 1
        if self.healthy and self.failures >= self.failure_threshold:
            self._eject("failing")
            return True
        return False

    def probe_failed(self) -> bool:
        """The status check got no answer: out at once. True when this ejected the endpoint."""
        was_healthy = self.healthy
        if was_healthy or self.reason != "unreachable":
            self._eject("unreachable")
        return was_healthy

    def probe_succeeded(self) -> bool:
        """The status check answered; True when this let the endpoint back."""
        if self.healthy:
            return False
        if self.reason == "failing" and self._clock() - self.ejected_at < self.eject_seconds:
            return False
        self.ejected_at, self.reason = None, None
        self.failures = self.failure_threshold - 1 if self.failure_threshold > 1 else 0  # one more failure: out again
        return True

    def retry_after(self) -> float:
        """Seconds until an ejected endpoint may come back at the earliest (0 when healthy)."""
        if self.healthy:
            return 0.0
        if self.reason == "unreachable":
            return 0.0
        return max(0.0, self.eject_seconds - (self._clock() - self.ejected_at))

    def _eject(self, reason: str) -> None:
        self.ejected_at, self.reason = self._clock(), reason


class RetryBudget:
    """Each call earns `percent/100` of a retry; a retry spends a whole one (at most `cap` saved)."""

    def __init__(self, percent: float, cap: float = 10.0):
        self._ratio = percent / 100.0
        self._cap = cap
        self._tokens = cap if percent > 0 else 0.0

    def earn(self) -> None:
        self._tokens = min(self._cap, self._tokens + self._ratio)

    def spend(self) -> bool:
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
