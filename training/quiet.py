"""Keeping TensorFlow's native start-up chatter off the user's terminal.

Importing TensorFlow prints several lines from C++ (absl) straight to file descriptor 2 (oneDNN,
CUDA and CPU feature notices) that no environment variable turns off in this version. A user who
mistyped --data-dir should see one line saying so, not those; so the import runs with fd 2
pointed at /dev/null. Python exceptions are unaffected: a failing import still raises, and its
traceback is printed after the descriptor is restored.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow and discover devices without the native start-up notices."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # and no info/warning lines later on
    with native_stderr_silenced():
        import tensorflow as tf

        tf.config.list_physical_devices()  # device discovery logs its failed CUDA probe here
