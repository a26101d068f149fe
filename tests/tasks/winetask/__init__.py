"""A task defined outside trainflow, as a user's would be: wine cultivars from 13 measurements.

It exists to prove the task contract (trainflow.data.task): its data module,
network, served model and configs live here, and the whole pipeline, predict
and `mlflow models serve` run it with no edit to trainflow. To use it, put
`tests/tasks` on PYTHONPATH and its configs on Hydra's search path:

    PYTHONPATH=tests/tasks uv run python steps/train.py \
        "hydra.searchpath=[file://$PWD/tests/tasks/configs]" experiment=wine_tiny
"""
