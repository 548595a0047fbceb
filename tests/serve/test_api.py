"""The JSON API in-process: searches, thumbnails, health, stats, errors."""

import base64
import io

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from keras_rmac import indexing
from keras_rmac.serve import SearchEngine
from keras_rmac.serve import ServeConfig
from keras_rmac.serve import create_app
from tests.cli import photos
from tests.serve.conftest import PHOTOS
from tests.serve.conftest import photo_name
from tests.serve.conftest import png_bytes


@pytest.fixture(scope="module")
def engine(built_index):
    engine = SearchEngine(built_index[1], poll_interval=0)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference(built_index):
    return indexing.PhotoIndex(built_index[1])


@pytest.fixture(scope="module")
def client(engine):
    config = ServeConfig(max_upload_bytes=200_000, max_pixels=4_000_000)
    app = create_app(engine, config, close_engine=False)
    with TestClient(app) as client:
        yield client


def _pairs(answer):
    return [(r["path"], round(r["score"], 5)) for r in answer["results"]]


def _expected(reference, query, **options):
    hits = reference.search(query, **options)
    return [(h.path, round(h.score, 5)) for h in hits]


def test_upload_multipart_equals_photo_index(client, reference):
    query = photos.photo(3)
    answer = client.post(
        "/api/search",
        files={"image": ("q.png", png_bytes(query), "image/png")},
        data={"k": "5"},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["version"] == reference.version == 1
    assert body["k"] == 5 and len(body["results"]) == 5
    assert _pairs(body) == _expected(reference, query, k=5)
    first = body["results"][0]
    assert first["name"] == photo_name(3) and first["rank"] == 1
    assert first["score"] == pytest.approx(1.0, abs=1e-4)
    assert reference.paths[first["id"]] == photo_name(3)
    assert (
        first["thumbnail"] == f"/api/photos/{first['id']}/thumbnail?version=1"
    )


@pytest.mark.parametrize("data_url", [False, True])
def test_upload_base64_json_with_query_expansion(client, reference, data_url):
    query = photos.photo(5)
    text = base64.b64encode(png_bytes(query)).decode()
    if data_url:
        text = "data:image/png;base64," + text
    answer = client.post(
        "/api/search", json={"image": text, "k": 4, "qe": 2, "alpha": 3}
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["qe"], body["alpha"]) == (2, 3.0)
    assert _pairs(body) == _expected(reference, query, k=4, qe=2, alpha=3.0)


def test_raw_image_body_and_query_parameters(client, reference):
    query = photos.photo(7)
    answer = client.post(
        "/api/search?k=3",
        content=png_bytes(query),
        headers={"content-type": "image/png"},
    )
    assert answer.status_code == 200, answer.text
    assert _pairs(answer.json()) == _expected(reference, query, k=3)


def test_search_by_id_is_more_like_this(client, reference):
    i = reference.paths.index(photo_name(4))
    for answer in (
        client.get(f"/api/photos/{i}/similar?k=4&version=1"),
        client.post("/api/search", json={"id": i, "k": 4}),
    ):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["query"]["id"] == i
        got = [(r["path"], r["score"]) for r in body["results"]]
        want = reference.search(reference.path(i), k=4)
        assert [p for p, _ in got] == [h.path for h in want]
        np.testing.assert_allclose(
            [s for _, s in got], [h.score for h in want], atol=1e-5
        )
    with_qe = client.get(f"/api/photos/{i}/similar?k=4&qe=3").json()
    want = reference.search(reference.path(i), k=4, qe=3)
    assert [r["path"] for r in with_qe["results"]] == [h.path for h in want]


def test_thumbnail_by_id(client, reference):
    i = reference.paths.index(photo_name(2))
    answer = client.get(f"/api/photos/{i}/thumbnail?version=1")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(answer.content))
    assert image.size == (64, 48)
    pixels = np.asarray(image.convert("RGB"), np.float32)
    assert np.abs(pixels - photos.photo(2)).mean() < 8  # The right photo.


