"""`workers: N`: N gateway processes on the same two ports, for N cores' worth of Python work.

One gateway process does its Python work - protobuf, decoding hand-offs, batching, JSON - on one
core. With `workers` > 1, `python -m gateway` becomes a small supervisor that starts N copies of
itself; each binds both ports with SO_REUSEPORT, and the kernel spreads new connections over them.
The workers share nothing: each has its own batcher (batches form per worker), fleet view, circuit
and metrics - a scrape of /metrics reaches one worker, so counters seen there are that worker's.
Where that matters (Prometheus, autoscaling on metrics), run one worker per pod and more pods, as
k8s/ does.

The supervisor picks the ports first (port 0: a free one, then shared by every worker), forwards
SIGTERM/SIGINT to the workers, waits for them, and exits with the first failing worker's status;
when one worker dies on its own, it stops the others and exits 1 (the pod restarts).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading

WORKER_ENV = "IMGCLASS_GATEWAY_WORKER"  # set in each worker: its index (the supervisor leaves it unset)


def is_worker() -> bool:
    return WORKER_ENV in os.environ


def shared_port(host: str, port: int) -> int:
    """`port`, or for 0 a free one that every worker can bind too (SO_REUSEPORT)."""
    if port:
        return port
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, 0))
        return sock.getsockname()[1]


def supervise(argv: list[str], workers: int, host: str, grpc_port: int, http_port: int) -> int:
    """Run `workers` copies of `python -m gateway argv` on shared ports until a signal; their status."""
    ports = [f"--grpc-port={shared_port(host, grpc_port)}", f"--http-port={shared_port(host, http_port)}"]
    children = [subprocess.Popen([sys.executable, "-m", "gateway", *argv, *ports],
                                 env={**os.environ, WORKER_ENV: str(i)}) for i in range(workers)]
    stopping = threading.Event()

    def stop(*_) -> None:
        stopping.set()
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    while not stopping.is_set():
        if any(child.poll() is not None for child in children):
            print(f"gateway: a worker exited (status {[c.poll() for c in children]}); stopping the others",
                  file=sys.stderr, flush=True)
            stop()
            for child in children:
                child.wait()
            return 1
        stopping.wait(0.5)
    codes = [child.wait() for child in children]
    return next((code for code in codes if code), 0)
