"""The gateway's one settings object (README, "Settings").

Sources, highest precedence first: command-line flags, `GATEWAY_<NAME>` environment variables, the
YAML file named by `--config` / `GATEWAY_CONFIG`, then the defaults below. Nested values come from
the environment as JSON (`GATEWAY_MODELS='{"fashion": {...}}'`) or with `__` between the levels
(`GATEWAY_MODELS__FASHION__UNCERTAIN_LABEL=unsure`). Built once, by `load_settings()` in main(),
never at import time; an invalid value stops start-up with a message naming the setting.
`gateway/config.example.yaml` documents every setting.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

import yaml
from pydantic import (BaseModel, ConfigDict, Field, FilePath, SecretStr, ValidationError, field_validator,
                      model_validator)
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from gateway.thresholds import DEFAULT_UNCERTAIN_LABEL, Thresholds

ENV_PREFIX = "GATEWAY_"
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class SettingsError(Exception):
    """Start-up configuration is invalid; the message names the setting and where it came from."""


LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class VersionChoice(BaseModel):
    """One model version, by number or by a label of `models.<name>.labels`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int | None = Field(None, ge=1, description="a version number")
    label: str | None = Field(None, pattern=LABEL_PATTERN, description="a label defined under `labels`")

    @model_validator(mode="after")
    def _exactly_one(self) -> "VersionChoice":
        if (self.version is None) == (self.label is None):
            raise ValueError("give exactly one of `version` and `label`")
        return self


class TrafficShare(VersionChoice):
    """A candidate version and the share of default traffic it gets (canary) or sees (shadow)."""

    percent: float = Field(ge=0.0, le=100.0, description="share of the model's default traffic, in percent")


class CallerSettings(BaseModel):
    """How the batcher treats one caller, under `callers: {<name>: ...}` (an API key's name, an
    x-client-id, or an address)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: float = Field(1.0, gt=0.0, le=100.0, description="images this caller adds to a batch per turn, "
                                                               "relative to others (deficit round robin)")
    priority: Literal["interactive", "bulk"] = Field(
        "interactive", description="bulk callers only fill the room interactive callers leave in a batch")
    max_queue: int | None = Field(None, ge=1, description="images this caller may have queued per model "
                                                          "(default: max_queue_per_caller)")


class ModelSettings(BaseModel):
    """Per-model rules, under `models: {<name>: ...}`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    thresholds: Thresholds = Field(default_factory=Thresholds,
                                   description="binary band and multi-class rules (README, Decisions)")
    uncertain_label: str = Field(DEFAULT_UNCERTAIN_LABEL, min_length=1,
                                 description="the label answered when the thresholds do not pass")
    alpha_background: str = Field(
        "black", description="colour transparent pixels are composited onto before the model sees "
                             "them (Pillow colour name or #rrggbb); Fashion-MNIST items are light on black")

    labels: dict[str, int] = Field(
        default_factory=dict, description="version labels, e.g. {stable: 1, canary: 2}: requests may name "
                                          "them, and so may default_version, canary and shadow")
    default_version: VersionChoice | None = Field(
        None, description="pin default traffic to {version: N} or {label: L}; unset: the newest version every "
                          "healthy model server serves (each its newest when none is served by all)")
    canary: TrafficShare | None = Field(
        None, description="{version or label, percent}: that share of default traffic is answered by the "
                          "candidate, sticky per x-canary-key (else API key); the rest never sees it")
    shadow: TrafficShare | None = Field(
        None, description="{version or label, percent}: a copy of that share of default traffic also goes to "
                          "the candidate, off the critical path; agreement is counted in metrics")

    @field_validator("alpha_background")
    @classmethod
    def _known_colour(cls, value: str) -> str:
        from PIL import ImageColor

        ImageColor.getrgb(value)  # ValueError names the colour
        return value

    @field_validator("labels")
    @classmethod
    def _label_names(cls, value: dict[str, int]) -> dict[str, int]:
        bad = [name for name in value if not re.match(LABEL_PATTERN, name)]
        if bad:
            raise ValueError(f"invalid label names {bad}: use letters, digits, '_', '.', '-'")
        low = [name for name, version in value.items() if version < 1]
        if low:
            raise ValueError(f"labels {low} must point at a version >= 1")
        return value

    @model_validator(mode="after")
    def _labels_defined(self) -> "ModelSettings":
        for key in ("default_version", "canary", "shadow"):
            choice = getattr(self, key)
            if choice is not None and choice.label is not None and choice.label not in self.labels:
                defined = ", ".join(sorted(self.labels)) or "none"
                raise ValueError(f"{key}: label {choice.label!r} is not defined under labels (defined: {defined})")
        return self

    def resolve(self, choice: VersionChoice) -> int:
        """The version a choice names (its label looked up); KeyError for an undefined label."""
        return choice.version if choice.version is not None else self.labels[choice.label]


