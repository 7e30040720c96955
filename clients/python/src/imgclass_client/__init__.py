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

The classifier.v1 messages are in `imgclass_client.proto.classifier.v1.classifier_pb2`.
"""

from ._version import __version__
from .aio import AsyncClassifierClient
from .errors import (ClassifierError, DeadlineExceeded, ImageReadError, InvalidArgument, InvalidImage, NotFound,
                     Overloaded, TooLarge, Unauthenticated, Unavailable)
from .rest import RestClassifierClient
from .retry import RetryPolicy
from .sync import ClassifierClient
from .types import Classification, ItemResult, ModelInfo, Prediction

__all__ = [
    "__version__", "ClassifierClient", "AsyncClassifierClient", "RestClassifierClient",
    "Classification", "Prediction", "ItemResult", "ModelInfo", "RetryPolicy",
    "ClassifierError", "InvalidArgument", "InvalidImage", "TooLarge", "NotFound", "Unauthenticated",
    "Overloaded", "Unavailable", "DeadlineExceeded", "ImageReadError",
]
