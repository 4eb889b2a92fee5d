"""Model names -> files: cache, download from a local HTTP server (never the internet), errors."""

import hashlib
import http.server
import threading

import pytest

from qwhisper import models
from qwhisper.errors import QWhisperError
from qwhisper.ggml_file import read_ggml

from test_ggml_file import write_small


class _Handler(http.server.BaseHTTPRequestHandler):
    files: dict = {}  # path -> (status, body, extra headers)

    def do_GET(self):  # noqa: N802
        status, body, headers = self.files.get(self.path, (404, b"not found", {}))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _Handler.files = {}
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler.files
    httpd.shutdown()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QWHISPER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def model_bytes(tmp_path_factory):
    return write_small(tmp_path_factory.mktemp("m") / "small.bin").read_bytes()


def test_download_verifies_and_lands_atomically(server, cache, model_bytes, monkeypatch):
    url, files = server
    sha256 = hashlib.sha256(model_bytes).hexdigest()
    files["/ggml-large-v3-turbo.bin"] = (200, model_bytes, {"X-Linked-Etag": f'"{sha256}"'})
    monkeypatch.setenv("QWHISPER_DOWNLOAD_URL", url)
    path = models.resolve_model("large-v3-turbo")
    assert path == cache / "ggml-large-v3-turbo.bin" and path.read_bytes() == model_bytes
    assert sorted(p.name for p in cache.iterdir()) == ["ggml-large-v3-turbo.bin"]  # no .part left
    files.clear()  # second call is a cache hit: the server is not asked again
    assert models.resolve_model("large-v3-turbo") == path
    read_ggml(path)


@pytest.mark.parametrize("status, body, headers, match", [
    (404, b"nope", {}, "HTTP 404"),
    (200, b"<html>rate limited</html>", {}, "not a valid model"),
    (200, None, {"X-Linked-Etag": "0" * 64}, "SHA-256"),
])
def test_download_failures_leave_cache_clean(server, cache, model_bytes, status, body, headers, match):
    url, files = server
    files["/ggml-medium-q5_0.bin"] = (status, model_bytes if body is None else body, headers)
    with pytest.raises(QWhisperError, match=match):
        models.download_model("medium-q5_0", cache / "ggml-medium-q5_0.bin", base_url=url)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_known_sha1_is_enforced(server, cache, model_bytes):
    url, files = server
    files["/ggml-base.en.bin"] = (200, model_bytes, {})  # not the published base.en bytes
    with pytest.raises(QWhisperError, match="SHA-1"):
        models.download_model("base.en", cache / "ggml-base.en.bin", base_url=url)


def test_offline_error_is_clear(cache, monkeypatch):
    monkeypatch.setenv("QWHISPER_DOWNLOAD_URL", "http://127.0.0.1:9")  # discard port: refused
    with pytest.raises(QWhisperError, match="download failed.*offline"):
        models.resolve_model("small.en")


def test_names_and_paths(tmp_path, cache):
    assert models.parse_model_name("base-q5_1") == ("base", "q5_1")
    assert models.parse_model_name("large-v3-turbo") == ("large-v3-turbo", None)
    for bad in ("huge", "base-q3_k", "tiny.en-q5_1-q8_0"):
        with pytest.raises(QWhisperError, match="unknown model"):
            models.parse_model_name(bad)
    with pytest.raises(QWhisperError, match="not found"):
        models.resolve_model(str(tmp_path / "missing.bin"))
    f = write_small(tmp_path / "local.bin")
    assert models.resolve_model(str(f)) == f


def test_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("QWHISPER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert models.cache_dir() == tmp_path / "qwhisper"
