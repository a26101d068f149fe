"""`data.root` on object storage: an image folder under s3://bucket/prefix, read through pyarrow.fs.

The S3 API here is moto's server mode on 127.0.0.1, an emulator (the one
MLflow's own tests use): it speaks the S3 protocol the way pyarrow's client
calls it, but it is not AWS. Credentials reach the client only through the
environment, the way a user's would.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from helpers import TINY, run_step_here
from servers import VENV_BIN, free_port, wait_http
from trainflow.data.image_folder import ImageFolderDataModule
from trainflow.data.make_digit_images import write_digit_images
from trainflow.errors import DataError
from trainflow.pipeline.cache import source_inputs
from trainflow.tracking import tags as tag

SECRET = "moto-secret-key-that-must-never-be-logged"
BUCKET = "trainflow-data"


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A moto S3 server on loopback with `digits/` (class folders of PNGs) and `texts/` (no images)."""
    import boto3

    port = free_port()
    workdir = tmp_path_factory.mktemp("moto")
    with (workdir / "moto.log").open("wb") as log:
        proc = subprocess.Popen([f"{VENV_BIN}/moto_server", "-H", "127.0.0.1", "-p", str(port)], cwd=workdir,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    env = {"AWS_ACCESS_KEY_ID": "moto-access-key", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    try:
        wait_http(f"http://127.0.0.1:{port}/moto-api/", 60, proc)
        client = boto3.client("s3", aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=SECRET,
                              region_name=env["AWS_REGION"], endpoint_url=env["AWS_ENDPOINT_URL"])
        client.create_bucket(Bucket=BUCKET)
        local = workdir / "digits"
        write_digit_images(local, size=16, per_class=8)
        for path in sorted(local.rglob("*.png")):
            client.upload_file(str(path), BUCKET, f"digits/{path.relative_to(local).as_posix()}")
        client.put_object(Bucket=BUCKET, Key="texts/a/readme.txt", Body=b"no images here")
        yield {**env, "local": str(local)}
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture
def aws_env(s3, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.setenv(key, s3[key])
    return s3


def build(root: str, folder: Path):
    return ImageFolderDataModule(root=root, image_size=16, val_fraction=0.25, test_fraction=0.25).build_dataset(folder)


def test_an_s3_root_packs_to_the_same_digest_as_the_same_files_on_disk(aws_env, tmp_path: Path) -> None:
    remote = build(f"s3://{BUCKET}/digits", tmp_path / "remote")
    local = build(aws_env["local"], tmp_path / "local")
    assert remote.digest == local.digest and remote.splits == local.splits == {"train": 40, "val": 20, "test": 20}
    assert remote.source == f"s3://{BUCKET}/digits"
    assert SECRET not in (tmp_path / "remote" / "manifest.json").read_text()


@pytest.mark.parametrize(("root", "expected"), [
    (f"s3://{BUCKET}/texts", rf"s3://{BUCKET}/texts/a: class folder without \.png/\.jpg/\.jpeg images"),
    (f"s3://{BUCKET}/nothing-here", rf"data\.root: no such folder: s3://{BUCKET}/nothing-here"),
    ("s3://no-such-bucket/digits", r"data\.root: cannot list s3://no-such-bucket/digits: .*bucket does not exist"),
])
def test_an_s3_root_without_images_is_one_line_naming_it(aws_env, tmp_path: Path, root: str, expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        build(root, tmp_path / "ds")
    assert not (tmp_path / "ds" / "manifest.json").exists()


def test_an_unreachable_s3_root_is_one_line(aws_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(DataError, match=rf"data\.root: cannot list s3://{BUCKET}/digits: .*connect") as info:
        build(f"s3://{BUCKET}/digits", tmp_path / "ds")
    assert "\n" not in str(info.value)


def s3_client(env: dict[str, str]):
    import boto3

    return boto3.client("s3", aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_REGION"],
                        endpoint_url=env["AWS_ENDPOINT_URL"])


def test_an_s3_roots_cache_input_changes_with_its_objects_and_only_then(aws_env, monkeypatch) -> None:
    """prepare_data's cache key lists the prefix (names, sizes, mtimes): a changed folder misses, the same hits."""
    client = s3_client(aws_env)
    names = sorted(path.relative_to(aws_env["local"]).as_posix() for path in Path(aws_env["local"]).rglob("*.png"))
    for name in names:
        client.upload_file(f"{aws_env['local']}/{name}", BUCKET, f"keyed/{name}")
    resolved = {"data": {"root": f"s3://{BUCKET}/keyed", "batch_size": 8, "image_size": 16, "uri": None}}
    before = source_inputs(resolved)
    assert set(before) == {"source"} and source_inputs(resolved) == before
    assert source_inputs({"data": {**resolved["data"], "batch_size": 4}}) == before  # a loader setting: same data
    # the credentials are not in the key, nor do they change it: another identity listing the same objects
    assert SECRET not in json.dumps(before) and aws_env["AWS_ACCESS_KEY_ID"] not in json.dumps(before)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "another-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "another-secret-key")
    assert source_inputs(resolved) == before

    client.put_object(Bucket=BUCKET, Key="keyed/3/added.png", Body=Path(aws_env["local"], names[0]).read_bytes())
    added = source_inputs(resolved)
    assert added != before
    client.delete_object(Bucket=BUCKET, Key="keyed/3/added.png")
    assert source_inputs(resolved) == before  # removed again: the objects that were keyed, untouched
    client.put_object(Bucket=BUCKET, Key=f"keyed/{names[0]}", Body=b"rewritten in place")
    assert source_inputs(resolved) not in (before, added)
    client.delete_object(Bucket=BUCKET, Key=f"keyed/{names[-1]}")
    assert len({json.dumps(source_inputs(resolved)), json.dumps(before), json.dumps(added)}) == 3


def test_a_file_uri_root_keys_as_the_same_folder_named_by_path(tmp_path: Path) -> None:
    write_digit_images(tmp_path / "d", size=8, per_class=2)
    by_path = source_inputs({"data": {"root": str(tmp_path / "d")}})
    by_uri = source_inputs({"data": {"root": (tmp_path / "d").as_uri()}})
    assert set(by_uri) == {"source"} and by_uri == by_path
    next((tmp_path / "d").rglob("*.png")).unlink()
    assert source_inputs({"data": {"root": (tmp_path / "d").as_uri()}}) != by_uri


def test_an_s3_root_the_key_cannot_list_is_one_line(aws_env, monkeypatch) -> None:
    """No key without the listing: keying the config alone would hit a run made from other objects."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(DataError, match=rf"^data\.root: cannot list s3://{BUCKET}/digits: .*connect") as info:
        source_inputs({"data": {"root": f"s3://{BUCKET}/digits"}})
    assert "\n" not in str(info.value)


def text_artifacts(client: MlflowClient, run_id: str, path: str = "") -> Iterator[str]:
    """The text of every small text artifact of a run (configs, manifests, logs)."""
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            yield from text_artifacts(client, run_id, info.path)
        elif info.path.endswith((".yaml", ".json", ".txt", ".log", ".md")) and (info.file_size or 0) < 2**20:
            yield Path(client.download_artifacts(run_id, info.path)).read_text(errors="replace")


@pytest.mark.slow
def test_a_pipeline_reads_its_images_from_s3_and_logs_no_credentials(s3, mlflow_server, tmp_path: Path) -> None:
    params = [p for p in TINY if p not in ("experiment=example",) and not p.startswith("registry.")] + [
        "experiment=digits_images_tiny", f"data.root=s3://{BUCKET}/digits", "registry.model_name=s3-digits",
        "cache=false"]
    aws = {k: v for k, v in s3.items() if k.startswith("AWS_")}
    # main's script in this process (test_pipeline.py and test_security.py run it through `mlflow run`): the
    # credentials are in its environment only, as in a user's shell
    done = run_step_here(["steps/main.py", *params, "tracking.experiment_name=s3-root"], mlflow_server.uri, **aws)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("s3-root").experiment_id
    runs = {r.data.tags.get(tag.STEP): r for r in client.search_runs([exp])}
    assert {"main", "prepare_data", "train", "evaluate"} <= set(runs)
    assert all(run.info.status == "FINISHED" for run in runs.values())
    local = build(s3["local"], tmp_path / "local")
    assert runs["prepare_data"].data.tags[tag.DATA_DIGEST] == local.digest
    assert runs["train"].data.tags[tag.DATA_DIGEST] == runs["evaluate"].data.tags[tag.DATA_DIGEST] == local.digest
    for run in runs.values():
        logged = json.dumps([run.data.params, run.data.tags])
        assert SECRET not in logged and s3["AWS_ACCESS_KEY_ID"] not in logged, run.data.tags.get(tag.STEP)
        assert not [text for text in text_artifacts(client, run.info.run_id) if SECRET in text]
