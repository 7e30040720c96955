"""`python -m loadtest.run` (`make loadtest`): a bounded, headless Locust run with an SLO verdict.

Without `--host`, starts the stack on the default model (tools/stack.py: model server + gateway on
free ports, their logs kept in the report folder) and stops it afterwards; with `--host URL` (the
gateway's HTTP URL; `--grpc-target` for its gRPC port when that is not 50051) it checks the
gateway answers and tests it as it is.

Locust runs as a child process (it monkey-patches the standard library with gevent, which this
process must not be), bounded by `--duration` plus a grace period after which it is stopped. The
report goes to `reports/loadtest/<timestamp>/`: Locust's HTML report and CSV files, its log, the
verdict JSON and `summary.md` with its plots. A reused `--report-dir` first loses the files a
previous run wrote there (`OUTPUTS`), so none of them can pass for this run's; nothing else in it
is touched.

While Locust runs, a thread reads the gateway's `/metrics` (loadtest/scrape.py) so the report can
say what happened inside the gateway; with `--baseline`, the run is compared with an earlier one
(loadtest/baseline.py) and the stage that moved is named. The exit code is Locust's: 0 when the
SLO held, 1 when a limit was missed; also 1 when the run regressed against `--baseline` beyond the
tolerance; 2 when the run itself broke (bad options or baseline file, target not ready, stack
failed to start, Locust failed to start or hung: any run that ended without a verdict).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from imgclass_client.proto.classifier.v1 import classifier_pb2, classifier_pb2_grpc
from loadtest import baseline, compare, machine, options, plots, scrape, slo, summary
from tools import stack

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
REPORTS = ROOT / "reports" / "loadtest"
CSV_PREFIX = "locust"
STOP_GRACE_S = 60.0  # beyond --duration: spawning, draining in-flight requests, writing reports
CLASSIFIER_SERVICE = "classifier.v1.Classifier"
GATEWAY_ENV_PREFIX = "GATEWAY_"  # the gateway's settings from the environment (README.md, "Settings")
EXIT_BROKEN = 2  # the run itself failed (target not ready, Locust hung); 1 is "an SLO limit was missed"
# What a run writes into its report folder (a reused --report-dir loses these first).
OUTPUTS = ("summary.md", "verdict.json", "report.html", f"{CSV_PREFIX}_*.csv", "locust.log",
           "gateway_metrics.csv", plots.TIMELINE, plots.STAGES, "serving.log", "gateway.log")


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
    parser.add_argument("--metrics-url", default="", metavar="URL",
                        help="the gateway's Prometheus metrics, read before, during and after the run "
                             "(default: <gateway HTTP URL>/metrics; `none`: do not read them)")
    parser.add_argument("--scrape-interval", type=float, default=1.0, metavar="SECONDS",
                        help="seconds between reads of the metrics during the run; 0: only before and "
                             "after (default: %(default)s)")
    group = parser.add_argument_group("workload, shape and SLO (the locustfile's own options)")
    options.add_options(group, skip=("verdict_file",))
    compare.add_arguments(parser, what="a load-test report folder or its verdict.json", ms_default=5.0)
    args = parser.parse_args(argv)
    if args.users < 1 or args.spawn_rate <= 0 or args.duration <= 0:
        parser.error("--users must be >= 1, --spawn-rate and --duration > 0")
    if args.processes == 0 or args.processes < -1:
        parser.error("--processes must be >= 1, or -1 for one per core")
    if args.scrape_interval < 0:
        parser.error("--scrape-interval must be >= 0")
    if args.callers == options.QUIET_FLOOD and args.users < 2:
        parser.error("--callers quiet-flood needs --users >= 2: one quiet caller, the rest the flood")
    try:  # before anything starts: a mistyped rule, tolerance or baseline must not cost a whole run
        options.slo_rules(args)
        args.tolerance = compare.tolerance_of(args)
        args.baseline_record = baseline.load(args.baseline) if args.baseline else None
    except (slo.SloSpecError, ValueError, baseline.BaselineError) as exc:
        parser.error(str(exc))
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


def gateway_environment(environ: Mapping[str, str]) -> str:
    """The GATEWAY_* variables, e.g. `GATEWAY_FAIR_QUEUEING=false`; API keys named, not shown."""
    shown = [f"{k}={'(not shown)' if 'KEY' in k else v}" for k, v in sorted(environ.items())
             if k.startswith(GATEWAY_ENV_PREFIX)]
    return " ".join(shown) or "none"


def settings_of(args: argparse.Namespace) -> dict[str, object]:
    shown = {"users": args.users, "spawn rate /s": args.spawn_rate, "duration s": args.duration,
             "Locust processes": args.processes}
    if not args.host:  # the stack started here took its gateway settings from this environment
        shown["gateway environment"] = gateway_environment(os.environ)
    for opt in options.OPTIONS:
        if opt.dest not in ("grpc_target", "verdict_file"):
            value = getattr(args, opt.dest)
            if opt.repeat:
                value = "; ".join(value or [])
            if value == "":
                value = "(gateway default)" if opt.dest == "model" else "none"
            shown[opt.flag.lstrip("-")] = value
    return shown


def metrics_url(args: argparse.Namespace, target: Target) -> str | None:
    if args.metrics_url.lower() == "none":
        return None
    return args.metrics_url or f"{target.http_url}/metrics"


@contextlib.contextmanager
def scraping(url: str | None, interval: float) -> Iterator[scrape.Scraper | None]:
    """Read the gateway's metrics around (and during) the block; never fails the run."""
    if url is None:
        yield None
        return
    scraper = scrape.Scraper(url, interval).start()
    if not scraper.snapshots:
        print(f"warning: cannot read the gateway's metrics, the report will not say what happened inside it: "
              f"{scraper.errors[0]}", file=sys.stderr, flush=True)
    try:
        yield scraper
    finally:
        scraper.stop()


