"""Structured logs: one JSON object per line on stderr (or plain text), and one line per request.

Records carry their structured fields in `extra={"fields": {...}}`. A request's line holds its id,
transport, route, model, version, status, duration and per-stage timings in milliseconds - never
image bytes or other payload. Uvicorn's own loggers are routed through the same handler; its
access log is off because the gateway writes its own request lines.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from dataclasses import dataclass, field

from gateway.metrics import Metrics

REQUEST_LOGGER = "gateway.requests"
REQUEST_ID_HEADER = "x-request-id"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")


def request_id(given: str | None) -> str:
    """The client's request id when it is a sane token (it ends up in logs), else a new one."""
    if given and _CLIENT_REQUEST_ID.match(given):
        return given
    return uuid.uuid4().hex


_JSON = json.JSONEncoder(default=str)  # one encoder: json.dumps(default=...) would build one per line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return _JSON.encode(out)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if fields:
            text += " " + " ".join(f"{k}={v}" for k, v in fields.items())
        return text


def setup_logging(level: str, fmt: str) -> None:
    """Configure the root logger once, at start-up (never at import). `fmt` auto: text on a
    terminal, JSON otherwise. Python warnings (a library's DeprecationWarning, say) become log
    records too, so nothing reaches stderr as raw text."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    logging.captureWarnings(True)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True


@dataclass
class RequestRecord:
    """What one request did; filled in by a transport adapter as the request proceeds."""

    request_id: str
    transport: str          # grpc | http
    route: str              # RPC name or route template
    model: str = ""         # only a name the gateway fronts ("" otherwise): a bounded metric label
    version: int = 0
    status: str = "OK"      # gRPC: the status code name; HTTP: the status code
    images: int = 0
    stages: dict[str, float] = field(default_factory=dict)
    route_key: str | None = field(default=None, repr=False)  # routing.route_key(); never logged
    caller: str = ""        # callers.identify()
    started: float = field(default_factory=time.perf_counter)
    seconds: float = 0.0

    def add_stages(self, stages: dict[str, float]) -> None:
        for stage, seconds in stages.items():
            self.stages[stage] = self.stages.get(stage, 0.0) + seconds


def finish_request(record: RequestRecord, metrics: Metrics) -> None:
    """The end of every request, on either transport: one metrics sample and one log line.

    (Per-stage histograms are observed per image by the core, where the stages happen.)
    """
    record.seconds = time.perf_counter() - record.started
    metrics.observe_request(record.transport, record.route, record.model, record.version, record.status,
                            record.seconds)
    fields = {
        "event": "request", "request_id": record.request_id, "transport": record.transport,
        "route": record.route, "caller": record.caller, "model": record.model, "version": record.version,
        "status": record.status, "duration_ms": round(record.seconds * 1000, 3),
    }
    if record.images:
        fields["images"] = record.images
    if record.stages:
        fields["stages_ms"] = {k: round(v * 1000, 3) for k, v in record.stages.items()}
    logging.getLogger(REQUEST_LOGGER).info("request", extra={"fields": fields})
