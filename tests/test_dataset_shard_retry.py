"""A shard whose first transfer arrives damaged or breaks off is downloaded once more, and only that shard.

A real `mlflow server` holds a sharded dataset; the fetch reaches it through
a small HTTP proxy on 127.0.0.1 that forwards every request as it is and
damages the body of the first download(s) of one chosen shard only, the way
a flaky link or a misbehaving middlebox would. The proxy's own log counts
what was downloaded. A flipped byte or a short body sent with its honest
length reach the cache's sha256 and size checks; a body cut off before the
length the headers promised fails inside the HTTP client instead.
"""

from __future__ import annotations

import http.client
import re
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from mlflow import MlflowClient

from trainflow.data.dataset import read_manifest, verify_dataset
from trainflow.data.dataset_cache import fetch_dataset
from trainflow.data.image_folder import ImageFolderDataModule
from trainflow.data.make_digit_images import write_digit_images
from trainflow.errors import DataError

ARTIFACT_GET = "/api/2.0/mlflow-artifacts/artifacts/"  # where the server streams an artifact file's bytes
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class DamagingProxy:
    """Forwards every request to `upstream`; the first `times` artifact GETs ending with `/<victim>` are damaged.

    `damage` is "flip" (one byte changed, same length: the sha256 check
    catches it), "truncate" (half the body, sent with its honest shorter
    length: the size check catches it) or "cut" (the full length announced,
    half the body sent, the connection closed). `gets` lists the artifact
    paths of every GET, in order.
    """

    def __init__(self, upstream: str, victim: str, damage: str, times: int = 1) -> None:
        self.upstream = urlsplit(upstream).netloc
        self.victim, self.damage, self.times = victim, damage, times
        self.gets: list[str] = []
        self.damaged = 0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> DamagingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join()

    def _alter(self, method: str, target: str, body: bytes) -> bytes:
        path = urlsplit(target).path
        if method != "GET" or not path.startswith(ARTIFACT_GET):
            return body
        with self._lock:
            self.gets.append(path.removeprefix(ARTIFACT_GET))
            if self.damaged == self.times or not path.endswith(f"/{self.victim}"):
                return body
            self.damaged += 1
        if self.damage in ("truncate", "cut"):
            return body[: len(body) // 2]
        flipped = bytearray(body)
        flipped[len(flipped) // 2] ^= 0xFF
        return bytes(flipped)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Forward(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out as separate writes: no delayed-ACK stall

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                request_body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)  # sets Host to the server's
                try:
                    upstream.request(self.command, self.path, body=request_body, headers=headers)
                    response = upstream.getresponse()
                    whole = response.read()
                    body = proxy._alter(self.command, self.path, whole)
                    cut = proxy.damage == "cut" and len(body) < len(whole)
                    self.send_response(response.status, response.reason)
                    for key, value in response.getheaders():
                        if key.lower() not in HOP_BY_HOP:
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(whole) if cut else len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    self.close_connection = cut  # the promised rest never comes
                finally:
                    upstream.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

            def log_message(self, format: str, *args: object) -> None:
                pass  # the proxy's log is `gets`, not stderr

        return Forward


@pytest.fixture(scope="module")
def served(mlflow_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """A dataset of several train shards logged to the real server under `ds/`; its manifest."""
    tmp = tmp_path_factory.mktemp("shard-retry")
    write_digit_images(tmp / "images", size=16, per_class=8)
    folder = tmp / "ds"
    ImageFolderDataModule(root=str(tmp / "images"), image_size=16, val_fraction=0.25, test_fraction=0.25,
                          shard_mb=0.004).build_dataset(folder)  # ~4 KB per shard: several train shards
    client = MlflowClient(mlflow_server.uri)
    run = client.create_run(client.create_experiment("shard-retry"))
    client.log_artifacts(run.info.run_id, str(folder), "ds")
    client.set_terminated(run.info.run_id)
    yield {"uri": f"runs:/{run.info.run_id}/ds", "manifest": read_manifest(folder)}


@pytest.mark.parametrize("damage", ["flip", "truncate", "cut"])
def test_a_shard_damaged_in_transit_once_is_fetched_again_alone(served, mlflow_server, tracking_env,
                                                                tmp_path: Path, damage: str) -> None:
    manifest = served["manifest"]
    names = [f["name"] for f in manifest.files]
    victim = manifest.split_files("train")[1]
    assert len(manifest.split_files("train")) > 2
    cache = tmp_path / "cache"
    with DamagingProxy(mlflow_server.uri, victim, damage) as proxy:
        tracking_env(proxy.uri)
        fetched = fetch_dataset(served["uri"], cache)
    assert proxy.damaged == 1
    # counted by the proxy: the damaged shard twice, every other file (and the manifest) once
    counts = Counter(path.rsplit("/", 1)[-1] for path in proxy.gets)
    assert counts == Counter({**dict.fromkeys([*names, "manifest.json"], 1), victim: 2})
    assert fetched.manifest.digest == manifest.digest
    assert fetched.bytes_downloaded == sum(f["bytes"] for f in manifest.files)  # the good copy, once
    assert fetched.path == cache / manifest.digest
    verify_dataset(fetched.path)  # every file re-hashed against the manifest, the retried one included
    # the damaged first copy is nowhere: the cache holds the dataset, its shards by digest, the URI's index
    assert sorted(p.name for p in (cache / "shards").iterdir()) == sorted(f["sha256"] for f in manifest.files)
    assert sorted(p.name for p in cache.iterdir()) == sorted([manifest.digest, "shards", "uris"])
    # a second fetch of the same URI downloads nothing
    with DamagingProxy(mlflow_server.uri, victim, damage) as quiet:
        tracking_env(quiet.uri)
        again = fetch_dataset(served["uri"], cache)
    assert again.bytes_downloaded == 0 and not quiet.gets



def test_a_shard_whose_transfer_breaks_off_every_time_is_named_and_nothing_is_cached(
        served, mlflow_server, tracking_env, tmp_path: Path) -> None:
    victim = served["manifest"].split_files("train")[1]
    cache = tmp_path / "cache"
    with DamagingProxy(mlflow_server.uri, victim, "cut", times=2) as proxy:
        tracking_env(proxy.uri)
        with pytest.raises(DataError) as failed:
            fetch_dataset(served["uri"], cache)
    one_line = rf"data.uri: {re.escape(served['uri'])}/{re.escape(victim)}: cannot download: .+ after 2 downloads"
    assert re.fullmatch(one_line, str(failed.value))
    assert Counter(path.rsplit("/", 1)[-1] for path in proxy.gets)[victim] == 2
    assert not [p for p in cache.iterdir() if len(p.name) == 64] and not (cache / "uris").exists()
