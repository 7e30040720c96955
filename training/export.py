"""Exporting a trained model as `models/<name>/<version>/`, as docs/architecture.md ("The model directory contract") describes.

The SavedModel wraps the Keras model in two signatures:

* `serving_default`: `images` uint8 `[batch, H, W, C]` -> `scores` float32 `[batch, K]`
  (probabilities) and `classes` string `[batch, K]` (the label of each column).
* `image_bytes`: `image_bytes` string `[batch]` (encoded JPEG/PNG), decoded, converted to the
  model's channels and resized in the graph (training.imaging), then the same path as above.

With an `OodDetector` (training.ood) both signatures also return `ood_score` and `ood_threshold`
float32 `[batch]`, computed in the same forward pass from a layer the model already has.

The only thing added in front of the model is the uint8 -> float32 cast; scaling lives in the
model. With a `WeightCodec` (training.compress) the weights are stored as float16 or int8 and
decoded in the graph: a smaller variant with the same signatures. Writing is atomic: save to a
hidden temporary directory beside the target, add the warm-up records, reload and compare with the
in-memory model, make it world-readable (directories 0755, files 0644: a model server running as
another user, as in the container image, must read it) and only then rename it to `<version>/`.
TF Serving ignores directories whose names are not numbers, so it never sees the temporary one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from training import warmup
from training.compress import CompressedWeights, Untracked, WeightCodec
from training.errors import ExportError
from training.imaging import InputSpec, decode_to_input
from training.ood import SCORE, THRESHOLD, OodDetector, tap_model

PIXELS_SIGNATURE = "serving_default"
BYTES_SIGNATURE = "image_bytes"
TOLERANCE = 1e-5  # max abs difference in scores between reloaded and in-memory model
OOD_TOLERANCE = 1e-4  # max relative difference in ood_score between reloaded and in-memory model
DIR_MODE, FILE_MODE = 0o755, 0o644  # an exported version, readable by any user


def inference_copy(model: keras.Model) -> keras.Model:
    """A fresh, uncompiled copy of `model` holding only its weights.

    The trained model also tracks its optimiser state, which would triple the size of what is
    saved and serve no request. (keras.models.clone_model would re-compile the copy and bring an
    optimiser back.)
    """
    copy = keras.Model.from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def forward(model: keras.Model | CompressedWeights, ood: OodDetector | None, pixels,
            taps: keras.Model | None = None) -> dict[str, tf.Tensor]:
    """`scores`, plus `ood_score` and `ood_threshold` with a detector, for float32 `pixels`, in one pass.

    `model` is a Keras model (`taps`: its training.ood.tap_model, else built here) or
    `CompressedWeights` built with the detector's layer.
    """
    if ood is None:
        return {"scores": model(pixels, training=False)}
    if isinstance(model, CompressedWeights):
        tapped, scores = model.tapped(pixels)
    else:
        tapped, scores = (taps or tap_model(model, ood.layer))(pixels, training=False)
    return {"scores": scores, **ood.outputs(tapped)}


class ServingModule(tf.Module):
    """What gets saved: the Keras model (or its compressed weights), its labels, the optional
    out-of-distribution detector and the two signatures."""

    def __init__(self, model: keras.Model, labels: list[str], spec: InputSpec, codec: WeightCodec | None = None,
                 ood: OodDetector | None = None):
        super().__init__()
        tap = ood.layer if ood is not None else None
        self.model = inference_copy(model) if codec is None else CompressedWeights(inference_copy(model), codec, tap)
        self._taps = Untracked(tap_model(self.model, tap) if tap and codec is None else None)
        self.ood = ood
        self.spec = spec
        self.labels = tf.constant(labels, dtype=tf.string)
        self.predict_pixels = tf.function(
            self._predict_pixels,
            input_signature=[tf.TensorSpec(shape=[None, *spec.shape], dtype=tf.uint8, name="images")])
        self.predict_bytes = tf.function(
            self._predict_bytes,
            input_signature=[tf.TensorSpec(shape=[None], dtype=tf.string, name="image_bytes")])

    def _predict_pixels(self, images):
        outputs = forward(self.model, self.ood, tf.cast(images, tf.float32), self._taps.model)
        classes = tf.tile(self.labels[tf.newaxis, :], [tf.shape(images)[0], 1])
        return {**outputs, "classes": classes}

    def _predict_bytes(self, image_bytes):
        images = tf.map_fn(lambda encoded: decode_to_input(encoded, self.spec), image_bytes,
                           fn_output_signature=tf.TensorSpec(shape=self.spec.shape, dtype=tf.uint8))
        return self._predict_pixels(images)

    def signatures(self) -> dict:
        return {PIXELS_SIGNATURE: self.predict_pixels.get_concrete_function(),
                BYTES_SIGNATURE: self.predict_bytes.get_concrete_function()}


def dir_bytes(path: Path) -> int:
    """The size of an exported version: every file under `path`."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def next_version(base: Path) -> int:
    """One more than the highest numeric version under `base` (1 when there is none)."""
    versions = [int(p.name) for p in base.iterdir() if p.is_dir() and p.name.isdigit()] if base.is_dir() else []
    return max(versions, default=0) + 1


def make_world_readable(root: Path) -> None:
    """Directories DIR_MODE and files FILE_MODE under `root` (itself included), whatever the umask."""
    os.chmod(root, DIR_MODE)
    for path in root.rglob("*"):
        os.chmod(path, DIR_MODE if path.is_dir() else FILE_MODE)


