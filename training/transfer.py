"""Transfer-learning backbones: a `keras.applications` network as the base, a small new head on top.

Each model is `pixels (float32 0..255) -> the application's own preprocess_input -> base (called
with training=False, so its batch-norm layers keep their ImageNet statistics even while
fine-tuning) -> global average pooling -> dropout -> softmax`. The preprocessing is a layer that
calls the application module's `preprocess_input` itself (VGG16: RGB -> BGR and ImageNet mean
subtraction; MobileNetV2 and InceptionV3: scaling to [-1, 1]; EfficientNetB0: a pass-through, its
rescaling is part of the network), so the exported graph does exactly what Keras documents and
nothing is re-implemented here.

Training runs in two phases (see training.pipeline): the base frozen while the head learns, then
the top `fine_tune_layers` layers of the base unfrozen and trained at a low learning rate.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

from training.errors import TrainingError
from training.imaging import InputSpec

BASE_LAYER = "base"  # the name of the application network inside every transfer model
POOL_LAYER = "pool"  # the base's output averaged per channel: what the OOD score reads
_URL = re.compile(r"https?://\S+?(?=:? |$)")


@keras.saving.register_keras_serializable(package="training")
class ApplicationPreprocessing(layers.Layer):
    """`keras.applications.<module>.preprocess_input` as a layer, so it is saved with the model."""

    def __init__(self, module: str, **kwargs):
        super().__init__(**kwargs)
        self.module = module
        self._preprocess = getattr(keras.applications, module).preprocess_input

    def call(self, inputs):
        return self._preprocess(inputs)

    def get_config(self) -> dict:
        return {**super().get_config(), "module": self.module}


@dataclass(frozen=True)
class Application:
    """One `keras.applications` network: its constructor, preprocessing module and sizes."""

    constructor: Callable[..., keras.Model]
    module: str  # keras.applications.<module>.preprocess_input
    default_size: int  # the size its ImageNet weights were trained at
    min_size: int  # the smallest input the architecture takes
    fine_tune_layers: int  # default number of top base layers unfrozen in phase two


def _load_error(name: str, exc: Exception) -> TrainingError:
    """One line telling the user how to provide the ImageNet weights Keras could not download."""
    url = _URL.search(str(exc))
    file = url.group(0).rsplit("/", 1)[-1] if url else "the backbone's ImageNet weights file (.h5)"
    where = f" from {url.group(0)}" if url else ""
    cache = Path(os.environ.get("KERAS_HOME", "~/.keras")) / "models"  # where keras.utils.get_file looks
    return TrainingError(
        f"cannot fetch the ImageNet weights of {name}{where} (no internet?): download {file} elsewhere and "
        f"pass --weights PATH to it, or put it in {cache}/ where Keras looks first")


def application_builder(name: str, app: Application):
    """The `Builder` (see training.backbones) for `app`: weight_set is "imagenet" or None (random)."""

    def build(spec: InputSpec, num_classes: int, weight_set: str | None) -> keras.Model:
        if spec.channels != 3:
            raise TrainingError(f"backbone {name} takes colour images, not {spec.channels} channel(s)")
        try:
            with warnings.catch_warnings():  # "weights for 224x224 will be loaded": expected with --image-size
                warnings.filterwarnings("ignore", message=r".*input_shape. is undefined or non-square")
                base = app.constructor(include_top=False, weights=weight_set, input_shape=spec.shape,
                                       name=BASE_LAYER)
        except Exception as exc:  # keras.utils.get_file raises a bare Exception when a download fails
            if type(exc) is Exception and "URL fetch failure" in str(exc):
                raise _load_error(name, exc) from exc
            raise
        base.trainable = False
        inputs = keras.Input(shape=spec.shape, dtype="float32", name="pixels")
        x = ApplicationPreprocessing(app.module, name="preprocess")(inputs)
        x = base(x, training=False)
        x = layers.GlobalAveragePooling2D(name=POOL_LAYER)(x)
        x = layers.Dropout(0.2, name="head_dropout")(x)
        outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
        return keras.Model(inputs, outputs, name=name)

    return build


def load_base_weights(model: keras.Model, path: Path) -> None:
    """Load a `keras.applications` weights file (e.g. the ImageNet `..._notop.h5`) into the base only."""
    model.get_layer(BASE_LAYER).load_weights(path)


def unfreeze_top(model: keras.Model, count: int) -> int:
    """Make the top `count` layers of the base trainable (batch norm stays frozen); returns how many."""
    base = model.get_layer(BASE_LAYER)
    base.trainable = True
    top = {id(layer) for layer in base.layers[-count:]} if count > 0 else set()
    for layer in base.layers:
        layer.trainable = id(layer) in top and not isinstance(layer, layers.BatchNormalization)
    return sum(layer.trainable for layer in base.layers)


def has_base(model: keras.Model) -> bool:
    return any(layer.name == BASE_LAYER for layer in model.layers)


APPLICATIONS: dict[str, Application] = {
    "mobilenet_v2": Application(keras.applications.MobileNetV2, "mobilenet_v2", 224, 32, 30),
    "efficientnet_b0": Application(keras.applications.EfficientNetB0, "efficientnet", 224, 32, 30),
    "vgg16": Application(keras.applications.VGG16, "vgg16", 224, 32, 4),
    "inception_v3": Application(keras.applications.InceptionV3, "inception_v3", 299, 75, 60),
}
