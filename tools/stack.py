"""Start and stop the local stack: the model server and the gateway, as child processes.

One launcher for `make up`, `make demo`, the load test, the benchmark and the tests, so they all
start the stack the same way:

    python -m tools.stack up     # default ports, runs until Ctrl-C
    python -m tools.stack demo   # free ports, classifies examples/ over gRPC and REST, stops

Both servers log the port they bound (port 0 = pick a free one); the launcher reads it from their
output, then waits on readiness over the wire (model AVAILABLE on the model server's REST API,
`/readyz` on the gateway). Children bind 127.0.0.1 and are stopped with SIGTERM, then SIGKILL
after a grace period - by whoever started them, and at the latest when this interpreter exits
(`atexit`), so an interrupted test run leaves no server behind.
"""

from __future__ import annotations

import argparse
import atexit
import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODELS_DIR = ROOT / "models"
DEFAULT_MODEL = "fashion"
EXAMPLES_DIR = ROOT / "examples"

# The model server logs these two lines, worded as tensorflow_model_server words them.
_SERVING_GRPC = re.compile(r"Running gRPC ModelServer at [^:\s]+:(\d+)")
_SERVING_REST = re.compile(r"Exporting HTTP/REST API at:[^:\s]+:(\d+)")


class StackError(RuntimeError):
    """A child process failed to start or to become ready."""


