"""Which pipeline steps main may run in its own process (pipeline/in_process.py), from the real configs,
and what a signal does to steps run there."""

from __future__ import annotations

import signal

import pytest
from omegaconf import OmegaConf

from helpers import TINY, all_runs, compose_config, run_step_here
from trainflow.pipeline.in_process import subprocess_reason
from trainflow.tracking import tags as tag


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


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped interrupt
def test_a_ctrl_c_python_dropped_inside_train_stops_main_before_evaluate(sqlite_uri, tmp_path) -> None:
    """Ctrl-C landing in a finalizer after train's last batch (no batch check sees it) is dropped by Python
    and train ends FINISHED; main, which runs it in its own process, still ends KILLED with exit 130 and
    starts no evaluate."""
    dropped = ("+train.callbacks.fault={_target_:trainflow.training.faults.SignalAt,moment:train_epoch_end,"
               "signal_name:SIGINT,in_finalizer:true}")
    overrides = [*(p for p in TINY if not p.startswith("registry.")), dropped, "++train.test=false",
                 "tracking.experiment_name=dropped", f"hydra.run.dir={tmp_path}"]
    done = run_step_here(["steps/main.py", *overrides], sqlite_uri)
    assert done.returncode == 128 + signal.SIGINT, done.stderr[-3000:]
    runs = {r.data.tags[tag.STEP]: r.info.status for r in all_runs(sqlite_uri)}
    assert runs == {"main": "KILLED", "prepare_data": "FINISHED", "train": "FINISHED"}
