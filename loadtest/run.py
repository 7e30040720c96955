"""`python -m loadtest.run` (`make loadtest`): a bounded, headless Locust run with an SLO verdict.

Without `--host`, starts the stack on the default model (tools/stack.py: model server + gateway on
free ports, their logs kept in the report folder) and stops it afterwards; with `--host URL` (the
gateway's HTTP URL; `--grpc-target` for its gRPC port when that is not 50051) it checks the
gateway answers and tests it as it is.

Locust runs as a child process (it monkey-patches the standard library with gevent, which this
process must not be), bounded by `--duration` plus a grace period after which it is stopped. The
report goes to `reports/loadtest/<timestamp>/`: Locust's HTML report and CSV files, its log, the
verdict JSON and `summary.md`. The exit code is Locust's: 0 when the SLO held, 1 when a limit was
missed; 2 when the run itself broke (target not ready, stack failed to start, Locust hung).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import gateway.generated  # noqa: F401  (puts the classifier.v1 stubs on sys.path)
from classifier.v1 import classifier_pb2, classifier_pb2_grpc
from loadtest import machine, options, slo, summary
from tools import stack

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
REPORTS = ROOT / "reports" / "loadtest"
CSV_PREFIX = "locust"
STOP_GRACE_S = 60.0  # beyond --duration: spawning, draining in-flight requests, writing reports
CLASSIFIER_SERVICE = "classifier.v1.Classifier"
EXIT_BROKEN = 2  # the run itself failed (target not ready, Locust hung); 1 is "an SLO limit was missed"


class TargetError(RuntimeError):
    """The gateway to test is not there or not ready."""


@dataclass(frozen=True)
class Target:
    http_url: str
    grpc_target: str
    description: str


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.run",
        description="Run a bounded headless Locust load test with an SLO verdict; write "
                    "reports/loadtest/<timestamp>/ (HTML, CSV, summary.md). Exit code 0 when "
                    "every SLO limit held, 1 when one was missed, 2 when the run itself failed.")
    parser.add_argument("--host", default="", metavar="URL",
                        help="gateway HTTP URL to test (e.g. http://10.0.0.5:8080); "
                             "without it, the stack is started on the default model and stopped after")
    parser.add_argument("--users", type=int, default=16, metavar="N",
                        help="users (requests in flight) at peak (default: %(default)s)")
    parser.add_argument("--spawn-rate", type=float, default=8.0, metavar="PER_S",
                        help="users started per second (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=60.0, metavar="SECONDS",
                        help="length of the run (default: %(default)s)")
    parser.add_argument("--processes", type=int, default=1, metavar="N",
                        help="Locust processes generating load, -1 for one per core; use more when "
                             "one process saturates a core (default: %(default)s)")
    parser.add_argument("--models-dir", type=Path, default=stack.DEFAULT_MODELS_DIR, metavar="DIR",
                        help="without --host: serve the default model `fashion` from this models "
                             "directory (default: models)")
    parser.add_argument("--report-dir", type=Path, default=None, metavar="DIR",
                        help="where to write the report (default: reports/loadtest/<timestamp>)")
    parser.add_argument("--verbose", action="store_true", help="echo the servers' logs")
    group = parser.add_argument_group("workload, shape and SLO (the locustfile's own options)")
    options.add_options(group, skip=("verdict_file",))
    args = parser.parse_args(argv)
    if args.users < 1 or args.spawn_rate <= 0 or args.duration <= 0:
        parser.error("--users must be >= 1, --spawn-rate and --duration > 0")
    if args.processes == 0 or args.processes < -1:
        parser.error("--processes must be >= 1, or -1 for one per core")
    return args


def check_target(http_url: str, grpc_target: str, timeout: float = 5.0) -> None:
    """Fail early, with a clear message, when the gateway is not up or not ready on either port."""
    url = http_url.rstrip("/") + "/readyz"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        raise TargetError(f"cannot reach {url}: {exc}") from None
    if status != 200:
        raise TargetError(f"{url} answered HTTP {status}: the gateway is not ready")
    with grpc.insecure_channel(grpc_target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=CLASSIFIER_SERVICE), timeout=timeout)
        except grpc.RpcError as exc:
            raise TargetError(f"gRPC health check on {grpc_target} failed: {exc.code().name} "
                              f"{exc.details()} (set --grpc-target if gRPC is not on port "
                              f"{options.DEFAULT_GATEWAY_GRPC_PORT})") from None
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        raise TargetError(f"{grpc_target}: {CLASSIFIER_SERVICE} is "
                          f"{health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}")


def describe_models(grpc_target: str, timeout: float = 5.0) -> str:
    with grpc.insecure_channel(grpc_target) as channel:
        reply = classifier_pb2_grpc.ClassifierStub(channel).ListModels(
            classifier_pb2.ListModelsRequest(), timeout=timeout)
    return ", ".join(f"{m.name} v{m.version} ({len(m.labels)} labels, {m.state})" for m in reply.models)


@contextlib.contextmanager
def target_for(args: argparse.Namespace, report_dir: Path) -> Iterator[Target]:
    """The gateway under test: the one at --host, or a stack started here (and stopped after)."""
    if args.host:
        grpc_target = args.grpc_target or options.default_grpc_target(args.host)
        check_target(args.host, grpc_target)
        yield Target(args.host.rstrip("/"), grpc_target,
                     f"the gateway at {args.host} (gRPC {grpc_target}): {describe_models(grpc_target)}")
        return
    print("starting the stack (model server + gateway) on the default model ...", file=sys.stderr, flush=True)
    server = stack.start_model_server(model_base_path=args.models_dir / stack.DEFAULT_MODEL, echo=args.verbose,
                                      log_path=report_dir / "serving.log")
    try:
        gw = stack.start_gateway(backend=server.grpc_target, echo=args.verbose,
                                 log_path=report_dir / "gateway.log")
        try:
            yield Target(gw.http_url, gw.grpc_target,
                         f"a stack started for this run (model server {server.grpc_target}, gateway "
                         f"{gw.http_url} / gRPC {gw.grpc_target}): {describe_models(gw.grpc_target)}")
        finally:
            gw.process.stop()
    finally:
        server.process.stop()


def locust_argv(args: argparse.Namespace, target: Target, report_dir: Path) -> list[str]:
    forwarded = vars(args) | {"grpc_target": target.grpc_target,
                              "verdict_file": str(report_dir / "verdict.json")}
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
            "--host", target.http_url, "--users", str(args.users), "--spawn-rate", str(args.spawn_rate),
            "--run-time", f"{math.ceil(args.duration)}s", "--stop-timeout", "5",
            "--csv", str(report_dir / CSV_PREFIX), "--csv-full-history",
            "--html", str(report_dir / "report.html")]
    if args.processes != 1:
        argv += ["--processes", str(args.processes)]
    return argv + options.to_argv(forwarded)


def run_locust(argv: list[str], report_dir: Path, bound_s: float) -> int:
    """Run Locust with its output on stderr and in locust.log; stop it if it outlives `bound_s`."""
    proc = stack.ManagedProcess("locust", argv, echo=True, log_path=report_dir / "locust.log").start()
    try:
        return proc.proc.wait(bound_s)
    except subprocess.TimeoutExpired:
        print(f"error: Locust still running {bound_s:.0f}s after start; stopping it", file=sys.stderr)
        return EXIT_BROKEN
    finally:
        proc.stop(grace=15)  # no-op when it has exited; on Ctrl-C it stops the child too


def settings_of(args: argparse.Namespace) -> dict[str, object]:
    shown = {"users": args.users, "spawn rate /s": args.spawn_rate, "duration s": args.duration,
             "Locust processes": args.processes}
    for opt in options.OPTIONS:
        if opt.dest not in ("grpc_target", "verdict_file"):
            value = getattr(args, opt.dest)
            shown[opt.flag.lstrip("-")] = "(gateway default)" if value == "" else value
    return shown


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report_dir = (args.report_dir or REPORTS / timestamp()).resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    host_machine = machine.describe()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    try:
        with target_for(args, report_dir) as target:
            print(f"load test: {target.description}", file=sys.stderr, flush=True)
            code = run_locust(locust_argv(args, target, report_dir), report_dir, args.duration + STOP_GRACE_S)
    except (TargetError, stack.StackError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BROKEN
    verdict = slo.read_verdict(report_dir / "verdict.json")
    files = sorted({p.name for p in report_dir.iterdir()} | {"summary.md"})
    text = summary.render(
        title=f"Load test {started}: {'PASS' if code == 0 else 'FAIL'}", verdict=verdict, exit_code=code,
        target=target.description, batch_images=args.batch_images, settings=settings_of(args),
        machine=host_machine,
        csv_prefix=report_dir / CSV_PREFIX, files=files)
    (report_dir / "summary.md").write_text(text, encoding="utf-8")
    print(f"\nreport: {report_dir}/summary.md (HTML: {report_dir}/report.html)", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
