"""Transfer learning on an image folder, end to end (issue 10).

A folder of generated photos-to-be ("mountains": a dark triangle on a light sky; "beaches": sky,
sea and sand as horizontal bands), written as JPEG and PNG with uneven class sizes, is trained on
by every transfer backbone with `--weights none` at a tiny input, then:

* the export's signatures are checked and its answers on JPEG and PNG files compared with the
  in-process Keras model rebuilt from the run's weights (the skew test);
* one binary model is served beside `fashion` from a multi-model config, behind a gateway with
  per-model band thresholds, and classified through the gateway by `model`: the label and
  `confident` follow the band of the in-process scores, for images chosen to land in every region;
* the float16 / int8 variants are exported as separate models and compared with float32;
* `--weights imagenet` without internet ends in one clear line, exit code 2.

Training runs in this process (training.pipeline.run, what the CLI calls) so TensorFlow loads once.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageDraw

from tools import stack
from training.backbones import BACKBONES, build_model
from training.imaging import InputSpec, decode_to_input
from training.pipeline import Options, Outcome, run

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ["beaches", "mountains"]  # sorted folder names: the model's labels, positive = index 1
PER_CLASS = {"beaches": 18, "mountains": 30}  # uneven on purpose: class weights matter


# --- the generated data set -----------------------------------------------------------------------

def draw_scene(kind: str, rng: np.random.Generator, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """One synthetic photo: a dark mountain on a light sky, or a beach's sky/sea/sand bands."""
    w, h = size
    if kind == "mountains":
        sky = tuple(int(c) for c in rng.integers(170, 240, 3))
        image = Image.new("RGB", size, sky)
        apex = (int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(2, h // 3)))
        ImageDraw.Draw(image).polygon([apex, (int(rng.integers(-w // 4, w // 4)), h),
                                       (int(rng.integers(3 * w // 4, 5 * w // 4)), h)],
                                      fill=tuple(int(c) for c in rng.integers(20, 90, 3)))
    else:
        image = Image.new("RGB", size)
        draw = ImageDraw.Draw(image)
        sea, sand = sorted(int(v) for v in rng.integers(h // 4, 3 * h // 4 + 1, 2))
        draw.rectangle([0, 0, w, sea], fill=(int(rng.integers(120, 180)), int(rng.integers(180, 230)), 250))
        draw.rectangle([0, sea, w, sand], fill=(10, int(rng.integers(60, 120)), int(rng.integers(140, 200))))
        draw.rectangle([0, sand, w, h], fill=(int(rng.integers(200, 240)), int(rng.integers(180, 210)), 140))
    noise = rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_scene_folder(root: Path, seed: int = 0) -> None:
    """DIR/<class>/*.jpg|png: every other image a JPEG."""
    rng = np.random.default_rng(seed)
    for kind, count in PER_CLASS.items():
        (root / kind).mkdir(parents=True)
        for i in range(count):
            fmt, suffix = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
            (root / kind / f"{i:03d}.{suffix}").write_bytes(encode(draw_scene(kind, rng), fmt))
