"""Train a Keras image classifier and export it as a servable, versioned SavedModel.

`python -m training --help` documents the command. The package is split by concern:
datasets/ (where images come from), augment (training-time only distortions), backbones (model
builders, each owning its input size and in-graph preprocessing), schedule, trainer, export
(signatures, atomic write, verification), warmup and report.
"""
