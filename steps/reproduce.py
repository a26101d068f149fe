"""MLproject entry point `reproduce`: run a logged train, evaluate, prepare_data or main run again, as it ran.

    mlflow run . -e reproduce -P run_id=<id> [-P allow_drift=true] --env-manager local
    uv run python steps/reproduce.py run_id=<id> [allow_drift=true]
"""

import sys

from trainflow.cli import mlflow_params_to_overrides
from trainflow.fast_exit import exit_now
from trainflow.pipeline.reproduce import reproduce
from trainflow.project import project_root

if __name__ == "__main__":
    exit_now(reproduce(mlflow_params_to_overrides(sys.argv[1:]), project_root()))
