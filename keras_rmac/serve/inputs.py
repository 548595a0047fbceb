"""Reading the requests of `keras-rmac serve`: bodies, fields, images.

Everything a request carries is checked here and refused with an
`ApiError` (a 4xx status and a reason) before it reaches the model.
"""

from __future__ import annotations

import base64
import binascii
import math
import tempfile

from keras_rmac.data import image_io
from keras_rmac.indexing.extract import decode_options

__all__ = [
    "ApiError",
    "decode_upload",
    "from_base64",
    "integer",
    "options",
    "read_body",
    "replay",
]


class ApiError(Exception):
    """An answer with a 4xx/5xx status and a reason."""

    def __init__(self, status: int, reason: str, headers=None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


def integer(value, name: str, low: int, high: int) -> int:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        raise ApiError(
            400, f"`{name}` must be an integer; received {value!r}"
        ) from None
    if not low <= number <= high:
        raise ApiError(
            400, f"`{name}` must be in [{low}, {high}]; received {number}"
        )
    return number


def options(fields, max_k: int) -> dict:
    """`k`, `qe` and `alpha` from request fields, checked."""
    options = {
        "k": integer(fields.get("k", 10), "k", 1, max_k),
        "qe": integer(fields.get("qe", 0), "qe", 0, max_k),
        "alpha": None,
    }
    alpha = fields.get("alpha")
    if alpha not in (None, ""):
        try:
            options["alpha"] = float(alpha)
        except (TypeError, ValueError):
            raise ApiError(
                400, f"`alpha` must be a number; received {alpha!r}"
            ) from None
        if not (math.isfinite(options["alpha"]) and options["alpha"] >= 0):
            raise ApiError(400, f"`alpha` must be >= 0; received {alpha!r}")
    return options


async def read_body(request, limit: int) -> bytes:
    """The request body, refused with 413 beyond `limit` bytes."""
    too_large = ApiError(413, f"request body over the limit of {limit} bytes")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def replay(body: bytes):
    """An ASGI `receive` that hands over `body` once."""
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def decode_upload(data: bytes, max_pixels: int, index=None):
    """Uploaded bytes -> RGB array, with `image_io`'s bad-file policy.

    With `index` (a `PhotoIndex`), the upload is decoded as its photos were:
    a JPEG above the index's `draft_above` declared pixels at reduced
    scale, so only the decoded size must fit `max_pixels`.
    """
    if not data:
        raise ApiError(400, "empty upload: no image bytes")
    with tempfile.NamedTemporaryFile(suffix=".upload") as f:
        f.write(data)
        f.flush()
        try:
            if index is None:
                return image_io.load_image(f.name, max_pixels)
            return image_io.load_image(
                f.name,
                **decode_options(
                    index.max_size, index.scales, max_pixels, index.draft_above
                ),
            )
        except image_io.ImageError as err:
            raise ApiError(400, f"not a usable image: {err.reason}") from None


def from_base64(text) -> bytes:
    if not isinstance(text, str):
        raise ApiError(400, "`image` must be a base64 string")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "`image` is not valid base64") from None
