"""The pipeline end to end against the real server: URIs, cache, registry, serving.

One module-scoped pipeline run feeds the tests that read the registry; each
test states which registry state it expects and checks it. The fixture's two
pipelines and the single steps run through `mlflow run`, as users start them;
the pipelines that check what a changed, debug or failing run records run
`steps/main.py` in this process (helpers.run_step_here).
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from helpers import ROOT, TINY, mlflow_run, probe_records, probed, run_step_here, serve_and_ask, step_env, steps_of
from trainflow.tracking import tags as tag

pytestmark = pytest.mark.slow

EXPERIMENT = "pipeline"
MODEL = "digits-classifier"
# Shared by every step; training itself stays at a few batches.
PIPELINE = [p for p in TINY if not p.startswith(("registry.", "trainer.max_epochs"))] + ["trainer.max_epochs=2"]


def run_pipeline(server_uri: str, extra: list[str] = (), **env: str) -> None:
    done = mlflow_run("main", [*PIPELINE, *extra], server_uri, timeout=400, experiment=EXPERIMENT, **env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def main_here(server_uri: str, extra: list[str], experiment: str = EXPERIMENT) -> subprocess.CompletedProcess:
    """`steps/main.py` in this process: for the tests about what a pipeline records, once the fixture's
    `mlflow run`s have shown how users start it."""
    return run_step_here(["steps/main.py", *PIPELINE, *extra, f"tracking.experiment_name={experiment}"], server_uri)


@pytest.fixture(scope="module")
def pipeline(mlflow_server, tmp_path_factory):
    """The pipeline run twice with nothing changed; the second run's processes report their imports."""
    client = MlflowClient(mlflow_server.uri)
    run_pipeline(mlflow_server.uri)
    exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
    first = steps_of(client, exp)
    probe = tmp_path_factory.mktemp("probe") / "imports.jsonl"
    run_pipeline(mlflow_server.uri, **probed({}, probe))
    second = steps_of(client, exp)
    imports = probe_records(probe)
    return client, exp, first, second, imports


def test_first_run_chains_three_child_steps_by_uri(pipeline) -> None:
    client, _, first, _, _ = pipeline
    assert {k: len(v) for k, v in first.items()} == {"main": 1, "prepare_data": 1, "train": 1, "evaluate": 1}
    main = first["main"][0]
    prepared, trained, evaluated = first["prepare_data"][0], first["train"][0], first["evaluate"][0]
    for child in (prepared, trained, evaluated):
        assert child.data.tags["mlflow.parentRunId"] == main.info.run_id
        assert child.info.status == "FINISHED"
    dataset_uri = f"runs:/{prepared.info.run_id}/dataset"
    assert prepared.data.tags[tag.OUTPUT] == dataset_uri
    assert {a.path for a in client.list_artifacts(prepared.info.run_id, "dataset")} >= {
        "dataset/manifest.json", "dataset/train.parquet", "dataset/val.parquet", "dataset/test.parquet"}
    assert trained.data.tags[tag.DATA_URI] == dataset_uri
    assert trained.data.tags[tag.UPSTREAM_PREPARE_DATA] == prepared.info.run_id
    assert trained.data.tags[tag.DATA_DIGEST] == prepared.data.tags[tag.DATA_DIGEST]
    assert [i.dataset.digest for i in trained.inputs.dataset_inputs] == \
        [prepared.data.tags[tag.DATA_DIGEST][:36]]
    assert trained.data.tags[tag.OUTPUT] == f"models:/{MODEL}/1"
    assert evaluated.data.tags[tag.EVALUATED] == f"models:/{MODEL}/1"
    assert evaluated.data.tags[tag.PROMOTION_DECISION] == "promoted"
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    assert main.data.tags[tag.STEP] == "main"
    # the runs table compares pipelines by the evaluated model's test figures, on the parent itself
    assert main.data.metrics["test/acc"] == evaluated.data.metrics["test/acc"]
    assert main.data.metrics["test/f1_macro"] == evaluated.data.metrics["test/f1_macro"]
    assert main.data.tags[tag.HEADLINE_RUN] == evaluated.info.run_id


def test_second_run_reuses_every_step_and_links_them(pipeline) -> None:
    _, _, first, second, _ = pipeline
    for step in ("prepare_data", "train", "evaluate"):
        assert [r.info.run_id for r in second[step]] == [r.info.run_id for r in first[step]], step
    assert len(second["main"]) == 2
    newest = max(second["main"], key=lambda r: r.info.start_time)
    assert newest.data.tags[tag.PIPELINE_REUSED] == "prepare_data,train,evaluate"
    for step in ("prepare_data", "train", "evaluate"):
        assert newest.data.tags[f"trainflow.pipeline.{step}.run_id"] == first[step][0].info.run_id


