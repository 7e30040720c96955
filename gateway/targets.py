"""Where the model servers are: the `backend` setting parsed, and DNS names resolved to endpoints.

Three forms, as gRPC spells targets:

    host:port                      one endpoint (a name is resolved by gRPC itself)
    ipv4:10.0.0.1:8500,10.0.0.2:8500   a static fleet (also `ipv6:[::1]:8500,...` or a bare
    10.0.0.1:8500,10.0.0.2:8500        comma-separated list of host:port)
    dns:///model-server:8500       every address the name resolves to, one endpoint each,
                                   re-resolved by the gateway (see gateway/fleet.py)

Pure: no gRPC here, and resolution takes the resolver as an argument, so the parsing and the
address arithmetic are tested in-process.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Awaitable, Callable, Literal, Sequence

DEFAULT_PORT = 8500  # TF Serving's gRPC port

# loop.getaddrinfo's shape: (host, port, family, type) -> [(family, type, proto, canonname, sockaddr)]
Resolver = Callable[..., Awaitable[Sequence[tuple]]]


class TargetError(ValueError):
    """The backend setting is not a target the gateway understands (the message says why)."""


@dataclass(frozen=True)
class BackendTarget:
    """The parsed `backend` setting."""

    kind: Literal["single", "static", "dns"]
    addresses: tuple[str, ...]   # host:port of each endpoint ("single", "static"); () for "dns"
    host: str = ""               # the name to resolve ("dns"), else the first address's host
    port: int = DEFAULT_PORT

    @property
    def resolves(self) -> bool:
        return self.kind == "dns"


def parse_target(text: str) -> BackendTarget:
    """The backend target in `text`, or TargetError naming what is wrong."""
    text = text.strip()
    if not text:
        raise TargetError("the backend target is empty")
    if text.startswith("dns:"):
        rest = text[len("dns:"):]
        if rest.startswith("//"):  # dns://[authority]/host:port; the authority (a DNS server) is not supported
            authority, _, rest = rest[2:].partition("/")
            if authority:
                raise TargetError(f"{text!r}: a DNS server in the target (dns://{authority}/...) is not "
                                  "supported; use dns:///host:port")
        host, port = split_host_port(rest, text)
        return BackendTarget("dns", (), host, port)
    for scheme in ("ipv4:", "ipv6:"):
        if text.startswith(scheme):
            text = text[len(scheme):]
            break
    parts = [p.strip() for p in text.split(",")]
    if any(not p for p in parts):
        raise TargetError(f"{text!r}: an empty entry in the address list")
    addresses = []
    for part in parts:
        host, port = split_host_port(part, text)
        addresses.append(join_host_port(host, port))
    if len(set(addresses)) != len(addresses):
        raise TargetError(f"{text!r}: an address is listed twice")
    first_host, first_port = split_host_port(addresses[0], text)
    return BackendTarget("single" if len(addresses) == 1 else "static", tuple(addresses), first_host, first_port)


def split_host_port(text: str, whole: str = "") -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"; the port defaults to 8500."""
    where = f"{whole or text!r}"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise TargetError(f"{where}: unclosed '[' in {text!r}")
        port_text = rest[1:] if rest.startswith(":") else ("" if not rest else None)
        if port_text is None:
            raise TargetError(f"{where}: unexpected {rest!r} after the IPv6 address")
    elif text.count(":") > 1:
        host, port_text = text, ""  # a bare IPv6 address
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise TargetError(f"{where}: no host in {text!r}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise TargetError(f"{where}: {port_text!r} is not a port number (1-65535)")
    return host, int(port_text)


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def resolve(target: BackendTarget, getaddrinfo: Resolver) -> list[str]:
    """The endpoints of a "dns" target now: every address the name resolves to, as host:port,
    sorted and without duplicates. OSError (socket.gaierror) when the name does not resolve."""
    infos = await getaddrinfo(target.host, target.port, type=socket.SOCK_STREAM)
    addresses = {join_host_port(info[4][0], target.port) for info in infos
                 if info[0] in (socket.AF_INET, socket.AF_INET6)}
    return sorted(addresses)
