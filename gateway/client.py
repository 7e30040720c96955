"""Command-line client of the gateway, over gRPC (default) or REST: a thin user of imgclass-client.

    python -m gateway.client classify IMAGE... [--model M] [--top-k K] [--rest] [--json]
    python -m gateway.client models [--rest] [--json]
    python -m gateway.client --target HOST:PORT ...        (gRPC, default localhost:50051)
    python -m gateway.client --target http://HOST:PORT --rest ...   (default http://localhost:8080)
    python -m gateway.client --api-key KEY --ca-file ca.pem [--cert-file c.pem --key-file c.key] ...

A gateway with API keys wants `--api-key` (or GATEWAY_API_KEY); one serving TLS wants `--ca-file`
(or `--tls` to trust the system's roots; REST targets then start with https://), and one requiring
client certificates wants `--cert-file` and `--key-file` as well.

Prints a table (or JSON with --json); exit status 0 when every image was classified, 1 when any
failed, 2 for usage errors. The calls, retries and errors are the client library's
(clients/python, `imgclass_client`; see docs/clients.md); this module only parses the command
line and prints. Unlike the library's default, it does not wait for a gateway that is down.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

from imgclass_client import ClassifierClient, ClassifierError, RestClassifierClient
from imgclass_client.errors import ImageReadError

DEFAULT_GRPC_TARGET = "localhost:50051"
DEFAULT_REST_TARGET = "http://localhost:8080"
Client = Union[ClassifierClient, RestClassifierClient]


@dataclass
class Outcome:
    """One image's answer (the ClassifyResponse as JSON) or its error."""

    image: str
    answer: dict | None = None
    error: dict | None = None  # {"code", "message", "request_id"}

    def to_json(self) -> dict:
        return {"image": self.image, **(self.answer or {}), **({"error": self.error} if self.error else {})}


def _error_json(error: ClassifierError) -> dict:
    code = "FILE" if isinstance(error, ImageReadError) else error.code
    return {"code": code, "message": error.message, "request_id": error.request_id}


def make_client(args: argparse.Namespace) -> Client:
    """The library's client for the command line's target, transport and security flags."""
    security = dict(tls=args.tls, ca=args.ca_file, cert=args.cert_file, key=args.key_file,
                    api_key=args.api_key or os.environ.get("GATEWAY_API_KEY") or None,
                    timeout=args.timeout, wait_for_ready=False)
    if args.rest:
        return RestClassifierClient(args.target or DEFAULT_REST_TARGET, **security)
    return ClassifierClient(args.target or DEFAULT_GRPC_TARGET, **security)


def classify_files(client: Client, paths: Sequence[str], model: str, top_k: int) -> list[Outcome]:
    results = client.classify_many(list(paths), concurrency=4, model=model, top_k=top_k)
    return [Outcome(path, answer=r.classification.to_dict() if r.classification else None,
                    error=_error_json(r.error) if r.error else None)
            for path, r in zip(paths, results)]


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
    if args.command == "classify" and args.top_k < 0:
        parser.error(f"--top-k must be 0 (the gateway's default) or more, not {args.top_k}")
    try:
        client = make_client(args)
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


def _print_models(client: Client, as_json: bool) -> int:
    try:
        models = client.list_models()
    except ClassifierError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps({"models": [{"name": m.name, "version": m.version, "labels": list(m.labels),
                                      "state": m.state} for m in models]}, indent=2))
    else:
        for m in models:
            print(f"{m.name}  v{m.version}  {m.state}  {len(m.labels)} labels: {', '.join(m.labels)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
