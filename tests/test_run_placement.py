"""Which run a step logs into, under which name, and when attaching to a run is refused (tracking/placement.py).

Runs handed over by id are made as `mlflow run` makes them (`create_run`,
`MLFLOW_RUN_ID` in the environment, the `-P` values logged as typed), and the
step is the real contract around an empty body: what is checked here is
decided before any training would start.
"""

from __future__ import annotations

import pytest
from mlflow import MlflowClient
from mlflow.utils.name_utils import _generate_random_name

from helpers import TINY
from trainflow.tracking import tags as tag
from trainflow.tracking.run import step_run
from trainflow.tracking.run_name import is_generated_name

DERIVED = "train-example-digits max_epochs=1 limit_train_batches=4 limit_val_batches=2 limit_test_batches=2"


@pytest.fixture
def handed_over(sqlite_uri, tracking_env, monkeypatch, tmp_path):
    """A run made outside the step, as `mlflow run` or a user does, whose id the step finds in its environment."""
    tracking_env(sqlite_uri)
    client = MlflowClient(sqlite_uri)
    experiment = client.create_experiment("handed-over", artifact_location=(tmp_path / "mlruns").as_uri())

    def make(run_name: str | None = None, params: dict[str, str] | None = None, tags: dict[str, str] | None = None,
             status: str | None = None) -> str:
        run_id = client.create_run(experiment, run_name=run_name, tags=tags).info.run_id
        for key, value in (params or {}).items():
            client.log_param(run_id, key, value)
        if status:
            client.set_terminated(run_id, status)
        monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
        monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment)
        return run_id

    return client, make


def run_empty_step(compose, tmp_path, overrides: list[str] = ()) -> str:
    cfg = compose("train", [*TINY, *overrides], output_dir=tmp_path / "out")
    with step_run("train", cfg) as run:
        pass
    return run.run_id


def test_a_name_the_user_gave_the_run_is_kept(compose, tmp_path, handed_over) -> None:
    """`mlflow run --run-name`, `mlflow.projects.run(run_name=)` and a run a user created all arrive so."""
    client, make = handed_over
    run_id = make(run_name="my-name")
    assert run_empty_step(compose, tmp_path) == run_id
    run = client.get_run(run_id)
    assert run.info.run_name == "my-name" and run.info.status == "FINISHED"
    assert run.data.tags[tag.RUN_NAME] == DERIVED, "the derived name stays on the run for the UI's group-by"


def test_mlflows_random_name_gives_way_to_the_derived_one(compose, tmp_path, handed_over) -> None:
    client, make = handed_over
    run_id = make()
    assert is_generated_name(client.get_run(run_id).info.run_name)
    run_empty_step(compose, tmp_path)
    run = client.get_run(run_id)
    assert run.info.run_name == DERIVED == run.data.tags[tag.RUN_NAME]


def test_tracking_run_name_names_the_run(compose, tmp_path, handed_over) -> None:
    client, make = handed_over
    run_id = make(run_name="made-by-mlflow-run")
    run_empty_step(compose, tmp_path, ["tracking.run_name=from the config"])
    assert client.get_run(run_id).info.run_name == "from the config"


def test_mlflows_generated_names_are_told_from_users_names() -> None:
    assert all(is_generated_name(_generate_random_name()) for _ in range(200))
    for chosen in ("my-name", "lr-sweep-3", "train", "bold-owl", "bold-owl-5000", "Bold-Owl-1", "bold owl 1"):
        assert not is_generated_name(chosen), chosen


@pytest.mark.parametrize(("tags", "status", "ran"), [
    ({tag.STEP: "train"}, "FINISHED", "already ran step train (FINISHED)"),
    ({tag.STEP: "evaluate"}, None, "already ran step evaluate (RUNNING)"),
    (None, "FAILED", "already ran (FAILED)"),
    (None, "KILLED", "already ran (KILLED)"),
])
def test_attaching_to_a_run_that_already_ran_is_refused(compose, tmp_path, handed_over, capsys,
                                                        tags, status, ran) -> None:
    client, make = handed_over
    run_id = make(run_name="done", params={"trainer.max_epochs": "1"}, tags=tags, status=status)
    before = client.get_run(run_id)
    with pytest.raises(SystemExit) as info:
        run_empty_step(compose, tmp_path, ["trainer.max_epochs=2"])
    assert info.value.code == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: run {run_id} {ran}: ") and f"resume={run_id}" in line and "new run" in line
    after = client.get_run(run_id)
    assert (after.info.status, after.data.params, after.data.tags) == (before.info.status, before.data.params,
                                                                     before.data.tags), "the run is left as it was"


def test_a_param_logged_with_another_value_fails_naming_both(compose, tmp_path, handed_over, capsys) -> None:
    client, make = handed_over
    run_id = make(params={"trainer.max_epochs": "7"})
    with pytest.raises(SystemExit) as info:
        run_empty_step(compose, tmp_path)
    assert info.value.code == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line == ("error: param trainer.max_epochs: the run already has trainer.max_epochs='7', this step has "
                    "trainer.max_epochs='1'; MLflow params cannot change: use a new run")
    run = client.get_run(run_id)
    assert run.data.params == {"trainer.max_epochs": "7"} and tag.STEP not in run.data.tags


def test_params_mlflow_run_logged_as_typed_are_the_same_values(compose, tmp_path, handed_over) -> None:
    """`mlflow run -P` logs what was typed: quoted, a list in override syntax, a float in another spelling."""
    client, make = handed_over
    run_id = make(params={"trainer.max_epochs": "'1'", "tags": "[smoke,'with space']", "model.optimizer.lr": "2e-3"})
    run_empty_step(compose, tmp_path, ["tags=[smoke,'with space']", "model.optimizer.lr=2e-3"])
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["trainer.max_epochs"] == "'1'" and run.data.params["trainer.limit_train_batches"] == "4"


def interrupted_train_run(client: MlflowClient, make, max_epochs: str) -> str:
    run_id = make(tags={tag.STEP: "train"}, status="KILLED",
                  params={"trainer.max_epochs": max_epochs, "resume": "None", "paths.output_dir": "/elsewhere",
                          "callbacks.model_checkpoint.dirpath": "/elsewhere/checkpoints"})
    return run_id


def test_resuming_with_another_config_is_refused_before_the_run_is_touched(compose, tmp_path, handed_over,
                                                                           monkeypatch, capsys) -> None:
    client, make = handed_over
    run_id = interrupted_train_run(client, make, max_epochs="1")
    monkeypatch.delenv("MLFLOW_RUN_ID")
    with pytest.raises(SystemExit) as info:
        run_empty_step(compose, tmp_path, ["trainer.max_epochs=2", f"resume={run_id}"])
    assert info.value.code == 1
    [line] = capsys.readouterr().err.splitlines()
    assert "param trainer.max_epochs: the run already has trainer.max_epochs='1', this step has " \
           "trainer.max_epochs='2'" in line
    run = client.get_run(run_id)
    assert run.info.status == "KILLED" and tag.RESUMES not in run.data.tags


def test_resuming_with_the_same_config_may_move_its_own_folders(compose, tmp_path, handed_over,
                                                               monkeypatch) -> None:
    client, make = handed_over
    run_id = interrupted_train_run(client, make, max_epochs="1")
    monkeypatch.delenv("MLFLOW_RUN_ID")
    assert run_empty_step(compose, tmp_path, [f"resume={run_id}"]) == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[tag.RESUMES] == "1"
    assert run.data.params["paths.output_dir"] == "/elsewhere", "params never change"
