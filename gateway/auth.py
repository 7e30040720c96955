"""API keys: the one check both transports run before a request reaches its handler.

Off unless `api_keys` is set. Then every gRPC call and every HTTP request must carry
`authorization: Bearer <one of the keys>` (gRPC metadata or HTTP header), or it is answered
UNAUTHENTICATED / 401 before any of its work starts. With `public_health_and_metrics` (the
default) the liveness, readiness and metrics endpoints and `grpc.health.v1.Health` stay open, so
Kubernetes probes and Prometheus need no key.

The gRPC interceptor (grpc_interceptors.py) and the HTTP middleware (rest_middleware.py) are thin adapters: they
pass the path or method and the header here, and turn the error into their transport's answer.
Keys are compared in constant time; a refusal says what is wrong without echoing what was sent.
"""

from __future__ import annotations

import hmac
from typing import Sequence

from gateway.errors import Unauthenticated

# What answers without a key when `public_health_and_metrics` is on: HTTP paths and gRPC methods.
PUBLIC_PATHS = frozenset({
    "/healthz", "/readyz", "/metrics",
    "/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch",
})
AUTHORIZATION = "authorization"
CHALLENGE = 'Bearer realm="gateway"'


class ApiKeyAuth:
    def __init__(self, keys: Sequence[tuple[str, str]], public_health_and_metrics: bool = True):
        """`keys`: (caller name, key) pairs (settings.named_api_keys)."""
        self._keys = tuple((name, key.encode()) for name, key in keys)
        self._public = PUBLIC_PATHS if public_health_and_metrics else frozenset()

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def authorize(self, path: str, authorization: str | None) -> None:
        """Raise Unauthenticated unless `path` (an HTTP path or a gRPC method) may be served.

        `authorization` is the header's (or metadata's) value, None when absent.
        """
        if not self._keys or path in self._public:
            return
        if not authorization:
            raise Unauthenticated("this gateway needs an API key: send `authorization: Bearer <key>`")
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("the authorization header must be `Bearer <key>`")
        if self.caller(authorization) is None:
            raise Unauthenticated("the API key is not valid")

    def caller(self, authorization: str | None) -> str | None:
        """The name of the API key in an `authorization` value, None when it holds none of them."""
        if not self._keys or not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        given = token.strip().encode("utf-8", "replace")
        found = None
        for name, key in self._keys:  # no early exit: the time taken does not say which key was close
            if hmac.compare_digest(given, key):
                found = name
        return found