@dataclass(eq=False)  # hashable by identity: kept in _RUNNING
class ManagedProcess:
    """A child process whose combined output is drained by a thread and scanned for readiness."""

    name: str
    argv: Sequence[str]
    env: dict[str, str] | None = None
    echo: bool = False
    log_path: Path | None = None
    proc: subprocess.Popen | None = None
    tail: collections.deque = field(default_factory=lambda: collections.deque(maxlen=200))
    _found: dict = field(default_factory=dict)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _matchers: list = field(default_factory=list)

    def start(self) -> "ManagedProcess":
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.proc = subprocess.Popen(
            list(self.argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, cwd=ROOT, text=True, errors="replace", bufsize=1, start_new_session=True,
        )
        _RUNNING.add(self)
        threading.Thread(target=self._drain, name=f"drain-{self.name}", daemon=True).start()
        return self

    def _drain(self) -> None:
        log = open(self.log_path, "a", encoding="utf-8") if self.log_path else None
        try:
            assert self.proc and self.proc.stdout
            for line in self.proc.stdout:
                if self.echo:
                    sys.stderr.write(f"[{self.name}] {line}")
                if log:
                    log.write(line)
                    log.flush()
                with self._cond:
                    self.tail.append(line.rstrip("\n"))
                    for key, matcher in self._matchers:
                        if key not in self._found:
                            value = matcher(line)
                            if value is not None:
                                self._found[key] = value
                    self._cond.notify_all()
        finally:
            if log:
                log.close()
            with self._cond:
                self._cond.notify_all()

    def watch(self, key: str, matcher: Callable[[str], object | None]) -> None:
        """Look for `key` in every line from now on (call before start, or lines may be missed)."""
        with self._cond:
            self._matchers.append((key, matcher))

    def wait_for(self, keys: Sequence[str], timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(k in self._found for k in keys):
                if self.proc is None or self.proc.poll() is not None:
                    raise StackError(f"{self.name} exited (code {self.returncode}) before it was ready:\n{self.output()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StackError(f"{self.name} did not log {list(keys)} within {timeout:.0f}s:\n{self.output()}")
                self._cond.wait(min(left, 0.5))
            return {k: self._found[k] for k in keys}

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def output(self, lines: int = 40) -> str:
        with self._cond:
            return "\n".join(list(self.tail)[-lines:])

    def signal(self, sig: int) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, grace: float = 10.0) -> int | None:
        """SIGTERM, wait up to `grace` seconds, then SIGKILL the whole process group."""
        if self.proc is None:
            return None
        _RUNNING.discard(self)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


_RUNNING: set[ManagedProcess] = set()


@atexit.register
def _stop_leftovers() -> None:
    """Children nobody stopped (an interrupted run): stopped as the interpreter exits."""
    for process in list(_RUNNING):
        process.stop(grace=5.0)


def _regex(pattern: re.Pattern) -> Callable[[str], int | None]:
    def match(line: str) -> int | None:
        m = pattern.search(line)
        return int(m.group(1)) if m else None
    return match


def _json_event(event: str) -> Callable[[str], dict | None]:
    def match(line: str) -> dict | None:
        line = line.strip()
        if not line.startswith("{"):
            return None
        try:
            record = json.loads(line)
        except ValueError:
            return None
        return record if record.get("event") == event else None
    return match


def _poll(url: str, ok: Callable[[int, bytes], bool], proc: ManagedProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        except (urllib.error.URLError, OSError) as exc:
            status, body = 0, str(exc).encode()
        if ok(status, body):
            return
        last = f"HTTP {status}: {body[:200]!r}"
        if proc.returncode is not None:
            raise StackError(f"{proc.name} exited (code {proc.returncode}):\n{proc.output()}")
        if time.monotonic() > deadline:
            raise StackError(f"{url} not ready within {timeout:.0f}s ({last}):\n{proc.output()}")
        time.sleep(0.1)  # polling a remote process over HTTP; there is nothing local to wait on


def _model_available(name: str) -> Callable[[int, bytes], bool]:
    def ok(status: int, body: bytes) -> bool:
        if status != 200:
            return False
        states = [v.get("state") for v in json.loads(body).get("model_version_status", [])]
        return "AVAILABLE" in states
    return ok


@dataclass
class ModelServer:
    process: ManagedProcess
    grpc_port: int
    rest_port: int
    models: list[str]

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"


def start_model_server(
    *, model_name: str = DEFAULT_MODEL, model_base_path: Path | None = None,
    model_config_file: Path | None = None, models: Sequence[str] | None = None,
    port: int = 0, rest_port: int = 0, extra_args: Sequence[str] = (), echo: bool = False,
    log_path: Path | None = None, timeout: float = 120.0, wait_available: bool = True,
    env: dict[str, str] | None = None,
) -> ModelServer:
    """Start `python -m serving` and wait until every model in `models` is AVAILABLE."""
    argv = [sys.executable, "-m", "serving", f"--port={port}", f"--rest_api_port={rest_port}"]
    if model_config_file is not None:
        argv.append(f"--model_config_file={model_config_file}")
        names = list(models or [])
    else:
        base = Path(model_base_path or DEFAULT_MODELS_DIR / model_name).resolve()
        argv += [f"--model_name={model_name}", f"--model_base_path={base}"]
        names = list(models or [model_name])
    argv += list(extra_args)
    proc = ManagedProcess("serving", argv, env=env, echo=echo, log_path=log_path)
    proc.watch("grpc", _regex(_SERVING_GRPC))
    proc.watch("rest", _regex(_SERVING_REST))
    proc.start()
    try:
        ports = proc.wait_for(["grpc", "rest"], timeout)
        server = ModelServer(proc, ports["grpc"], ports["rest"], names)
        if wait_available:
            for name in names:
                _poll(f"{server.rest_url}/v1/models/{name}", _model_available(name), proc, timeout)
        return server
    except BaseException:
        proc.stop(2)
        raise


@dataclass
class Gateway:
    process: ManagedProcess
    grpc_port: int
    http_port: int

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def start_gateway(
    *, backend: str | None, grpc_port: int = 0, http_port: int = 0, config_file: Path | None = None,
    extra_args: Sequence[str] = (), env: dict[str, str] | None = None, echo: bool = False,
    log_path: Path | None = None, timeout: float = 60.0, wait_ready: bool = True,
) -> Gateway:
    """Start `python -m gateway` against `backend` (None: the one the config file names) and wait
    until `/readyz` answers 200."""
    argv = [sys.executable, "-m", "gateway", f"--grpc-port={grpc_port}", f"--http-port={http_port}"]
    if backend is not None:
        argv.append(f"--backend={backend}")
    if config_file is not None:
        argv.append(f"--config={config_file}")
    argv += list(extra_args)
    proc = ManagedProcess("gateway", argv, env=env, echo=echo, log_path=log_path)
    proc.watch("listening", _json_event("listening"))
    proc.start()
    try:
        event = proc.wait_for(["listening"], timeout)["listening"]
        gw = Gateway(proc, int(event["grpc_port"]), int(event["http_port"]))
        if wait_ready:
            _poll(f"{gw.http_url}/readyz", lambda status, _: status == 200, proc, timeout)
        return gw
    except BaseException:
        proc.stop(2)
        raise


@dataclass
class Stack:
    server: ModelServer
    gateway: Gateway

    def stop(self) -> None:
        self.gateway.process.stop()
        self.server.process.stop()


def start_stack(*, default_ports: bool = False, echo: bool = False, gateway_args: Sequence[str] = (),
                gateway_env: dict[str, str] | None = None, **server_kwargs) -> Stack:
    ports = dict(port=8500, rest_port=8501) if default_ports else {}
    server = start_model_server(echo=echo, **ports, **server_kwargs)
    try:
        gw_ports = dict(grpc_port=50051, http_port=8080) if default_ports else {}
        gateway = start_gateway(backend=server.grpc_target, echo=echo, extra_args=gateway_args,
                                env=gateway_env, **gw_ports)
    except BaseException:
        server.process.stop()
        raise
    return Stack(server, gateway)


def example_images() -> Iterator[Path]:
    yield from sorted(p for p in EXAMPLES_DIR.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})


def _print_urls(stack: Stack) -> None:
    gw, ms = stack.gateway, stack.server
    print(f"""
  web page        {gw.http_url}/
  REST API        {gw.http_url}/v1/classify   (docs: {gw.http_url}/docs)
  gRPC            {gw.grpc_target}   (classifier.v1.Classifier; grpcurl -plaintext {gw.grpc_target} list)
  metrics         {gw.http_url}/metrics
  model server    gRPC {ms.grpc_target}, REST {ms.rest_url}/v1/models/{ms.models[0] if ms.models else ''}

Ctrl-C stops both.
""", flush=True)


def cmd_up(args: argparse.Namespace) -> int:
    # People read these logs: the gateway writes text lines when this terminal is a terminal.
    env = {**os.environ, "GATEWAY_LOG_FORMAT": "text"} if sys.stderr.isatty() else None
    stack = start_stack(default_ports=not args.free_ports, echo=True, gateway_env=env)
    _print_urls(stack)
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    while not stopping.is_set():
        if stack.gateway.process.returncode is not None or stack.server.process.returncode is not None:
            print("a child process exited; stopping the stack", file=sys.stderr)
            break
        stopping.wait(0.5)
    print("stopping: gateway first (drains), then the model server", file=sys.stderr)
    stack.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gateway import client  # lean: no TensorFlow in this process

    images = [str(p) for p in example_images()]
    if not images:
        print(f"no example images under {EXAMPLES_DIR}", file=sys.stderr)
        return 1
    stack = start_stack(echo=args.verbose)
    try:
        print(f"stack up: gateway gRPC {stack.gateway.grpc_target}, HTTP {stack.gateway.http_url}\n")
        for rest in (False, True):
            print("over REST:" if rest else "over gRPC:")
            target = stack.gateway.http_url if rest else stack.gateway.grpc_target
            code = client.main(["--target", target, "classify", *images, *(["--rest"] if rest else [])])
            if code:
                return code
            print()
    finally:
        stack.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.stack", description="Run the local stack.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start model server + gateway on the default model until Ctrl-C")
    up.add_argument("--free-ports", action="store_true", help="pick free ports instead of 8500/8501/50051/8080")
    demo = sub.add_parser("demo", help="start the stack, classify examples/ over gRPC and REST, stop")
    demo.add_argument("--verbose", action="store_true", help="show the servers' logs")
    args = parser.parse_args(argv)
    try:
        return {"up": cmd_up, "demo": cmd_demo}[args.cmd](args)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C while starting: whatever had started was stopped on the way out
        print("interrupted; stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
