"""Sweeps: the study code on an embedded store (in this process + worker processes), and its pieces.

`steps/train.py -m hparams_search=...` end to end: tests/test_sweep_e2e.py.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from pathlib import Path

import optuna
import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from mlflow import MlflowClient

from helpers import ROOT, TINY, all_runs
from trainflow.config.run_paths import run_path_keys
from trainflow.errors import ConfigError
from trainflow.sweep import worker
from trainflow.sweep.driver import run_sweep, start_workers, sweep_plan
from trainflow.sweep.recovery import ENDED, Lease, end_lost_sweeps
from trainflow.sweep.space import as_override, search_space
from trainflow.sweep.study import StudySpec, build_storage, claim_trial, create_and_queue, open_study, queue_trials
from trainflow.sweep.worker import prewarm_workers
from trainflow.tracking import tags as tag
from trainflow.tracking.run import step_run

# TINY trials of digits_optuna; weight decay is pinned per trial, and the first
# trial's is one Adam refuses, so that trial raises inside fit.
WD = "model.optimizer.weight_decay"
LR = "model.optimizer.lr"
SWEEP = [*TINY, "hparams_search=digits_optuna", "sweep.n_trials=4",
         f"sweep.params={{{WD}:{{type:categorical,choices:[0.0,-1.0]}}}}",
         f"sweep.enqueue_trials=[{{{WD}:-1.0}},{{{WD}:0.0}},{{{WD}:0.0}},{{{WD}:0.0}}]"]


def test_one_parent_run_a_child_run_per_trial_and_a_raising_trial_does_not_stop_the_sweep(
        compose, tmp_path, sqlite_uri, tracking_env) -> None:
    tracking_env(sqlite_uri)
    cfg = compose("sweep", SWEEP, output_dir=tmp_path / "out")
    with step_run("sweep", cfg) as run:
        result = run_sweep(cfg, run)

    client = MlflowClient(sqlite_uri)
    runs = {r.info.run_id: r for r in all_runs(sqlite_uri)}
    parent = runs.pop(run.run_id)
    assert parent.info.status == "FINISHED" and parent.data.tags[tag.STEP] == "sweep"
    assert len(runs) == 4 and {r.data.tags["mlflow.parentRunId"] for r in runs.values()} == {run.run_id}
    by_number = {int(r.data.tags[tag.TRIAL_NUMBER]): r for r in runs.values()}
    assert sorted(by_number) == [0, 1, 2, 3]

    # the trial that raised is recorded as failed; the sweep went on
    failed = by_number[0]
    assert failed.info.status == "FAILED" and failed.data.tags[tag.TRIAL_STATE] == "FAIL"
    assert "Invalid weight_decay value: -1.0" in failed.data.tags[tag.ERROR]
    assert result.states == {"FAIL": 1, "COMPLETE": 3}
    for number in (1, 2, 3):
        trial = by_number[number]
        assert trial.info.status == "FINISHED" and trial.data.tags[tag.TRIAL_STATE] == "COMPLETE"
        assert trial.data.tags[tag.STEP] == "train" and "val/acc_best" in trial.data.metrics
        saved = {a.path for a in client.list_artifacts(trial.info.run_id, "checkpoints")}
        assert saved == {"checkpoints/best"}, "a trial is never resumed: no `last` to save every epoch"

    # best value and params on the parent, from the best trial's run
    best = max((by_number[n] for n in (1, 2, 3)), key=lambda r: r.data.metrics["val/acc_best"])
    assert parent.data.tags[tag.SWEEP_BEST_RUN_ID] == best.info.run_id == result.best_run_id
    assert parent.data.metrics["best/val/acc_best"] == pytest.approx(best.data.metrics["val/acc_best"])
    for key in ("model.optimizer.lr", "data.batch_size", "model.net.lin1_size"):
        assert float(parent.data.params[f"best.{key}"]) == pytest.approx(float(best.data.params[key]))
    table = list(csv.DictReader(io.StringIO(Path(client.download_artifacts(
        run.run_id, "sweep/trials.csv", str(tmp_path))).read_text())))
    assert [row["state"] for row in table] == ["FAIL", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert {row["run_id"] for row in table} == set(runs)
    assert parent.data.tags[tag.OUTPUT] == f"runs:/{best.info.run_id}"


@pytest.mark.slow
def test_two_worker_processes_share_one_sqlite_study(compose, tmp_path, sqlite_uri, tracking_env,
                                                     monkeypatch) -> None:
    """Six trials, this process + one worker process, no trial twice; attached as under `mlflow run -e sweep`."""
    tracking_env(sqlite_uri)
    client = MlflowClient(sqlite_uri)
    experiment = client.create_experiment("sweep-workers", artifact_location=(tmp_path / "mlruns").as_uri())
    created = client.create_run(experiment).info.run_id  # what `mlflow run` makes and names in the environment
    monkeypatch.setenv("MLFLOW_RUN_ID", created)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    cfg = compose("sweep", [*TINY, "hparams_search=digits_optuna", "sweep.n_trials=6", "sweep.n_workers=2",
                            f"sweep.storage={storage}", "sweep.study_name=digits-workers"], output_dir=tmp_path / "out")
    with step_run("sweep", cfg) as run:
        result = run_sweep(cfg, run)

    assert run.run_id == created and client.get_run(created).info.status == "FINISHED"
    children = [r for r in all_runs(sqlite_uri) if r.info.run_id != created]
    assert {r.data.tags.get("mlflow.parentRunId") for r in children} == {created}
    numbers = sorted(int(r.data.tags[tag.TRIAL_NUMBER]) for r in children)
    assert numbers == [0, 1, 2, 3, 4, 5], "six trials, none twice"
    assert {r.data.tags[tag.TRIAL_WORKER] for r in children} == {"0", "1"}, "both processes ran trials"
    study = optuna.load_study(study_name="digits-workers", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 6 and result.states == {"COMPLETE": 6}
    assert {t.user_attrs["mlflow_run_id"] for t in study.trials} == {r.info.run_id for r in children}
    assert client.get_run(created).data.params[f"best.{LR}"] == str(study.best_params[LR])
    # each trial writes under its own folder, but the params that differ between trials are swept ones only
    keys = set().union(*(r.data.params for r in children))
    differing = {k for k in keys if len({r.data.params.get(k) for r in children}) > 1}
    assert differing and differing <= set(study.best_params), differing
    assert not {k for k in keys if k.startswith("paths.") or k.endswith(("dirpath", "root_dir"))}


def test_per_run_folders_are_the_paths_and_what_interpolates_the_run_folders(compose, tmp_path) -> None:
    cfg = compose("sweep", [*TINY, "hparams_search=digits_optuna",
                            "+extra.nested=${callbacks.model_checkpoint.dirpath}/x",
                            "+extra.data_file=${paths.root_dir}/data.csv"], output_dir=tmp_path / "out")
    keys = run_path_keys(cfg)
    assert {"callbacks.model_checkpoint.dirpath", "trainer.default_root_dir", "paths.output_dir", "paths.cache_dir",
            "extra.nested"} <= keys, "directly, through Hydra's runtime, and through another per-run key"
    assert not {k for k in keys if k.startswith(("model.", "data.", "sweep.", "trainer.max"))}
    assert "extra.data_file" not in keys, "a file under the project root says what the run read: a param"


@pytest.mark.slow
def test_a_prewarmed_worker_is_handed_the_sweeps_run_and_works_the_queue(compose, tmp_path, sqlite_uri,
                                                                          tracking_env) -> None:
    """Started before the sweep's run exists; start_workers hands it the run's store and experiment, no cold start."""
    tracking_env(sqlite_uri)
    cfg = compose("sweep", [*TINY, "hparams_search=digits_optuna", "sweep.n_trials=2", "sweep.n_workers=2"],
                  output_dir=tmp_path / "out")
    prewarm_workers(cfg, tmp_path / "out")
    warm = [w.proc for w in worker._WARM.values()]
    assert len(warm) == 1 and warm[0].poll() is None
    with step_run("sweep", cfg) as run:
        plan = sweep_plan(cfg, run.output_dir, run.run_id)
        create_and_queue(plan.study, plan.n_trials, plan.enqueue)
        assert start_workers(plan, run) == warm, "the pre-warmed process, not a new one"
        assert warm[0].wait(timeout=300) == 0  # this process works no trial: the worker takes the whole queue

    children = [r for r in all_runs(sqlite_uri) if r.data.tags.get("mlflow.parentRunId") == run.run_id]
    assert sorted(int(r.data.tags["trainflow.trial.number"]) for r in children) == [0, 1]
    assert {r.data.tags["trainflow.trial.worker"] for r in children} == {"1"}
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {r.info.experiment_id for r in children} == {run.experiment_id}


def test_workers_racing_for_the_queue_claim_each_trial_once(tmp_path) -> None:
    """The study's queue is its budget: 4 claimers on one sqlite file, 12 trials, none twice, none extra."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    spec = StudySpec(name="race", storage=url, direction="maximize")
    queue_trials(open_study(spec, build_storage(url)), 12, [])
    claimed: list[int] = []

    def claim_all() -> None:
        study = open_study(spec, build_storage(url))
        while (trial := claim_trial(study, url)) is not None:
            claimed.append(trial.number)
            study.tell(trial, 1.0)

    threads = [threading.Thread(target=claim_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == list(range(12))
    assert len(open_study(spec, build_storage(url)).trials) == 12


def test_the_next_sweep_ends_a_lost_machines_parent_failed_and_leaves_live_ones(tmp_path, sqlite_uri) -> None:
    """A machine killed when no other was there to notice: its lease is stale, its run still RUNNING."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = open_study(StudySpec(name="leases", storage=url, direction="maximize"), build_storage(url))
    client = MlflowClient(sqlite_uri)
    lost, alive, ended = (client.create_run("0").info.run_id for _ in range(3))
    study.set_user_attr(tag.STUDY_LEASE_PREFIX + lost, time.time() - 120)
    lease = Lease(study, alive, interval_s=1).start()
    study.set_user_attr(tag.STUDY_LEASE_PREFIX + ended, time.time() - 120)
    client.set_terminated(ended, "FINISHED")
    try:
        assert sorted(end_lost_sweeps(study, client, grace_s=60)) == sorted([lost, ended])
    finally:
        lease.end()
    assert client.get_run(lost).info.status == "FAILED"
    assert "sweep machine lost: no heartbeat for 12" in client.get_run(lost).data.tags[tag.ERROR]
    assert client.get_run(alive).info.status == "RUNNING", "a live lease is left alone"
    assert client.get_run(ended).info.status == "FINISHED", "a run that ended keeps its status"
    attrs = study.user_attrs
    assert [attrs[tag.STUDY_LEASE_PREFIX + r] for r in (lost, ended, alive)] == [ENDED] * 3
    assert end_lost_sweeps(study, client, grace_s=60) == [], "a closed lease is not lost twice"


@pytest.mark.parametrize("value", [0.001, 1e-05, 3, True, None, "adam", "32", "it's"])
def test_sampled_values_become_overrides_of_the_same_type(value) -> None:
    parsed = OverridesParser.create().parse_overrides([as_override("a.b", value)])[0]
    assert parsed.key_or_group == "a.b" and parsed.value() == value and type(parsed.value()) is type(value)


@pytest.mark.parametrize(("params", "message"), [
    ({}, "empty"),
    ({"lr": {"type": "uniform", "low": 0, "high": 1}}, r"sweep\.params\.lr\.type"),
    ({"lr": {"type": "float", "low": 1, "high": 1}}, r"sweep\.params\.lr: needs low < high"),
    ({"lr": {"type": "float", "low": 0, "high": 1, "log": True}}, r"sweep\.params\.lr\.low: a log scale"),
    ({"bs": {"type": "categorical", "choices": []}}, r"sweep\.params\.bs\.choices"),
    ({"w": {"type": "int", "low": 32, "high": 256, "step": 32, "log": True}}, r"sweep\.params\.w: step and log"),
])
def test_a_bad_search_space_names_the_key(params, message) -> None:
    with pytest.raises(ConfigError, match=message):
        search_space(params)


@pytest.mark.parametrize(("overrides", "message"), [
    ([], "pass hparams_search="),
    (["hparams_search=digits_optuna", "sweep.register_best=true", "registry.model_name=null"],
     "registry.model_name is null"),
    (["hparams_search=digits_optuna", "trainer=ddp_sim"], "use trainer.strategy=ddp_spawn"),
    (["hparams_search=digits_optuna", "sweep.direction=up"], "sweep.direction"),
])
def test_a_bad_sweep_config_fails_before_any_study(compose, tmp_path, overrides, message) -> None:
    cfg = compose("sweep", overrides, output_dir=tmp_path)
    with pytest.raises(ConfigError, match=message):
        sweep_plan(cfg, tmp_path, "run")


def test_every_hparams_search_config_composes_with_train_and_sweep(compose, tmp_path) -> None:
    for path in sorted((ROOT / "configs" / "hparams_search").glob("*.yaml")):
        for config_name in ("train", "sweep"):
            cfg = compose(config_name, [f"hparams_search={path.stem}", "experiment=example"], output_dir=tmp_path)
            plan = sweep_plan(cfg, tmp_path, "run")
            assert plan.space and plan.metric == cfg.optimized_metric
        assert compose("train", [], output_dir=tmp_path).sweep is None, "a plain train run has no study"


def test_several_workers_without_storage_share_a_sqlite_file(compose, tmp_path) -> None:
    cfg = compose("sweep", ["hparams_search=digits_optuna", "sweep.n_workers=2"], output_dir=tmp_path)
    plan = sweep_plan(cfg, tmp_path, "run")
    assert plan.study.storage == f"sqlite:///{tmp_path.resolve() / 'optuna.db'}"
    assert "trainer.enable_progress_bar=false" in plan.overrides


def test_hydra_sweep_syntax_is_refused_by_the_sweeper(capsys) -> None:
    """`-m lr=0.1,0.01` would be a grid for Hydra's basic sweeper; with hparams_search the study samples."""
    from hydra_plugins.trainflow_sweeper.trainflow_sweeper import refuse_sweep_syntax

    refuse_sweep_syntax(["experiment=example", f"{LR}=0.1"])
    with pytest.raises(SystemExit) as info:
        refuse_sweep_syntax([f"{LR}=0.1,0.01"])
    assert info.value.code == 2 and "sweep.params" in capsys.readouterr().err


def test_a_machine_lost_as_the_study_ends_is_ended_failed_by_the_one_that_finishes(
        compose, tmp_path, sqlite_uri, tracking_env) -> None:
    """A lost machine's lease can beat a little after its trial's heartbeat (a beat's phase, a busy machine's
    lag), so it still looked alive when its trial was failed as stale; nobody looked again and its parent
    stayed RUNNING. Here its lease is just young enough to pass the sweep's start; the end catches it."""
    tracking_env(sqlite_uri)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    client = MlflowClient(sqlite_uri)
    lost = client.create_run(client.create_experiment("lost-machine")).info.run_id
    study = optuna.create_study(study_name="lost", storage=storage, direction="maximize")
    cfg = compose("sweep", [*TINY, "hparams_search=digits_optuna", "sweep.n_trials=1", "sweep.pruner=null",
                            f"sweep.storage={storage}", "sweep.study_name=lost", "sweep.heartbeat_s=20",
                            "sweep.grace_s=60"], output_dir=tmp_path / "out")
    study.set_user_attr(tag.STUDY_LEASE_PREFIX + lost, time.time() - (60 - 20))  # older than grace - a beat
    with step_run("sweep", cfg) as run:
        run_sweep(cfg, run)
    ended = client.get_run(lost)
    assert ended.info.status == "FAILED" and "sweep machine lost" in ended.data.tags[tag.ERROR]
    assert optuna.load_study(study_name="lost", storage=storage).user_attrs[tag.STUDY_LEASE_PREFIX + lost] == ENDED
    assert client.get_run(run.run_id).info.status == "FINISHED"
