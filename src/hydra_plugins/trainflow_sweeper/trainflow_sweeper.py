"""`python steps/train.py -m hparams_search=<name>` as lightning-hydra-template users type it.

hydra-optuna-sweeper pins optuna < 3, so this sweeper stands in for it: it
hands the whole command line to the same study code `steps/sweep.py` runs
(`trainflow.sweep.driver.run_sweep` inside `step_run("sweep", ...)`), so both
commands make the same parent run with the same trial runs under it.

Hydra imports every `hydra_plugins` module whenever it composes a config, so
this module imports nothing heavy; trainflow.sweep is imported when a sweep runs.
(No `from __future__ import annotations`: Hydra executes plugin modules
without registering them in sys.modules, which string annotations on a
dataclass need.)
"""

import sys
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict


@dataclass
class TrainflowOptunaSweeperConf:
    _target_: str = "hydra_plugins.trainflow_sweeper.trainflow_sweeper.TrainflowOptunaSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="trainflow_optuna", node=TrainflowOptunaSweeperConf,
                             provider="trainflow")


class TrainflowOptunaSweeper(Sweeper):
    """One Hydra job (the sweep step) whose trials the study schedules itself."""

    def __init__(self) -> None:
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        # The task function (the train step) is not called: trials run through
        # trainflow.sweep, in this process and in worker processes.
        self.hydra_context = hydra_context
        self.config = config

    def sweep(self, arguments: list[str]) -> Any:
        from hydra.core.utils import run_job

        assert self.hydra_context is not None and self.config is not None
        refuse_sweep_syntax(arguments)
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(arguments))
        with open_dict(config):
            config.hydra.job.id = "sweep"
            config.hydra.job.num = 0
        # Output dir = hydra.sweep.dir; trials write under <dir>/trials/<number>.
        job = run_job(task_function=sweep_task, config=config, job_dir_key="hydra.sweep.dir", job_subdir_key=None,
                      hydra_context=self.hydra_context)
        return [job.return_value]  # re-raises what the sweep raised


def sweep_task(cfg: DictConfig) -> float | None:
    """The body of steps/sweep.py's main."""
    from trainflow.sweep.driver import run_sweep
    from trainflow.tracking.run import step_run

    with step_run("sweep", cfg) as run:
        return run_sweep(cfg, run).best_value


def refuse_sweep_syntax(arguments: list[str]) -> None:
    """`lr=0.1,0.01` would be a grid for Hydra's basic sweeper; here the study samples."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for override in OverridesParser.create().parse_overrides(arguments):
        if override.is_sweep_override():
            print(f"error: {override.input_line}: sweep values go in sweep.params of the hparams_search config",
                  file=sys.stderr, flush=True)
            raise SystemExit(2)