def test_a_fully_cached_run_imports_neither_torch_nor_lightning(pipeline) -> None:
    """Composing, keying and finding every step's run needs neither: main's process never imports them."""
    *_, imports = pipeline
    mains = [p for p in imports if p["argv"][0].endswith("steps/main.py")]
    assert len(mains) == 1, imports
    assert mains[0]["heavy"] == []


def test_registered_version_is_tagged_and_serves_labels(pipeline) -> None:
    client, _, first, _, _ = pipeline
    version = client.get_model_version(MODEL, "1")
    trained = first["train"][0]
    assert version.tags[tag.RUN_ID] == trained.info.run_id
    assert version.tags[tag.DATA_DIGEST] == trained.data.tags[tag.DATA_DIGEST]
    assert version.tags[tag.MONITOR] == "val/acc"
    assert float(version.tags[tag.MONITOR_VALUE]) > 0
    assert tag.GIT_COMMIT in version.tags
    assert tag.eval_metric("test/acc") in version.tags


def test_a_registered_version_carries_a_model_card(pipeline) -> None:
    """The registry page's description: what the version is, its data, test figures, decision, runs."""
    client, exp, first, _, _ = pipeline
    version = client.get_model_version(MODEL, "1")
    card, tags = version.description, version.tags
    acc = float(tags["trainflow.eval.test/acc"])
    # line one is plain text, figures first: the versions table previews its start raw
    assert card.startswith(f"test/acc {acc:.4f} · promoted\n\n"
                           f"{MODEL} v1: a `ClassificationModule(SimpleDenseNet)` trained"), card
    assert f"`{tags['trainflow.data.uri']}`, digest `{tags['trainflow.data.digest']}`" in card
    assert f"| `test/acc` | {float(tags['trainflow.eval.test/acc']):.4f} |" in card
    assert "measured by evaluate on the test split (limit_test_batches=2" in card
    candidate = float(tags["trainflow.promotion.candidate"])
    assert f"**Promotion**: promoted on `test/acc`: this version {candidate:.4f} vs no champion before it." in card
    assert f"[{first['train'][0].info.run_name}](#/experiments/{exp}/runs/{first['train'][0].info.run_id})" in card
    assert f"(#/experiments/{exp}/runs/{tags['trainflow.eval.run_id']})" in card


def test_evaluate_from_the_champion_alias(pipeline, mlflow_server) -> None:
    client, exp, _, _, _ = pipeline
    done = mlflow_run("evaluate", ["model_uri=models:/digits-classifier@champion", "extras.print_config=false"],
                      mlflow_server.uri, experiment=EXPERIMENT)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = client.search_runs([exp], filter_string="tags.`trainflow.evaluated` = 'models:/digits-classifier@champion'")
    assert len(runs) == 1
    run = runs[0]
    assert "test/acc" in run.data.metrics and "test/f1_macro" in run.data.metrics
    paths = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {"evaluation/confusion_matrix.png", "evaluation/per_class_metrics.json",
            "evaluation/predictions.parquet", "evaluation/per_class_metrics.csv"} <= paths
    # evaluated on the dataset the model was trained on, found through lineage
    assert run.data.tags[tag.DATA_DIGEST] == client.get_model_version(MODEL, "1").tags[tag.DATA_DIGEST]
    predictions = client.download_artifacts(run.info.run_id, "evaluation/predictions.parquet")
    import pandas as pd

    frame = pd.read_parquet(predictions)
    assert list(frame.columns) == ["row_id", "label", "predicted", "probability"]
    assert (frame.label == frame.predicted).mean() == pytest.approx(run.data.metrics["test/acc"], abs=1e-6)


