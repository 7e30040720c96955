"""Command-line flags, spelled and parsed as `tensorflow_model_server` does.

`--name=value` (a bare `--name` sets a boolean flag to true), the real binary's flag names and
defaults. Flags of the real binary that this server does not implement are accepted with a warning,
so a command line written for TF Serving runs unchanged; a flag neither server knows is reported
as `unknown argument`, as the real binary reports it, and ignored.

Where `python -m serving` differs from the real binary on purpose is `DEVIATIONS` (printed by
`--help` and listed in README.md).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

log = logging.getLogger(__name__)


def _flag(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class ServerOptions:
    """Every implemented flag; field name = flag name, field default = flag default."""

    port: int = _flag(8500, "TCP port for the gRPC API; 0 picks a free port (logged)")
    grpc_socket_path: str = _flag("", "also serve the gRPC API on this UNIX socket (relative or absolute path)")
    rest_api_port: int = _flag(-1, "TCP port for the HTTP/REST API; -1 (the default): no REST API; "
                                   "0 picks a free port (logged)")
    rest_api_timeout_in_ms: int = _flag(30000, "timeout for HTTP/REST predict calls; <= 0 means none")
    rest_api_enable_cors_support: bool = _flag(False, "add CORS headers to REST responses")
    model_name: str = _flag("default", "name of the model (ignored if --model_config_file is set)")
    model_base_path: str = _flag("", "path to the model's version directories (ignored if --model_config_file is set)")
    model_config_file: str = _flag("", "text ModelServerConfig: several models, version policies, version labels")
    model_config_file_poll_wait_seconds: int = _flag(0, "re-read --model_config_file this often; 0 reads it once")
    allow_version_labels_for_unavailable_models: bool = _flag(
        False, "let a new version label point at a version that is not AVAILABLE yet")
    file_system_poll_wait_seconds: int = _flag(
        1, "seconds between scans of base paths for new versions; 0 scans once, < 0 never")
    max_num_load_retries: int = _flag(5, "retries of a failed version load before giving up")
    load_retry_interval_micros: int = _flag(60_000_000, "wait between load retries")
    saved_model_tags: str = _flag("serve", "comma-separated tags of the MetaGraph to load")
    enable_model_warmup: bool = _flag(True, "replay assets.extra/tf_serving_warmup_requests before AVAILABLE")
    num_request_iterations_for_warmup: int = _flag(0, "times each warm-up request is replayed (used if > 0)")
    enable_batching: bool = _flag(False, "coalesce concurrent requests into batches")
    batching_parameters_file: str = _flag("", "text BatchingParameters for --enable_batching")
    monitoring_config_file: str = _flag("", "text MonitoringConfig: Prometheus metrics on the REST port")
    enable_grpc_healthcheck_service: bool = _flag(False, "serve grpc.health.v1.Health")
    ssl_config_file: str = _flag("", "text SSLConfig: TLS (and optionally client certificates) for gRPC")
    grpc_channel_arguments: str = _flag("", "comma-separated gRPC server arguments, e.g. grpc.max_connection_age_ms=2000")
    enable_serialization_as_tensor_content: bool = _flag(False, "answer Predict with tensor_content instead of typed fields")
    enable_signature_method_name_check: bool = _flag(
        False, "require the SignatureDef method_name of each API (Predict, Classify, Regress)")
    tensorflow_session_parallelism: int = _flag(0, "TensorFlow threads (intra and inter op); 0 = auto")
    tensorflow_intra_op_parallelism: int = _flag(0, "TensorFlow intra-op threads; 0 = auto")
    tensorflow_inter_op_parallelism: int = _flag(0, "TensorFlow inter-op threads; 0 = auto")
    version: bool = _flag(False, "print the version and exit")
    # Not in tensorflow_model_server (see the module docstring).
    bind_address: str = _flag("127.0.0.1", "[python -m serving only] address both APIs listen on; 0.0.0.0 for all")
    shutdown_grace_period_seconds: float = _flag(
        5.0, "[python -m serving only] on SIGTERM, how long in-flight requests may finish")

    @property
    def rest_enabled(self) -> bool:
        return self.rest_api_port >= 0


# Flags of tensorflow_model_server that change nothing here (accepted with a warning).
ACCEPTED_WITHOUT_EFFECT = frozenset({
    "rest_api_num_threads", "enable_per_model_batching_parameters",
    "num_load_threads", "num_unload_threads", "flush_filesystem_caches",
    "tensorflow_session_config_file", "use_alts_credentials", "platform_config_file",
    "per_process_gpu_memory_fraction", "grpc_max_threads", "remove_unused_fields_from_bundle_metagraph",
    "prefer_tflite_model", "num_tflite_pools", "num_tflite_interpreters_per_pool",
    "xla_cpu_compilation_enabled", "xla_gpu_compilation_enabled",
    "enable_profiler", "thread_pool_factory_config_file", "mixed_precision", "skip_initialize_tpu",
})

# Where python -m serving differs from tensorflow_model_server on purpose, one line each.
DEVIATIONS = (
    "binds 127.0.0.1 unless --bind_address says otherwise (the real binary listens on all interfaces)",
    "--port=0 and --rest_api_port=0 pick a free port and log it (for --port=0 the real binary serves gRPC on "
    "--grpc_socket_path only, and refuses to start without one; --rest_api_port=0 turns REST off)",
    "SIGTERM drains in-flight requests for --shutdown_grace_period_seconds, then exits 0",
    "float outputs in REST answers are the shortest text that reads back as the same float32",
    "JSON numbers beyond the double range read as infinity, lone UTF-16 surrogate escapes are kept "
    "(the real binary's parser refuses both)",
    "an OPTIONS request without an http(s) Origin answers 400 with a JSON error body (the real one is empty)",
    "two extra metrics: serving_requests_in_flight, serving_batch_queue_tasks",
)

_FIELDS = {f.name: f for f in dataclasses.fields(ServerOptions)}


class FlagError(ValueError):
    """A flag the server knows, given a value it cannot use."""


class HelpRequested(Exception):
    """`--help` was given: print `usage()` and exit."""


def _parse_bool(name: str, text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise FlagError(f"--{name}={text}: expected true or false")


def _convert(name: str, text: str | None) -> Any:
    default = _FIELDS[name].default
    if isinstance(default, bool):
        return True if text is None else _parse_bool(name, text)
    if text is None:
        raise FlagError(f"--{name} needs a value: --{name}=VALUE")
    try:
        return type(default)(text)
    except ValueError as exc:
        raise FlagError(f"--{name}={text}: not a valid {type(default).__name__}") from exc


def parse(argv: Sequence[str]) -> ServerOptions:
    """Parse `argv` (without the program name) into options.

    Raises FlagError on bad values, HelpRequested for --help."""
    values: dict[str, Any] = {}
    for arg in argv:
        if not arg.startswith("-"):
            log.warning("unknown argument: %s (ignored)", arg)
            continue
        name, sep, text = arg.lstrip("-").partition("=")
        if name in ("help", "h"):
            raise HelpRequested()
        if name in _FIELDS:
            values[name] = _convert(name, text if sep else None)
        elif name in ACCEPTED_WITHOUT_EFFECT:
            log.warning("--%s is accepted for compatibility with tensorflow_model_server "
                        "but has no effect in python -m serving", name)
        else:
            log.warning("unknown argument: %s (ignored)", arg)
    return ServerOptions(**values)


def usage() -> str:
    lines = ["usage: python -m serving [--flag=value ...]",
             "A TensorFlow-Serving-compatible model server; flags as tensorflow_model_server.", "",
             "Flags:"]
    for f in dataclasses.fields(ServerOptions):
        default = f.default
        shown = str(default).lower() if isinstance(default, bool) else repr(default) if isinstance(default, str) else default
        lines.append(f"  --{f.name}={shown}")
        lines.append(f"      {f.metadata['help']}")
    lines += ["", "Accepted for compatibility, without effect: "
              + ", ".join(f"--{n}" for n in sorted(ACCEPTED_WITHOUT_EFFECT))]
    lines += ["", "Differences from tensorflow_model_server, on purpose:"] + [f"  * {d}" for d in DEVIATIONS]
    return "\n".join(lines)
