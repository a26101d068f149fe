"""A path or URI a config names, as a file on this machine (trainflow.fetch): one scheme list, one reader."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest

from trainflow.errors import UriError
from trainflow.fetch import is_artifact_uri, local_path, single_file


@pytest.mark.parametrize("uri", ["runs:/0123/model", "models:/digits@champion", "mlflow-artifacts:/1/a/b",
                                 "dbfs:/mnt/data", "s3://bucket/key", "gs://bucket/key", "wasbs://c@a/key",
                                 "http://host/x", "https://host/x"])
def test_what_only_mlflow_can_fetch_is_an_artifact_uri(uri: str) -> None:
    assert is_artifact_uri(uri)


@pytest.mark.parametrize("uri", ["/abs/path", "relative/path", "~/w.pt", "file:///tmp/x.parquet"])
def test_paths_and_file_uris_are_not(uri: str) -> None:
    assert not is_artifact_uri(uri)


def test_a_file_uri_is_read_where_it_is_and_a_missing_one_names_the_key(tmp_path: Path) -> None:
    data = tmp_path / "in.parquet"
    data.write_bytes(b"x")
    assert local_path(data.as_uri(), tmp_path / "dst", "input") == data
    assert local_path(str(data), tmp_path / "dst", "input") == data
    assert not (tmp_path / "dst").exists()  # nothing copied
    with pytest.raises(UriError, match=r"^input: no such file or folder: file:///no/such/in\.parquet$"):
        local_path("file:///no/such/in.parquet", tmp_path / "dst", "input")


def test_a_run_artifact_is_downloaded_and_a_missing_one_names_the_key_and_uri(tmp_path: Path, sqlite_uri: str,
                                                                             tracking_env) -> None:
    tracking_env(sqlite_uri)
    weights = tmp_path / "w.ckpt"
    weights.write_bytes(b"weights")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(weights), "checkpoints/best")
    got = single_file(f"runs:/{run.info.run_id}/checkpoints/best", tmp_path / "dst", "ckpt_path", (".ckpt",))
    assert got.read_bytes() == b"weights" and got.is_relative_to(tmp_path / "dst")
    with pytest.raises(UriError, match=rf"^ckpt_path: cannot download runs:/{run.info.run_id}/nope: "):
        local_path(f"runs:/{run.info.run_id}/nope", tmp_path / "dst2", "ckpt_path")
