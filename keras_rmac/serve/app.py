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
import collections
import contextlib
import dataclasses
import hmac
import importlib.resources
import io
import json
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
from keras_rmac.serve import inputs
from keras_rmac.serve.engine import EngineBusy
from keras_rmac.serve.engine import PhotoNotFound
from keras_rmac.serve.inputs import ApiError
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


class _Service:
    """The endpoints, around one engine."""

    def __init__(self, engine, config: ServeConfig, stats: RequestStats):
        self.engine = engine
        self.config = config
        self.stats = stats
        self.thumbnails = _Thumbnails(
            config.thumbnail_size, config.thumbnail_cache, config.max_pixels
        )
        self.page = _page()

    async def on_model(self, fn, *args, **kwargs):
        """`fn(*args, **kwargs)` on the engine's model thread, awaited."""
        return await self._awaited(
            lambda: self.engine.submit(lambda: fn(*args, **kwargs))
        )

    async def _awaited(self, submit):
        """The result of the engine future `submit()` returns, with the
        engine's errors as API errors."""
        try:
            future = submit()
        except EngineBusy as exc:
            raise ApiError(503, str(exc), {"Retry-After": "1"}) from None
        try:
            return await asyncio.wrap_future(future)
        except PhotoNotFound as exc:
            raise ApiError(404, str(exc)) from None
        except ValueError as exc:  # e.g. qe on a compact index
            raise ApiError(400, str(exc)) from None

    def answer(self, version, hits, query, options, started):
        snap = self.engine.retained(version)
        results = [
            {
                "rank": h.rank,
                "id": h.id,
                "score": h.score,
                "path": h.path,
                "name": display_path(h.relative),
                "thumbnail": f"/api/photos/{h.id}/thumbnail?version={version}",
            }
            for h in hits
        ]
        took = round((time.perf_counter() - started) * 1000, 2)
        return _Json(
            {
                "version": version,
                "photos": len(snap),
                "query": query,
                **options,
                "took_ms": took,
                "results": results,
            }
        )

    async def _body_query(self, request, ctype, fields):
        """The uploaded image bytes, or `{"id": ...}` from a JSON body."""
        body = await inputs.read_body(request, self.config.max_upload_bytes)
        if ctype == "multipart/form-data":
            form_request = Request(request.scope, inputs.replay(body))
            try:
                form = await form_request.form(max_files=1, max_fields=16)
            except (HTTPException, ValueError, KeyError) as exc:
                detail = getattr(exc, "detail", exc)
                raise ApiError(400, f"bad multipart form: {detail}") from None
            try:
                upload = form.get("image")
                if upload is None or isinstance(upload, str):
                    raise ApiError(400, "the form needs an `image` file field")
                fields.update((k, v) for k, v in form.items() if k != "image")
                return await upload.read()
            finally:
                await form.close()  # The spooled temporary files.
        if ctype == "application/json":
            try:
                payload = json.loads(body)
            except (ValueError, UnicodeDecodeError):
                raise ApiError(400, "the body is not valid JSON") from None
            if not isinstance(payload, dict):
                raise ApiError(400, "the JSON body must be an object")
            fields.update(payload)
            if "id" in payload:
                return {"id": inputs.integer(payload["id"], "id", 0, _BIG)}
            if "image" not in payload:
                raise ApiError(400, "the JSON body needs `image` or `id`")
            return inputs.from_base64(payload["image"])
        if ctype.startswith("image/") or ctype == "application/octet-stream":
            return body
        raise ApiError(
            415,
            f"unsupported content type {ctype or 'none'!r}: send "
            "multipart/form-data, application/json or image/*",
        )

    async def search(self, request: Request):
        started = time.perf_counter()
        ctype = request.headers.get("content-type", "").split(";")[0]
        fields = dict(request.query_params)
        data = await self._body_query(request, ctype.strip().lower(), fields)
        if isinstance(data, dict):
            version = fields.get("version")
            return await self._similar(data["id"], version, fields, started)
        options = inputs.options(fields, self.config.max_k)
        image = await run_in_threadpool(
            inputs.decode_upload,
            data,
            self.config.max_pixels,
            self.engine.snapshot.index,
        )
        version, hits = await self._awaited(
            lambda: self.engine.submit_search(image, **options)
        )
        return self.answer(version, hits, {"upload": True}, options, started)

    async def _similar(self, photo_id, version, fields, started):
        if version in (None, ""):
            version = None
        else:
            version = inputs.integer(version, "version", 0, _BIG)
        options = inputs.options(fields, self.config.max_k)
        found, hits = await self.on_model(
            self.engine.search_id, photo_id, version, **options
        )
        query = {"id": photo_id, "version": version}
        return self.answer(found, hits, query, options, started)

    async def similar(self, request: Request):
        started = time.perf_counter()
        fields = dict(request.query_params)
        photo_id = request.path_params["photo_id"]
        version = fields.pop("version", None)
        return await self._similar(photo_id, version, fields, started)

    async def thumbnail(self, request: Request):
        photo_id = request.path_params["photo_id"]
        version = request.query_params.get("version")
        if version in (None, ""):
            version = None
        else:
            version = inputs.integer(version, "version", 0, _BIG)
        try:
            snap, _, full = self.engine.photo(photo_id, version)
        except PhotoNotFound as exc:
            raise ApiError(404, str(exc)) from None
        data = await run_in_threadpool(
            self.thumbnails.get, (snap.version, photo_id), full
        )
        return Response(
            data,
            media_type="image/jpeg",
            headers={"Cache-Control": "private, max-age=86400"},
        )

    async def health(self, request: Request):
        snap = self.engine.snapshot
        return _Json(
            {"status": "ok", "version": snap.version, "photos": len(snap)}
        )

    async def stats_page(self, request: Request):
        engine = self.engine
        snap = engine.snapshot
        index = snap.index
        searchable = index.index
        return _Json(
            {
                "uptime_s": round(time.time() - engine.started_at, 1),
                "index": {
                    "directory": display_path(engine.index_dir),
                    "version": snap.version,
                    "photos": len(snap),
                    "dimension": index.dimension,
                    "fingerprint": index.fingerprint,
                    "operating_point": searchable.metadata.get("mode")
                    or searchable.kind,
                    "loaded_at": snap.loaded_at,
                    "reloads": engine.reloads,
                    "last_reload_error": engine.last_reload_error,
                },
                "queue": {
                    "waiting": engine.queued,
                    "max_batch": engine.max_batch,
                    "image_batches": {
                        str(size): count
                        for size, count in sorted(engine.batches.items())
                    },
                },
                "requests": self.stats.summary(),
            }
        )

    async def home(self, request: Request):
        return HTMLResponse(
            self.page, headers={"Content-Security-Policy": _PAGE_POLICY}
        )


async def _api_error(request, exc: ApiError):
    return _error(exc.status, exc.reason, exc.headers)


async def _http_error(request, exc: HTTPException):
    reason = {404: "no such resource", 405: "method not allowed"}.get(
        exc.status_code, str(exc.detail)
    )
    return _error(exc.status_code, reason)


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
    service = _Service(engine, config, stats)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        if close_engine:
            await run_in_threadpool(engine.close)

    photo = "/api/photos/{photo_id:int}"
    routes = [
        Route("/", service.home),
        Route("/api/search", service.search, methods=["POST"]),
        Route(photo + "/similar", service.similar),
        Route(photo + "/thumbnail", service.thumbnail),
        Route("/api/health", service.health),
        Route("/api/stats", service.stats_page),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error},
        lifespan=lifespan,
    )
    app.state.engine = engine
    return _Gate(app, config.token, stats)


_BIG = 2**62
"""Largest id or version number a request may name."""

_PAGE_POLICY = (
    "default-src 'none'; img-src 'self' blob: data:; "
    "style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'"
)
"""The page may load nothing from elsewhere (it must work offline)."""
