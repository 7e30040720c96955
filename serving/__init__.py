"""A TensorFlow-Serving-compatible model server (`python -m serving`) and the configs and launcher
of the real `tensorflow_model_server` (`models.config`, `batching.config`, `monitoring.config`,
`run.sh`).

Module map: `flags` (command line), `configs` (+ `config_protos`) (text-proto config files),
`manager` (version lifecycle, labels, routing) with `version_policy`, `loader`, `savedmodel`,
`warmup`; `core` (the transport-free data plane) with `signatures`, `tensors`, `batching`,
`classify_regress` (the tf.Example APIs); `grpc_api` and `rest_api` (+ `rest_json`,
`json_document`) (the two adapters); `metrics`; `server` (assembly, ports, signals); `cli` (entry
point).
"""
