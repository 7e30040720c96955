"""Which model version answers a request: the version rules of a fleet, as pure functions.

The input is what the fleet knows right now - for one model, the usable versions each healthy
model server endpoint serves - and the model's routing settings (labels, default_version, canary,
shadow). The rules, in order:

1. A request that names a version (or a label, looked up in the settings) gets exactly that
   version, or VERSION_NOT_FOUND naming what is served. What no model could satisfy - a negative
   version, a label over 128 characters, both a version and a label - is INVALID_ARGUMENT as the
   VersionRequest is made, before the fleet is asked: the same answer from every entry point.
2. A canary's share of the default traffic goes to the candidate when some healthy endpoint
   serves it; otherwise that share stays with the default version (nothing fails).
3. Default traffic never goes to a canary or shadow candidate (unless nothing else is served):
   it goes to the pinned `default_version` when one is set and served, else to the newest version
   that every endpoint of the pool serves. When no version is served by all - replicas that keep
   only their latest version, mid-rollout, or a pod canary - each endpoint answers with the newest
   version it has, so no replica idles: the request takes the newest version of the endpoint that
   `pick` chooses (gateway/registry.py picks the less loaded of two, counting each version's
   outstanding images per endpoint that answers with it).
4. Independently, a shadow's share also sends a copy to the shadow candidate.

Shares are decided by `TrafficSplit`: sticky per key (a hash of the caller's key) or, without a
key, an exact running share per request.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Mapping

from gateway.errors import InvalidArgument, Unavailable, VersionNotFound
from gateway.settings import ModelSettings, VersionChoice

CANARY_KEY_HEADER = "x-canary-key"       # header / metadata that keeps a caller on one side of a split
MAX_LABEL_CHARS = 128                    # a requested version label, on every transport and route

Served = Mapping[str, frozenset[int]]   # endpoint address -> usable versions it serves
Pick = Callable[[Mapping[str, int]], str]  # {endpoint: its newest version} -> the endpoint to answer


@dataclass(frozen=True)
class VersionRequest:
    """What the caller asked for: a version number (0: none), a label ("" none), a stickiness key.

    InvalidArgument, raised on creation, for what no model could satisfy: a negative version, a
    label over MAX_LABEL_CHARS characters, or both a version and a label.
    """

    version: int = 0
    label: str = ""
    key: str | None = None

    def __post_init__(self) -> None:
        if self.version < 0:
            raise InvalidArgument(f"version must be 0 (the gateway's choice) or more, not {self.version}")
        if len(self.label) > MAX_LABEL_CHARS:
            raise InvalidArgument(f"version_label must be at most {MAX_LABEL_CHARS} characters, "
                                  f"not {len(self.label)}")
        if self.version and self.label:
            raise InvalidArgument("give a version or a version label, not both")


@dataclass(frozen=True)
class Route:
    version: int
    why: str                    # requested | label | canary | pinned | common | newest_on_endpoint
    shadow: int | None = None   # also send a copy to this version
    strict: bool = False        # the caller named the version: never answer with another one


def route_key(canary_key: str | None, authorization: str | None) -> str | None:
    """What keeps a caller on one side of a split: its x-canary-key, else its credentials (only
    hashed, never logged), else nothing (each request decided on its own)."""
    return canary_key or authorization or None


class TrafficSplit:
    """Decides which requests fall into a share: by key (stable hash) or by an exact running count."""

    def __init__(self, salt: str):
        self._salt = salt
        self._count = 0

    def hit(self, percent: float, key: str | None) -> bool:
        if percent <= 0:
            return False
        if percent >= 100:
            return True
        share = percent / 100.0
        if key:
            digest = hashlib.blake2b(f"{self._salt}\0{key}".encode(), digest_size=8).digest()
            return int.from_bytes(digest, "big") / 2.0**64 < share
        self._count += 1
        return math.floor(self._count * share) > math.floor((self._count - 1) * share)


def all_versions(served: Served) -> frozenset[int]:
    return frozenset().union(*served.values()) if served else frozenset()


def describe_served(name: str, versions: frozenset[int], labels: Mapping[str, int]) -> str:
    shown = sorted(versions)
    text = f"model {name} serves version{'s' if len(shown) != 1 else ''} {', '.join(map(str, shown)) or 'none'}"
    if labels:
        text += "; labels " + ", ".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return text


def named_version(name: str, request: VersionRequest, labels: Mapping[str, int], versions: frozenset[int]) -> int:
    """The version `request` names (0: none): its version, or the one its label points at in the
    model's `labels`. VersionNotFound for a label `labels` does not define, or for a version not
    among `versions` (those served; not checked while none is: the model is unavailable then, not
    the version unknown)."""
    if request.label:
        if request.label not in labels:
            defined = ", ".join(sorted(labels)) or "none"
            raise VersionNotFound(f"model {name} has no version label {request.label[:64]!r} (labels: {defined})")
        wanted = labels[request.label]
    else:
        wanted = request.version
    if wanted and versions and wanted not in versions:
        raise VersionNotFound(f"model {name} version {wanted} is not served; {describe_served(name, versions, labels)}")
    return wanted


def _served_choice(choice: VersionChoice | None, settings: ModelSettings, versions: frozenset[int]) -> int | None:
    """The version `choice` names when it is served, else None."""
    if choice is None:
        return None
    version = settings.resolve(choice)
    return version if version in versions else None


def default_pool(served: Served, exclude: frozenset[int]) -> dict[str, frozenset[int]]:
    """The endpoints and versions default traffic may use: everything but the candidates, unless
    nothing else is served."""
    pool = {address: versions - exclude for address, versions in served.items()}
    pool = {address: versions for address, versions in pool.items() if versions}
    return pool or dict(served)


def common_version(pool: Served) -> int | None:
    """The newest version every endpoint of the pool serves, or None."""
    if not pool:
        return None
    common = frozenset.intersection(*pool.values())
    return max(common) if common else None


def choose(name: str, request: VersionRequest, settings: ModelSettings, served: Served, pick: Pick,
           canary: TrafficSplit, shadow: TrafficSplit) -> Route:
    """The route for one request; VersionNotFound for a version no model server serves or a label
    the settings do not define (named_version), Unavailable when no healthy endpoint serves the
    model. (A request with both a version and a label never gets here: VersionRequest refuses it.)"""
    versions = all_versions(served)
    wanted = named_version(name, request, settings.labels, versions)
    if not versions:
        raise Unavailable(f"model {name} is not available yet: no model server serves it")
    if wanted:
        return Route(wanted, "label" if request.label else "requested", strict=True)

    shadow_version = None
    if settings.shadow is not None and shadow.hit(settings.shadow.percent, request.key):
        shadow_version = _served_choice(settings.shadow, settings, versions)
    if settings.canary is not None and canary.hit(settings.canary.percent, request.key):
        candidate = _served_choice(settings.canary, settings, versions)
        if candidate is not None:
            return Route(candidate, "canary", shadow_version if shadow_version != candidate else None)
    version, why = default_route(settings, served, pick)
    return Route(version, why, shadow_version if shadow_version != version else None)


def default_route(settings: ModelSettings, served: Served, pick: Pick | None) -> tuple[int | None, str]:
    """The version default traffic uses now, and how it was chosen: pinned, common,
    newest_on_endpoint (`pick` chose the endpoint; without `pick`: None, "per_endpoint"), or
    None, "none" when nothing is served."""
    if not served:
        return None, "none"
    candidates = frozenset(settings.resolve(c) for c in (settings.canary, settings.shadow) if c is not None)
    pool = default_pool(served, candidates)
    pinned = _served_choice(settings.default_version, settings, all_versions(pool))
    if pinned is not None:
        return pinned, "pinned"
    version = common_version(pool)
    if version is not None:
        return version, "common"
    if pick is None:
        return None, "per_endpoint"
    newest = {address: max(versions) for address, versions in sorted(pool.items())}
    return newest[pick(newest)], "newest_on_endpoint"