def test_changed_training_override_reruns_train_and_evaluate_only(pipeline, mlflow_server) -> None:
    client, exp, _, _, _ = pipeline
    # A learning rate that cannot learn in two short epochs: a worse candidate.
    done = main_here(mlflow_server.uri, ["train.model.optimizer.lr=1e-6"])
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    now = steps_of(client, exp)
    assert len(now["prepare_data"]) == 1
    assert len(now["train"]) == 2
    newest_eval = max((r for r in now["evaluate"] if tag.PROMOTION_DECISION in r.data.tags),
                      key=lambda r: r.info.start_time)
    assert newest_eval.data.tags[tag.EVALUATED] == f"models:/{MODEL}/2"
    # the promotion gate: the worse model does not take the alias, and says why
    assert newest_eval.data.tags[tag.PROMOTION_DECISION] == "kept"
    assert float(newest_eval.data.tags[tag.PROMOTION_CANDIDATE]) < \
        float(newest_eval.data.tags[tag.PROMOTION_CHAMPION])
    assert client.get_model_version_by_alias(MODEL, "champion").version == "1"
    assert client.get_model_version(MODEL, "2").tags[tag.PROMOTION_DECISION] == "kept"
    candidate = float(newest_eval.data.tags["trainflow.promotion.candidate"])
    champion = float(newest_eval.data.tags["trainflow.promotion.champion"])
    assert f"**Promotion**: kept on `test/acc`: this version {candidate:.4f} vs champion v1: {champion:.4f}." in \
        client.get_model_version(MODEL, "2").description
    # the runs table tells this pipeline from the others by what it changed
    newest_main = max(now["main"], key=lambda r: r.info.start_time)
    assert newest_main.info.run_name.startswith("main-example-digits ")
    assert newest_main.info.run_name.endswith(" lr=1e-6"), newest_main.info.run_name
    assert newest_main.data.metrics["test/acc"] == newest_eval.data.metrics["test/acc"]


