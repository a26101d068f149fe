"""The dataset artifact: digest, verification, content-addressed cache."""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from helpers import ROOT
from trainflow.data.dataset import read_split, verify_dataset, write_dataset
from trainflow.data.dataset_cache import fetch_dataset, store_in_cache, upstream_run_id
from trainflow.data.digits import DigitsDataModule
from trainflow.errors import DataError, UriError
from trainflow.tracking.lockfile import locked_requirements


def small_dataset(folder: Path):
    table = pa.table({"x": pa.array([0.0, 1.0, 2.0], pa.float32()), "label": pa.array([0, 1, 0])})
    return write_dataset(folder, {"train": table, "test": table.slice(0, 1)}, task="toy", source="test",
                         label_names=["a", "b"])


def test_digits_dataset_is_stratified_seeded_and_reproducible(tmp_path: Path) -> None:
    a = DigitsDataModule(seed=7).build_dataset(tmp_path / "a")
    b = DigitsDataModule(seed=7).build_dataset(tmp_path / "b")
    c = DigitsDataModule(seed=8).build_dataset(tmp_path / "c")
    assert a.digest == b.digest != c.digest
    assert sum(a.splits.values()) == 1797 and a.label_names == [str(i) for i in range(10)]
    test_labels = read_split(tmp_path / "a", "test").column("label").to_numpy()
    counts = [int((test_labels == k).sum()) for k in range(10)]
    assert max(counts) - min(counts) <= 2, f"test split is not stratified: {counts}"


def test_a_changed_split_file_is_a_digest_mismatch_naming_the_source(tmp_path: Path) -> None:
    small_dataset(tmp_path / "d")
    verify_dataset(tmp_path / "d")
    other = pa.table({"x": pa.array([9.0], pa.float32()), "label": pa.array([1])})
    import pyarrow.parquet as pq

    pq.write_table(other, tmp_path / "d" / "test.parquet")
    with pytest.raises(DataError, match=r"runs:/x/dataset: digest mismatch"):
        verify_dataset(tmp_path / "d", "runs:/x/dataset")


def test_missing_manifest_and_corrupt_parquet_are_named(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no manifest\.json"):
        verify_dataset(tmp_path / "empty")
    small_dataset(tmp_path / "d")
    (tmp_path / "d" / "train.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match=r"train\.parquet: unreadable parquet"):
        read_split(tmp_path / "d", "train")


def test_cache_is_content_addressed(tmp_path: Path) -> None:
    first = store_in_cache(tmp_path / "one", tmp_path / "cache", small_dataset(tmp_path / "one"))
    second = store_in_cache(tmp_path / "two", tmp_path / "cache", small_dataset(tmp_path / "two"))
    assert first == second and first.name == verify_dataset(first).digest
    assert not (tmp_path / "two").exists()


def test_fetch_from_a_run_downloads_once(tmp_path: Path, sqlite_uri: str) -> None:
    from mlflow import MlflowClient

    small_dataset(tmp_path / "d")
    client = MlflowClient(sqlite_uri)
    exp = client.create_experiment("fetch", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    client.log_artifacts(run.info.run_id, str(tmp_path / "d"), "dataset")
    import mlflow

    mlflow.set_tracking_uri(sqlite_uri)
    uri = f"runs:/{run.info.run_id}/dataset"
    first = fetch_dataset(uri, tmp_path / "cache")
    second = fetch_dataset(uri, tmp_path / "cache")
    assert first.bytes_downloaded > 0 and second.bytes_downloaded == 0
    assert first.path == second.path and first.upstream_run_id == run.info.run_id
    with pytest.raises(UriError, match=rf"data.uri: cannot download runs:/{run.info.run_id}/nope"):
        fetch_dataset(f"runs:/{run.info.run_id}/nope", tmp_path / "cache")


def test_upstream_run_id_from_any_artifact_uri() -> None:
    rid = "0123456789abcdef0123456789abcdef"
    assert upstream_run_id(f"runs:/{rid}/dataset") == rid
    assert upstream_run_id(f"mlflow-artifacts:/1/{rid}/artifacts/dataset") == rid
    assert upstream_run_id("/tmp/folder") is None


def test_model_requirements_come_from_the_lock_for_this_interpreter() -> None:
    reqs = dict(r.split("==") for r in locked_requirements(ROOT / "uv.lock"))
    for name in ("torch", "lightning", "mlflow", "hydra-core", "numpy"):
        assert reqs[name] == importlib.metadata.version(name), name
    assert "pywin32" not in reqs and "pytest" not in reqs and "trainflow" not in reqs


def test_a_copied_dataset_verifies(tmp_path: Path) -> None:
    """A dataset folder copied elsewhere still verifies (the digest is of content, not paths)."""
    small_dataset(tmp_path / "d")
    shutil.copytree(tmp_path / "d", tmp_path / "copy")
    assert verify_dataset(tmp_path / "copy").digest == verify_dataset(tmp_path / "d").digest
