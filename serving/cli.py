"""`python -m serving`: parse the flags, run the server, turn start-up failures into one line.

TensorFlow is imported only after the flags parse, so `--help` and flag errors answer at once.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Sequence

from serving import flags

log = logging.getLogger("serving")

SERVER_VERSION = "python -m serving (TensorFlow Serving API compatible)"


def _configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname).1s %(name)s] %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    _configure_logging()
    try:
        options = flags.parse(sys.argv[1:] if argv is None else argv)
    except flags.HelpRequested:
        print(flags.usage())
        return 0
    except flags.FlagError as exc:
        print(f"error: {exc}\n\n{flags.usage()}", file=sys.stderr)
        return 2
    if options.version:
        import tensorflow as tf

        print(f"TensorFlow ModelServer: {SERVER_VERSION}\nTensorFlow Library: {tf.__version__}")
        return 0
    from serving.server import ModelServer, StartupError

    try:
        return asyncio.run(ModelServer(options).run())
    except StartupError as exc:
        log.error("Failed to start server. Error: %s", exc)
        return 1
