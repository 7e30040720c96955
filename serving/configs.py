"""Reading the server's text-format config files into validated settings.

The same files the real `tensorflow_model_server` reads (`serving/models.config`,
`serving/batching.config`, `serving/monitoring.config`), parsed with the official protos where
the wheel ships them (`ModelServerConfig`) and with `config_protos` otherwise. Every problem is a
`ConfigError` that names the file and the field, raised at start-up (or on a config reload).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import message, text_format
from tensorflow_serving.config import model_server_config_pb2

from serving import config_protos
from serving.flags import ServerOptions

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"
_TENSORFLOW_PLATFORM = "tensorflow"


class ConfigError(ValueError):
    """A config file or flag combination the server cannot start with."""


def read_text_proto(path: str, proto: message.Message) -> message.Message:
    """Parse the text-format file at `path` into `proto` (returned)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as exc:
        # TF Serving: protobuf's parser logs the first line, TF Serving's status says the second.
        raise ConfigError(f"Error parsing text-format {proto.DESCRIPTOR.full_name}: {exc}. "
                          f"Invalid protobuf file: '{path}'") from exc
    return proto


def model_server_config(options: ServerOptions) -> model_server_config_pb2.ModelServerConfig:
    """The models to serve: `--model_config_file`, or one model from `--model_name`/`--model_base_path`."""
    if options.model_config_file:
        config = read_text_proto(options.model_config_file, model_server_config_pb2.ModelServerConfig())
    elif options.model_base_path:
        config = model_server_config_pb2.ModelServerConfig()
        single = config.model_config_list.config.add()
        single.name = options.model_name
        single.base_path = options.model_base_path
        single.model_platform = _TENSORFLOW_PLATFORM
    else:
        raise ConfigError("Both server_options.model_base_path and server_options.model_config_file are empty! "
                          "Give one: --model_base_path=models/fashion --model_name=fashion")
    validate_model_server_config(config)
    return config


def validate_model_server_config(config: model_server_config_pb2.ModelServerConfig) -> None:
    """The checks TF Serving's ServerCore makes before accepting a config."""
    if config.WhichOneof("config") != "model_config_list":
        raise ConfigError("only model_config_list is supported (custom_model_config is not)")
    seen: set[str] = set()
    for model in config.model_config_list.config:
        if not model.name:
            raise ConfigError("a model in model_config_list has no name")
        if model.name in seen:
            raise ConfigError(f"Illegal to list model {model.name} multiple times in config list")
        seen.add(model.name)
        if not model.base_path:
            raise ConfigError(f"model {model.name} has no base_path")
        if model.model_platform not in ("", _TENSORFLOW_PLATFORM):
            raise ConfigError(f"model {model.name}: unsupported model_platform {model.model_platform!r} "
                              f"(only {_TENSORFLOW_PLATFORM!r})")
        for label, version in model.version_labels.items():
            if not label:
                raise ConfigError(f"model {model.name}: empty version label")
            if version < 0:
                raise ConfigError(f"model {model.name}: label {label} points at negative version {version}")


@dataclass(frozen=True)
class BatchingSettings:
    """BatchingParameters with TF Serving's defaults (BasicBatchScheduler::Options) filled in."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = os.cpu_count() or 1
    thread_pool_name: str = "model_server_batch_threads"
    allowed_batch_sizes: tuple[int, ...] = ()
    enable_large_batch_splitting: bool = True

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_enqueued_batches", "num_batch_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"batching parameter {name} must be >= 1, got {getattr(self, name)}")
        if self.batch_timeout_micros < 0:
            raise ConfigError(f"batching parameter batch_timeout_micros must be >= 0, got {self.batch_timeout_micros}")
        sizes = self.allowed_batch_sizes
        if sizes:
            if list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
                raise ConfigError(f"allowed_batch_sizes must be increasing positive integers, got {list(sizes)}")
            if sizes[-1] != self.max_batch_size:
                raise ConfigError(f"the last entry of allowed_batch_sizes ({sizes[-1]}) "
                                  f"must equal max_batch_size ({self.max_batch_size})")


def batching_settings(options: ServerOptions) -> BatchingSettings | None:
    """None when batching is off; the file's values over TF Serving's defaults otherwise."""
    if not options.enable_batching:
        if options.batching_parameters_file:
            raise ConfigError("server_options.batching_parameters_file is set without setting "
                              "server_options.enable_batching to true.")
        return None
    if not options.batching_parameters_file:
        return BatchingSettings()
    params = read_text_proto(options.batching_parameters_file, config_protos.message_class("BatchingParameters")())
    wrapped = {name: getattr(params, name).value
               for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads",
                            "thread_pool_name", "enable_large_batch_splitting")
               if params.HasField(name)}
    return BatchingSettings(**wrapped, allowed_batch_sizes=tuple(params.allowed_batch_sizes))


@dataclass(frozen=True)
class MonitoringSettings:
    prometheus_enabled: bool = False
    prometheus_path: str = DEFAULT_PROMETHEUS_PATH


def monitoring_settings(options: ServerOptions) -> MonitoringSettings:
    if not options.monitoring_config_file:
        return MonitoringSettings()
    config = read_text_proto(options.monitoring_config_file, config_protos.message_class("MonitoringConfig")())
    prometheus = config.prometheus_config
    path = prometheus.path or DEFAULT_PROMETHEUS_PATH
    if not path.startswith("/"):
        raise ConfigError(f"{options.monitoring_config_file}: prometheus_config.path must start with '/', got {path!r}")
    return MonitoringSettings(prometheus_enabled=prometheus.enable, prometheus_path=path)


@dataclass(frozen=True)
class TlsSettings:
    """SSLConfig: PEM contents inline, as TF Serving takes them."""

    server_key: bytes
    server_cert: bytes
    custom_ca: bytes | None
    client_verify: bool


def tls_settings(options: ServerOptions) -> TlsSettings | None:
    if not options.ssl_config_file:
        return None
    config = read_text_proto(options.ssl_config_file, config_protos.message_class("SSLConfig")())
    if not config.server_key or not config.server_cert:
        raise ConfigError(f"{options.ssl_config_file}: server_key and server_cert are required (PEM contents)")
    return TlsSettings(config.server_key.encode(), config.server_cert.encode(),
                       config.custom_ca.encode() or None, config.client_verify)


def grpc_channel_arguments(options: ServerOptions) -> list[tuple[str, int | str]]:
    """`--grpc_channel_arguments=a=1,b=x` as gRPC server options (ints where they parse)."""
    arguments: list[tuple[str, int | str]] = []
    for item in filter(None, (part.strip() for part in options.grpc_channel_arguments.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--grpc_channel_arguments: expected key=value, got {item!r}")
        try:
            arguments.append((key, int(value)))
        except ValueError:
            arguments.append((key, value))
    return arguments
