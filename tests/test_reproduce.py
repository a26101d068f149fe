"""`reproduce`: a logged run, run again as it ran; drift refused unless allowed; bad input in one line.

Everything runs in a copy of the project (a git repository of its own,
committed once), so the drift tests can change its files without touching
the real checkout, and the copy's code version holds still between the runs
that must match (only the refusals of bad run ids, which compare no code,
call `reproduce` in this process). One pipeline run there gives every
original: its main run and its prepare_data, train and evaluate runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from helpers import ROOT, VENV_BIN, new_sqlite_store, project_copy, step_env
from trainflow.tracking import tags as tag

pytestmark = pytest.mark.slow

# One deterministic pipeline in the copy gives every original: its main run and its three step runs.
PIPELINE = ["steps/main.py", "experiment=example", "trainer.max_epochs=2", "trainer.deterministic=true",
            "trainer.limit_train_batches=4", "trainer.limit_val_batches=2", "trainer.limit_test_batches=2",
            "callbacks.rich_progress_bar=null", "callbacks.model_summary=null", "trainer.enable_progress_bar=false",
            "extras.print_config=false", "registry.log_model=false", "tracking.experiment_name=pipeline"]


def git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder, check=True,
                   capture_output=True)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkout's files as they are now (tracked and untracked, not ignored), in a repository of their own."""
    copy = project_copy(tmp_path_factory.mktemp("project") / "trainflow")
    git(copy, "init", "-q")
    git(copy, "add", "-A")
    git(copy, "commit", "-q", "-m", "snapshot")
    return copy


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return new_sqlite_store(tmp_path_factory.mktemp("reproduce-store"))


