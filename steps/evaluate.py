"""MLproject entry point `evaluate`: test a checkpoint or model in its own run.

    mlflow run . -e evaluate -P ckpt_path=runs:/<run_id>/checkpoints/best --env-manager local
"""

import hydra
from omegaconf import DictConfig

from trainflow.cli import accept_mlflow_params, run_and_exit
from trainflow.config.schema import register_configs
from trainflow.tracking.run import step_run

register_configs()


@hydra.main(version_base="1.3", config_path="../configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    from trainflow.training.evaluate import evaluate

    with step_run("evaluate", cfg) as run:
        evaluate(cfg, run)


if __name__ == "__main__":
    accept_mlflow_params(config_name="evaluate")
    run_and_exit(main)
