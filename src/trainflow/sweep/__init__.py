"""Optuna studies as MLflow runs: the sweep is one run, every trial a train run nested under it.

`space` reads the search space, `study` builds and shares the Optuna study,
`trial` runs one trial as a train step, `worker` is the loop that takes
trials from the study (in the sweep's process and in worker processes), and
`driver` is the sweep step itself. Importing this package imports nothing
heavy: Optuna, torch and MLflow load when a sweep runs.
"""
