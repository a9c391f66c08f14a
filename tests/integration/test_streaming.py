"""`url` and `kaggle` sources against real HTTP servers on 127.0.0.1 (no internet).

A Range server serves a two-stage archive built from the bundled sample and counts the bytes it
sends; a Kaggle stand-in answers the real kaggle client's dataset-download request with a
redirect to it (the client reaches it as an HTTP proxy for KAGGLE_API_ENVIRONMENT=LOCALHOST).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import itertools
import json
import logging
import re
import socket
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

from imgae_dx_jax.config import load_config
from imgae_dx_jax.data import DataError, load_splits
from imgae_dx_jax.data.archive import ZipStore
from imgae_dx_jax.data.http import download
from imgae_dx_jax.data.pipeline import ImageSource, SkipLog, eval_dataset
from imgae_dx_jax.data.stores import sample_archive_path

STAGE2 = 400  # images moved to images_002


def two_stage_archive() -> bytes:
    """The sample with its last STAGE2 images in images_002 and a CSV trimmed to its rows."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(sample_archive_path()) as src, zipfile.ZipFile(buffer, "w") as out:
        pngs = sorted(n for n in src.namelist() if n.endswith(".png"))
        keys = {n.rsplit("/", 1)[1] for n in pngs}
        lines = src.read("Data_Entry_2017.csv").decode().splitlines(keepends=True)
        rows = [line for line in lines[1:] if line.split(",", 1)[0] in keys]
        out.writestr("Data_Entry_2017.csv", "".join(lines[:1] + rows), zipfile.ZIP_DEFLATED)
        out.writestr("BBox_List_2017.csv", src.read("BBox_List_2017.csv"), zipfile.ZIP_DEFLATED)
        for i, name in enumerate(pngs):
            target = name if i < len(pngs) - STAGE2 else name.replace("images_001", "images_002")
            out.writestr(target, src.read(name))
    return buffer.getvalue()


class ArchiveServer:
    """Serves one file with (optional) Range support; counts bytes; can misbehave on purpose."""

    def __init__(self, data: bytes, *, ranges: bool = True) -> None:
        self.data = data
        self.ranges = ranges
        self.sent = 0
        self.drop_next_after = 0  # drop the next response bigger than this, halfway through
        self.expire_after: int | None = None  # the first signature expires after n requests
        self.requests: dict[str, int] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                if not self.path.startswith("/archive.zip"):
                    self.send_error(404)
                    return
                sig = re.search(r"sig=(\w+)", self.path)
                sig_name = sig.group(1) if sig else ""
                with server.lock:
                    n = server.requests[sig_name] = server.requests.get(sig_name, 0) + 1
                if server.expire_after is not None and sig_name == "1" and n > server.expire_after:
                    self.send_error(403, "Request has expired")
                    return
                start, end = 0, len(server.data)
                match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
                if server.ranges and match:
                    start = int(match.group(1))
                    end = int(match.group(2)) + 1 if match.group(2) else end
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(server.data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(end - start))
                self.send_header("Content-Type", "application/zip")
                self.end_headers()
                body = server.data[start:end]
                with server.lock:
                    drop = server.drop_next_after and len(body) > server.drop_next_after
                    if drop:
                        server.drop_next_after = 0
                if drop:
                    body = body[: len(body) // 2]
                try:
                    self.wfile.write(body)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return
                with server.lock:
                    server.sent += len(body)
                if drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/archive.zip"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class KaggleStandIn:
    """Answers DownloadDataset (reached as an HTTP proxy) with a redirect to a signed URL."""

    def __init__(self, archive: ArchiveServer, user: str, key: str) -> None:
        self.calls: list[dict[str, object]] = []
        expected = "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                if not self.path.endswith("/datasets.DatasetApiService/DownloadDataset"):
                    self.send_error(404)
                    return
                if self.headers.get("Authorization") != expected:
                    payload = json.dumps({"code": 401, "message": "Unauthenticated"}).encode()
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                stand_in.calls.append(body)
                self.send_response(302)
                self.send_header("Location", f"{archive.url}?sig={len(stand_in.calls)}")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                """Forward a proxied GET (requests follows the redirect through the proxy)."""
                target = urlsplit(self.path)
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=5)
                headers = {k: v for k, v in self.headers.items() if k.lower() == "range"}
                upstream.request("GET", f"{target.path}?{target.query}", headers=headers)
                response = upstream.getresponse()
                self.send_response(response.status)
                for name in ("Content-Length", "Content-Type", "Content-Range"):
                    if response.getheader(name):
                        self.send_header(name, response.getheader(name))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(response.read())
                upstream.close()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def archive_bytes() -> bytes:
    return two_stage_archive()


