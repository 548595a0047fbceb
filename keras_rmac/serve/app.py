"""The HTTP side of `keras-rmac serve`: a Starlette application.

Routes (all answers JSON except the page and the thumbnails; every error
is `{"error": REASON}` with a 4xx status, 503 only when the query queue
is full):

- `GET /`: the search page (one self-contained HTML file).
- `POST /api/search`: search by image. The body is a multipart form with
  an `image` file field, JSON `{"image": BASE64}` (a `data:` URL works
  too) or `{"id": N, "version": V}`, or the raw image bytes
  (`Content-Type: image/...`). Options `k`, `qe`, `alpha` as form or JSON
  fields or query parameters.
- `GET /api/photos/{id}/similar`: "more like this" for an indexed photo.
- `GET /api/photos/{id}/thumbnail`: a JPEG thumbnail of an indexed photo.
  Both take `version=` (the version whose id it is; default: current).
- `GET /api/health`, `GET /api/stats`.

Safety: the only files read are the photos recorded in the index, chosen
by integer id (a request string never becomes a path), and only when
their real location is inside the indexed folder; uploads are read up to
`max_upload_bytes` and decoded by `keras_rmac.data.image_io` (header
checked against `max_pixels` before decoding); with a token, every
request must carry it (`Authorization: Bearer TOKEN` or `?token=TOKEN`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import dataclasses
import hmac
import importlib.resources
import io
import json
import math
import tempfile
import threading
import time

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.responses import JSONResponse
from starlette.responses import Response
from starlette.routing import Route

from keras_rmac.data import image_io
from keras_rmac.display import display_path
from keras_rmac.serve.engine import EngineBusy
from keras_rmac.serve.engine import PhotoNotFound
from keras_rmac.serve.stats import RequestStats

__all__ = ["ServeConfig", "create_app"]


@dataclasses.dataclass
class ServeConfig:
    """How the service treats requests.

    Attributes:
        token: str or None. When set, every request must carry it.
        max_upload_bytes: int. Largest accepted request body.
        max_pixels: int. Largest accepted declared width x height of an
            uploaded image (`keras_rmac.data.image_io.load_image`).
        max_k: int. Largest `k` and `qe` a query may ask for.
        thumbnail_size: int. Longest side of a thumbnail, in pixels.
        thumbnail_cache: int. Thumbnails kept in memory.
    """

    token: str | None = None
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = image_io.DEFAULT_MAX_PIXELS
    max_k: int = 100
    thumbnail_size: int = 256
    thumbnail_cache: int = 1024


class ApiError(Exception):
    """An answer with a 4xx/5xx status and a reason."""

    def __init__(self, status: int, reason: str, headers=None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers


class _Json(JSONResponse):
    """JSON with every non-ASCII character escaped: paths that are not
    valid UTF-8 (surrogate escapes) stay representable."""

    def render(self, content) -> bytes:
        return json.dumps(
            content, ensure_ascii=True, allow_nan=False, separators=(",", ":")
        ).encode("ascii")


def _error(status: int, reason: str, headers=None) -> Response:
    return _Json({"error": reason}, status_code=status, headers=headers)


def _route_name(path: str) -> str:
    """The stats name of a request path (never the raw path)."""
    if path.startswith("/api/photos/"):
        tail = path.rsplit("/", 1)[-1]
        return tail if tail in ("similar", "thumbnail") else "other"
    names = {"/": "page", "/api/search": "search"}
    names.update({"/api/health": "health", "/api/stats": "stats"})
    return names.get(path, "other")


class _Gate:
    """ASGI middleware: the token check, and the request statistics."""

    def __init__(self, app, token: str | None, stats: RequestStats):
        self.app = app
        self.token = token.encode() if token else None
        self.stats = stats

    def _allowed(self, scope) -> bool:
        if self.token is None:
            return True
        auth = Headers(scope=scope).get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        else:
            query = QueryParams(scope.get("query_string", b"").decode())
            given = query.get("token", "")
        return hmac.compare_digest(given.encode(), self.token)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = [500]

        async def counted_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self._allowed(scope):
                await self.app(scope, receive, counted_send)
            else:
                reason = "missing or wrong token (Authorization: Bearer ...)"
                await _error(401, reason)(scope, receive, counted_send)
        finally:
            self.stats.record(
                _route_name(scope["path"]),
                status[0],
                time.perf_counter() - started,
            )


def _int(value, name: str, low: int, high: int) -> int:
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


def _options(fields, max_k: int) -> dict:
    """`k`, `qe` and `alpha` from request fields, checked."""
    options = {
        "k": _int(fields.get("k", 10), "k", 1, max_k),
        "qe": _int(fields.get("qe", 0), "qe", 0, max_k),
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


async def _read_body(request: Request, limit: int) -> bytes:
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


def _replay(body: bytes):
    """An ASGI `receive` that hands over `body` once."""
    sent = False

    async def receive():
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _decode(data: bytes, max_pixels: int):
    """Uploaded bytes -> RGB array, with `image_io`'s bad-file policy."""
    if not data:
        raise ApiError(400, "empty upload: no image bytes")
    with tempfile.NamedTemporaryFile(suffix=".upload") as f:
        f.write(data)
        f.flush()
        try:
            return image_io.load_image(f.name, max_pixels)
        except image_io.ImageError as err:
            raise ApiError(400, f"not a usable image: {err.reason}") from None


