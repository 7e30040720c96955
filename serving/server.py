"""Assembling and running the server: one asyncio loop for gRPC (grpc.aio) and REST (uvicorn).

Start-up follows tensorflow_model_server: read the configs, load every model's initial versions,
then open the ports and log them (`Running gRPC ModelServer at ...`, `... at UNIX socket ...` with
--grpc_socket_path, `Exporting HTTP/REST API at:...` when --rest_api_port is given), so an
answering port means the models are loaded. SIGTERM/SIGINT drain: health goes
NOT_SERVING, the listeners close, in-flight requests get `--shutdown_grace_period_seconds` to
finish, models are unloaded, exit code 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from concurrent.futures import ThreadPoolExecutor

import grpc
import tensorflow as tf
import uvicorn
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving import configs, grpc_api
from serving.batching import Batcher
from serving.core import ServingCore
from serving.errors import ServingError
from serving.flags import ServerOptions
from serving.loader import VersionLoader
from serving.manager import ManagerSettings, ModelManager
from serving.metrics import ServerMetrics
from serving.rest_api import RestApi

log = logging.getLogger(__name__)

# TF Serving sets the gRPC message size limit to INT32_MAX on both directions.
_MAX_MESSAGE_BYTES = 2**31 - 1
# Idle REST connections stay open this long: longer than client pools keep them (httpx: 5 s, as is
# uvicorn's own default), so the server never closes a connection a client is about to reuse.
REST_KEEPALIVE_SECONDS = 75


class StartupError(RuntimeError):
    """The server cannot start; the message says why (logged as `Failed to start server`)."""


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without signal handlers of its own: the model server owns SIGTERM and SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def _configure_tensorflow(options: ServerOptions) -> None:
    intra = options.tensorflow_intra_op_parallelism or options.tensorflow_session_parallelism
    inter = options.tensorflow_inter_op_parallelism or options.tensorflow_session_parallelism
    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)


def _inference_threads() -> int:
    """Threads that run model calls: enough to overlap request handling with TF's own op threads."""
    return max(4, 2 * (os.cpu_count() or 1))


