"""Images through the steps, in-process on an embedded store: prepare_data (with a corrupt file skipped) ->
train (experiment=digits_images_tiny, registered) -> the pyfunc on image bytes -> predict on a folder and on
a parquet split."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image

from helpers import compose_config, load_in_fresh_process, using_store
from trainflow.tracking import tags as tag
from trainflow.tracking.run import step_run

MODEL = "digits-images-tiny-classifier"
QUIET = ["experiment=digits_images_tiny", "extras.print_config=false", "callbacks.rich_progress_bar=null",
         "callbacks.model_summary=null", "trainer.enable_progress_bar=false"]
LABELS = [str(d) for d in range(10)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """prepare_data on a tiny digits image folder (one corrupt file, skipped), then train on its runs:/ URI."""

    from trainflow.data.make_digit_images import write_digit_images
    from trainflow.pipeline.prepare import prepare_data
    from trainflow.training.train import train

    tmp = tmp_path_factory.mktemp("images")
    write_digit_images(tmp / "digits", size=16, per_class=8)
    (tmp / "digits" / "3" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with using_store(tmp) as uri:
        common = [*QUIET, f"paths.cache_dir={tmp / 'cache'}", f"data.root={tmp / 'digits'}", "data.on_bad_image=skip"]
        cfg = compose_config("prepare_data", common, tmp / "prepare")
        with step_run("prepare_data", cfg) as prep_run:
            prepared = prepare_data(cfg, prep_run)
        cfg = compose_config("train", [*common, f"data.uri={prepared.uri}"], tmp / "train")
        with step_run("train", cfg) as train_run:
            result = train(cfg, train_run)
        yield {"client": MlflowClient(uri), "prepared": prepared, "result": result, "prep_run": prep_run.run_id,
               "run_id": train_run.run_id, "tmp": tmp, "common": common}
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()


def test_prepare_records_the_skipped_image_and_train_logs_f1_metrics(trained) -> None:
    client, prepared = trained["client"], trained["prepared"]
    assert prepared.manifest.extra["skipped_files"] == ["3/corrupt.png"]
    assert prepared.manifest.splits == {"train": 40, "val": 20, "test": 20}
    assert client.get_run(trained["prep_run"]).data.metrics["data/skipped_images"] == 1
    run = client.get_run(trained["run_id"])
    assert trained["result"].registered == f"models:/{MODEL}/1"
    for key in ("val/f1", "val/precision", "val/recall", "val/f1_best", "test/f1", "test/acc", "test/precision",
                "test/recall", "model/trainable_params"):
        assert key in run.data.metrics, key
    assert run.data.metrics["model/trainable_params"] > 0
    meta = yaml.safe_load(Path(client.download_artifacts(trained["run_id"], "checkpoints/best/metadata.yaml"))
                          .read_text())
    assert meta["monitor"] == "val/f1"


def test_registered_pyfunc_answers_image_bytes_and_base64_with_labels(trained) -> None:
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")
    files = sorted((trained["tmp"] / "digits" / "7").glob("*.png"))[:3]
    rgba = io.BytesIO()
    Image.fromarray(np.full((30, 40, 4), 200, dtype=np.uint8)).save(rgba, format="PNG")  # another mode and size
    frame = pd.DataFrame({"image": [f.read_bytes() for f in files] + [rgba.getvalue()]})
    out = model.predict(frame)
    assert len(out) == 4 and list(out.columns[:2]) == ["label", "probability"]
    assert set(out.label) <= set(LABELS)
    probs = out[[f"prob_{label}" for label in LABELS]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    text = model.predict(pd.DataFrame({"image": [base64.b64encode(f.read_bytes()).decode() for f in files]}))
    assert np.allclose(text.probability, out.probability[:3], atol=1e-6)


def test_predict_writes_csv_and_parquet_for_a_folder_and_a_parquet_split(trained, capsys) -> None:
    from trainflow.pipeline.predict import predict

    client, tmp = trained["client"], trained["tmp"]
    folder = tmp / "to_predict"
    for digit in ("1", "4"):
        (folder / digit).mkdir(parents=True)
        for f in sorted((tmp / "digits" / digit).glob("*.png"))[:2]:
            (folder / digit / f.name).write_bytes(f.read_bytes())
    (folder / "readme.txt").write_text("ignored")
    cfg = compose_config("predict", ["extras.print_config=false", f"model_uri=models:/{MODEL}/1", f"input={folder}"],
                       tmp / "predict")
    with step_run("predict", cfg) as run:
        result = predict(cfg, run)
    csv = pd.read_csv(result.csv, dtype={"label": str})
    expected = sorted(f.relative_to(folder).as_posix() for f in folder.rglob("*.png"))
    assert list(csv.file) == expected and len(csv) == 4
    # each row is what the registered pyfunc answers for that very file, not just some valid label
    import mlflow.pyfunc

    served = mlflow.pyfunc.load_model(f"models:/{MODEL}/1").predict(
        pd.DataFrame({"image": [(folder / name).read_bytes() for name in expected]}))
    assert list(csv.label) == list(served.label)
    assert np.allclose(csv.probability, served.probability, atol=1e-6)
    assert f"predictions: {result.csv}" in capsys.readouterr().out
    artifacts = {a.path for a in client.list_artifacts(run.run_id, "predictions")}
    assert artifacts == {"predictions/predictions.csv", "predictions/predictions.parquet"}
    recorded = client.get_run(run.run_id).data
    assert recorded.tags[tag.UPSTREAM_TRAIN] == trained["run_id"]
    assert recorded.tags[tag.PREDICTED] == f"models:/{MODEL}/1"
    assert recorded.metrics["predict/rows"] == 4 and recorded.metrics["predict/skipped_images"] == 0

    test_split = f"{trained['prepared'].uri}/test.parquet"
    cfg = compose_config("predict", ["extras.print_config=false", f"model_uri=models:/{MODEL}/1",
                                   f"input={test_split}", "batch_size=7"], tmp / "predict2")
    with step_run("predict", cfg) as run:
        result = predict(cfg, run)
    frame = pd.read_parquet(result.parquet)
    assert list(frame.row_id) == list(range(20)) and frame.file.str.contains("/").all()
    assert set(frame.label) <= set(LABELS)


def test_a_corrupt_image_in_a_predict_folder_fails_naming_it_or_is_skipped_and_counted(trained, capsys) -> None:
    """on_bad_image=raise: one `error:` line naming the file, the run FAILED, no predictions; skip: counted."""
    from trainflow.pipeline.predict import predict

    client, tmp = trained["client"], trained["tmp"]
    folder = tmp / "to_predict_corrupt"
    (folder / "1").mkdir(parents=True)
    for f in sorted((tmp / "digits" / "1").glob("*.png"))[:2]:
        (folder / "1" / f.name).write_bytes(f.read_bytes())
    (folder / "1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    common = ["extras.print_config=false", f"model_uri=models:/{MODEL}/1", f"input={folder}"]

    cfg = compose_config("predict", common, tmp / "predict-raise")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited, step_run("predict", cfg) as run:
        predict(cfg, run)
    assert exited.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "1/broken.png" in lines[-1], lines[-3:]
    failed = client.get_run(run.run_id)
    assert failed.info.status == "FAILED" and tag.OUTPUT not in failed.data.tags
    assert client.list_artifacts(run.run_id, "predictions") == []

    cfg = compose_config("predict", [*common, "on_bad_image=skip"], tmp / "predict-skip")
    with step_run("predict", cfg) as run:
        result = predict(cfg, run)
    assert sorted(result.predictions.file) == sorted(f"1/{f.name}" for f in (folder / "1").glob("*.png")
                                                     if f.name != "broken.png")
    assert [Path(name).name for name in result.skipped] == ["broken.png"]
    assert client.get_run(run.run_id).data.metrics["predict/skipped_images"] == 1


def test_pretrained_from_a_runs_uri_is_the_logged_checkpoint(trained) -> None:
    """`pretrained` as an MLflow URI of a Lightning checkpoint folder: downloaded, `net.` stripped, loaded."""
    import torch

    from trainflow.models.components.timm_backbone import TIMMBackbone

    net = TIMMBackbone("test_resnet", num_classes=10, pretrained=f"runs:/{trained['run_id']}/checkpoints/best")
    net.load_pretrained()
    saved = torch.load(trained["result"].best_checkpoint, weights_only=True)["state_dict"]
    for key, value in net.state_dict().items():
        assert torch.equal(value, saved[f"net.{key}"]), key


def test_weights_only_start_fine_tunes_from_epoch_zero(trained) -> None:
    """only_weights_load: the best checkpoint's weights, a fresh optimizer and epoch count."""
    from trainflow.training.train import train

    tmp = trained["tmp"]
    best = f"runs:/{trained['run_id']}/checkpoints/best"
    overrides = [*trained["common"], f"data.uri={trained['prepared'].uri}", "registry.log_model=false",
                 f"ckpt_path={best}", "only_weights_load=true", "trainer.max_epochs=1", "test=false",
                 "model.net.freeze_encoder=true"]
    cfg = compose_config("train", overrides, tmp / "finetune")
    with step_run("train", cfg) as run:
        result = train(cfg, run)
    import torch

    metrics = trained["client"].get_run(run.run_id).data.metrics
    assert metrics["epoch"] == 0  # a full resume of a 2-epoch checkpoint would not train at max_epochs=1
    assert metrics["model/trainable_params"] < metrics["model/total_params"]
    assert result.best_checkpoint is not None
    # the frozen encoder (BatchNorm statistics included) is exactly the checkpoint's: it was loaded, not drawn
    start = torch.load(trained["result"].best_checkpoint, weights_only=True)["state_dict"]
    end = torch.load(result.best_checkpoint, weights_only=True)["state_dict"]
    for key in ("net.model.conv1.0.weight", "net.model.layer4.0.bn2.running_mean"):
        assert torch.equal(start[key], end[key]), key
    assert not torch.equal(start["net.model.fc.weight"], end["net.model.fc.weight"])


@pytest.mark.slow
def test_the_model_loads_in_a_new_interpreter_from_its_own_code(trained, tmp_path: Path) -> None:
    """The model carries the whole package, not a part that would shadow the installed one."""
    import mlflow

    shipped = load_in_fresh_process(f"models:/{MODEL}/1", mlflow.get_tracking_uri(), tmp_path)
    assert {"code/trainflow/registry/pyfunc.py", "code/trainflow/models/components/timm_backbone.py"} <= shipped
