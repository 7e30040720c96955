"""Reading the idx format (MNIST, Fashion-MNIST): a tiny header, then raw unsigned bytes.

Header: two zero bytes, a type code (0x08 = unsigned byte, the only one these data sets use), the
number of dimensions, then each dimension as a big-endian uint32.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np

from training.errors import TrainingError

_UBYTE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """The array stored in `path` (gzip-compressed when the name ends in .gz)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise TrainingError(f"cannot read {path}: {exc}") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UBYTE:
        raise TrainingError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise TrainingError(f"{path} has a truncated idx header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise TrainingError(f"{path} holds {len(data) - header} bytes of data, its header promises {expected}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
