"""`python steps/train.py -m hparams_search=...` as lightning-hydra-template users run a sweep."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from helpers import ROOT, TINY, all_runs, run_step, step_env
from trainflow.tracking import tags as tag

pytestmark = pytest.mark.slow

LR = "model.optimizer.lr"


def trial_runs(uri: str, parent_id: str) -> dict[int, object]:
    children = [r for r in all_runs(uri) if r.data.tags.get("mlflow.parentRunId") == parent_id]
    numbers = [int(r.data.tags[tag.TRIAL_NUMBER]) for r in children]
    assert len(numbers) == len(set(numbers)), f"a trial ran twice: {sorted(numbers)}"
    return dict(zip(numbers, children, strict=True))


def test_train_multirun_runs_the_study_and_an_aggressive_pruner_prunes(sqlite_uri, tmp_path) -> None:
    """`-m hparams_search=...` goes through trainflow's sweeper; a trial far behind the first is pruned,
    and the best trial's model is registered."""
    overrides = [
        *TINY, "trainer.max_epochs=2", "trainer.limit_train_batches=8", "hparams_search=digits_optuna",
        "sweep.n_trials=2",
        # prune after one completed trial, from the first epoch on
        "sweep.pruner={_target_:optuna.pruners.MedianPruner,n_startup_trials:1,n_warmup_steps:0}",
        f"sweep.params={{{LR}:{{low:1.0e-7}}}}",
        f"sweep.enqueue_trials=[{{{LR}:0.01}},{{{LR}:1.0e-7}}]",
        "sweep.register_best=true", "registry.model_name=digits-sweep",
        f"hydra.sweep.dir={tmp_path / 'multirun'}",
    ]
    done = run_step(["steps/train.py", "-m", *overrides], sqlite_uri)
    assert done.returncode == 0, done.stderr[-3000:]

    client = MlflowClient(sqlite_uri)
    parent = next(r for r in all_runs(sqlite_uri) if r.data.tags.get(tag.STEP) == "sweep")
    assert parent.info.status == "FINISHED"
    trials = trial_runs(sqlite_uri, parent.info.run_id)
    assert {n: r.data.tags[tag.TRIAL_STATE] for n, r in trials.items()} == {0: "COMPLETE", 1: "PRUNED"}
    assert [trials[n].info.status for n in (0, 1)] == ["FINISHED", "KILLED"]
    epochs = {n: len(client.get_metric_history(r.info.run_id, "val/acc")) for n, r in trials.items()}
    assert epochs == {0: 2, 1: 1}, "the pruned trial stops after its first epoch"
    assert "test/acc" not in trials[1].data.metrics, "nor is it tested"
    assert parent.data.tags[tag.SWEEP_BEST_TRIAL] == "0"
    # the parent's headline is its best trial's test figure: the runs table compares sweeps with pipelines
    assert parent.data.metrics["test/acc"] == trials[0].data.metrics["test/acc"]
    assert parent.data.tags[tag.HEADLINE_RUN] == trials[0].info.run_id
    assert parent.data.metrics["sweep/n_pruned"] == 1
    assert (tmp_path / "multirun" / "trials" / "0001").is_dir(), "trials write under hydra.sweep.dir"

    versions = client.search_model_versions("name = 'digits-sweep'")
    assert [(str(v.version), v.run_id) for v in versions] == [("1", trials[0].info.run_id)], "only the best, once"
    assert versions[0].tags[tag.TRIAL_NUMBER] == "0" and tag.DATA_DIGEST in versions[0].tags
    assert parent.data.tags[tag.OUTPUT] == "models:/digits-sweep/1"