def test_health_and_stats(client, engine, reference):
    health = client.get("/api/health").json()
    assert health == {"status": "ok", "version": 1, "photos": PHOTOS}
    client.get("/api/photos/0/similar")
    stats = client.get("/api/stats").json()
    index = stats["index"]
    assert index["photos"] == PHOTOS and index["version"] == 1
    assert index["fingerprint"] == reference.fingerprint
    assert index["operating_point"] == "exact"
    assert index["dimension"] == reference.dimension
    assert stats["uptime_s"] >= 0
    similar = stats["requests"]["similar"]
    assert similar["count"] >= 1 and similar["by_status"]["200"] >= 1
    assert similar["p50_ms"] <= similar["p95_ms"]


def test_page_is_self_contained(client):
    answer = client.get("/")
    assert answer.status_code == 200
    html = answer.text
    assert "<script>" in html and "<style>" in html
    for external in ("http://", "https://", 'src="//', "@import", "<link"):
        # Only the placeholder text of the paste field names an address.
        assert html.count(external) == (1 if external == "http://" else 0)
    assert "default-src 'none'" in answer.headers["content-security-policy"]


def _truncated_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(photos.photo(20)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    return data[: len(data) // 2]


@pytest.mark.parametrize(
    "files, status, reason",
    [
        (
            {"image": ("a.txt", b"shopping list: eggs\n" * 9, "text/plain")},
            400,
            "text",
        ),
        (
            {"image": ("t.jpg", _truncated_jpeg(), "image/jpeg")},
            400,
            "truncated",
        ),
        (
            {"image": ("b.png", photos.bomb_png(), "image/png")},
            400,
            "too large",
        ),
        ({"image": ("e.png", b"", "image/png")}, 400, "empty"),
        (
            {
                "image": (
                    "d.png",
                    png_bytes(np.zeros((2, 2, 3), np.uint8)),
                    "image/png",
                )
            },
            400,
            "too small",
        ),
        (
            {"image": ("big.bin", b"\0" * 300_000, "image/png")},
            413,
            "over the limit",
        ),
        ({"other": ("q.png", b"x", "image/png")}, 400, "`image` file field"),
    ],
)
def test_bad_uploads_get_4xx_with_a_reason(client, files, status, reason):
    answer = client.post("/api/search", files=files)
    assert answer.status_code == status, answer.text
    assert reason in answer.json()["error"]
    assert client.get("/api/health").json()["status"] == "ok"


@pytest.mark.parametrize(
    "kwargs, status, reason",
    [
        (dict(json={"image": "not base64!!"}), 400, "base64"),
        (dict(json=[1, 2]), 400, "object"),
        (dict(json={"k": 3}), 400, "`image` or `id`"),
        (
            dict(
                content=b"{oops", headers={"content-type": "application/json"}
            ),
            400,
            "not valid JSON",
        ),
        (
            dict(content=b"hello", headers={"content-type": "text/plain"}),
            415,
            "unsupported content type",
        ),
        (dict(json={"id": 0, "k": 0}), 400, "`k` must be in"),
        (dict(json={"id": 0, "k": "ten"}), 400, "`k` must be an integer"),
        (dict(json={"id": 0, "qe": -1}), 400, "`qe` must be in"),
        (dict(json={"id": 0, "alpha": "x"}), 400, "`alpha` must be a number"),
        (dict(json={"id": 0, "version": 99}), 404, "not served"),
        (dict(json={"id": -1}), 400, "`id` must be in"),
        (dict(json={"id": PHOTOS}), 404, "no photo with id"),
    ],
)
def test_bad_requests_get_4xx_with_a_reason(client, kwargs, status, reason):
    answer = client.post("/api/search", **kwargs)
    assert answer.status_code == status, answer.text
    assert reason in answer.json()["error"]


def test_upload_limit_is_checked_on_the_stream(client):
    def chunks():
        for _ in range(40):
            yield b"\0" * 10_000  # No content-length: streamed.

    answer = client.post(
        "/api/search", content=chunks(), headers={"content-type": "image/png"}
    )
    assert answer.status_code == 413
