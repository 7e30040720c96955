"""imgclass-client: call the image-classification gateway from Python, over gRPC or REST.

    from imgclass_client import ClassifierClient
    with ClassifierClient("gateway:50051") as client:
        for result in client.classify_many(Path("photos").glob("*.jpg"), concurrency=8):
            print(result.id, result.classification.label if result.ok else result.error)

    ClassifierClient        blocking gRPC client (sync.py)
    AsyncClassifierClient   asyncio gRPC client (aio.py)
    RestClassifierClient    blocking REST client (rest.py)
    Classification, Prediction, ItemResult, ModelInfo     results (types.py)
    ClassifierError and its subclasses                    errors (errors.py)
    RetryPolicy                                           retries (retry.py)
    imgclass_client.imaging     the decoder shared with the gateway; `shrink=True` uses it (Pillow)

The classifier.v1 messages are in `imgclass_client.proto.classifier.v1.classifier_pb2`.
"""

from typing import TYPE_CHECKING, Any

from ._version import __version__

# Imported on first use (PEP 562), so `imgclass_client.imaging` (Pillow only) loads without grpc,
# httpx and the stubs: the gateway decodes with it.
_WHERE = {
    "AsyncClassifierClient": "aio", "RestClassifierClient": "rest", "RetryPolicy": "retry",
    "ClassifierClient": "sync",
    **{name: "types" for name in ("Classification", "ItemResult", "ModelInfo", "Prediction")},
    **{name: "errors" for name in ("ClassifierError", "DeadlineExceeded", "ImageReadError", "InvalidArgument",
                                   "InvalidImage", "NotFound", "Overloaded", "TooLarge", "Unauthenticated",
                                   "Unavailable")},
}

if TYPE_CHECKING:
    from .aio import AsyncClassifierClient
    from .errors import (ClassifierError, DeadlineExceeded, ImageReadError, InvalidArgument, InvalidImage, NotFound,
                         Overloaded, TooLarge, Unauthenticated, Unavailable)
    from .rest import RestClassifierClient
    from .retry import RetryPolicy
    from .sync import ClassifierClient
    from .types import Classification, ItemResult, ModelInfo, Prediction


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted([*globals(), *_WHERE])


__all__ = [
    "__version__", "ClassifierClient", "AsyncClassifierClient", "RestClassifierClient",
    "Classification", "Prediction", "ItemResult", "ModelInfo", "RetryPolicy",
    "ClassifierError", "InvalidArgument", "InvalidImage", "TooLarge", "NotFound", "Unauthenticated",
    "Overloaded", "Unavailable", "DeadlineExceeded", "ImageReadError",
]