def in_copy(project: Path, args: list[str], uri: str) -> subprocess.CompletedProcess:
    """A command run in the copy, importing the copy's `trainflow`."""
    env = step_env(uri, PYTHONPATH=str(project / "src"))
    return subprocess.run(args, cwd=project, env=env, capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def pipeline(project: Path, store: str) -> Any:
    """The main run of a pipeline run in the copy."""
    done = in_copy(project, [sys.executable, *PIPELINE], store)
    assert done.returncode == 0, done.stderr[-2000:]
    client = MlflowClient(store)
    [main] = client.search_runs([client.get_experiment_by_name("pipeline").experiment_id],
                                f"tags.`{tag.STEP}` = 'main'")
    return main


def step_of(pipeline: Any, store: str, step: str) -> Any:
    return MlflowClient(store).get_run(pipeline.data.tags[tag.pipeline_step(step, "run_id")])


@pytest.fixture(scope="module")
def original(pipeline: Any, store: str) -> str:
    """The pipeline's train run: a deterministic train run to reproduce."""
    return str(step_of(pipeline, store, "train").info.run_id)


def results(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def reproduced(project: Path, store: str, client: MlflowClient, first: Any) -> Any:
    """`steps/reproduce.py run_id=<first>` in the copy, and the one run tagged as its reproduction."""
    again = in_copy(project, [sys.executable, "steps/reproduce.py", f"run_id={first.info.run_id}"], store)
    assert again.returncode == 0, again.stderr[-3000:]
    [second] = [r for r in client.search_runs([first.info.experiment_id])
                if r.data.tags.get(tag.REPRODUCES) == first.info.run_id]
    return second


def running_runs(uri: str) -> list[str]:
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    return [r.info.run_id for r in client.search_runs(ids) if r.info.status == "RUNNING"]


def test_mlflow_run_reproduce_matches_a_deterministic_train_run(project: Path, store: str, original: str) -> None:
    done = in_copy(project, [f"{VENV_BIN}/mlflow", "run", str(project), "-e", "reproduce", "-P",
                             f"run_id={original}", "--env-manager", "local", "--experiment-name", "again"], store)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(store)
    [run] = client.search_runs([client.get_experiment_by_name("again").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags[tag.REPRODUCES] == original
    assert run.data.tags[tag.STEP] == "train"
    assert tag.REPRODUCE_DRIFT not in run.data.tags
    before = results(client.get_run(original).data.metrics)
    assert sorted(results(run.data.metrics)) == sorted(before)
    for key, value in before.items():
        assert run.data.metrics[key] == pytest.approx(value, abs=1e-6), key
    table = Path(client.download_artifacts(run.info.run_id, "reproduction/comparison.csv", str(project.parent)))
    lines = table.read_text().splitlines()
    assert lines[0] == "metric,original,reproduced,delta"
    assert {line.split(",")[0] for line in lines[1:]} == set(before)
    assert "metric" in done.stdout and "test/acc" in done.stdout
    assert running_runs(store) == []


def test_changed_model_code_is_drift_refused_unless_allowed(project: Path, store: str, original: str) -> None:
    client = MlflowClient(store)
    experiment = client.get_run(original).info.experiment_id
    runs_before = {r.info.run_id for r in client.search_runs([experiment])}
    model = project / "src/trainflow/models/classifier.py"
    text = model.read_text()
    model.write_text(text + "\n# a change after the original run\n")
    try:
        refused = in_copy(project, [sys.executable, "steps/reproduce.py", f"run_id={original}"], store)
        assert refused.returncode == 2, refused.stderr[-2000:]
        drift = [line for line in refused.stderr.splitlines() if line.startswith("drift: ")]
        assert any(line.startswith("drift: code version: ") for line in drift), refused.stderr[-2000:]
        assert refused.stderr.strip().splitlines()[-1].startswith(f"error: reproduce: run {original} cannot")
        after = {r.info.run_id for r in client.search_runs([experiment])}
        assert after == runs_before, "a refused reproduction makes no run"

        allowed = in_copy(project, [sys.executable, "steps/reproduce.py", f"run_id={original}", "allow_drift=true"],
                          store)
        assert allowed.returncode == 0, allowed.stderr[-2000:]
    finally:
        model.write_text(text)
    [new] = [r for r in client.search_runs([experiment]) if r.data.tags.get(tag.REPRODUCES) == original]
    assert new.info.status == "FINISHED"
    assert "code version: " in new.data.tags[tag.REPRODUCE_DRIFT]
    assert {a.path for a in client.list_artifacts(new.info.run_id, "reproduction")} == {
        "reproduction/drift.txt", "reproduction/comparison.csv"}
    assert running_runs(store) == []


def test_bad_input_is_one_line_and_leaves_no_run_running(project: Path, store: str, capfd, monkeypatch) -> None:
    from mlflow.tracking._tracking_service import utils as mlflow_tracking_utils

    from trainflow.pipeline.reproduce import reproduce

    client = MlflowClient(store)
    experiment = client.create_experiment("not-steps")
    bare = client.create_run(experiment).info.run_id  # no trainflow.step: not a step run
    client.set_terminated(bare, "FINISHED")
    unreadable = client.create_run(experiment, tags={tag.STEP: "train"}).info.run_id  # no overrides.yaml
    client.set_terminated(unreadable, "FAILED")
    cases = {
        "0123456789abcdef0123456789abcdef": "error: reproduce: no run 0123456789abcdef0123456789abcdef",
        bare: f"error: reproduce: run {bare} is not a trainflow step run",
        unreadable: f"error: reproduce: run {unreadable}'s overrides.yaml cannot be read",
    }
    # refused before any code is compared: the checkout's `reproduce`, in this process, as steps/reproduce.py calls it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    monkeypatch.setattr(mlflow_tracking_utils, "_tracking_uri", mlflow_tracking_utils._tracking_uri)
    for run_id, expected in cases.items():
        code = reproduce([f"run_id={run_id}"], ROOT)
        err = capfd.readouterr().err
        assert code == 1, err[-2000:]
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), err[-2000:]
    # under `mlflow run`, the run MLflow made for the refused reproduction does not stay RUNNING
    launched = in_copy(project, [f"{VENV_BIN}/mlflow", "run", str(project), "-e", "reproduce", "-P", f"run_id={bare}",
                                 "--env-manager", "local", "--experiment-name", "refused"], store)
    assert launched.returncode != 0
    assert f"error: reproduce: run {bare} is not a trainflow step run" in launched.stderr
    [made] = client.search_runs([client.get_experiment_by_name("refused").experiment_id])
    assert made.info.status == "FAILED"
    assert running_runs(store) == []


def test_an_evaluate_run_is_reproduced_on_the_same_weights(project: Path, store: str, pipeline: Any) -> None:
    client = MlflowClient(store)
    first = step_of(pipeline, store, "evaluate")
    trained = step_of(pipeline, store, "train").info.run_id
    assert first.data.tags[tag.EVALUATED].startswith(f"runs:/{trained}/checkpoints/"), "weights named by a URI"
    assert first.data.tags[tag.MODEL_DIGEST]

    second = reproduced(project, store, client, first)
    assert second.info.status == "FINISHED" and second.data.tags[tag.STEP] == "evaluate"
    assert second.data.tags[tag.MODEL_DIGEST] == first.data.tags[tag.MODEL_DIGEST]
    before = results(first.data.metrics)
    assert before and sorted(results(second.data.metrics)) == sorted(before)
    for key, value in before.items():
        assert second.data.metrics[key] == pytest.approx(value, abs=1e-6), key


def test_a_prepare_data_run_is_reproduced_to_the_same_dataset(project: Path, store: str, pipeline: Any) -> None:
    client = MlflowClient(store)
    first = step_of(pipeline, store, "prepare_data")
    second = reproduced(project, store, client, first)
    assert second.info.status == "FINISHED" and second.data.tags[tag.STEP] == "prepare_data"
    assert second.data.tags[tag.DATA_DIGEST] == first.data.tags[tag.DATA_DIGEST]
    assert results(second.data.metrics) == results(first.data.metrics)


def test_a_main_pipeline_is_reproduced_step_by_step(project: Path, store: str, pipeline: Any) -> None:
    """Last of the runs made here: its step runs are tagged as reproductions of the pipeline's step runs."""
    client = MlflowClient(store)
    first = pipeline
    second = reproduced(project, store, client, first)
    assert second.info.status == "FINISHED" and second.data.tags[tag.STEP] == "main"
    for step in ("prepare_data", "train", "evaluate"):
        then = first.data.tags[tag.pipeline_step(step, "run_id")]
        now = client.get_run(second.data.tags[tag.pipeline_step(step, "run_id")])
        assert now.info.run_id != then, f"{step} was reused, not run again"
        assert now.info.status == "FINISHED" and now.data.tags[tag.REPRODUCES] == then
        before = results(client.get_run(then).data.metrics)
        for key, value in before.items():
            assert now.data.metrics[key] == pytest.approx(value, abs=1e-6), (step, key)
    table = Path(client.download_artifacts(second.info.run_id, "reproduction/comparison.csv", str(project.parent)))
    assert "train: test/acc," in table.read_text()


# Drift of each kind, found in this process by the same check `reproduce` runs first (the refusal and
# allow_drift paths above are the same for every kind): each changes one thing in the copy and puts it back.

class Drift:
    """The original train run as `reproduce` reads it; the drift lines of it (or another Original) against the copy."""

    def __init__(self, project: Path, store: str, original: str) -> None:
        from trainflow.pipeline.reproduce import read_original

        self.project, self.client = project, MlflowClient(store)
        self.base = read_original(self.client, original)

    def __call__(self, of: Any = None, prefix: str = "") -> list[str]:
        from hydra.core.global_hydra import GlobalHydra

        from trainflow.pipeline.reproduce import find_drift

        GlobalHydra.instance().clear()
        try:
            return [line for line in find_drift(of or self.base, self.project, self.client) if line.startswith(prefix)]
        finally:
            GlobalHydra.instance().clear()


@pytest.fixture
def drift(project: Path, store: str, original: str, tracking_env) -> Drift:
    tracking_env(store)  # what `reproduce` downloads (a checkpoint, a dataset) comes from the store, as in its process
    return Drift(project, store, original)


def test_an_unchanged_copy_has_no_drift(drift) -> None:
    assert drift() == []


def test_another_git_commit_is_drift(drift, project: Path) -> None:
    then = drift.base.tags[tag.GIT_COMMIT]
    git(project, "commit", "-q", "--allow-empty", "-m", "a later commit")
    try:
        now = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True,
                             check=True).stdout.strip()
        assert drift(prefix="git commit: ") == [f"git commit: {then} -> {now}"]
    finally:
        git(project, "reset", "-q", "--soft", "HEAD~1")
    assert drift() == []


@pytest.mark.parametrize(("path", "old", "new", "expected"), [
    ("uv.lock", None, "\n# relocked\n", "uv.lock: sha256 "),
    ("configs/data/digits.yaml", "val_fraction: 0.15", "val_fraction: 0.2", "config: data.val_fraction: 0.15 -> 0.2"),
])
def test_a_changed_lock_or_config_file_is_drift(drift, project: Path, path: str, old: str | None, new: str,
                                                expected: str) -> None:
    file = project / path
    text = file.read_text()
    assert old is None or old in text
    file.write_text(text + new if old is None else text.replace(old, new))
    try:
        found = drift(prefix=expected.split(":")[0] + ":")
        assert len(found) == 1 and found[0].startswith(expected), found
        if path == "uv.lock":
            assert found[0].startswith(f"uv.lock: sha256 {drift.base.tags[tag.LOCK_DIGEST]} -> "), found
    finally:
        file.write_text(text)
    assert drift() == []


def test_a_dataset_that_changed_under_its_uri_is_drift(drift, store: str, tmp_path: Path) -> None:
    import dataclasses
    import json

    import pyarrow.parquet as pq

    from trainflow.data.dataset import MANIFEST, files_digest

    prepared = drift.base.tags[tag.UPSTREAM_PREPARE_DATA]
    folder = Path(MlflowClient(store).download_artifacts(prepared, "dataset", str(tmp_path)))
    manifest = json.loads((folder / MANIFEST).read_text())
    overrides = [o for o in drift.base.overrides if not o.startswith("data.uri=")]
    read_it = dataclasses.replace(drift.base, overrides=[*overrides, f"data.uri={folder}"],
                                  tags={**drift.base.tags, tag.DATA_DIGEST: manifest["digest"]})
    assert drift(read_it, prefix="data:") == []
    pq.write_table(pq.read_table(folder / "test.parquet").slice(0, 5), folder / "test.parquet")
    manifest["digest"] = files_digest(folder, list(manifest["splits"]))
    (folder / MANIFEST).write_text(json.dumps(manifest))
    then = read_it.tags[tag.DATA_DIGEST]
    assert drift(read_it, prefix="data:") == [f"data: {folder}: digest {then} -> {manifest['digest']}"]


def test_other_weights_under_an_evaluated_uri_are_drift(drift, original: str) -> None:
    import dataclasses

    uri = f"runs:/{original}/checkpoints/best"
    evaluated = dataclasses.replace(drift.base, step="evaluate", overrides=[
        "experiment=example", f"ckpt_path={uri}", "extras.print_config=false"],
        tags={**drift.base.tags, tag.MODEL_DIGEST: "sha256:other-weights"})
    [line] = drift(evaluated, prefix="model:")
    assert line.startswith(f"model: {uri}: digest sha256:other-weights -> ")
    same = dataclasses.replace(evaluated, tags={**evaluated.tags, tag.MODEL_DIGEST: line.rsplit(" -> ", 1)[1]})
    assert drift(same, prefix="model:") == []
