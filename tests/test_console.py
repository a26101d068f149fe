"""What a user sees: known harmless warnings hidden, real ones shown, one summary line, system metrics."""

from __future__ import annotations

import logging
import os
import re
import threading
import warnings
from collections.abc import Iterator

import pytest
from mlflow import MlflowClient

from helpers import TINY, run_step
from trainflow.config.known_warnings import KNOWN_HARMLESS, WARNINGS, _DropKnown, filter_known_warnings
from trainflow.tracking.run import step_run
from trainflow.tracking.system_metrics import system_metrics

# Each known row as its library words it (copied from the console of a real pipeline run).
AS_EMITTED = {
    "CloudPickle": "Passing a Python object as `python_model` causes it to be serialized using CloudPickle, it "
                   "requires exercising caution",
    "pip version": "Failed to resolve installed pip version. ``pip`` will be added to conda.yaml environment spec",
    "LeafSpec": "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
                "treespec.is_leaf()` instead.",
    "log_every_n_steps": "The number of training batches (20) is smaller than the logging interval "
                         "Trainer(log_every_n_steps=50). Set a lower value for log_every_n_steps",
    "litlogger": "💡 Tip: For seamless cloud logging and experiment tracking, try installing "
                 "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger",
    "srun": "The `srun` command is available on your system but is not used. HINT: If your intention is to run "
            "Lightning on SLURM, prepend your python command with `srun` like so: srun python steps/train.py "
            "experiment=examp ...",
}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def shown(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[warnings.WarningMessage], _Records]]:
    """Warnings and known loggers' records that get through, outside any SLURM job; the process's filters
    restored after."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    showwarning = warnings.showwarning
    handler = _Records()
    loggers = {logging.getLogger(r.source) for r in KNOWN_HARMLESS if r.source != WARNINGS}
    for logger in loggers:
        logger.addHandler(handler)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught, handler
    for logger in {*loggers, logging.getLogger("py.warnings")}:
        logger.removeHandler(handler)
        for f in [f for f in logger.filters if isinstance(f, _DropKnown)]:
            logger.removeFilter(f)
    warnings.showwarning = showwarning


def _emit_all() -> None:
    for row in KNOWN_HARMLESS:
        text = next(t for key, t in AS_EMITTED.items() if re.search(row.pattern, t))
        if row.source == WARNINGS:
            warnings.warn(text, UserWarning, stacklevel=1)
        else:
            logging.getLogger(row.source).warning(text)
    warnings.warn("a real problem: val/acc is NaN", UserWarning, stacklevel=1)
    logging.getLogger("mlflow.pyfunc").warning("a real problem: model signature mismatch")


def test_each_known_row_matches_what_its_library_prints() -> None:
    for row in KNOWN_HARMLESS:
        assert [k for k, t in AS_EMITTED.items() if re.search(row.pattern, t)], row


def test_known_warnings_are_hidden_and_real_ones_still_show(shown) -> None:
    caught, records = shown
    filter_known_warnings()
    _emit_all()
    assert [str(w.message) for w in caught] == ["a real problem: val/acc is NaN"]
    assert records.messages == ["a real problem: model signature mismatch"]


def test_inside_a_slurm_job_the_srun_hint_shows_and_the_rest_stay_hidden(shown, monkeypatch) -> None:
    """Outside a job the hint is noise (any laptop with SLURM's client tools); inside one it may be the bug."""
    caught, _ = shown
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    filter_known_warnings()
    _emit_all()
    assert [str(w.message) for w in caught] == [AS_EMITTED["srun"], "a real problem: val/acc is NaN"]


def test_without_the_filter_every_warning_shows(shown) -> None:
    caught, records = shown
    _emit_all()
    assert len(caught) == sum(r.source == WARNINGS for r in KNOWN_HARMLESS) + 1
    assert len(records.messages) == sum(r.source != WARNINGS for r in KNOWN_HARMLESS) + 1


def _monitor_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]


@pytest.mark.parametrize("enabled", [True, False])
def test_system_metrics_sample_only_when_switched_on(compose, tmp_path, sqlite_uri, tracking_env, enabled) -> None:
    tracking_env(sqlite_uri)
    cfg = compose("train", [*TINY, f"tracking.system_metrics={str(enabled).lower()}"], output_dir=tmp_path)
    with step_run("train", cfg) as run, system_metrics(run, cfg.tracking):
        inside = _monitor_threads()
    assert inside == (["SystemMetricsMonitor"] if enabled else [])
    assert _monitor_threads() == []


@pytest.mark.slow
def test_a_train_step_prints_a_summary_line_and_no_known_warning(sqlite_uri) -> None:
    """The registered-model path is where most of the known warnings come from."""
    overrides = [p for p in TINY if not p.startswith(("registry.", "extras.print_config"))]
    done = run_step(["steps/train.py", *overrides, "registry.model_name=console-test",
                     "tracking.system_metrics_interval_s=1"], sqlite_uri)
    assert done.returncode == 0, done.stderr[-3000:]
    console = done.stdout + done.stderr
    for row in KNOWN_HARMLESS:  # srun's hint among them: SLURM's client tools are installed here
        if not (row.unless_env and row.unless_env in os.environ):
            assert not re.search(row.pattern, console), row.pattern
    client = MlflowClient(sqlite_uri)
    run = client.search_runs([client.get_experiment_by_name("trainflow").experiment_id])[0]
    summary = [line for line in done.stdout.splitlines() if line.startswith("train output: ")]
    assert len(summary) == 1
    assert summary[0].startswith(f"train output: models:/console-test/1 · run {run.info.run_id} in {sqlite_uri}")
    assert done.stdout.count("CONFIG") == 1, "the tree, once"
    assert run.data.metrics["system/cpu_utilization_percentage"] >= 0
    assert run.data.metrics["system/system_memory_usage_megabytes"] > 0
