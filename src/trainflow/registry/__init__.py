"""What knows tasks and models in MLflow's registry: a trained model logged as one pyfunc, its versions,
aliases and card.

Kept apart from `trainflow.tracking` (the step contract: runs, tags, params,
logger, console), which knows no task: this package imports the tasks'
serving specs, so it sits above tracking and below training.
"""
