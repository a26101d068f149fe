"""MLproject entry point `sweep`: an Optuna study, one parent run, every trial a nested train run.

    mlflow run . -e sweep -P hparams_search=digits_optuna -P experiment=example --env-manager local
    uv run python steps/sweep.py hparams_search=digits_optuna experiment=example sweep.n_workers=2
    uv run python steps/train.py -m hparams_search=digits_optuna experiment=example   # the same study
"""

from pathlib import Path

import hydra
from omegaconf import DictConfig

from trainflow.cli import accept_mlflow_params, run_and_exit
from trainflow.config.schema import register_configs
from trainflow.tracking.run import step_run

register_configs()


@hydra.main(version_base="1.3", config_path="../configs", config_name="sweep")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from trainflow.sweep.driver import run_sweep  # after compose: config errors show at once
    from trainflow.sweep.worker import prewarm_workers

    # the worker processes import torch while this one opens its run and study
    prewarm_workers(cfg, Path(HydraConfig.get().runtime.output_dir))
    with step_run("sweep", cfg) as run:
        return run_sweep(cfg, run).best_value


if __name__ == "__main__":
    accept_mlflow_params(config_name="sweep")
    run_and_exit(main)