def gateway_record(scraper: scrape.Scraper | None, verdict: dict | None) -> dict | None:
    if scraper is None:
        return None
    if scraper.error:
        return {"url": scraper.url, "error": scraper.error}
    total = next((r for r in (verdict or {}).get("requests", []) if r["name"] == summary.AGGREGATED), None)
    return scrape.summarize(scraper.snapshots, scraper.url, total["requests"] if total else None)


def judge_against_baseline(args: argparse.Namespace, verdict: dict | None) -> baseline.Comparison | None:
    if args.baseline_record is None:
        return None
    if verdict is None:
        print("baseline: no comparison, the run has no verdict", file=sys.stderr)
        return None
    result = baseline.compare(verdict, args.baseline_record, args.tolerance, str(baseline.resolve(args.baseline)))
    print(result.console(), file=sys.stderr)
    return result


def clear_outputs(report_dir: Path) -> None:
    """A reused report folder loses the files a previous run wrote (OUTPUTS), nothing else."""
    for pattern in OUTPUTS:
        for path in report_dir.glob(pattern):
            path.unlink()


def outcome(verdict: Mapping | None, comparison: baseline.Comparison | None, code: int) -> str:
    """The summary's title word: NO VERDICT, PASS, FAIL, or what held and what regressed."""
    if verdict is None:
        return "NO VERDICT"
    if comparison is not None and not comparison.passed:
        return f"{'SLO held' if verdict['passed'] else 'SLO missed'}; baseline regressed"
    return "PASS" if code == 0 and verdict["passed"] else "FAIL"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report_dir = (args.report_dir or REPORTS / timestamp()).resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    clear_outputs(report_dir)
    host_machine = machine.describe()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    try:
        with target_for(args, report_dir) as target:
            print(f"load test: {target.description}", file=sys.stderr, flush=True)
            with scraping(metrics_url(args, target), args.scrape_interval) as scraper:
                locust_code = run_locust(locust_argv(args, target, report_dir), report_dir,
                                         args.duration + STOP_GRACE_S)
    except (TargetError, stack.StackError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BROKEN
    verdict_path = report_dir / "verdict.json"
    verdict = slo.read_verdict(verdict_path)
    code = locust_code
    if verdict is None:  # Locust failed to start, crashed or hung: the run is broken, not judged
        print(f"error: Locust ended (exit code {locust_code}) without a verdict; see {report_dir / 'locust.log'}",
              file=sys.stderr)
        code = EXIT_BROKEN
    gateway = gateway_record(scraper, verdict)
    snapshots = scraper.snapshots if scraper is not None and not scraper.error else []
    if snapshots:
        scrape.write_history(snapshots, report_dir / "gateway_metrics.csv")
    if verdict is not None:  # what a later run needs to compare itself with this one
        verdict |= {"settings": settings_of(args), "gateway": gateway}
    comparison = judge_against_baseline(args, verdict)
    if comparison is not None:
        verdict["baseline"] = comparison.to_json()
        if not comparison.passed and code == 0:
            code = 1
    if verdict is not None:
        verdict_path.write_text(json.dumps(verdict, indent=2) + "\n", encoding="utf-8")
    history = summary.read_csv(report_dir / f"{CSV_PREFIX}_stats_history.csv")
    found = summary.stages(history)
    side_by_side = (options.QUIET_CLASSIFY, options.FLOOD_CLASSIFY) if args.callers == options.QUIET_FLOOD else ()
    drawn = plots.render(report_dir, history, snapshots, found, summary.knee(found), compare=side_by_side)
    for name, why in drawn.items():
        if why:
            print(f"warning: plot {name} unavailable: {why}", file=sys.stderr)
    files = sorted({p.name for p in report_dir.iterdir()} | {"summary.md"})
    text = summary.render(
        title=f"Load test {started}: {outcome(verdict, comparison, code)}", verdict=verdict, exit_code=code,
        target=target.description, batch_images=args.batch_images, settings=settings_of(args),
        machine=host_machine, csv_prefix=report_dir / CSV_PREFIX, files=files, plots=drawn,
        baseline=comparison.markdown() if comparison else (), gateway=gateway, callers=args.callers,
        stage_windows=[scrape.window(snapshots, s.start, s.end) for s in found])
    (report_dir / "summary.md").write_text(text, encoding="utf-8")
    print(f"\nreport: {report_dir}/summary.md (HTML: {report_dir}/report.html)", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