@pytest.fixture
def server(archive_bytes):
    served = ArchiveServer(archive_bytes)
    yield served
    served.close()


def _config(tmp_path: Path, source: str, path: str, *extra: str):
    return load_config(
        overrides=[
            f"data.source={source}",
            f"data.path={path}",
            "data.stages=[images_002]",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.timeout=5",
            *extra,
        ]
    )


def test_url_reads_the_directory_and_only_the_requested_stage(tmp_path, server, archive_bytes):
    store, catalog, splits = load_splits(_config(tmp_path, "url", server.url).data)
    assert len(catalog.records) == STAGE2 and {r.stage for r in catalog.records} == {"images_002"}
    with zipfile.ZipFile(io.BytesIO(archive_bytes)) as archive:
        infos = archive.infolist()
        directory = len(archive_bytes) - archive.start_dir
    ends = {a.filename: b.header_offset for a, b in itertools.pairwise(infos)}
    ends[infos[-1].filename] = len(archive_bytes) - directory
    needed = sum(
        ends[i.filename] - i.header_offset
        for i in infos
        if "images_002" in i.filename or i.filename.endswith(".csv")
    )
    assert server.sent <= 1.05 * needed + directory
    stage1 = sum(ends[i.filename] - i.header_offset for i in infos if "images_001" in i.filename)
    assert needed < stage1  # reading images_001 too would break the bound
    # Identical images to the local archive; the second run reads nothing but the directory.
    local = tmp_path / "archive.zip"
    local.write_bytes(archive_bytes)
    direct = ZipStore(local)
    source = ImageSource(splits.test, store, 64, SkipLog())
    batch = next(iter(eval_dataset(source, 8, 1)))
    expected = ImageSource(splits.test[:8], direct, 64, SkipLog())
    np.testing.assert_array_equal(
        batch["image"], np.stack([expected[i]["image"] for i in range(8)])
    )
    before = server.sent
    load_splits(_config(tmp_path, "url", server.url).data)
    csvs = sum(ends[i.filename] - i.header_offset for i in infos if i.filename.endswith(".csv"))
    assert server.sent - before <= directory + csvs + 1024


def test_url_without_range_support_downloads_into_the_cache(tmp_path, archive_bytes, caplog):
    plain = ArchiveServer(archive_bytes, ranges=False)
    try:
        with caplog.at_level(logging.WARNING, logger="imgae_dx_jax"):
            _, catalog, _ = load_splits(_config(tmp_path, "url", plain.url).data)
    finally:
        plain.close()
    assert "ignores HTTP Range requests" in caplog.text
    downloads = list((tmp_path / "cache" / "downloads").iterdir())
    assert [p.read_bytes() == archive_bytes for p in downloads] == [True]
    assert len(catalog.records) == STAGE2


def test_dropped_connection_mid_member_is_retried(tmp_path, server):
    server.drop_next_after = 50_000  # the first large coalesced read of the stage is cut
    store, _, splits = load_splits(_config(tmp_path, "url", server.url).data)
    assert server.drop_next_after == 0  # it happened
    source = ImageSource(splits.train, store, 64, SkipLog())
    assert sum(len(b["index"]) for b in eval_dataset(source, 64, 1)) == len(splits.train)


def test_url_errors_are_clear(tmp_path, server):
    with pytest.raises(DataError, match="HTTP 404"):
        load_splits(_config(tmp_path, "url", server.url.replace("archive", "nothing")).data)
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/archive.zip"
    with pytest.raises(DataError, match="failed 2 times"):
        load_splits(_config(tmp_path, "url", closed, "data.retries=1").data)


def _forget_kaggle_client() -> None:
    for module in [m for m in sys.modules if m == "kaggle" or m.startswith("kaggle.")]:
        del sys.modules[module]


@pytest.fixture(scope="module")
def kaggle_env(tmp_path_factory, archive_bytes):
    """Environment of the real kaggle client: temp HOME/config dir, stand-in reached as proxy."""
    home = tmp_path_factory.mktemp("home")
    archive = ArchiveServer(archive_bytes)
    stand_in = KaggleStandIn(archive, "tester", "secret-key")
    with pytest.MonkeyPatch.context() as mp:
        for name in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
            mp.delenv(name, raising=False)
        mp.setenv("HOME", str(home))
        mp.setenv("KAGGLE_CONFIG_DIR", str(home / ".kaggle"))
        mp.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
        mp.setenv("HTTP_PROXY", stand_in.proxy)
        mp.setenv("NO_PROXY", "127.0.0.1")
        # The client reads its environment when imported: import it afresh in this one (an
        # earlier test may have imported it elsewhere), and forget it again afterwards.
        _forget_kaggle_client()
        yield archive, stand_in, home
        _forget_kaggle_client()
    stand_in.close()
    archive.close()


