"""REST, reading a request: its deadline header, its body, its image or images, and the client's departure.

The body is read with the size limit enforced while reading - a 1 GB upload is refused after
`max_body_bytes`, not after arriving - and within the request's deadline (a client trickling its
body gets 504, not a connection held forever). Raises GatewayErrors only: InvalidArgument for a
body or header that cannot be used, TooLarge, TooManyImages, DeadlineExceeded, ClientGone.
"""

from __future__ import annotations

import asyncio
import math
import re
from typing import Awaitable, TypeVar

from starlette.datastructures import FormData, Headers, UploadFile
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message, Receive

from gateway.errors import (ClientGone, DeadlineExceeded, GatewayError, InvalidArgument, TooLarge,
                            TooManyImages)

T = TypeVar("T")

TIMEOUT_HEADER = "x-request-timeout"   # seconds, e.g. 2.5
GRPC_TIMEOUT_HEADER = "grpc-timeout"    # gRPC's own form, e.g. 2500m (as a gRPC-Web proxy forwards it)
_GRPC_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_GRPC_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
RAW_BODY_TYPES = ("image/", "application/octet-stream")
IMAGE_FIELD = "image"
MAX_ID_CHARS = 128  # as classifier.v1.ClassifyRequest.id
# Room a multipart body has besides its images: this many form fields, and this many more file parts
# than the image limit (files not named `image` are read past, never classified, never counted as images).
MAX_OTHER_PARTS = 8


def request_timeout(headers: Headers) -> float | None:
    """The client's timeout in seconds from `x-request-timeout` (else `grpc-timeout`); None when
    it sent neither. 0 means the deadline has passed already."""
    value = headers.get(TIMEOUT_HEADER)
    if value is not None:
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if not (math.isfinite(seconds) and seconds >= 0):
            raise InvalidArgument(f"{TIMEOUT_HEADER} must be a number of seconds such as 2.5, not {value[:32]!r}")
        return seconds
    value = headers.get(GRPC_TIMEOUT_HEADER)
    if value is not None:
        match = _GRPC_TIMEOUT.match(value.strip())
        if match is None:
            raise InvalidArgument(f"{GRPC_TIMEOUT_HEADER} must be 1-8 digits and a unit (H M S m u n), "
                                  f"such as 2500m, not {value[:32]!r}")
        return int(match[1]) * _GRPC_UNITS[match[2]]
    return None


async def read_body(request: Request, limit: int, deadline: float) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes, and with
    504 when it has not all arrived by `deadline` (an event-loop time)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the request body ({declared} bytes) is over the limit of {limit} bytes",
                       metadata={"limit": str(limit)})
    chunks, size = [], 0
    try:
        async with asyncio.timeout_at(deadline):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise TooLarge(f"the request body is over the limit of {limit} bytes",
                                   metadata={"limit": str(limit)})
                chunks.append(chunk)
    except TimeoutError:
        message = f"the request body was not received before the deadline ({size} bytes arrived)"
        raise DeadlineExceeded(message) from None
    except ClientDisconnect:
        raise ClientGone("the client closed the connection while sending the body") from None
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def image_from_body(request: Request, body: bytes, limit: int) -> bytes:
    """The image bytes: the multipart field `image`, or the whole body for image/* content."""
    media_type = _media_type(request)
    if media_type == "multipart/form-data":
        several = InvalidArgument(f"one image per request here, not several: send them as `{IMAGE_FIELD}` parts "
                                  "to /v1/classify:batch")
        form = await _form(request, body, 1, limit, several)
        try:
            uploads = _image_parts(form)
            if len(uploads) > 1:
                raise several
            return await uploads[0].read()
        finally:
            await form.close()
    if media_type.startswith(RAW_BODY_TYPES):
        return body
    raise InvalidArgument(f"send the image as the multipart/form-data field `{IMAGE_FIELD}`, or as the raw body "
                          f"with an image/* content type (got {media_type or 'no content type'!r})")


async def images_from_body(request: Request, body: bytes, limit: int, max_images: int) -> list[tuple[str, bytes]]:
    """(id, bytes) of each multipart `image` part, in order; the id is the part's file name.
    TooManyImages for more than `max_images` of them (other parts do not count)."""
    if _media_type(request) != "multipart/form-data":
        raise InvalidArgument(f"send the images as multipart/form-data parts named `{IMAGE_FIELD}`")
    metadata = {"limit": str(max_images)}
    form = await _form(request, body, max_images, limit, TooManyImages(
        f"more than {max_images + MAX_OTHER_PARTS} file parts in one request: the limit is {max_images} images, "
        f"and {max_images + MAX_OTHER_PARTS} file parts in all", metadata=metadata))
    try:
        uploads = _image_parts(form)
        if len(uploads) > max_images:
            raise TooManyImages(f"{len(uploads)} images in one request; the limit is {max_images}", metadata=metadata)
        return [((u.filename or "")[:MAX_ID_CHARS], await u.read()) for u in uploads]
    finally:
        await form.close()


def _image_parts(form: FormData) -> list[UploadFile]:
    """The form's `image` parts; InvalidArgument when there is none, or one that is not a file."""
    uploads = form.getlist(IMAGE_FIELD)
    if not uploads or not all(isinstance(u, UploadFile) for u in uploads):
        raise InvalidArgument(f"the multipart body has no file part named `{IMAGE_FIELD}` (or one that is not a file)")
    return uploads


async def _form(request: Request, body: bytes, max_images: int, limit: int, too_many: GatewayError) -> FormData:
    """The multipart form in `body` (already read), with room for `max_images` images and
    MAX_OTHER_PARTS other files and fields; `too_many` is raised for more files than that."""
    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    # Without "app" in its scope, Starlette raises its own parse errors instead of a bare HTTP 400.
    scope = {key: value for key, value in request.scope.items() if key != "app"}
    try:
        return await Request(scope, replay).form(max_files=max_images + MAX_OTHER_PARTS, max_fields=MAX_OTHER_PARTS,
                                                 max_part_size=limit)
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise too_many from None
        raise InvalidArgument(f"the multipart body cannot be read: {exc.message}") from None


async def unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """Await `work` (after the body has been read), cancelling it if the client hangs up first:
    nobody would read the answer, so its place in a batch and its model server call are freed."""
    task = asyncio.ensure_future(work)
    left = asyncio.ensure_future(_disconnected(request.receive))
    try:
        done, _ = await asyncio.wait({task, left}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise ClientGone("the client closed the connection before the answer was ready")
    finally:
        task.cancel()
        left.cancel()


async def _disconnected(receive: Receive) -> None:
    """Returns when the server reports the client gone (ASGI: after the body, receive() waits for that)."""
    while (await receive())["type"] != "http.disconnect":
        pass
