"""TF Serving config messages that the `tensorflow-serving-api` wheel does not ship.

The wheel carries `model_server_config_pb2` but not `BatchingParameters`
(session_bundle_config.proto), `MonitoringConfig` (monitoring_config.proto) or `SSLConfig`
(ssl_config.proto), and no `.proto` sources to generate them from. The config files are text
format, which needs only field names and types, so the three messages are declared here as
descriptors, with the field names, types and numbers of the TF Serving sources, in a private
descriptor pool: nothing is added to protobuf's default pool, so a later wheel that does ship them
cannot clash.
"""

from __future__ import annotations

import functools

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

_PACKAGE = "tensorflow.serving"

# FileDescriptorProto in text format; one file per TF Serving .proto it stands in for.
_SESSION_BUNDLE_CONFIG = """
name: "serving/config_protos/session_bundle_config.proto"
package: "tensorflow.serving"
dependency: "google/protobuf/wrappers.proto"
syntax: "proto3"
message_type {
  name: "BatchingParameters"
  field { name: "max_batch_size" number: 1 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
  field { name: "batch_timeout_micros" number: 2 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
  field { name: "max_enqueued_batches" number: 3 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
  field { name: "num_batch_threads" number: 4 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
  field { name: "thread_pool_name" number: 5 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".google.protobuf.StringValue" }
  field { name: "allowed_batch_sizes" number: 6 label: LABEL_REPEATED type: TYPE_INT64 }
  field { name: "pad_variable_length_inputs" number: 7 label: LABEL_OPTIONAL type: TYPE_BOOL }
  field { name: "enable_large_batch_splitting" number: 8 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".google.protobuf.BoolValue" }
  field { name: "max_execution_batch_size" number: 9 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
  field { name: "batch_padding_policy" number: 10 label: LABEL_OPTIONAL type: TYPE_STRING }
}
"""

_MONITORING_CONFIG = """
name: "serving/config_protos/monitoring_config.proto"
package: "tensorflow.serving"
syntax: "proto3"
message_type {
  name: "PrometheusConfig"
  field { name: "enable" number: 1 label: LABEL_OPTIONAL type: TYPE_BOOL }
  field { name: "path" number: 2 label: LABEL_OPTIONAL type: TYPE_STRING }
}
message_type {
  name: "MonitoringConfig"
  field { name: "prometheus_config" number: 1 label: LABEL_OPTIONAL type: TYPE_MESSAGE type_name: ".tensorflow.serving.PrometheusConfig" }
}
"""

_SSL_CONFIG = """
name: "serving/config_protos/ssl_config.proto"
package: "tensorflow.serving"
syntax: "proto3"
message_type {
  name: "SSLConfig"
  field { name: "server_key" number: 1 label: LABEL_OPTIONAL type: TYPE_STRING }
  field { name: "server_cert" number: 2 label: LABEL_OPTIONAL type: TYPE_STRING }
  field { name: "custom_ca" number: 3 label: LABEL_OPTIONAL type: TYPE_STRING }
  field { name: "client_verify" number: 4 label: LABEL_OPTIONAL type: TYPE_BOOL }
}
"""


@functools.cache
def _pool() -> descriptor_pool.DescriptorPool:
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    for text in (_SESSION_BUNDLE_CONFIG, _MONITORING_CONFIG, _SSL_CONFIG):
        pool.Add(text_format.Parse(text, descriptor_pb2.FileDescriptorProto()))
    return pool


def message_class(name: str) -> type:
    """The message class for `BatchingParameters`, `MonitoringConfig`, `PrometheusConfig` or `SSLConfig`."""
    return message_factory.GetMessageClass(_pool().FindMessageTypeByName(f"{_PACKAGE}.{name}"))
