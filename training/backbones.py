"""Model builders by `--backbone` name, each owning its input size and its preprocessing.

Every builder returns a Keras model that takes raw pixel values (float32 in 0..255, shape
`[batch, H, W, C]`) and returns class probabilities. Whatever scaling or normalisation the network
expects is a layer inside that model, so the exported graph carries it and nobody re-implements it
outside. The export adds only the uint8 -> float32 cast in front.

Transfer-learning backbones (mobilenet_v2, efficientnet_b0, vgg16, inception_v3; training.transfer)
are more `Backbone` entries: a default input (224x224x3, 299 for Inception) that `--image-size`
may shrink down to the architecture's minimum, `weight_sets=("imagenet",)`, and a builder that puts
the application's own `preprocess_input` in front of the frozen base.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
from keras import layers

from training import transfer
from training.errors import TrainingError
from training.imaging import InputSpec

# A builder gets the input to take, the number of classes and a named weight set (or None) to
# start from; loading weights from a file is common to all and done by `build_model`.
Builder = Callable[[InputSpec, int, str | None], keras.Model]
# Pre-trained weight sets some backbone may offer; any other --weights value is a file path.
NAMED_WEIGHT_SETS = ("imagenet",)


@dataclass(frozen=True)
class Backbone:
    name: str
    summary: str
    build: Builder
    #: fixed input of the network; None means it adapts to the data set's natural input
    input_spec: InputSpec | None = None
    #: named pre-trained weight sets the builder can start from, e.g. ("imagenet",)
    weight_sets: tuple[str, ...] = ()
    default_weights: str = "none"
    #: smallest square input the architecture takes (None: any size)
    min_size: int | None = None
    #: top layers of the pre-trained base unfrozen in the fine-tuning phase (0: no base to fine-tune)
    fine_tune_layers: int = 0
    #: the layer whose output the out-of-distribution score summarises (training.ood)
    ood_layer: str = "block2_out"

    def input_for(self, natural: InputSpec, size: int | None = None) -> InputSpec:
        """The input this backbone takes for data like `natural`, or `size` x `size` when given."""
        spec = self.input_spec or natural
        if size is None:
            return spec
        if self.min_size is not None and size < self.min_size:
            raise TrainingError(f"--image-size {size} is too small for {self.name} (at least {self.min_size})")
        return InputSpec(size, size, spec.channels)


def _conv_bn_relu(x, filters: int, name: str | None = None):
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal")(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU(name=name)(x)


def build_small_cnn(spec: InputSpec, num_classes: int, weight_set: str | None) -> keras.Model:
    """A compact VGG-style CNN: three conv blocks (32, 64, 128 filters) with batch norm.

    Sized for a CPU: 0.59 M parameters (2.7 MB exported), about 29 M multiply-adds per 28x28
    image, 90-180 s per Fashion-MNIST epoch on two shared cores; 15 epochs give 93.5 % test
    accuracy. Batch norm lets a high one-cycle learning rate converge in few epochs; dropout
    before and after the dense layer keeps the flattened 3x3x128 features from overfitting.
    Each block's last activation is named `block<n>_out` (the out-of-distribution score reads
    `block2_out`).
    """
    del weight_set  # small_cnn has no named weight sets; build_model rejects them before this
    inputs = keras.Input(shape=spec.shape, dtype="float32", name="pixels")
    x = layers.Rescaling(1.0 / 255.0, name="scale_to_unit")(inputs)
    for block, (filters, convs) in enumerate(((32, 2), (64, 2), (128, 2)), start=1):
        for conv in range(convs):
            x = _conv_bn_relu(x, filters, name=f"block{block}_out" if conv == convs - 1 else None)
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3)(x)
    x = layers.Dense(256, activation="relu", kernel_initializer="he_normal")(x)
    x = layers.Dropout(0.4)(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


BACKBONES: dict[str, Backbone] = {
    "small_cnn": Backbone(
        name="small_cnn",
        summary="compact VGG-style CNN trained from scratch; takes the data set's own image size",
        build=build_small_cnn,
    ),
    **{
        name: Backbone(
            name=name,
            summary=f"keras.applications {app.constructor.__name__} base + new head, two-phase transfer "
                    f"learning; {app.default_size}x{app.default_size} (--image-size >= {app.min_size})",
            build=transfer.application_builder(name, app),
            input_spec=InputSpec(app.default_size, app.default_size, 3),
            weight_sets=("imagenet",),
            default_weights="imagenet",
            min_size=app.min_size,
            fine_tune_layers=app.fine_tune_layers,
            ood_layer=transfer.POOL_LAYER,
        )
        for name, app in transfer.APPLICATIONS.items()
    },
}


def build_model(backbone: Backbone, spec: InputSpec, num_classes: int, weights: str | None) -> keras.Model:
    """Build `backbone` for `spec`; `weights` is a named set, "none", a weights file, or None (default).

    A file is a Keras `.weights.h5` of the same architecture (training writes one beside each
    report), for continuing from an earlier run; for a transfer backbone it may instead be the
    base network's own weights file (e.g. Keras' ImageNet `..._notop.h5`, downloaded elsewhere).
    """
    weights = weights or backbone.default_weights
    named = weights in backbone.weight_sets
    if weights in NAMED_WEIGHT_SETS and not named:
        offered = ", ".join(backbone.weight_sets + ("none", "PATH"))
        raise TrainingError(f"backbone {backbone.name} has no {weights} weights; --weights can be {offered}")
    model = backbone.build(spec, num_classes, weights if named else None)
    if weights != "none" and not named:
        path = Path(weights)
        if not path.is_file():
            raise TrainingError(f"--weights {weights}: no such file (expected imagenet, none or a .weights.h5 file)")
        try:
            with warnings.catch_warnings():  # a base-only file first fails here, loudly, before the fallback
                warnings.filterwarnings("ignore", message="Skipping nested container")
                model.load_weights(path)
        except (ValueError, OSError) as exc:
            if not transfer.has_base(model):
                raise TrainingError(f"--weights {path} does not fit backbone {backbone.name} "
                                    f"with {num_classes} classes at {spec.shape}: {exc}") from exc
            try:
                transfer.load_base_weights(model, path)
            except (ValueError, OSError) as base_exc:
                raise TrainingError(f"--weights {path} is neither a model from an earlier {backbone.name} run "
                                    f"with {num_classes} classes at {spec.shape} nor the weights of its "
                                    f"base network: {base_exc}") from base_exc
    return model
