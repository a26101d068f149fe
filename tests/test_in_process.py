"""Which pipeline steps main may run in its own process (pipeline/in_process.py), from the real configs."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from helpers import compose_config
from trainflow.pipeline.in_process import subprocess_reason


def resolved(overrides: list[str]) -> dict:
    cfg = compose_config("train", overrides)
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


@pytest.mark.parametrize("overrides", [["experiment=example"], ["trainer=cpu"], ["trainer=gpu"], ["trainer=mps"],
                                       ["trainer=cpu", "trainer.devices=auto"]])
def test_one_device_trains_inside_main(overrides) -> None:
    assert subprocess_reason(resolved(overrides)) is None


@pytest.mark.parametrize(("overrides", "reason"), [
    (["trainer=ddp"], "trainer.devices=4"),
    (["trainer=ddp_sim"], "trainer.devices=2"),
    (["trainer=gpu", "trainer.devices=auto"], "trainer.devices=auto"),  # every GPU there is: DDP
    (["trainer=gpu", "trainer.num_nodes=2"], "trainer.num_nodes=2"),
    (["trainer=ddp", "trainer.devices=1"], "trainer.strategy=ddp"),
])
def test_several_devices_nodes_or_ddp_get_their_own_process(overrides, reason) -> None:
    """Lightning's DDP launcher starts `sys.argv` again for each rank; inside main that would be main."""
    assert subprocess_reason(resolved(overrides)) == reason


def test_steps_without_a_trainer_run_inside_main() -> None:
    assert subprocess_reason(OmegaConf.to_container(compose_config("prepare_data", []))) is None  # type: ignore[arg-type]