class ModelServer:
    """The running server: build with the options, `await run()` until a stop signal."""

    def __init__(self, options: ServerOptions):
        self.options = options
        try:
            self.model_config = configs.model_server_config(options)
            self.batching = configs.batching_settings(options)
            self.monitoring = configs.monitoring_settings(options)
            self.tls = configs.tls_settings(options)
            self.channel_arguments = configs.grpc_channel_arguments(options)
        except configs.ConfigError as exc:
            raise StartupError(str(exc)) from exc
        self.metrics = ServerMetrics()
        self._inference_pool = ThreadPoolExecutor(_inference_threads(), thread_name_prefix="inference")
        self._loader_pool = ThreadPoolExecutor(1, thread_name_prefix="loader")
        self._stopping = asyncio.Event()
        self._health: health.aio.HealthServicer | None = None
        self._service_names: list[str] = []

    def request_stop(self) -> None:
        if not self._stopping.is_set():
            log.info("Received a stop signal: draining (grace period %.1f s)",
                     self.options.shutdown_grace_period_seconds)
        self._stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        _configure_tensorflow(self.options)
        manager = self._manager(loop)
        batcher = Batcher(self.batching, self._inference_pool, self.metrics) if self.batching else None
        core = ServingCore(manager, self._inference_pool, self.metrics, batcher,
                           method_name_check=self.options.enable_signature_method_name_check)
        try:
            if not await self._until_stopped(self._load_initial(manager)):
                return 0
            grpc_server = await self._start_grpc(core)
            rest_server, rest_task = await self._start_rest(core)
            config_poll = self._spawn_config_poll(core)
            await self._stopping.wait()
            await self._drain(grpc_server, rest_server, rest_task)
            if config_poll:
                config_poll.cancel()
            return 0
        finally:
            await manager.stop()
            if batcher:
                batcher.close()
            self._inference_pool.shutdown(wait=False, cancel_futures=True)
            self._loader_pool.shutdown(wait=False, cancel_futures=True)

    def _manager(self, loop: asyncio.AbstractEventLoop) -> ModelManager:
        options = self.options
        settings = ManagerSettings(
            poll_wait_seconds=options.file_system_poll_wait_seconds,
            allow_version_labels_for_unavailable_models=options.allow_version_labels_for_unavailable_models,
            max_num_load_retries=options.max_num_load_retries,
            load_retry_interval_seconds=max(options.load_retry_interval_micros, 0) / 1e6)
        loader = VersionLoader(
            tags=frozenset(t.strip() for t in options.saved_model_tags.split(",") if t.strip()),
            warmup=options.enable_model_warmup,
            warmup_iterations=max(options.num_request_iterations_for_warmup, 1),
            metrics=self.metrics)
        return ModelManager(settings, loader, lambda fn, path: loop.run_in_executor(self._loader_pool, fn, path))

    async def _until_stopped(self, coroutine) -> bool:
        """Run `coroutine` unless a stop signal comes first; True when it completed."""
        work = asyncio.ensure_future(coroutine)
        stop = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait([work, stop], return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            stop.cancel()
            work.result()
            return True
        work.cancel()
        log.info("Stopped before the initial models were loaded")
        return False

    async def _load_initial(self, manager: ModelManager) -> None:
        try:
            failed = await manager.apply_config(self.model_config, initial=True)
        except ServingError as exc:
            raise StartupError(str(exc)) from exc
        if failed:
            details = ", ".join(f"{{{sv.id_text} due to error: {sv.error}}}" for sv in failed)
            raise StartupError(f"{len(failed)} servable(s) did not become available: {{{details}}}")

    async def _start_grpc(self, core: ServingCore) -> grpc.aio.Server:
        options = [("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES), *self.channel_arguments]
        server = grpc.aio.server(options=options)
        self._service_names = grpc_api.add_services(server, core,
                                                    tensor_content=self.options.enable_serialization_as_tensor_content)
        if self.options.enable_grpc_healthcheck_service:
            self._health = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        address = f"{self.options.bind_address}:{self.options.port}"
        port = self._listen(server, address)
        socket_path = self.options.grpc_socket_path
        if socket_path:
            self._listen(server, f"unix:{socket_path}")
        await server.start()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("Running gRPC ModelServer at %s:%d ...", self.options.bind_address, port)
        if socket_path:
            log.info("Running gRPC ModelServer at UNIX socket %s ...", socket_path)
        return server

    def _listen(self, server: grpc.aio.Server, address: str) -> int:
        """Add a listening address (TLS when --ssl_config_file is given); returns the port bound."""
        try:
            if self.tls:
                credentials = grpc.ssl_server_credentials(
                    [(self.tls.server_key, self.tls.server_cert)], root_certificates=self.tls.custom_ca,
                    require_client_auth=self.tls.client_verify)
                port = server.add_secure_port(address, credentials)
            else:
                port = server.add_insecure_port(address)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen for gRPC on {address}: {exc}") from exc
        if not port and not address.startswith("unix:"):
            raise StartupError(f"cannot listen for gRPC on {address}")
        return port

    async def _start_rest(self, core: ServingCore) -> tuple[uvicorn.Server | None, asyncio.Task | None]:
        if not self.options.rest_enabled:
            log.info("No HTTP/REST API: --rest_api_port is not set")
            return None, None
        if self.options.rest_api_port and self.options.rest_api_port == self.options.port:
            log.error("server_options.http_port cannot be same as grpc_port. Please use a different port for "
                      "HTTP/REST API. Skipped exporting HTTP/REST API.")
            return None, None
        address = (self.options.bind_address, self.options.rest_api_port)
        try:
            sock = socket.create_server(address, family=socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        except OSError as exc:
            raise StartupError(f"cannot listen for HTTP/REST on {address[0]}:{address[1]}: {exc.strerror}") from exc
        app = RestApi(core, self.monitoring, timeout_ms=self.options.rest_api_timeout_in_ms,
                      cors=self.options.rest_api_enable_cors_support)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", server_header=False,
                                timeout_graceful_shutdown=int(max(self.options.shutdown_grace_period_seconds, 1)),
                                timeout_keep_alive=REST_KEEPALIVE_SECONDS)
        server = _EmbeddedUvicorn(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name="rest")
        while not server.started:
            if task.done():
                task.result()
                raise StartupError("the HTTP/REST server stopped during start-up")
            await asyncio.sleep(0.01)
        log.info("Exporting HTTP/REST API at:%s:%d ...", address[0], sock.getsockname()[1])
        if self.monitoring.prometheus_enabled:
            log.info("Prometheus metrics at http://%s:%d%s", address[0], sock.getsockname()[1],
                     self.monitoring.prometheus_path)
        return server, task

    def _spawn_config_poll(self, core: ServingCore) -> asyncio.Task | None:
        wait = self.options.model_config_file_poll_wait_seconds
        if not self.options.model_config_file or wait <= 0:
            return None
        return asyncio.create_task(self._poll_config_file(core, wait), name="config-poll")

    async def _poll_config_file(self, core: ServingCore, wait: float) -> None:
        """Re-read --model_config_file; apply it whenever it differs from the config in effect (so,
        as in TF Serving, a config pushed with HandleReloadConfigRequest is replaced by the file's)."""
        last_problem = None
        while True:
            await asyncio.sleep(wait)
            try:
                config = await asyncio.to_thread(configs.model_server_config, self.options)
                if config == core.manager.config:
                    continue
                log.info("Reloading the model config from %s", self.options.model_config_file)
                await core.reload_config(config)
                last_problem = None
            except (configs.ConfigError, ServingError) as exc:
                if str(exc) != last_problem:
                    log.error("ReloadConfig from %s failed: %s", self.options.model_config_file, exc)
                last_problem = str(exc)

    async def _set_health(self, status) -> None:
        if self._health is None:
            return
        # TF Serving registers the short names; the full names are what grpc health clients usually ask.
        short_names = [name.rsplit(".", 1)[-1] for name in self._service_names]
        for service in ["", *self._service_names, *short_names]:
            await self._health.set(service, status)

    async def _drain(self, grpc_server: grpc.aio.Server, rest_server: uvicorn.Server | None,
                     rest_task: asyncio.Task | None) -> None:
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        grace = self.options.shutdown_grace_period_seconds
        if rest_server is not None:
            rest_server.should_exit = True
        await grpc_server.stop(grace)
        if rest_task is not None:
            await rest_task
        log.info("Server stopped: in-flight requests drained")


async def serve(options: ServerOptions) -> int:
    return await ModelServer(options).run()