def _default_decode_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


class Settings(BaseSettings):
    """Every setting of `python -m gateway`; see gateway/config.example.yaml for the same, commented."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True,
        validate_default=True,
    )

    config: Path | None = Field(None, description="YAML file with settings (lower precedence than env and flags)")
    # Where things are.
    backend: str = Field("127.0.0.1:8500", min_length=1,
                         description="model server gRPC target: HOST:PORT (one endpoint), a static fleet "
                                     "ipv4:A:PORT,B:PORT (or A:PORT,B:PORT), or dns:///NAME:PORT: every address "
                                     "the name resolves to, re-resolved every backend_resolve_seconds")
    backend_resolve_seconds: float = Field(5.0, gt=0, le=3600,
                                           description="how often a dns:/// backend is resolved again (also at "
                                                       "once when an endpoint fails)")
    backend_balancing: Literal["endpoints", "channel"] = Field(
        "endpoints", description="endpoints: a channel per model server, each one's versions and health tracked, "
                                 "requests to the least loaded that serves their version; channel: one gRPC "
                                 "round_robin channel over the whole target, every replica assumed to serve the "
                                 "same versions (behind a service mesh that balances itself)")
    config_reload_seconds: float = Field(5.0, ge=0, description="how often the --config file is checked for "
                                         "changes (also on SIGHUP); models.* (of the models already fronted), "
                                         "backend, callers, max_queue_per_caller and fair_queueing apply "
                                         "without a restart; 0: only on SIGHUP")
    host: str = Field("127.0.0.1", description="address to bind both ports to (0.0.0.0 in containers)")
    workers: int = Field(1, ge=1, le=64, description="gateway processes sharing both ports (SO_REUSEPORT), "
                                                      "each with its own batcher and metrics; 1 per pod and more "
                                                      "pods is the usual choice")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC port; 0 picks a free one")
    http_port: int = Field(8080, ge=0, le=65535, description="HTTP port; 0 picks a free one")
    # Models and answers.
    default_model: str = Field("fashion", pattern=MODEL_NAME_PATTERN,
                               description="model used when a request names none")
    default_top_k: int = Field(5, ge=1, le=1000, description="predictions returned when top_k is 0 or absent")
    models: dict[str, ModelSettings] = Field(
        default_factory=dict, description="per-model thresholds and uncertain label; the gateway "
                                          "fronts default_model plus every model named here")
    # Batching and back-pressure.
    max_batch_size: int = Field(32, ge=1, le=4096, description="most images in one Predict call")
    max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0,
                               description="longest a request waits for others to fill its batch "
                                           "(only while another batch is in flight: an idle model sends at once)")
    max_concurrent_batches: int = Field(2, ge=1, le=256,
                                        description="Predict calls in flight per model and model server endpoint (backend_balancing "
                                                    "channel: per address listed; a DNS name counts as one); "
                                                    "further requests queue (and batch) in the gateway, where fair "
                                                    "queueing applies (lower it to what a model server runs at once "
                                                    "to keep callers apart under overload)")
    max_queue: int = Field(256, ge=1, le=100_000,
                           description="requests waiting for a batch, per model; beyond it the caller with the "
                                       "most waiting is refused (RESOURCE_EXHAUSTED/429), never a quieter one")
    fair_queueing: bool = Field(True, description="a queue per caller, batches filled from them in turn; false: one "
                                                   "first-come queue per model (for comparison)")
    max_queue_per_caller: int = Field(0, ge=0, le=100_000,
                                      description="requests one caller may have waiting per model; beyond it "
                                                  "that caller is refused; 0: no own limit (max_queue still "
                                                  "refuses the heaviest caller first)")
    callers: dict[str, CallerSettings] = Field(
        default_factory=dict, description="per caller (API key name, x-client-id or address): weight, priority "
                                          "(interactive|bulk) and max_queue for fair queueing")
    decode_workers: int = Field(default_factory=_default_decode_workers, ge=1, le=64,
                                description="threads decoding images (default: CPUs, at most 4)")
    max_pending_decodes: int = Field(64, ge=1, le=100_000,
                                     description="images decoding or waiting for a decode thread; beyond it RESOURCE_EXHAUSTED/429")
    # Input limits.
    allowed_formats: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["JPEG", "PNG", "WEBP"],
        description="Pillow format names accepted (comma-separated in env and flags)")
    max_image_pixels: int = Field(25_000_000, ge=1, description="width x height above which an image is refused (pixel bombs)")
    max_body_bytes: int = Field(10 * 2**20, ge=1024, description="largest REST request body")
    max_message_bytes: int = Field(16 * 2**20, ge=1024, description="largest gRPC request message")
    max_images_per_request: int = Field(64, ge=1, le=10_000, description="most images in one ClassifyBatch")
    # Time.
    request_timeout_seconds: float = Field(10.0, gt=0, description="longest a request may take: the deadline of "
                                           "requests that bring none, and the cap on those that do")
    http_keepalive_seconds: float = Field(75.0, gt=0, description="how long an idle REST keep-alive connection stays open; keep it "
                                          "above the idle timeout of every proxy and client pool in front (theirs must expire first)")
    backend_timeout_seconds: float = Field(5.0, gt=0, description="deadline of the gateway's own calls to the model server (status, metadata)")
    backend_keepalive_seconds: float = Field(30.0, gt=0, description="HTTP/2 keepalive ping interval on the model server channel")
    backend_max_message_bytes: int = Field(64 * 2**20, ge=1024, description="largest message to/from the model server")
    health_check_interval_seconds: float = Field(2.0, gt=0, description="how often each model server endpoint's model "
                                                 "states are re-checked (every 0.2 s while not ready or an endpoint is out)")
    circuit_failure_threshold: int = Field(5, ge=1, description="consecutive failed calls that eject a model server "
                                           "endpoint (one that does not answer its status check is ejected at once); "
                                           "with every endpoint ejected the circuit is open: requests fail fast")
    circuit_open_seconds: float = Field(2.0, gt=0, description="least time an endpoint ejected for failing calls stays "
                                        "out; then its next good status check lets it back (an unreachable one comes "
                                        "back at its first good check)")
    retry_budget_percent: float = Field(10.0, ge=0.0, le=100.0,
                                        description="retries of failed Predict calls allowed, as a percentage of calls")
    shadow_max_inflight: int = Field(32, ge=1, le=10_000,
                                     description="shadow images queued or in flight per model; beyond it shadow "
                                                 "copies are skipped (counted), never delaying answers")
    shutdown_delay_seconds: float = Field(0.0, ge=0.0, description="after SIGTERM, time spent NOT_SERVING before refusing connections (load balancers notice)")
    shutdown_grace_seconds: float = Field(10.0, ge=0.0, description="after that, time given to in-flight requests")
    # Security: all off by default (see gateway/config.example.yaml).
    tls_cert_file: FilePath | None = Field(None, description="PEM certificate (chain): serve gRPC and HTTPS over TLS; "
                                           "needs tls_key_file")
    tls_key_file: FilePath | None = Field(None, description="PEM private key of tls_cert_file")
    tls_client_ca_file: FilePath | None = Field(
        None, description="PEM CA bundle: both ports require a client certificate it signed (mutual TLS)")
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="API keys accepted as `authorization: Bearer <key>` (comma-separated "
                                          "in env and flags), each `NAME:KEY` to name its caller or a bare KEY "
                                          "(named key-1, key-2, ...); empty: no authentication")
    public_health_and_metrics: bool = Field(
        True, description="with api_keys set, /healthz, /readyz, /metrics and grpc.health.v1.Health still "
                          "answer without a key (for probes and Prometheus)")
    backend_tls: bool = Field(False, description="call the model server over TLS")
    backend_ca_file: FilePath | None = Field(
        None, description="PEM CA bundle the model server's certificate must chain to (default: system roots)")
    backend_cert_file: FilePath | None = Field(
        None, description="PEM client certificate for mutual TLS to the model server (with backend_key_file)")
    backend_key_file: FilePath | None = Field(None, description="PEM private key of backend_cert_file")
    backend_tls_server_name: str | None = Field(
        None, min_length=1, description="name to expect in the model server's certificate when it differs from "
                                        "the backend host (e.g. backend 10.0.0.7:8500, certificate for model-server)")
    # The web page.
    examples_dir: Path = Field(Path("examples"), description="folder of example images, listed at GET "
                               "/v1/examples and served under /examples/ (relative to the working directory)")
    # Tracing.
    tracing: Literal["off", "console", "otlp"] = Field(
        "off", description="OpenTelemetry spans for every request, trace context forwarded to the model server: "
                           "off, console (JSON spans on stderr) or otlp (OTLP/gRPC, configured by OTEL_EXPORTER_OTLP_*)")
    tracing_service_name: str = Field("gateway", min_length=1, description="service.name of the spans")
    # Logs.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")
    log_format: Literal["auto", "json", "text"] = Field(
        "auto", description="json: one JSON object per line; text: for people; auto: text when stderr is a "
                            "terminal, else json")

    @field_validator("log_level", "log_format", "tracing", mode="before")
    @classmethod
    def _normalise_case(cls, value: Any, info) -> Any:
        if isinstance(value, str):
            return value.upper() if info.field_name == "log_level" else value.lower()
        return value

    @field_validator("allowed_formats", "api_keys", mode="before")
    @classmethod
    def _split_lists(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("allowed_formats")
    @classmethod
    def _known_formats(cls, value: list[str]) -> list[str]:
        from PIL import Image

        Image.init()
        formats = [v.upper() for v in value]
        unknown = [f for f in formats if f not in Image.OPEN]
        if unknown or not formats:
            raise ValueError(f"unknown or empty format list {unknown or value}; Pillow reads e.g. JPEG, PNG, WEBP, GIF")
        return formats

    @field_validator("models")
    @classmethod
    def _model_names(cls, value: dict[str, ModelSettings]) -> dict[str, ModelSettings]:

        bad = [name for name in value if not re.match(MODEL_NAME_PATTERN, name)]
        if bad:
            raise ValueError(f"invalid model names {bad}: use letters, digits, '_', '.', '-'")
        return value

    @field_validator("backend")
    @classmethod
    def _backend_target(cls, value: str) -> str:
        from gateway.targets import parse_target

        parse_target(value)  # TargetError (a ValueError) says what is wrong
        return value.strip()

    @field_validator("api_keys")
    @classmethod
    def _usable_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        for key in (k.get_secret_value() for k in value):
            if not key or not key.isprintable() or any(c.isspace() for c in key):
                raise ValueError("API keys must be non-empty printable text without spaces")
        return value

    @model_validator(mode="after")
    def _tls_pairs(self) -> "Settings":
        """Files that only make sense together: name the missing one at start-up, not at the first call."""
        pairs = [("tls_cert_file", "tls_key_file"), ("tls_key_file", "tls_cert_file"),
                 ("tls_client_ca_file", "tls_cert_file"),
                 ("backend_cert_file", "backend_key_file"), ("backend_key_file", "backend_cert_file")]
        for given, needed in pairs:
            if getattr(self, given) is not None and getattr(self, needed) is None:
                raise ValueError(f"{given} is set but {needed} is not")
        backend_tls_only = ("backend_ca_file", "backend_cert_file", "backend_tls_server_name")
        stray = [name for name in backend_tls_only if getattr(self, name) is not None]
        if stray and not self.backend_tls:
            raise ValueError(f"{', '.join(stray)} set without backend_tls: true")
        return self

    @property
    def tls(self) -> bool:
        """Both ports serve TLS."""
        return self.tls_cert_file is not None

    @property
    def model_names(self) -> list[str]:
        """The models the gateway fronts: the default one first, then the configured ones."""
        return [self.default_model] + sorted(n for n in self.models if n != self.default_model)

    def model_settings(self, name: str) -> ModelSettings:
        return self.models.get(name) or ModelSettings()

    @property
    def named_api_keys(self) -> list[tuple[str, str]]:
        """(caller name, key) for every API key: `NAME:KEY` names its caller, a bare key is key-N."""
        out = []
        for i, secret in enumerate(self.api_keys, 1):
            name, sep, key = secret.get_secret_value().partition(":")
            out.append((name, key) if sep and name and key else (f"key-{i}", secret.get_secret_value()))
        return out

    def caller_policy(self, caller: str) -> tuple[float, bool, int]:
        """(weight, bulk?, queue limit or 0) of a caller, for the batcher."""
        settings = self.callers.get(caller) or CallerSettings()
        limit = settings.max_queue if settings.max_queue is not None else self.max_queue_per_caller
        return settings.weight, settings.priority == "bulk", limit

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        # Flags arrive as init kwargs; the YAML source reads the file the earlier sources named.
        return init_settings, env_settings, _YamlFileSource(settings_cls)


class _YamlFileSource(PydanticBaseSettingsSource):
    """Settings from the YAML file named by the `config` setting (flag or env)."""

    def get_field_value(self, field, field_name):  # required by the base class; unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = self.current_state.get("config")
        if not path:
            return {}
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise SettingsError(f"config file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise SettingsError(f"config file {path} is not valid YAML: {exc}") from None
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise SettingsError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
        if "config" in data:
            raise SettingsError(f"config file {path}: `config` cannot be set inside a config file")
        return data


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


NOT_FLAGS = frozenset({"models", "callers"})  # nested: the YAML file or the environment only


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def load_settings(flags: Mapping[str, Any] | None = None) -> Settings:
    """Build the settings from flags (already parsed: {field: value}), env and the YAML file."""
    try:
        return Settings(**dict(flags or {}))
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = ["invalid settings:"]
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        name = ".".join(loc) or "(settings)"
        where = f"flag {flag_name(loc[0])}, env {env_name(loc[0])} or the config file" if loc else ""
        got = f" (got {error['input']!r})" if "input" in error and not isinstance(error["input"], dict) else ""
        lines.append(f"  {name}: {error['msg']}{got}" + (f"  [set by {where}]" if where else ""))
    return "\n".join(lines)
