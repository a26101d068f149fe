"""Every config composes; typos and wrong types fail at compose time, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigKeyError, ValidationError

from helpers import ROOT
from trainflow.config.validate import check_targets
from trainflow.errors import ConfigError

GROUPS = ["data", "model", "trainer", "callbacks", "tracking", "experiment", "debug", "paths", "extras"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "configs" / group).glob("*.yaml"))


@pytest.mark.parametrize("config_name", ["train", "evaluate"])
@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes_and_resolves(compose, tmp_path: Path, config_name: str, group: str) -> None:
    assert options(group), f"configs/{group} is empty"
    for option in options(group):
        cfg = compose(config_name, [f"{group}={option}"], output_dir=tmp_path)
        from omegaconf import OmegaConf

        OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
        check_targets(cfg)
        assert cfg.paths.root_dir == str(ROOT)


def test_trainer_group_has_the_documented_options() -> None:
    assert {"default", "cpu", "gpu", "mps", "ddp", "ddp_sim"} <= set(options("trainer"))
    assert {"default", "fdr", "limit", "overfit", "profiler"} <= set(options("debug"))
    assert {"model_checkpoint", "early_stopping", "rich_progress_bar", "model_summary", "lr_monitor",
            "none"} <= set(options("callbacks"))


def test_misspelt_override_fails_naming_the_key(compose) -> None:
    with pytest.raises(ConfigCompositionException, match="max_epoch"):
        compose("train", ["trainer.max_epoch=3"])


def test_wrong_type_fails_at_compose_time(compose) -> None:
    with pytest.raises(ConfigCompositionException) as info:
        compose("train", ["trainer.max_epochs=ten"])
    assert "max_epochs" in str(info.value.__cause__ or info.value)


def test_misspelt_key_in_a_yaml_fails_at_compose_time(compose, tmp_path: Path) -> None:
    """A typo inside an experiment file, not only on the command line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    configs = tmp_path / "configs"
    import shutil

    shutil.copytree(ROOT / "configs", configs)
    (configs / "experiment" / "typo.yaml").write_text(
        "# @package _global_\ntrainer:\n  max_epoch: 3\n"
    )
    GlobalHydra.instance().clear()
    with (
        initialize_config_dir(config_dir=str(configs), version_base="1.3"),
        pytest.raises((ConfigCompositionException, ConfigKeyError, ValidationError)) as info,
    ):
        hydra_compose(config_name="train", overrides=["experiment=typo"])
    assert "max_epoch" in str(info.value) + str(info.value.__cause__)


def test_unknown_target_parameter_names_the_key(compose, tmp_path: Path) -> None:
    cfg = compose("train", ["+model.optimizer.lrr=0.1"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"model\.optimizer\.lrr: not a parameter of torch\.optim\.Adam"):
        check_targets(cfg)


def test_wrong_type_for_a_target_parameter_names_the_key(compose, tmp_path: Path) -> None:
    cfg = compose("train", ["model.net.lin1_size=wide"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"model\.net\.lin1_size: expected int, got str 'wide'"):
        check_targets(cfg)


def test_unknown_group_option_fails(compose) -> None:
    with pytest.raises(ConfigCompositionException, match="trainer"):
        compose("train", ["trainer=tpu_pod"])


def test_callbacks_are_keyed_and_removable(compose, tmp_path: Path) -> None:
    cfg = compose("train", ["~callbacks.early_stopping"], output_dir=tmp_path)
    assert "early_stopping" not in cfg.callbacks
    assert cfg.callbacks.model_checkpoint.monitor == "val/acc"


def config_targets() -> list[str]:
    """Every `_target_` the shipped configs name."""
    import re

    found = {match for path in (ROOT / "configs").rglob("*.yaml")
             for match in re.findall(r"_target_:\s*([\w.]+)", path.read_text())}
    return sorted(found)


def test_targets_read_from_source_are_judged_as_their_imports() -> None:
    """The override precheck reads targets from source (no torch); where it decides, it must agree with the import.

    Names, kinds and the scalars each parameter takes must be what
    `inspect.signature` of the imported target gives, or the precheck would
    refuse a config that runs (or pass one the step then refuses).
    """
    from trainflow.config.static_targets import read_target
    from trainflow.config.validate import _accepted_scalars, _imported

    decided = set()
    for target in config_targets():
        static = read_target(target)
        if static is None:
            continue
        decided.add(target)
        real = _imported("_target_", target)
        assert real is not None, target
        assert [(p.name, p.kind) for p in static.signature.parameters.values()] == \
            [(p.name, p.kind) for p in real.signature.parameters.values()], target
        for name, param in real.signature.parameters.items():
            judged = _accepted_scalars(param.annotation)
            if judged is not None:  # only a string annotation that failed to evaluate judges less when imported
                assert _accepted_scalars(static.signature.parameters[name].annotation) == judged, (target, name)
        assert static.check_config in (None, real.check_config), target
    # the targets users override most must stay decided: a regression here silently moves errors into the run
    assert {t for t in config_targets() if t.startswith(("trainflow.", "torch.", "lightning."))} <= decided
    assert read_target("trainflow.models.components.timm_backbone.TIMMBackbone").check_config is not None
