"""What "best" means follows the model: image classifiers checkpoint on macro F1, digits on accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from trainflow.training.instantiate import instantiate_callbacks


def monitors(cfg) -> dict[str, tuple[str, str]]:
    callbacks = OmegaConf.to_container(cfg.callbacks, resolve=True)
    return {name: (node["monitor"], node["mode"]) for name, node in callbacks.items()
            if isinstance(node, dict) and "monitor" in node and "_target_" in node}


@pytest.mark.parametrize("config_name", ["train", "evaluate"])
@pytest.mark.parametrize("overrides", [
    ["data=image_folder", "model=timm"],
    ["data=image_folder", "model=timm", "callbacks=default"],
    ["experiment=digits_images"],
    ["experiment=digits_images_tiny"],
])
def test_a_timm_model_checkpoints_on_val_f1(compose, tmp_path: Path, config_name: str,
                                            overrides: list[str]) -> None:
    cfg = compose(config_name, overrides, output_dir=tmp_path)
    assert monitors(cfg) == {"model_checkpoint": ("val/f1", "max"), "early_stopping": ("val/f1", "max")}


@pytest.mark.parametrize("overrides", [[], ["experiment=example"], ["experiment=ud_ewt_tiny"]])
def test_other_models_keep_val_acc(compose, tmp_path: Path, overrides: list[str]) -> None:
    cfg = compose("train", overrides, output_dir=tmp_path)
    assert monitors(cfg) == {"model_checkpoint": ("val/acc", "max"), "early_stopping": ("val/acc", "max")}


def test_callbacks_f1_picks_f1_for_any_model(compose, tmp_path: Path) -> None:
    cfg = compose("train", ["model=digits", "callbacks=f1"], output_dir=tmp_path)
    assert monitors(cfg)["model_checkpoint"] == ("val/f1", "max")


def test_the_command_line_still_wins(compose, tmp_path: Path) -> None:
    cfg = compose("train", ["data=image_folder", "model=timm", "callbacks.monitor.metric=val/loss",
                            "callbacks.monitor.mode=min"], output_dir=tmp_path)
    assert monitors(cfg)["model_checkpoint"] == ("val/loss", "min")


def test_the_built_callbacks_watch_val_f1(compose, tmp_path: Path) -> None:
    """The monitor block itself is no callback: only the real ones are built, and they watch F1."""
    cfg = compose("train", ["data=image_folder", "model=timm", "callbacks.rich_progress_bar=null"],
                  output_dir=tmp_path)
    built = instantiate_callbacks(cfg.callbacks)
    watched = {type(cb).__name__: (cb.monitor, cb.mode) for cb in built if hasattr(cb, "monitor")}
    assert watched == {"ModelCheckpoint": ("val/f1", "max"), "EarlyStopping": ("val/f1", "max")}


@pytest.mark.parametrize(("overrides", "metric"), [
    (["experiment=example"], "val/acc_best"),
    (["data=image_folder", "model=timm"], "val/f1_best"),
    (["experiment=digits_images_tiny"], "val/f1_best"),
])
def test_a_sweep_optimises_the_best_of_what_the_checkpoint_watches(compose, tmp_path: Path, overrides: list[str],
                                                                   metric: str) -> None:
    assert compose("train", overrides, output_dir=tmp_path).optimized_metric == metric
