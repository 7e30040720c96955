"""Who is calling: the identity fair queueing, per-caller limits, metrics and logs use.

A caller is, in this order: the name of its API key (when the gateway has keys), else what it
says in the `x-client-id` header or metadata, else its network address. Metrics label callers by
that name, but only the first `MAX_CALLER_LABELS` distinct ones: the rest share the label `other`,
so a crowd of addresses cannot grow the metrics without bound (logs always carry the real name).
"""

from __future__ import annotations

import re

CLIENT_ID_HEADER = "x-client-id"
MAX_CALLER_LABELS = 20
OTHER = "other"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:/@+=-]{1,64}$")


def identify(key_name: str | None, client_id: str | None, address: str | None) -> str:
    """The caller's name: API key name > a sane x-client-id > address ("unknown" without any)."""
    if key_name:
        return key_name
    if client_id and _CLIENT_ID.match(client_id):
        return client_id
    return address or "unknown"


def grpc_peer_address(peer: str | None) -> str | None:
    """The address part of a gRPC peer string: "ipv4:10.0.0.7:51234" -> "10.0.0.7"."""
    if not peer:
        return None
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return rest or kind


class CallerLabels:
    """Bounded metric label values for callers: the first `limit` names as themselves, then `other`."""

    def __init__(self, limit: int = MAX_CALLER_LABELS):
        self._limit = limit
        self._known: set[str] = set()

    def __call__(self, caller: str) -> str:
        if caller in self._known:
            return caller
        if len(self._known) < self._limit:
            self._known.add(caller)
            return caller
        return OTHER
