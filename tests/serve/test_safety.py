"""No request reads a file the index does not record; the token gate."""

import http.client
import os
import urllib.parse

import pytest
from starlette.testclient import TestClient

from keras_rmac import indexing
from keras_rmac.data import image_io
from keras_rmac.serve import SearchEngine
from keras_rmac.serve import ServeConfig
from keras_rmac.serve import create_app
from tests.cli import photos
from tests.serve import server
from tests.serve.conftest import INDEX_KWARGS
from tests.serve.conftest import PHOTOS

SECRET = "TOP-SECRET"


@pytest.fixture(scope="module")
def engine(built_index):
    engine = SearchEngine(built_index[1], poll_interval=0)
    yield engine
    engine.close()


@pytest.fixture
def opened(monkeypatch):
    """Every path `image_io.load_image` is asked to open."""
    seen = []
    load = image_io.load_image

    def recording(path, *args, **kwargs):
        seen.append(os.path.realpath(path))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(image_io, "load_image", recording)
    return seen


def _raw_get(base: str, raw_path: str):
    """GET `raw_path` exactly as written (no client-side normalising)."""
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        conn.putrequest("GET", raw_path, skip_accept_encoding=True)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def _traversals(secret_path: str):
    quoted = urllib.parse.quote(secret_path, safe="")
    return [
        "/api/photos/../../secret.txt/thumbnail",
        "/api/photos/0/thumbnail/../../../../secret.txt",
        "/api/photos/..%2f..%2fsecret.txt/thumbnail",
        "/api/photos/%2e%2e%2f%2e%2e%2fsecret.txt/thumbnail",
        "/api/photos/%252e%252e%252f%252e%252e%252fsecret.txt/thumbnail",
        "/api/photos/%25252e%25252e%25252fsecret.txt/thumbnail",
        "/api/photos//etc/passwd/thumbnail",
        "/api/photos/%2Fetc%2Fpasswd/thumbnail",
        f"/api/photos/{secret_path}/thumbnail",
        f"/api/photos/{quoted}/thumbnail",
        f"/api/photos/{quoted}/similar",
        "/api/photos/-1/thumbnail",
        f"/api/photos/{PHOTOS}/thumbnail",
        "/api/photos/99999999999999999999999/thumbnail",
        "/api/photos/1e3/thumbnail",
        "/api/photos/0x1/thumbnail",
        "/api/photos/0/thumbnail?version=..%2f..%2fsecret.txt",
        "/api/photos/0/thumbnail?version=-1",
        "/api/photos/0/thumbnail?version=7",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/%252e%252e/secret.txt",
        "/api/../../secret.txt",
        "/static/../../secret.txt",
        f"/{quoted}",
        "/etc/passwd",
    ]


def test_traversal_and_out_of_range_requests_read_nothing(
    built_index, engine, opened
):
    folder, _ = built_index
    secret = str(folder.parent / "secret.txt")
    app = create_app(engine, close_engine=False)
    with server.running(app) as base:
        for raw in _traversals(secret):
            status, body = _raw_get(base, raw)
            assert 400 <= status < 500, (raw, status, body[:200])
            assert SECRET.encode() not in body and b"root:" not in body
        # An unknown parameter never names a file either.
        status, body = _raw_get(base, "/api/photos/1/thumbnail?path=" + secret)
        assert status == 200 and body[:2] == b"\xff\xd8"
    inside = os.path.realpath(folder)
    assert opened, "the thumbnail above was read through image_io"
    for path in opened:
        assert os.path.commonpath([path, inside]) == inside, path


def test_a_link_out_of_the_folder_is_not_served(tmp_path, tiny_model, opened):
    folder = tmp_path / "photos"
    photos.save(folder / "inside.png", photos.photo(1))
    outside = photos.save(tmp_path / "private" / "outside.png", photos.photo(2))
    os.symlink(outside, folder / "link.png")
    index_dir = tmp_path / "index"
    indexing.index_folder(folder, index_dir, model=tiny_model, **INDEX_KWARGS)
    engine = SearchEngine(index_dir, poll_interval=0)
    paths = engine.snapshot.paths
    assert sorted(paths) == ["inside.png", "link.png"]
    opened.clear()  # The indexer read the link; the service must not.
    with TestClient(create_app(engine)) as client:
        linked = client.get(f"/api/photos/{paths.index('link.png')}/thumbnail")
        assert linked.status_code == 404
        assert "outside the indexed folder" in linked.json()["error"]
        ok = client.get(f"/api/photos/{paths.index('inside.png')}/thumbnail")
        assert ok.status_code == 200
    assert str(outside) not in opened


def test_a_token_is_required_on_every_request(engine):
    app = create_app(engine, ServeConfig(token="s3cret"), close_engine=False)
    with TestClient(app) as client:
        for path in (
            "/",
            "/api/health",
            "/api/stats",
            "/api/photos/0/similar",
            "/api/photos/0/thumbnail",
        ):
            refused = client.get(path)
            assert refused.status_code == 401, path
            assert "token" in refused.json()["error"]
            wrong = client.get(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            assert client.get(path + "?token=s3cretX").status_code == 401
            good = client.get(path, headers={"Authorization": "Bearer s3cret"})
            assert good.status_code == 200, path
            assert client.get(path + "?token=s3cret").status_code == 200
        upload = client.post("/api/search", json={"id": 0})
        assert upload.status_code == 401
