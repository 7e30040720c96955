from google.rpc import status_pb2 as _status_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "image", "top_k", "version", "version_label", "id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSION_LABEL_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    image: bytes
    top_k: int
    version: int
    version_label: str
    id: str
    def __init__(self, model: _Optional[str] = ..., image: _Optional[bytes] = ..., top_k: _Optional[int] = ..., version: _Optional[int] = ..., version_label: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("model", "model_version", "label", "confident", "predictions", "reason", "id", "index", "error")
    class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        REASON_UNSPECIFIED: _ClassVar[ClassifyResponse.Reason]
        CONFIDENT: _ClassVar[ClassifyResponse.Reason]
        OUT_OF_DISTRIBUTION: _ClassVar[ClassifyResponse.Reason]
        LOW_SCORE: _ClassVar[ClassifyResponse.Reason]
        SMALL_MARGIN: _ClassVar[ClassifyResponse.Reason]
        IN_BAND: _ClassVar[ClassifyResponse.Reason]
    REASON_UNSPECIFIED: ClassifyResponse.Reason
    CONFIDENT: ClassifyResponse.Reason
    OUT_OF_DISTRIBUTION: ClassifyResponse.Reason
    LOW_SCORE: ClassifyResponse.Reason
    SMALL_MARGIN: ClassifyResponse.Reason
    IN_BAND: ClassifyResponse.Reason
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENT_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: int
    label: str
    confident: bool
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    reason: ClassifyResponse.Reason
    id: str
    index: int
    error: _status_pb2.Status
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[int] = ..., label: _Optional[str] = ..., confident: _Optional[bool] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., reason: _Optional[_Union[ClassifyResponse.Reason, str]] = ..., id: _Optional[str] = ..., index: _Optional[int] = ..., error: _Optional[_Union[_status_pb2.Status, _Mapping]] = ...) -> None: ...

class ClassifyBatchRequest(_message.Message):
    __slots__ = ("requests",)
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    requests: _containers.RepeatedCompositeFieldContainer[ClassifyRequest]
    def __init__(self, requests: _Optional[_Iterable[_Union[ClassifyRequest, _Mapping]]] = ...) -> None: ...

class ClassifyBatchResponse(_message.Message):
    __slots__ = ("responses",)
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    responses: _containers.RepeatedCompositeFieldContainer[ClassifyResponse]
    def __init__(self, responses: _Optional[_Iterable[_Union[ClassifyResponse, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "labels", "state", "state_code", "input")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[ModelInfo.State]
        STATE_START: _ClassVar[ModelInfo.State]
        STATE_LOADING: _ClassVar[ModelInfo.State]
        STATE_AVAILABLE: _ClassVar[ModelInfo.State]
        STATE_UNLOADING: _ClassVar[ModelInfo.State]
        STATE_END: _ClassVar[ModelInfo.State]
        STATE_UNREACHABLE: _ClassVar[ModelInfo.State]
        STATE_NOT_SERVED: _ClassVar[ModelInfo.State]
        STATE_UNUSABLE: _ClassVar[ModelInfo.State]
    STATE_UNSPECIFIED: ModelInfo.State
    STATE_START: ModelInfo.State
    STATE_LOADING: ModelInfo.State
    STATE_AVAILABLE: ModelInfo.State
    STATE_UNLOADING: ModelInfo.State
    STATE_END: ModelInfo.State
    STATE_UNREACHABLE: ModelInfo.State
    STATE_NOT_SERVED: ModelInfo.State
    STATE_UNUSABLE: ModelInfo.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_CODE_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    labels: _containers.RepeatedScalarFieldContainer[str]
    state: str
    state_code: ModelInfo.State
    input: ImageInput
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., labels: _Optional[_Iterable[str]] = ..., state: _Optional[str] = ..., state_code: _Optional[_Union[ModelInfo.State, str]] = ..., input: _Optional[_Union[ImageInput, _Mapping]] = ...) -> None: ...

class ImageInput(_message.Message):
    __slots__ = ("height", "width", "channels")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    channels: int
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...