def test_ctrl_c_ends_the_sweep_killed_and_keeps_finished_trials(sqlite_uri, tmp_path) -> None:
    """SIGINT mid-sweep (two workers): parent KILLED, exit 130, finished trials kept, stopped ones queued again,
    nothing left RUNNING."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    overrides = [*TINY, "trainer.max_epochs=3", "trainer.min_epochs=3", "trainer.limit_train_batches=20",
                 "hparams_search=digits_optuna", "sweep.n_trials=40", "sweep.n_workers=2", "sweep.pruner=null",
                 f"sweep.storage={storage}", "sweep.study_name=interrupted", f"hydra.run.dir={tmp_path / 'out'}"]
    proc = subprocess.Popen([sys.executable, "steps/sweep.py", *overrides], cwd=ROOT, env=step_env(sqlite_uri),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 180
        while sum(r.info.status == "FINISHED" for r in all_runs(sqlite_uri)
                  if r.data.tags.get("mlflow.parentRunId")) < 2:
            assert proc.poll() is None, "the sweep ended before two trials had finished"
            assert time.monotonic() < deadline, "two trials did not finish within 180 s"
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, output[-3000:]

    runs = all_runs(sqlite_uri)
    parent = next(r for r in runs if r.data.tags.get(tag.STEP) == "sweep")
    assert parent.info.status == "KILLED"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert 2 <= len(children) < 40 and not [r for r in runs if r.info.status == "RUNNING"]
    study = optuna.load_study(study_name="interrupted", storage=storage)
    states = [t.state.name for t in study.trials]
    assert "RUNNING" not in states and states.count("COMPLETE") >= 2
    finished = {r.info.run_id for r in children if r.info.status == "FINISHED"}
    assert finished == {t.user_attrs["mlflow_run_id"] for t in study.trials if t.state.name == "COMPLETE"}
    # each trial the Ctrl-C stopped went back to the queue with its params: the next sweep on this storage runs it
    stopped = [t for t in study.trials if t.state.name == "FAIL"]
    retries = {t.system_attrs["failed_trial"]: t for t in study.trials if "failed_trial" in t.system_attrs}
    assert sorted(retries) == [t.number for t in stopped], output[-3000:]
    assert all(retries[t.number].state.name == "WAITING" and retries[t.number].params == t.params for t in stopped)
    assert output.count("interrupted; failed, queued again") == len(stopped), output[-3000:]
    workers = subprocess.run(["pgrep", "-f", f"{tmp_path}/out/workers"], capture_output=True, text=True)
    assert workers.stdout == "", "no worker outlives the sweep"


def test_prewarmed_workers_end_when_the_sweep_fails_before_needing_them(sqlite_uri, tmp_path) -> None:
    """A sweep whose config fails after its worker was pre-warmed leaves no worker process behind."""
    overrides = [*TINY, "hparams_search=digits_optuna", "sweep.n_workers=2", "sweep.heartbeat_s=30",
                 "sweep.grace_s=10", f"hydra.run.dir={tmp_path / 'out'}"]
    done = subprocess.run([sys.executable, "steps/sweep.py", *overrides], cwd=ROOT, env=step_env(sqlite_uri),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=240)
    assert done.returncode == 1 and "sweep.grace_s" in done.stderr, done.stderr[-3000:]
    workers = subprocess.run(["pgrep", "-f", f"{tmp_path}/out/workers"], capture_output=True, text=True)
    assert workers.stdout == "", "no pre-warmed worker outlives the sweep"


# Console lines a sweep may print besides its config tree and its trials' lines (store and study
# creation, the summary table): the same for 3 trials as for 100.
FIXED_LINES = 30
TRIAL_LINE = re.compile(r"^trial (\d+) (COMPLETE|PRUNED|FAIL)\b")


def test_a_sweep_prints_its_tree_once_and_one_line_per_trial_and_logs_each_trials_output(
        sqlite_uri, tmp_path) -> None:
    """Trials print their tree, model summary and Lightning's messages: all into their run's trial.log."""
    noisy = [o for o in TINY if o not in ("extras.print_config=false", "callbacks.model_summary=null")]
    overrides = [*noisy, "hparams_search=digits_optuna", "sweep.n_trials=3", "sweep.n_workers=2",
                 f"hydra.run.dir={tmp_path / 'out'}"]
    done = run_step(["steps/sweep.py", *overrides], sqlite_uri, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (done.stdout + done.stderr).splitlines()
    print(f"the sweep's console ({len(lines)} lines):\n" + "\n".join(lines))

    assert sum(line.startswith("CONFIG") for line in lines) == 1, "the sweep's tree, printed once"
    tree = [line for line in lines if line[:1] in ("│", "├", "└", " ")]
    trial_lines = [line for line in lines if TRIAL_LINE.match(line)]
    assert sorted(int(TRIAL_LINE.match(line).group(1)) for line in trial_lines) == [0, 1, 2], "one line per trial"
    other = [line for line in lines if line not in trial_lines and line not in tree]
    assert len(other) <= FIXED_LINES, "\n".join(other)
    assert not [line for line in lines if "Seed set to" in line or "Trainable params" in line], "a trial leaked"

    client = MlflowClient(sqlite_uri)
    parent = next(r for r in all_runs(sqlite_uri) if r.data.tags.get(tag.STEP) == "sweep")
    assert "best 3 of 3 trials" in done.stdout, "the summary table of the best trials"
    for number, run in trial_runs(sqlite_uri, parent.info.run_id).items():
        line = next(line for line in trial_lines if TRIAL_LINE.match(line).group(1) == str(number))
        assert run.info.run_id in line and run.data.tags[tag.TRIAL_STATE] in line
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"trial.log", "config_tree.log"} <= names, names
        log = Path(client.download_artifacts(run.info.run_id, "trial.log", str(tmp_path / str(number)))).read_text()
        assert "CONFIG" in log and "Seed set to" in log and "Trainable params" in log, log[-2000:]
