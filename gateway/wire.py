"""The gateway's wire-compatible subset of the TF Serving API, in a descriptor pool of its own.

protos/tfserving_wire/ declares `tensorflow.TensorProto`, `tensorflow.serving.PredictRequest` &
co. with TF Serving's package, names and field numbers, so the bytes on the wire are TF Serving's.
Generated Python stubs would register those names in protobuf's default descriptor pool, where
TensorFlow's own modules register them too, and the pool refuses a second definition: the gateway
and TensorFlow could not share a process. So the subset is loaded here from its serialized
descriptors (gateway/generated/tfserving_wire.py, made by `make protos`) into a private pool, and
its message classes are built from that pool; the three RPCs the gateway calls get a small stub.

    apis.PredictRequest, apis.GetModelStatusResponse, ...   message classes (tensorflow.serving.*)
    tensor.TensorProto, tensor.DataType, tensor.DT_UINT8    tensorflow.* messages and the dtype enum
    PredictionServiceStub(channel).Predict / .GetModelMetadata, ModelServiceStub(channel).GetModelStatus
"""

from __future__ import annotations

from types import SimpleNamespace

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.internal import enum_type_wrapper

from gateway.generated.tfserving_wire import FILE_DESCRIPTOR_SET

_POOL = descriptor_pool.DescriptorPool()
for _file in descriptor_pb2.FileDescriptorSet.FromString(FILE_DESCRIPTOR_SET).file:
    _POOL.Add(_file)


def _messages(package: str) -> SimpleNamespace:
    """Every message of `package` as a class attribute, by its short name."""
    out = {}
    for file_name in ("tfserving_wire/tensor.proto", "tfserving_wire/serving_apis.proto"):
        for name, descriptor in _POOL.FindFileByName(file_name).message_types_by_name.items():
            if descriptor.full_name == f"{package}.{name}":
                out[name] = message_factory.GetMessageClass(descriptor)
    return SimpleNamespace(**out)


apis = _messages("tensorflow.serving")
tensor = _messages("tensorflow")
tensor.DataType = enum_type_wrapper.EnumTypeWrapper(_POOL.FindEnumTypeByName("tensorflow.DataType"))
for _name, _value in tensor.DataType.items():
    setattr(tensor, _name, _value)


def _method(channel, service: str, method: str, request: type, response: type):
    return channel.unary_unary(f"/{service}/{method}", request_serializer=request.SerializeToString,
                               response_deserializer=response.FromString)


class PredictionServiceStub:
    """tensorflow.serving.PredictionService: the two methods the gateway calls."""

    def __init__(self, channel):
        service = "tensorflow.serving.PredictionService"
        self.Predict = _method(channel, service, "Predict", apis.PredictRequest, apis.PredictResponse)
        self.GetModelMetadata = _method(channel, service, "GetModelMetadata", apis.GetModelMetadataRequest,
                                        apis.GetModelMetadataResponse)


class ModelServiceStub:
    """tensorflow.serving.ModelService: GetModelStatus."""

    def __init__(self, channel):
        self.GetModelStatus = _method(channel, "tensorflow.serving.ModelService", "GetModelStatus",
                                      apis.GetModelStatusRequest, apis.GetModelStatusResponse)


__all__ = ["apis", "tensor", "PredictionServiceStub", "ModelServiceStub"]
