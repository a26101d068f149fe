"""Shards: split files of bounded size with their digests in the manifest, fetched shard by shard.

A real embedded MLflow store serves the artifacts; a damaged shard is made
by editing the store's files on disk, as a broken transfer or a tampered
store would leave them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from helpers import TINY
from trainflow.data.dataset import MANIFEST, read_manifest, verify_dataset
from trainflow.data.dataset_cache import fetch_dataset
from trainflow.data.image_folder import ImageFolderDataModule
from trainflow.data.make_digit_images import write_digit_images
from trainflow.errors import DataError
from trainflow.tracking import tags as tag
from trainflow.tracking.run import step_run

SHARD_MB = 0.004  # ~4 KB: a few 16 px PNGs per shard, so a tiny folder makes several shards


def sharded(tmp_path: Path, shard_mb: float = SHARD_MB) -> Path:
    root = tmp_path / "images"
    if not root.exists():
        write_digit_images(root, size=16, per_class=8)
    folder = tmp_path / f"ds-{shard_mb}"
    ImageFolderDataModule(root=str(root), image_size=16, val_fraction=0.25, test_fraction=0.25,
                          shard_mb=shard_mb).build_dataset(folder)
    return folder


def test_a_large_split_is_cut_into_shards_that_read_back_as_one(tmp_path: Path) -> None:
    folder = sharded(tmp_path)
    manifest = verify_dataset(folder)
    train = manifest.split_files("train")
    assert len(train) > 2 and train == [f"train-{i:05d}.parquet" for i in range(len(train))]
    assert sum(f["rows"] for f in manifest.files if f["split"] == "train") == manifest.splits["train"] == 40
    # shards stay near the bound: one row group may carry a shard past it, never to many times its size
    assert max(f["bytes"] for f in manifest.files) < 4 * SHARD_MB * 2**20
    dm = ImageFolderDataModule(image_size=16, uri=str(folder))
    dm.setup("fit")
    names = {dm.splits["train"].name(i) for i in range(len(dm.splits["train"]))}
    assert len(names) == 40 and all(name.endswith(".png") for name in names)
    # the same rows in one file per split: a small dataset, the default size
    single = read_manifest(sharded(tmp_path, shard_mb=256))
    assert [f["name"] for f in single.files] == ["train.parquet", "val.parquet", "test.parquet"]
    assert single.splits == manifest.splits and single.digest != manifest.digest  # other files, other digest
    assert read_manifest(sharded(tmp_path)).digest == manifest.digest  # same bound, same bytes


@pytest.fixture
def logged(tmp_path: Path, sqlite_uri: str, monkeypatch: pytest.MonkeyPatch):
    """A sharded dataset logged twice (`a/`, `b/`) by one run of a real store; the store's artifact folder."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_uri)
    mlflow.set_tracking_uri(sqlite_uri)
    folder = sharded(tmp_path)
    client = MlflowClient(sqlite_uri)
    exp = client.create_experiment("shards", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    for name in ("a", "b", "altered", "truncated"):
        client.log_artifacts(run.info.run_id, str(folder), name)
    store = tmp_path / "art" / run.info.run_id / "artifacts"
    shard = read_manifest(folder).split_files("train")[1]
    data = bytearray((store / "altered" / shard).read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    (store / "altered" / shard).write_bytes(bytes(data))
    (store / "truncated" / shard).write_bytes(bytes(data[: len(data) // 2]))
    return {"run_id": run.info.run_id, "folder": folder, "shard": shard, "store": store, "uri": sqlite_uri}


def test_downloads_go_shard_by_shard_and_the_cache_holds_each_shard_once(tmp_path: Path, logged) -> None:
    cache = tmp_path / "cache"
    manifest = read_manifest(logged["folder"])
    first = fetch_dataset(f"runs:/{logged['run_id']}/a", cache)
    assert first.bytes_downloaded == sum(f["bytes"] for f in manifest.files)
    assert first.manifest.digest == manifest.digest
    # another URI holding the same shards downloads only its manifest
    second = fetch_dataset(f"runs:/{logged['run_id']}/b", cache)
    assert second.bytes_downloaded == 0 and second.path == first.path
    assert sorted(p.name for p in (cache / "shards").iterdir()) == sorted(f["sha256"] for f in manifest.files)
    assert (first.path / manifest.files[0]["name"]).stat().st_nlink >= 2  # a link to the shard, not a copy
    verify_dataset(first.path)


@pytest.mark.parametrize(("copy", "expected"), [
    ("altered", r"altered/{shard}: sha256 mismatch: the manifest lists \w+…, got \w+… after 2 downloads"),
    ("truncated", r"truncated/{shard}: \d+ bytes, the manifest lists \d+ \(truncated\) after 2 downloads"),
])
def test_a_damaged_shard_is_named_and_nothing_is_cached(tmp_path: Path, logged, copy: str, expected: str) -> None:
    cache = tmp_path / "fresh-cache"
    with pytest.raises(DataError, match=expected.format(shard=logged["shard"])):
        fetch_dataset(f"runs:/{logged['run_id']}/{copy}", cache)
    assert not [p for p in cache.iterdir() if len(p.name) == 64]  # no dataset folder
    assert not (cache / "uris").exists()


@pytest.mark.parametrize("copy", ["altered", "truncated"])
def test_train_on_a_damaged_shard_fails_in_one_line_and_claims_nothing(tmp_path: Path, logged, compose, capsys,
                                                                        copy: str) -> None:
    overrides = [p for p in TINY if p != "experiment=example"] + [
        "experiment=digits_images_tiny", f"data.uri=runs:/{logged['run_id']}/{copy}",
        f"paths.cache_dir={tmp_path / 'other-machine'}"]
    cfg = compose("train", overrides, output_dir=tmp_path / "out")
    from trainflow.training.train import train

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info, step_run("train", cfg) as run:
        train(cfg, run)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert exit_info.value.code == 1 and len(errors) == 1, errors
    assert f"{copy}/{logged['shard']}" in errors[0]
    client = MlflowClient(logged["uri"])
    failed = client.get_run(run.run_id)
    assert failed.info.status == "FAILED" and tag.OUTPUT not in failed.data.tags
    assert not client.search_registered_models()
    assert not (tmp_path / "other-machine" / "datasets" / read_manifest(logged["folder"]).digest).exists()


def test_a_copied_manifest_without_its_shards_names_the_missing_one(tmp_path: Path) -> None:
    folder = sharded(tmp_path)
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(folder / MANIFEST, copy / MANIFEST)
    with pytest.raises(DataError, match=r"split file\(s\) missing: train-00000\.parquet"):
        verify_dataset(copy)
