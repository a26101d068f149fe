"""MLproject entry point `predict`: a model's predictions for images or a parquet file, in its own run.

    mlflow run . -e predict -P model_uri=models:/digits-images-classifier@champion -P input=IMAGES \
        --env-manager local
    uv run python steps/predict.py model_uri=models:/digits-classifier/1 input=runs:/<id>/dataset/test.parquet
"""

import hydra
from omegaconf import DictConfig

from trainflow.cli import accept_mlflow_params, run_and_exit
from trainflow.config.schema import register_configs
from trainflow.tracking.run import step_run

register_configs()


@hydra.main(version_base="1.3", config_path="../configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    from trainflow.pipeline.predict import predict

    with step_run("predict", cfg) as run:
        predict(cfg, run)


if __name__ == "__main__":
    accept_mlflow_params(config_name="predict")
    run_and_exit(main)
