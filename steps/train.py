"""MLproject entry point `train`: fit and test one model in one tracked run.

    mlflow run . -e train -P experiment=example --env-manager local
    uv run python steps/train.py experiment=example
"""

import hydra
from omegaconf import DictConfig

from trainflow.cli import accept_mlflow_params, run_and_exit
from trainflow.config.schema import register_configs
from trainflow.tracking.run import step_run
from trainflow.tracking.system_metrics import system_metrics

register_configs()


@hydra.main(version_base="1.3", config_path="../configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from trainflow.training.train import train  # after compose: config errors show at once

    with step_run("train", cfg) as run, system_metrics(run, cfg.tracking):
        return train(cfg, run).monitored


if __name__ == "__main__":
    accept_mlflow_params(config_name="train")
    run_and_exit(main)
