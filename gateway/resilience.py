"""Protection for the model server and for the gateway's callers: a circuit breaker and a retry budget.

The circuit breaker turns a model server that keeps failing into an immediate UNAVAILABLE instead
of a pile of calls each waiting for its own timeout, and stops the gateway from hammering a server
that is restarting. After `open_seconds` one trial call goes through (half-open); its outcome
closes or re-opens the circuit.

The retry budget lets failed idempotent calls (Predict) be retried without multiplying load when
everything fails: each call earns `percent/100` of a retry, and a retry spends one.
"""

from __future__ import annotations

import enum
import time
from typing import Callable


class CircuitState(enum.IntEnum):
    """Values of the `gateway_circuit_state` gauge."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    def __init__(self, failure_threshold: int, open_seconds: float,
                 on_change: Callable[[CircuitState], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.failure_threshold = failure_threshold
        self.open_seconds = open_seconds
        self._on_change = on_change
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._since = clock()  # when the current state (or the current trial call) began

    @property
    def state(self) -> CircuitState:
        return self._state

    def allow(self) -> bool:
        """May a call go to the model server now? (In half-open, one trial call at a time.)"""
        if self._state is CircuitState.CLOSED:
            return True
        if self._clock() - self._since < self.open_seconds:
            return False
        # Open long enough, or a trial call never reported back (it was cancelled): try again.
        self._set(CircuitState.HALF_OPEN)
        return True

    def retry_after(self) -> float:
        """Seconds until the next trial call may go through (0 when closed)."""
        if self._state is CircuitState.CLOSED:
            return 0.0
        return max(0.0, self.open_seconds - (self._clock() - self._since))

    def record_success(self) -> None:
        self._failures = 0
        if self._state is not CircuitState.CLOSED:
            self._set(CircuitState.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is CircuitState.HALF_OPEN or self._failures >= self.failure_threshold:
            self._set(CircuitState.OPEN)

    def _set(self, state: CircuitState) -> None:
        changed = state is not self._state
        self._state = state
        self._since = self._clock()
        if changed and self._on_change is not None:
            self._on_change(state)


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