def test_serving_the_champion_answers_with_labels(pipeline, mlflow_server, tmp_path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rows = serve_and_ask(f"models:/{MODEL}@champion", [f"pixel_{i:02d}" for i in range(64)],
                         (digits.data[:5] / 16.0).tolist(), step_env(mlflow_server.uri), tmp_path)
    assert len(rows) == 5
    assert {row["label"] for row in rows} <= {str(i) for i in range(10)}
    assert all(0 < row["probability"] <= 1 for row in rows)
    assert all(abs(sum(row[f"prob_{i}"] for i in range(10)) - 1) < 1e-4 for row in rows)


def test_a_bad_alias_fails_in_one_line_and_changes_nothing(pipeline, mlflow_server) -> None:
    """The evaluate script against the server; tests/test_bad_input.py has every other bad URI."""
    uri = "models:/digits-classifier@no-such-alias"
    client, _, _, _, _ = pipeline
    versions = sorted(v.version for v in client.search_model_versions(f"name = '{MODEL}'"))
    champion = client.get_model_version_by_alias(MODEL, "champion").version
    done = run_step_here(["steps/evaluate.py", f"model_uri={uri}", "promote=true", "extras.print_config=false"],
                         mlflow_server.uri)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last == f"error: model_uri: {uri}: no alias 'no-such-alias' of model '{MODEL}'", last
    assert sorted(v.version for v in client.search_model_versions(f"name = '{MODEL}'")) == versions
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion


def test_a_debug_pipeline_evaluates_its_unregistered_model(mlflow_server) -> None:
    """`-P debug=limit` logs the model without a version; evaluate tests it and promotes nothing."""
    experiment = "pipeline-debug"
    done = main_here(mlflow_server.uri, ["debug=limit", "registry.model_name=digits-debug"], experiment)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    client = MlflowClient(mlflow_server.uri)
    runs = steps_of(client, client.get_experiment_by_name(experiment).experiment_id)
    trained, evaluated = runs["train"][0], runs["evaluate"][0]
    assert trained.data.tags[tag.OUTPUT].startswith("models:/m-")
    assert evaluated.data.tags[tag.EVALUATED] == trained.data.tags[tag.OUTPUT]
    assert "test/acc" in evaluated.data.metrics
    # evaluate's test figures are linked to the logged model it tested, on the test split's digest
    model = client.get_logged_model(trained.data.tags[tag.OUTPUT].removeprefix("models:/"))
    linked = {m.key: m for m in model.metrics if m.run_id == evaluated.info.run_id}
    assert linked["test/acc"].value == evaluated.data.metrics["test/acc"]
    assert {m.dataset_name for m in linked.values()} == {"test"} and set(linked) >= {"test/acc", "test/f1_macro"}
    assert evaluated.data.tags[tag.PROMOTION_DECISION] == "skipped: not a registered version"
    assert client.search_model_versions("name = 'digits-debug'") == []


# Last in the module: they add train runs and a version that the tests above do not expect.

def test_a_step_run_inside_main_is_the_run_it_makes_alone(pipeline, mlflow_server) -> None:
    """Main runs its steps in its own process; each child still has the tags, params, metrics and
    artifacts of `mlflow run -e train` with the same overrides, less what only a pipeline adds."""
    client, exp, first, _, _ = pipeline
    inside = first["train"][0]
    data = f"data.uri={inside.data.tags[tag.DATA_URI]}"
    done = mlflow_run("train", [*PIPELINE, data], mlflow_server.uri, experiment=EXPERIMENT)
    assert done.returncode == 0, done.stderr[-3000:]
    alone = client.search_runs([exp], filter_string="tags.`mlflow.parentRunId` IS NULL and "
                               "tags.`trainflow.step` = 'train'", max_results=1)[0]
    assert alone.info.status == inside.info.status == "FINISHED"
    assert set(inside.data.tags) - set(alone.data.tags) == {"mlflow.parentRunId", tag.CACHE_KEY}
    assert set(alone.data.tags) - set(inside.data.tags) == set()
    for key in ("mlflow.source.type", "mlflow.project.entryPoint", "mlflow.project.backend", "mlflow.source.git.commit",
                tag.STEP, tag.CODE_VERSION, tag.LOCK_DIGEST):
        assert inside.data.tags[key] == alone.data.tags[key], key
    assert set(inside.data.params) == set(alone.data.params)
    assert set(inside.data.metrics) == set(alone.data.metrics)

    def artifacts(run_id: str, path: str = "") -> set[str]:
        found = set()
        for item in client.list_artifacts(run_id, path):
            found |= artifacts(run_id, item.path) if item.is_dir else {item.path}
        return found

    assert artifacts(inside.info.run_id) == artifacts(alone.info.run_id)


def test_a_step_that_fails_inside_main_ends_its_own_run_failed(pipeline, mlflow_server) -> None:
    """A bad trainer setting fails train in Lightning: train's run and main's end FAILED, evaluate never starts."""
    client, exp, _, _, _ = pipeline
    before = {r.info.run_id for r in client.search_runs([exp], max_results=1000)}
    done = main_here(mlflow_server.uri, ["train.trainer.limit_train_batches=-1"])
    assert done.returncode != 0
    new = {r.data.tags[tag.STEP]: r for r in client.search_runs([exp], max_results=1000)
           if r.info.run_id not in before}
    assert set(new) == {"main", "train"}, sorted(new)  # prepare_data reused, evaluate never ran
    train, main = new["train"], new["main"]
    assert train.info.status == main.info.status == "FAILED"
    assert train.data.tags["mlflow.parentRunId"] == main.info.run_id
    assert "limit_train_batches" in train.data.tags[tag.ERROR]
    assert main.data.tags[tag.ERROR].startswith(f"pipeline: step train failed (run {train.info.run_id})")
    assert [line for line in done.stderr.splitlines() if line.startswith("error: ")] == \
        [f"error: {main.data.tags[tag.ERROR]}"]
    assert "error.txt" in {a.path for a in client.list_artifacts(train.info.run_id)}  # the traceback, on its run


def test_ctrl_c_during_a_step_inside_main_ends_that_step_and_main_killed(pipeline, mlflow_server) -> None:
    """SIGINT reaches main's process, where train runs: train's run and main's end KILLED, nothing RUNNING."""
    client, exp, _, _, _ = pipeline
    before = {r.info.run_id for r in client.search_runs([exp], max_results=1000)}
    args = [*PIPELINE, "train.trainer.max_epochs=1000", "train.trainer.min_epochs=1000", "tracking.flush_every_s=0",
            "extras.print_config=false", f"tracking.experiment_name={EXPERIMENT}"]
    proc = subprocess.Popen([sys.executable, "steps/main.py", *args], cwd=ROOT, env=step_env(mlflow_server.uri),
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            fitting = [r for r in client.search_runs([exp], "tags.`trainflow.step` = 'train'", max_results=1000)
                       if r.info.run_id not in before and "val/acc" in r.data.metrics]
            if fitting:
                break
            time.sleep(0.5)
        else:
            pytest.fail("train never logged a metric inside main")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGINT, err[-3000:]
    new = {r.data.tags[tag.STEP]: r for r in client.search_runs([exp], max_results=1000)
           if r.info.run_id not in before}
    assert set(new) == {"main", "train"}, sorted(new)
    assert new["train"].info.status == new["main"].info.status == "KILLED"
    assert "SIGINT" in new["train"].data.tags[tag.ERROR] and "SIGINT" in new["main"].data.tags[tag.ERROR]
    assert "error: train interrupted by SIGINT" in err