def _base64(text) -> bytes:
    if not isinstance(text, str):
        raise ApiError(400, "`image` must be a base64 string")
    if text.startswith("data:"):
        text = text.partition(",")[2]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "`image` is not valid base64") from None


def _page() -> str:
    source = importlib.resources.files("keras_rmac.serve") / "page.html"
    return source.read_text(encoding="utf-8")


class _Thumbnails:
    """JPEG thumbnails of indexed photos, an LRU cache by (version, id)."""

    def __init__(self, size: int, capacity: int, max_pixels: int):
        self.size, self.capacity, self.max_pixels = size, capacity, max_pixels
        self._cache = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, full_path: str) -> bytes:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        from PIL import Image

        try:
            array = image_io.load_image(full_path, self.max_pixels)
        except image_io.ImageError as err:
            raise ApiError(
                404, f"photo {key[1]} cannot be read now: {err.reason}"
            ) from None
        image = Image.fromarray(array)
        image.thumbnail((self.size, self.size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        data = buffer.getvalue()
        with self._lock:
            self._cache[key] = data
            while len(self._cache) > self.capacity:
                self._cache.popitem(last=False)
        return data


def create_app(engine, config: ServeConfig | None = None, close_engine=True):
    """The Starlette application serving `engine`.

    Args:
        engine: `keras_rmac.serve.SearchEngine`. The index to serve.
        config: `ServeConfig` or None (the defaults).
        close_engine: bool. Close the engine when the application shuts
            down. Defaults to True.

    Returns:
        An ASGI application (run it with uvicorn, or test it with
        `starlette.testclient.TestClient`).
    """
    config = config or ServeConfig()
    stats = RequestStats()
    thumbnails = _Thumbnails(
        config.thumbnail_size, config.thumbnail_cache, config.max_pixels
    )
    page = _page()

    async def on_model(fn, *args, **kwargs):
        try:
            future = engine.submit(lambda: fn(*args, **kwargs))
        except EngineBusy as exc:
            raise ApiError(503, str(exc), {"Retry-After": "1"}) from None
        try:
            return await asyncio.wrap_future(future)
        except PhotoNotFound as exc:
            raise ApiError(404, str(exc)) from None
        except ValueError as exc:  # e.g. qe on a compact index
            raise ApiError(400, str(exc)) from None

    def answer(version, hits, query, options, started):
        snap = engine.retained(version)
        return _Json(
            {
                "version": version,
                "photos": len(snap),
                "query": query,
                **options,
                "took_ms": round((time.perf_counter() - started) * 1000, 2),
                "results": [
                    {
                        "rank": h.rank,
                        "id": h.id,
                        "score": h.score,
                        "path": h.path,
                        "name": display_path(h.relative),
                        "thumbnail": f"/api/photos/{h.id}/thumbnail"
                        f"?version={version}",
                    }
                    for h in hits
                ],
            }
        )

    def photo_version(request):
        value = request.query_params.get("version")
        if value in (None, ""):
            return None
        return _int(value, "version", 0, 2**62)

    async def search(request: Request):
        started = time.perf_counter()
        ctype = request.headers.get("content-type", "").split(";")[0]
        ctype = ctype.strip().lower()
        fields = dict(request.query_params)
        body = await _read_body(request, config.max_upload_bytes)
        data = None
        if ctype == "multipart/form-data":
            replay = Request(request.scope, _replay(body))
            try:
                form = await replay.form(max_files=1, max_fields=16)
            except (HTTPException, ValueError, KeyError) as exc:
                detail = getattr(exc, "detail", exc)
                raise ApiError(400, f"bad multipart form: {detail}") from None
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise ApiError(400, "the form needs an `image` file field")
            data = await upload.read()
            fields.update((k, v) for k, v in form.items() if k != "image")
        elif ctype == "application/json":
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                raise ApiError(400, "the body is not valid JSON") from None
            if not isinstance(payload, dict):
                raise ApiError(400, "the JSON body must be an object")
            fields.update(payload)
            if "id" in payload:
                return await similar_to(
                    _int(payload["id"], "id", 0, 2**62),
                    payload.get("version"),
                    fields,
                    started,
                )
            if "image" not in payload:
                raise ApiError(400, "the JSON body needs `image` or `id`")
            data = _base64(payload["image"])
        elif ctype.startswith("image/") or ctype == "application/octet-stream":
            data = body
        else:
            raise ApiError(
                415,
                f"unsupported content type {ctype or 'none'!r}: send "
                "multipart/form-data, application/json or image/*",
            )
        options = _options(fields, config.max_k)
        image = await run_in_threadpool(_decode, data, config.max_pixels)
        version, hits = await on_model(engine.search_image, image, **options)
        return answer(version, hits, {"upload": True}, options, started)

    async def similar_to(photo_id, version, fields, started):
        if version not in (None, ""):
            version = _int(version, "version", 0, 2**62)
        else:
            version = None
        options = _options(fields, config.max_k)
        found, hits = await on_model(
            engine.search_id, photo_id, version, **options
        )
        query = {"id": photo_id, "version": version}
        return answer(found, hits, query, options, started)

    async def similar(request: Request):
        started = time.perf_counter()
        fields = dict(request.query_params)
        return await similar_to(
            request.path_params["photo_id"],
            fields.pop("version", None),
            fields,
            started,
        )

    async def thumbnail(request: Request):
        photo_id = request.path_params["photo_id"]
        try:
            snap, _, full = engine.photo(photo_id, photo_version(request))
        except PhotoNotFound as exc:
            raise ApiError(404, str(exc)) from None
        data = await run_in_threadpool(
            thumbnails.get, (snap.version, photo_id), full
        )
        return Response(
            data,
            media_type="image/jpeg",
            headers={"Cache-Control": "private, max-age=86400"},
        )

    async def health(request: Request):
        snap = engine.snapshot
        return _Json(
            {"status": "ok", "version": snap.version, "photos": len(snap)}
        )

    async def stats_endpoint(request: Request):
        snap = engine.snapshot
        index = snap.index
        return _Json(
            {
                "uptime_s": round(time.time() - engine.started_at, 1),
                "index": {
                    "directory": display_path(engine.index_dir),
                    "version": snap.version,
                    "photos": len(snap),
                    "dimension": index.dimension,
                    "fingerprint": index.fingerprint,
                    "operating_point": index.index.metadata.get("mode")
                    or index.index.kind,
                    "loaded_at": snap.loaded_at,
                    "reloads": engine.reloads,
                    "last_reload_error": engine.last_reload_error,
                },
                "queue": {"waiting": engine.queued},
                "requests": stats.summary(),
            }
        )

    async def home(request: Request):
        return HTMLResponse(
            page, headers={"Content-Security-Policy": _PAGE_POLICY}
        )

    async def api_error(request, exc: ApiError):
        return _error(exc.status, exc.reason, exc.headers)

    async def http_error(request, exc: HTTPException):
        reason = {404: "no such resource", 405: "method not allowed"}.get(
            exc.status_code, str(exc.detail)
        )
        return _error(exc.status_code, reason)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if close_engine:
            await run_in_threadpool(engine.close)

    routes = [
        Route("/", home),
        Route("/api/search", search, methods=["POST"]),
        Route("/api/photos/{photo_id:int}/similar", similar),
        Route("/api/photos/{photo_id:int}/thumbnail", thumbnail),
        Route("/api/health", health),
        Route("/api/stats", stats_endpoint),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={ApiError: api_error, HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.stats = stats
    return _Gate(app, config.token, stats)


_PAGE_POLICY = (
    "default-src 'none'; img-src 'self' blob: data:; "
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'"
)
"""The page may load nothing from elsewhere (it must work offline)."""
