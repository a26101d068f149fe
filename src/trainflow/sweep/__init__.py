"""Optuna studies as MLflow runs: the sweep is one run, every trial a train run nested under it.

`space` reads the search space, `study` builds and shares the Optuna study
(`optuna_adapter` holds the only uses of Optuna's private API), `trial` runs
one trial as a train step (`capture` sends its output to its run), `loop`
takes trials from the study (in the sweep's process and in worker processes,
which `worker` starts and stops), `recovery` handles lost machines,
`summary` writes the result, and `driver` is the sweep step itself.
Importing this package imports nothing heavy: Optuna, torch and MLflow load
when a sweep runs.
"""