@pytest.fixture
def kaggle_user(monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    monkeypatch.setenv("KAGGLE_KEY", "secret-key")


def test_kaggle_missing_credentials_names_the_three_ways(tmp_path, kaggle_env):
    with pytest.raises(DataError) as info:
        load_splits(_config(tmp_path, "kaggle", "").data)
    message = str(info.value)
    for way in ("KAGGLE_USERNAME", "KAGGLE_KEY", "kaggle.json", "KAGGLE_API_TOKEN", "Colab"):
        assert way in message


def test_kaggle_streams_the_stage_through_the_signed_url(tmp_path, kaggle_env, kaggle_user):
    _, stand_in, _ = kaggle_env
    calls = len(stand_in.calls)
    store, catalog, _ = load_splits(_config(tmp_path, "kaggle", "").data)
    assert stand_in.calls[calls:] == [{"ownerSlug": "nih-chest-xrays", "datasetSlug": "data"}]
    assert len(catalog.records) == STAGE2 and store.description == "kaggle nih-chest-xrays/data"
    assert len(list((tmp_path / "cache").glob("images_002-64px-*.npy"))) == 1


def test_kaggle_credentials_from_kaggle_json(tmp_path, kaggle_env):
    home = kaggle_env[2]
    config_file = home / ".kaggle" / "kaggle.json"
    config_file.parent.mkdir(exist_ok=True)
    config_file.write_text(json.dumps({"username": "tester", "key": "secret-key"}))
    config_file.chmod(0o600)
    try:
        _, catalog, _ = load_splits(_config(tmp_path, "kaggle", "nih-chest-xrays/data").data)
    finally:
        config_file.unlink()
    assert len(catalog.records) == STAGE2


def test_kaggle_wrong_key_is_refused_clearly(tmp_path, kaggle_env, monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    monkeypatch.setenv("KAGGLE_KEY", "wrong")
    with pytest.raises(DataError, match="HTTP 401: the credentials were refused"):
        load_splits(_config(tmp_path, "kaggle", "").data)


def test_kaggle_expired_url_is_requested_again(tmp_path, kaggle_env, kaggle_user):
    archive, stand_in, _ = kaggle_env
    archive.requests.clear()
    stand_in.calls.clear()
    archive.expire_after = 4  # the redirect, the probe and two directory reads, then 403
    try:
        _, catalog, splits = load_splits(_config(tmp_path, "kaggle", "").data)
    finally:
        archive.expire_after = None
    assert len(stand_in.calls) == 2 and archive.requests.get("2", 0) > 0
    assert len(catalog.records) == STAGE2 and len(splits.train) > 0


def test_kaggle_server_without_range_falls_back_to_a_download(
    tmp_path, kaggle_env, kaggle_user, caplog
):
    archive, _, _ = kaggle_env
    archive.ranges = False
    try:
        with caplog.at_level(logging.WARNING, logger="imgae_dx_jax"):
            _, catalog, _ = load_splits(_config(tmp_path, "kaggle", "").data)
    finally:
        archive.ranges = True
    assert "downloading the whole file" in caplog.text
    assert len(catalog.records) == STAGE2


def test_a_download_shows_its_bytes_and_resumes_its_count(tmp_path, bars):
    data = bytes(range(256)) * 10_000
    served = ArchiveServer(data)
    try:
        target = tmp_path / "archive.zip"
        part = tmp_path / "archive.zip.part"
        part.write_bytes(data[:1_000_000])  # a download cut short earlier
        download(served.url, target, retries=0, timeout=5)
        served.ranges = False  # a server without Range support: the whole file again
        download(served.url, tmp_path / "again.zip", retries=0, timeout=5)
    finally:
        served.close()
    assert target.read_bytes() == data
    assert [(b.desc, b.initial, b.n, b.total, b.unit) for b in bars] == [
        ("downloading archive.zip", 1_000_000, len(data), len(data), "B"),
        ("downloading again.zip", 0, len(data), len(data), "B"),
    ]


def test_kaggle_dropped_connection_is_retried(tmp_path, kaggle_env, kaggle_user):
    archive, _, _ = kaggle_env
    archive.drop_next_after = 50_000
    _, catalog, _ = load_splits(_config(tmp_path, "kaggle", "").data)
    assert archive.drop_next_after == 0 and len(catalog.records) == STAGE2
