"""Command-line client of the gateway, over gRPC (default) or REST.

    python -m gateway.client classify IMAGE... [--model M] [--top-k K] [--rest] [--json]
    python -m gateway.client models [--rest] [--json]
    python -m gateway.client --target HOST:PORT ...        (gRPC, default localhost:50051)
    python -m gateway.client --target http://HOST:PORT --rest ...   (default http://localhost:8080)
    python -m gateway.client --api-key KEY --ca-file ca.pem [--cert-file c.pem --key-file c.key] ...

A gateway with API keys wants `--api-key` (or GATEWAY_API_KEY); one serving TLS wants `--ca-file`
(or `--tls` to trust the system's roots; REST targets then start with https://), and one requiring
client certificates wants `--cert-file` and `--key-file` as well.

Prints a table (or JSON with --json); exit status 0 when every image was classified, 1 when any
failed, 2 for usage errors. Uses only the classifier.v1 stubs: no TensorFlow, no TF Serving protos.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import grpc
import httpx

import gateway.generated  # noqa: F401  (puts the generated tree on sys.path)
from classifier.v1 import classifier_pb2 as pb
from classifier.v1 import classifier_pb2_grpc as pb_grpc

DEFAULT_GRPC_TARGET = "localhost:50051"
DEFAULT_REST_TARGET = "http://localhost:8080"


@dataclass
class Outcome:
    """One image's answer (the ClassifyResponse as JSON) or its error."""

    image: str
    answer: dict | None = None
    error: dict | None = None  # {"code", "message", "request_id"}

    def to_json(self) -> dict:
        return {"image": self.image, **(self.answer or {}), **({"error": self.error} if self.error else {})}


def _response_to_json(response: pb.ClassifyResponse) -> dict:
    return {
        "model": response.model, "model_version": response.model_version, "label": response.label,
        "confident": response.confident,
        "predictions": [{"label": p.label, "score": p.score} for p in response.predictions],
    }


@dataclass(frozen=True)
class Security:
    """How to reach a gateway that uses TLS and/or API keys (all optional)."""

    api_key: str | None = None
    tls: bool = False                 # TLS with the system's roots (implied by ca_file)
    ca_file: Path | None = None
    cert_file: Path | None = None     # client certificate, for mutual TLS
    key_file: Path | None = None

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return path.read_bytes() if path else None
        return grpc.ssl_channel_credentials(read(self.ca_file), read(self.key_file), read(self.cert_file))

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}


class GrpcClient:
    def __init__(self, target: str, timeout: float, security: Security = Security()):
        self._channel = (grpc.secure_channel(target, security.grpc_credentials()) if security.uses_tls
                         else grpc.insecure_channel(target))
        self._stub = pb_grpc.ClassifierStub(self._channel)
        self._timeout = timeout
        self._metadata = tuple(security.headers().items())

    def classify(self, image: bytes, model: str, top_k: int) -> dict:
        response = self._stub.Classify(pb.ClassifyRequest(model=model, image=image, top_k=top_k),
                                       timeout=self._timeout, metadata=self._metadata)
        return _response_to_json(response)

    def models(self) -> list[dict]:
        response = self._stub.ListModels(pb.ListModelsRequest(), timeout=self._timeout, metadata=self._metadata)
        return [{"name": m.name, "version": m.version, "labels": list(m.labels), "state": m.state}
                for m in response.models]

    @staticmethod
    def error(exc: grpc.RpcError) -> dict:
        trailing = dict(exc.trailing_metadata() or ())
        return {"code": exc.code().name, "message": exc.details() or "", "request_id": trailing.get("x-request-id", "")}

    def close(self) -> None:
        self._channel.close()


class RestClient:
    def __init__(self, target: str, timeout: float, security: Security = Security()):
        base = target if "://" in target else f"{'https' if security.uses_tls else 'http'}://{target}"
        verify: ssl.SSLContext | bool = security.ssl_context() if base.startswith("https://") else True
        self._http = httpx.Client(base_url=base, timeout=timeout, headers=security.headers(), verify=verify)

    def classify(self, image: bytes, model: str, top_k: int) -> dict:
        path = f"/v1/models/{model}:classify" if model else "/v1/classify"
        params = {"top_k": top_k} if top_k else {}
        return self._json(self._http.post(path, params=params, files={"image": ("image", image)}))

    def models(self) -> list[dict]:
        return self._json(self._http.get("/v1/models"))["models"]

    @staticmethod
    def _json(response: httpx.Response) -> dict:
        if response.is_success:
            return response.json()
        raise RestError(response)

    def close(self) -> None:
        self._http.close()


