"""Runs and what is logged to them: the step contract, params, tags, datasets, the Lightning logger, the registry.

Tracking owns every step's own run (`run.step_run` starts or attaches to it and
ends it) and everything the run holds. Other layers use MLflow only through
the run they are handed (`StepRun.client`) or for MLflow's own APIs that are
not about our runs' bookkeeping: `trainflow.fetch` downloads artifacts,
`pipeline` launches steps with `mlflow.projects` and loads pyfuncs for predict,
`sweep` opens and ends trial runs, `training` reads checkpoints and logs
metric entities. Data, models and config never import MLflow
(`lint-imports`, pyproject.toml).
"""
