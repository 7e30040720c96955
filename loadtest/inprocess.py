"""The model's own speed: its serving signature called in-process, no server, no network.

The benchmark compares the model server's Predict at batch N against this, to see what serving
costs. It imports TensorFlow, so the bench runs it as its own process:

    python -m loadtest.inprocess --model-dir models/fashion/1 --pixels rows.bin --shape 28,28,1

and reads the one JSON line it prints (images per second, calls, seconds). `--pixels` holds the
same raw uint8 rows the bench sends to the model server, concatenated.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _shape(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.split(","))
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"expected H,W,C, got {text!r}")
    return parts  # type: ignore[return-value]


def measure(model_dir: Path, signature: str, input_name: str, rows: bytes, shape: tuple[int, int, int],
            batch: int, seconds: float, warmup_calls: int = 20) -> dict:
    import numpy as np
    import tensorflow as tf

    row = shape[0] * shape[1] * shape[2]
    available = np.frombuffer(rows, dtype=np.uint8).reshape(-1, *shape)
    if len(available) == 0 or len(rows) % row:
        raise ValueError(f"--pixels holds {len(rows)} bytes, not whole rows of {row}")
    images = tf.constant(np.resize(available, (batch, *shape)))
    fn = tf.saved_model.load(str(model_dir)).signatures[signature]
    for _ in range(warmup_calls):
        fn(**{input_name: images})
    calls = 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        outputs = fn(**{input_name: images})
        next(iter(outputs.values())).numpy()  # wait for the result, as a client would
        calls += 1
    return {"images_per_s": calls * batch / elapsed, "calls": calls, "seconds": elapsed,
            "batch": batch, "tensorflow": tf.__version__}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.inprocess", description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a SavedModel version directory")
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--input", default="images", help="the signature's uint8 image input")
    parser.add_argument("--pixels", type=Path, required=True, help="raw uint8 rows, concatenated")
    parser.add_argument("--shape", type=_shape, required=True, metavar="H,W,C")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    try:
        result = measure(args.model_dir, args.signature, args.input, args.pixels.read_bytes(),
                         args.shape, args.batch, args.seconds)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