def _check_signature(loaded, name: str, input_key: str, input_dtype: tf.DType, input_shape: list,
                     num_classes: int, ood: bool) -> None:
    if name not in loaded.signatures:
        raise ExportError(f"signature {name!r} is missing (has {sorted(loaded.signatures)})")
    fn = loaded.signatures[name]
    inputs = fn.structured_input_signature[1]
    if list(inputs) != [input_key] or inputs[input_key].dtype != input_dtype \
            or inputs[input_key].shape.as_list() != input_shape:
        raise ExportError(f"signature {name!r} takes {inputs}, expected {input_key} {input_dtype.name} {input_shape}")
    outputs = fn.structured_outputs
    expected = {"scores": (tf.float32, [None, num_classes]), "classes": (tf.string, [None, num_classes])}
    if ood:
        expected |= {SCORE: (tf.float32, [None]), THRESHOLD: (tf.float32, [None])}
    if set(outputs) != set(expected) or any(outputs[k].dtype != dt or outputs[k].shape.as_list() != shape
                                            for k, (dt, shape) in expected.items()):
        wanted = ", ".join(f"{k} {dt.name} {shape}" for k, (dt, shape) in expected.items())
        raise ExportError(f"signature {name!r} returns {outputs}, expected {wanted}")


def verify_export(export_dir: Path, model: keras.Model | CompressedWeights, labels: list[str],
                  samples: np.ndarray, ood: OodDetector | None = None) -> None:
    """Reload `export_dir` and prove it serves what `model` computes; raises ExportError if not.

    `model` is the Keras model, or for a compressed export the `CompressedWeights` it was saved from.

    Checks the signature names, dtypes and shapes; the pixel signature's scores against the
    in-memory model (within TOLERANCE), and with `ood` its OOD score (within OOD_TOLERANCE,
    relative) and threshold; the labels in `classes`; that PNG-encoded samples through
    `image_bytes` give the same top-1 and OOD score; and that every warm-up request runs.
    """
    loaded = tf.saved_model.load(str(export_dir))
    spec_shape = list(samples.shape[1:])
    _check_signature(loaded, PIXELS_SIGNATURE, "images", tf.uint8, [None, *spec_shape], len(labels), ood is not None)
    _check_signature(loaded, BYTES_SIGNATURE, "image_bytes", tf.string, [None], len(labels), ood is not None)

    pixels = loaded.signatures[PIXELS_SIGNATURE](images=tf.constant(samples))
    wanted = {k: keras.ops.convert_to_numpy(v) for k, v in forward(model, ood, samples.astype(np.float32)).items()}
    expected = wanted["scores"]
    diff = float(np.max(np.abs(pixels["scores"].numpy() - expected)))
    if diff > TOLERANCE:
        raise ExportError(f"reloaded model differs from the trained one: max score difference {diff:.2e}")
    if ood is not None:
        if _relative_diff(pixels[SCORE].numpy(), wanted[SCORE]) > OOD_TOLERANCE:
            raise ExportError("reloaded model's ood_score differs from the in-memory detector's")
        if not np.all(pixels[THRESHOLD].numpy() == np.float32(ood.threshold.numpy())):
            raise ExportError(f"reloaded model's ood_threshold is not the calibrated {float(ood.threshold.numpy())}")
    classes = pixels["classes"].numpy().astype(str)
    if classes.shape != expected.shape or any(list(row) != list(labels) for row in classes):
        raise ExportError(f"`classes` output {classes[:1].tolist()} does not match the labels {labels}")

    pngs = tf.stack([tf.io.encode_png(image) for image in samples])
    by_bytes = loaded.signatures[BYTES_SIGNATURE](image_bytes=pngs)
    if not np.array_equal(by_bytes["scores"].numpy().argmax(axis=1), expected.argmax(axis=1)):
        raise ExportError("`image_bytes` on PNG-encoded samples disagrees with the pixel signature")
    if ood is not None and _relative_diff(by_bytes[SCORE].numpy(), pixels[SCORE].numpy()) > OOD_TOLERANCE:
        raise ExportError("`image_bytes` on PNG-encoded samples gives another ood_score than the pixel signature")

    for log in warmup.read_warmup(export_dir):
        request = log.predict_log.request
        inputs = {key: tf.constant(tf.make_ndarray(proto)) for key, proto in request.inputs.items()}
        loaded.signatures[request.model_spec.signature_name](**inputs)


def _relative_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1.0), initial=0.0))


def export_model(model: keras.Model, labels: list[str], spec: InputSpec, base: Path, samples: np.ndarray,
                 *, model_name: str, codec: WeightCodec | None = None, ood: OodDetector | None = None,
                 verify: Callable[..., None] = verify_export) -> Path:
    """Write `model` as the next version under `base` (`<models-dir>/<name>`); returns its path.

    `samples` (uint8 `[n, H, W, C]`, a few real images) feed the warm-up records and the
    verification. With `codec`, the weights are stored compressed and verified against what the
    decoded weights compute. With `ood`, both signatures also return the OOD score and threshold.
    `verify(path, model, labels, samples, ood=...)` is verify_export unless a test says otherwise.
    On any failure the temporary directory is removed and no version appears.
    """
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-export-", dir=base))
    try:
        module = ServingModule(model, labels, spec, codec, ood)
        tf.saved_model.save(module, str(tmp), signatures=module.signatures())
        warmup.write_warmup(tmp, model_name, samples)
        verify(tmp, model if codec is None else module.model, labels, samples, ood=ood)
        make_world_readable(tmp)
        while True:  # another exporter may take a number between our look and our rename
            target = base / str(next_version(base))
            try:
                os.rename(tmp, target)
                return target
            except OSError:
                if not target.exists():
                    raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # best effort: the original error is the one to report
        raise
