"""MLproject default entry point: prepare_data -> train -> evaluate(promote), cached.

    uv run mlflow run . --env-manager local
    uv run mlflow run . -P experiment=example -P train.trainer.max_epochs=5 --env-manager local
"""

import hydra
from omegaconf import DictConfig

from trainflow.cli import accept_mlflow_params, run_and_exit
from trainflow.config.schema import register_configs
from trainflow.pipeline.main import STEPS
from trainflow.tracking.run import step_run

register_configs()


@hydra.main(version_base="1.3", config_path="../configs", config_name="main")
def main(cfg: DictConfig) -> None:
    from trainflow.pipeline.main import run_pipeline

    with step_run("main", cfg) as run:
        run_pipeline(cfg, run)


if __name__ == "__main__":
    accept_mlflow_params(step_prefixes=STEPS, config_name="main")
    run_and_exit(main)