class RestError(Exception):
    def __init__(self, response: httpx.Response):
        try:
            body = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            body = {"code": f"HTTP {response.status_code}", "message": response.text[:200],
                    "request_id": response.headers.get("x-request-id", "")}
        super().__init__(body.get("message", ""))
        self.body = body


def classify_files(client: GrpcClient | RestClient, paths: Sequence[str], model: str, top_k: int) -> list[Outcome]:
    outcomes = []
    for path in paths:
        outcome = Outcome(path)
        try:
            outcome.answer = client.classify(Path(path).read_bytes(), model, top_k)
        except OSError as exc:
            outcome.error = {"code": "FILE", "message": exc.strerror or str(exc), "request_id": ""}
        except grpc.RpcError as exc:
            outcome.error = GrpcClient.error(exc)
        except RestError as exc:
            outcome.error = exc.body
        except httpx.HTTPError as exc:
            outcome.error = {"code": "UNAVAILABLE", "message": str(exc), "request_id": ""}
        outcomes.append(outcome)
    return outcomes


def _shown(path: str) -> str:
    """A path as short as it can be: relative to the working directory when under it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def format_table(outcomes: Sequence[Outcome]) -> str:
    rows = [("IMAGE", "DECISION", "SURE", "TOP PREDICTIONS")]
    for o in outcomes:
        if o.error:
            rows.append((_shown(o.image), "error", "", f"{o.error['code']}: {o.error['message']}"))
            continue
        a = o.answer or {}
        top = ", ".join(f"{p['label']} {p['score']:.2f}" for p in a.get("predictions", []))
        rows.append((_shown(o.image), a.get("label", ""), "yes" if a.get("confident") else "no", top))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 3 else cell for i, cell in enumerate(r)).rstrip() for r in rows]
    models = sorted({f"{o.answer['model']} v{o.answer['model_version']}" for o in outcomes if o.answer})
    if models:
        lines.append(f"\nmodel: {', '.join(models)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gateway.client", description="Classify images with the gateway.")
    parser.add_argument("--target", help=f"gateway address (default {DEFAULT_GRPC_TARGET}, "
                                         f"or {DEFAULT_REST_TARGET} with --rest)")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per call (default 30)")
    parser.add_argument("--api-key", help="sent as `authorization: Bearer KEY` (default: $GATEWAY_API_KEY)")
    parser.add_argument("--tls", action="store_true", help="use TLS, trusting the system's CAs")
    parser.add_argument("--ca-file", type=Path, help="use TLS, trusting this PEM CA bundle")
    parser.add_argument("--cert-file", type=Path, help="client certificate (PEM) for mutual TLS")
    parser.add_argument("--key-file", type=Path, help="the client certificate's key (PEM)")
    sub = parser.add_subparsers(dest="command", required=True)
    classify = sub.add_parser("classify", help="classify image files")
    classify.add_argument("images", nargs="+", metavar="IMAGE")
    classify.add_argument("--model", default="", help="model name (default: the gateway's default model)")
    classify.add_argument("--top-k", type=int, default=0, help="predictions per image (default: the gateway's)")
    models = sub.add_parser("models", help="list the models behind the gateway")
    for p in (classify, models):
        p.add_argument("--rest", action="store_true", help="use the REST API instead of gRPC")
        p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.cert_file is None) != (args.key_file is None):
        parser.error("--cert-file and --key-file go together")
    security = Security(args.api_key or os.environ.get("GATEWAY_API_KEY") or None, args.tls, args.ca_file,
                        args.cert_file, args.key_file)
    target = args.target or (DEFAULT_REST_TARGET if args.rest else DEFAULT_GRPC_TARGET)
    try:
        client = RestClient(target, args.timeout, security) if args.rest else GrpcClient(target, args.timeout, security)
    except (OSError, ssl.SSLError) as exc:
        print(f"error: cannot use the TLS files: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "models":
            return _print_models(client, args.json)
        outcomes = classify_files(client, args.images, args.model, args.top_k)
    finally:
        client.close()
    print(json.dumps([o.to_json() for o in outcomes], indent=2) if args.json else format_table(outcomes))
    return 1 if any(o.error for o in outcomes) else 0


def _print_models(client: GrpcClient | RestClient, as_json: bool) -> int:
    try:
        models = client.models()
    except grpc.RpcError as exc:
        print(f"error: {GrpcClient.error(exc)['code']}: {exc.details()}", file=sys.stderr)
        return 1
    except (RestError, httpx.HTTPError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps({"models": models}, indent=2))
    else:
        for m in models:
            print(f"{m['name']}  v{m['version']}  {m['state']}  {len(m['labels'])} labels: {', '.join(m['labels'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
