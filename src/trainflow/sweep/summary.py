"""The sweep's result on its parent run and console: best value and params, a trials table, the best trials.

Over the whole study (every machine's trials), not only this process's.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from trainflow.config.redact import redact_overrides
from trainflow.errors import TrainflowError
from trainflow.sweep.space import as_override
from trainflow.sweep.trial import ATTR_ERROR, ATTR_RUN, ATTR_WORKER
from trainflow.tracking import tags as tag
from trainflow.tracking.headline import log_best_trial_headline
from trainflow.tracking.run import metric_entities

if TYPE_CHECKING:
    import optuna

    from trainflow.tracking.run import StepRun

log = logging.getLogger(__name__)

# Rows of the best-trials table the sweep prints last; every trial is in sweep/trials.csv.
TABLE_ROWS = 5


@dataclass
class SweepResult:
    study_name: str
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    best_run_id: str | None
    states: dict[str, int]
    registered: str | None = None


def summarise(study: optuna.Study, run: StepRun, metric: str, overrides: list[str]) -> SweepResult:
    """Trial counts, best value and params, sweep/trials.csv and sweep/best.yaml on the parent run."""
    from mlflow.entities import Param, RunTag

    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    run.client.log_text(run.run_id, trials_csv(trials), "sweep/trials.csv")
    run.client.log_batch(run.run_id, metrics=metric_entities(
        {f"sweep/n_{s.lower()}": states.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL")}))
    if not states.get("COMPLETE"):
        raise TrainflowError(f"sweep: no trial completed ({dict(states)}); see the trial runs under run {run.run_id}")
    best = study.best_trial
    assert best.value is not None
    best_run = best.user_attrs.get(ATTR_RUN)
    run.client.log_batch(
        run.run_id,
        metrics=metric_entities({f"best/{metric}": best.value}),
        params=[Param(f"best.{k}", str(v)) for k, v in best.params.items()],
        tags=[RunTag(tag.SWEEP_BEST_TRIAL, str(best.number)), RunTag(tag.SWEEP_BEST_RUN_ID, str(best_run or ""))],
    )
    log_best_trial_headline(run.client, run.run_id, best_run)
    # a secret override would otherwise reach this artifact verbatim: pass secrets by the environment
    reproduce = redact_overrides([o for o in overrides if not o.startswith(("hparams_search=", "sweep."))])
    best_params = dict(best.params)
    run.client.log_text(run.run_id, yaml.safe_dump({
        "trial": best.number, "value": best.value, "run_id": best_run, "params": best_params,
        "command": "python steps/train.py " + " ".join([*reproduce, *(as_override(k, v)
                                                                     for k, v in best_params.items())]),
    }, sort_keys=False), "sweep/best.yaml")
    print_best_trials(study, metric)
    return SweepResult(study.study_name, best.value, best_params, best.number, best_run,
                       {k: int(v) for k, v in states.items()})


def summarise_quietly(study: optuna.Study, run: StepRun, metric: str, overrides: list[str]) -> None:
    """An interrupted sweep still shows the best of its finished trials."""
    try:
        summarise(study, run, metric, overrides)
    except Exception as exc:
        log.info("no summary for the interrupted sweep: %s", exc)


def print_best_trials(study: optuna.Study, metric: str, rows: int = TABLE_ROWS) -> None:
    """The study's best completed trials as a table: what a user reads after a sweep."""
    from optuna.trial import TrialState
    from rich.console import Console
    from rich.table import Table

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    maximize = study.direction.name == "MAXIMIZE"
    best = sorted(done, key=lambda t: float(t.value or 0.0), reverse=maximize)[:rows]
    names = sorted({k for t in best for k in t.params})
    states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    table = Table(title=f"best {len(best)} of {sum(states.values())} trials ("
                  + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + ")")
    for column in ("trial", metric, *names, "run"):
        table.add_column(column)
    for t in best:
        table.add_row(str(t.number), f"{t.value:.6g}", *(str(t.params.get(n, "")) for n in names),
                      str(t.user_attrs.get(ATTR_RUN, "")))
    Console(width=200).print(table)


def trials_csv(trials: list[optuna.trial.FrozenTrial]) -> str:
    """number, state, value, seconds, run id, worker, error, then one column per parameter."""
    names = sorted({k for t in trials for k in t.params})
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["number", "state", "value", "duration_s", "run_id", "worker", "error", *names])
    for t in trials:
        duration = t.duration.total_seconds() if t.duration is not None else ""
        writer.writerow([t.number, t.state.name, "" if t.value is None else t.value, duration,
                         t.user_attrs.get(ATTR_RUN, ""), t.user_attrs.get(ATTR_WORKER, ""),
                         t.user_attrs.get(ATTR_ERROR, ""), *(t.params.get(n, "") for n in names)])
    return out.getvalue()
