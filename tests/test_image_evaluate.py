"""Evaluate feeds an image model what it was trained and is served with, not what its own data config says."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from conftest import compose_config, new_sqlite_store
from trainflow.tracking.run import step_run

MODEL = "digits-images-tiny-classifier"
QUIET = ["extras.print_config=false", "callbacks.rich_progress_bar=null", "callbacks.model_summary=null",
         "trainer.enable_progress_bar=false"]
# evaluate composed without the experiment: data=image_folder's image_size is 224, the model saw 16x16
# (the batch size as in training: test/loss is a mean of batch means)
EVALUATE = [*QUIET, "data=image_folder", "model=timm", "model.net.model_name=test_resnet", "data.batch_size=16"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import mlflow

    from trainflow.data.make_digit_images import write_digit_images
    from trainflow.training.train import train

    tmp = tmp_path_factory.mktemp("image_eval")
    write_digit_images(tmp / "digits", size=16, per_class=8)
    uri = new_sqlite_store(tmp)
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    cache = [f"paths.cache_dir={tmp / 'cache'}"]
    cfg = compose_config("train", ["experiment=digits_images_tiny", *QUIET, *cache, f"data.root={tmp / 'digits'}"],
                         tmp / "train")
    assert cfg.data.image_size == 16
    with step_run("train", cfg) as run:
        result = train(cfg, run)
    yield {"uri": uri, "tmp": tmp, "cache": cache, "run_id": run.run_id, "result": result}
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    mp.undo()


@pytest.mark.parametrize("subject", ["model_uri=models:/digits-images-tiny-classifier/1", "ckpt_path"])
def test_evaluate_scores_what_training_tested(trained, subject: str) -> None:
    from trainflow.training.evaluate import evaluate

    if subject == "ckpt_path":
        subject = f"ckpt_path=runs:/{trained['run_id']}/checkpoints/best"
    cfg = compose_config("evaluate", [*EVALUATE, *trained["cache"], subject], trained["tmp"] / subject[:8])
    assert cfg.data.image_size == 224
    with step_run("evaluate", cfg) as run:
        result = evaluate(cfg, run)
    tested = trained["result"].metrics
    # the same weights on the same test images, preprocessed the same way: the same numbers
    assert result.metrics["test/loss"] == pytest.approx(tested["test/loss"], rel=1e-5)
    assert result.metrics["test/acc"] == pytest.approx(tested["test/acc"])
    logged = MlflowClient(trained["uri"]).get_run(run.run_id).data.metrics
    assert logged["test/loss"] == pytest.approx(tested["test/loss"], rel=1e-5)


def test_a_data_config_without_an_eval_transform_is_left_alone() -> None:
    from omegaconf import OmegaConf

    from trainflow.data.digits import DigitsDataModule
    from trainflow.training.evaluate import with_trained_preprocessing

    digits = OmegaConf.create({"_target_": "trainflow.data.digits.DigitsDataModule", "batch_size": 64})
    assert with_trained_preprocessing(digits, {"eval_transform": {"_target_": "x"}, "image_size": 16},
                                      DigitsDataModule.preprocessing_keys) is digits


def test_the_recorded_pipeline_replaces_the_configured_one_whole() -> None:
    from omegaconf import OmegaConf

    from trainflow.data.image_folder import ImageFolderDataModule
    from trainflow.training.evaluate import with_trained_preprocessing

    configured = OmegaConf.create({"image_size": 224, "eval_transform": {"_target_": "albumentations.Compose",
                                   "p": 0.5, "transforms": [{"_target_": "albumentations.Resize", "height": 224,
                                                             "width": 224}]}})
    recorded = {"eval_transform": {"_target_": "albumentations.Compose", "transforms": []}, "image_size": 16}
    out = OmegaConf.to_container(with_trained_preprocessing(configured, recorded,
                                                          ImageFolderDataModule.preprocessing_keys))
    assert out == recorded
