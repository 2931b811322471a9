import hashlib
import http.server
import threading

import pytest

from superlens.data.download import download
from superlens.errors import UserError

PAYLOAD = bytes(range(256)) * 4000


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path and honours 'Range: bytes=N-' as a real file server does."""

    requests: list[str | None] = []

    def do_GET(self):
        rng = self.headers.get("Range")
        RangeHandler.requests.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        body = PAYLOAD[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    RangeHandler.requests = []
    yield f"http://127.0.0.1:{httpd.server_port}/file.bin"
    httpd.shutdown()


def test_download_verifies_checksum(server, tmp_path):
    md5 = hashlib.md5(PAYLOAD).hexdigest()
    dest = download(server, tmp_path / "file.bin", md5, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "file.bin.part").exists()
    download(server, dest, md5, progress=False)  # present and valid: no new request
    assert RangeHandler.requests == [None]


def test_download_resumes_from_partial_file(server, tmp_path):
    (tmp_path / "file.bin.part").write_bytes(PAYLOAD[:1000])
    dest = download(server, tmp_path / "file.bin", hashlib.md5(PAYLOAD).hexdigest(), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert RangeHandler.requests == ["bytes=1000-"]


def test_bad_checksum_leaves_no_file(server, tmp_path):
    with pytest.raises(UserError, match="wrong md5 checksum and was deleted"):
        download(server, tmp_path / "file.bin", "0" * 32, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_unreachable_url_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="could not download"):
        download("http://127.0.0.1:9/none.bin", tmp_path / "x.bin", "0" * 32, progress=False)
    assert not (tmp_path / "x.bin").exists()
