"""`python -m gateway`: one asyncio loop, a gRPC server and an HTTP server per process (`--workers N`:
N such processes on the same ports).

    python -m gateway --backend HOST:PORT --grpc-port N --http-port N --config FILE

Every setting has a flag (`--max-batch-size`, ...), a `GATEWAY_<NAME>` variable and a key in the
YAML file; `--help` lists them and `--print-settings` shows the values in effect.

Start-up: build the pieces, bind both ports (0 = a free one), start both servers, then write one
JSON line to stderr - `{"event": "listening", "grpc_port": ..., "http_port": ...}` - which
launchers wait for. The gateway is live at once and ready (health SERVING, /readyz 200) when the
model server reports the default model AVAILABLE.

Security, all optional (settings `tls_*`, `api_keys`, `backend_tls*`): both ports serve TLS from
one certificate, with client certificates required when a client CA is given; API keys are checked
for both transports by auth.py; the model server can be called over (mutual) TLS.

Shutdown on SIGTERM/SIGINT: readiness and health go NOT_SERVING first, then (after
`shutdown_delay_seconds`) both servers stop accepting and in-flight requests get
`shutdown_grace_seconds` to finish; exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys

import uvicorn
import yaml

from gateway.auth import ApiKeyAuth
from gateway.core import GatewayCore
from gateway.decode import DecodeLimits, Decoder, install_pillow_guards
from gateway.fleet import Fleet
from gateway.grpc_service import create_grpc_server
from gateway.logs import setup_logging
from gateway.metrics import Metrics
from gateway.registry import ModelRegistry
from gateway.reload import SettingsReloader
from gateway.rest import create_app
from gateway.settings import NOT_FLAGS, Settings, SettingsError, env_name, flag_name, load_settings
from gateway.tls import TlsConfigError, backend_credentials, uvicorn_ssl_options
from gateway.tracing import start_tracing
from gateway.workers import is_worker, supervise

log = logging.getLogger(__name__)


class _EmbeddedUvicorn(uvicorn.Server):
    """Uvicorn as one task among others: no signal handlers of its own, and a `started` event."""

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self.started_event = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self):
        yield  # the gateway owns SIGTERM/SIGINT and stops both servers together

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        self.started_event.set()


def bind_tcp(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening-ready TCP socket on host:port (port 0: the kernel picks one); `reuse_port`: other
    processes may bind the same port (gateway workers)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says it is TCP; without it, reused REST connections pay Nagle's ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def serve(settings: Settings, flags: dict | None = None) -> int:
    """Run until SIGTERM/SIGINT; `flags` (the parsed command line) lets a changed config file be
    re-read with the same precedence."""
    loop = asyncio.get_running_loop()
    install_pillow_guards(settings.max_image_pixels)
    try:
        channel_credentials = backend_credentials(settings)
        ssl_options = uvicorn_ssl_options(settings)
    except TlsConfigError as exc:
        log.error("invalid TLS settings: %s", exc)
        return 2
    tracing = start_tracing(settings)  # before any grpc.aio server or channel exists
    auth = ApiKeyAuth(settings.named_api_keys, settings.public_health_and_metrics)
    metrics = Metrics()
    fleet = Fleet(settings, metrics, settings.model_names, channel_credentials,
                  validate=lambda info: registry.validate(info))
    registry = ModelRegistry(fleet, settings, metrics)
    decoder = Decoder(settings.decode_workers, settings.max_pending_decodes,
                      DecodeLimits(tuple(settings.allowed_formats), settings.max_image_pixels))
    service = GatewayCore(settings, fleet, registry, decoder, metrics)

    async def apply(fresh: Settings) -> None:
        registry.update(fresh)
        service.update(fresh)
        await fleet.reconfigure(fresh)

    reloader = SettingsReloader(settings, flags or {}, apply)
    try:
        grpc_server, grpc_port, health_servicer = await create_grpc_server(settings, service, registry, metrics, auth)
        http_socket = bind_tcp(settings.host, settings.http_port, reuse_port=settings.workers > 1)
    except (OSError, RuntimeError) as exc:
        log.error("cannot bind: %s", exc)
        await fleet.close()
        decoder.close()
        return 1
    app = create_app(settings, service, metrics, auth)
    tracing.instrument_app(app)
    http_server = _EmbeddedUvicorn(uvicorn.Config(
        app, lifespan="off", log_config=None,
        access_log=False, server_header=False, timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        # uvicorn's own default (5 s) equals httpx's and many proxies' pool expiry: the server then closes
        # idle connections just as clients reuse them, and those requests fail with a connection reset.
        timeout_keep_alive=settings.http_keepalive_seconds,
        **ssl_options))

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloader.request)

    await grpc_server.start()
    http_task = asyncio.create_task(http_server.serve(sockets=[http_socket]), name="http")
    started = asyncio.create_task(http_server.started_event.wait())
    await asyncio.wait({started, http_task}, return_when=asyncio.FIRST_COMPLETED)
    if not http_server.started_event.is_set():
        log.error("the HTTP server did not start")
        await grpc_server.stop(0)
        return 1
    watchers = [asyncio.create_task(fleet.run(), name="fleet-watcher"),
                asyncio.create_task(reloader.run(), name="config-reloader")]
    http_port = http_socket.getsockname()[1]
    announce_listening(settings, grpc_port, http_port)

    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({stopping, http_task}, return_when=asyncio.FIRST_COMPLETED)
    exit_code = 0 if stop.is_set() else 1
    log.info("shutting down", extra={"fields": {"event": "draining",
                                                "grace_seconds": settings.shutdown_grace_seconds}})
    await registry.drain()
    await health_servicer.enter_graceful_shutdown()
    await asyncio.sleep(settings.shutdown_delay_seconds)
    http_server.should_exit = True
    await asyncio.gather(grpc_server.stop(settings.shutdown_grace_seconds), http_task,
                         return_exceptions=True)
    for watcher in watchers:
        watcher.cancel()
    await asyncio.gather(*watchers, return_exceptions=True)
    await service.close()
    decoder.close()
    await fleet.close()
    tracing.shutdown()
    log.info("stopped", extra={"fields": {"event": "stopped"}})
    return exit_code


def announce_listening(settings: Settings, grpc_port: int, http_port: int) -> None:
    """The one start-up line launchers wait for; always JSON, whatever the log format."""
    line = {"event": "listening", "grpc_port": grpc_port, "http_port": http_port,
            "host": settings.host, "backend": settings.backend, "tls": settings.tls,
            "mutual_tls": settings.tls_client_ca_file is not None, "api_keys": len(settings.api_keys)}
    print(json.dumps(line), file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="The classifier gateway: classifier.v1 over gRPC and REST in front of a TF Serving "
                    "model server. Precedence: flags > GATEWAY_* environment > --config YAML > defaults.")
    for name, field in Settings.model_fields.items():
        if name in NOT_FLAGS:
            continue
        default = field.get_default(call_default_factory=True)
        parser.add_argument(flag_name(name), dest=name, default=argparse.SUPPRESS, metavar=name.upper(),
                            help=f"{field.description} (env {env_name(name)}; default {_show(default)})")
    parser.add_argument("--print-settings", action="store_true",
                        help="print the settings in effect as YAML and exit")
    return parser


def _show(value) -> str:
    return ",".join(value) if isinstance(value, list) else str(value)


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    print_settings = args.pop("print_settings")
    try:
        settings = load_settings(args)
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    if print_settings:
        print(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False), end="")
        return 0
    if settings.workers > 1 and not is_worker():
        return supervise(list(argv if argv is not None else sys.argv[1:]), settings.workers, settings.host,
                         settings.grpc_port, settings.http_port)
    setup_logging(settings.log_level, settings.log_format)
    return asyncio.run(serve(settings, args))
