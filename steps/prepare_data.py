"""MLproject entry point `prepare_data`: a data source becomes a dataset artifact.

    mlflow run . -e prepare_data --env-manager local
    uv run python steps/prepare_data.py data=digits
"""

import hydra
from omegaconf import DictConfig

from trainflow.cli import accept_mlflow_params, run_and_exit
from trainflow.config.schema import register_configs
from trainflow.tracking.run import step_run

register_configs()


@hydra.main(version_base="1.3", config_path="../configs", config_name="prepare_data")
def main(cfg: DictConfig) -> None:
    from trainflow.pipeline.prepare import prepare_data

    with step_run("prepare_data", cfg) as run:
        prepare_data(cfg, run)


if __name__ == "__main__":
    accept_mlflow_params(config_name="prepare_data")
    run_and_exit(main)
