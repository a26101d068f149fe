"""The team backend: an `mlflow server` on PostgreSQL, the whole pipeline, the promotion gate,
two-node torchrun, and bad database URLs, all against a real PostgreSQL the tests start themselves."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from helpers import ROOT, TINY, mlflow_run, run_step_here, step_env, steps_of
from servers import VENV_BIN, PostgresServer, free_port
from trainflow.tracking import tags as tag

pytestmark = pytest.mark.slow

PIPELINE = [p for p in TINY if not p.startswith(("registry.", "trainer.max_epochs"))] + \
    ["trainer.max_epochs=2", "registry.model_name=pg-digits"]


def test_the_pipeline_and_its_cache_on_a_postgresql_backed_server(pg_mlflow_server) -> None:
    """`mlflow run .`: version 1 promoted; main again (in this process: helpers.run_step_here) finds every
    step's run in PostgreSQL and reuses it.

    The gate keeping a worse version out of @champion is the same code on any store: test_pipeline.py proves it
    against the sqlite-backed server, test_promotion.py on re-measured figures."""
    client = MlflowClient(pg_mlflow_server.uri)
    done = mlflow_run("main", PIPELINE, pg_mlflow_server.uri, timeout=400, experiment="pg-pipeline")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    runs = steps_of(client, "pg-pipeline")
    assert {k: len(v) for k, v in runs.items()} == {"main": 1, "prepare_data": 1, "train": 1, "evaluate": 1}
    assert all(r.info.status == "FINISHED" for v in runs.values() for r in v)
    assert runs["evaluate"][0].data.tags[tag.PROMOTION_DECISION] == "promoted"
    assert client.get_model_version_by_alias("pg-digits", "champion").version == "1"
    # served artifacts: the dataset and the model came back through the server
    assert {a.path for a in client.list_artifacts(runs["prepare_data"][0].info.run_id, "dataset")} >= {
        "dataset/manifest.json", "dataset/train.parquet"}

    # nothing changed: every step's finished run is found by its cache key in the PostgreSQL-backed store
    done = run_step_here(["steps/main.py", *PIPELINE, "tracking.experiment_name=pg-pipeline"], pg_mlflow_server.uri)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    again = steps_of(client, "pg-pipeline")
    assert len(again["main"]) == 2
    for step in ("prepare_data", "train", "evaluate"):
        assert [r.info.run_id for r in again[step]] == [r.info.run_id for r in runs[step]], step
    newest = max(again["main"], key=lambda r: r.info.start_time)
    assert newest.data.tags[tag.PIPELINE_REUSED] == "prepare_data,train,evaluate"
    assert client.get_model_version_by_alias("pg-digits", "champion").version == "1"


def test_two_torchrun_nodes_make_one_run_one_version_and_rank_zero_metrics(pg_mlflow_server, tmp_path: Path) -> None:
    """`torchrun --nnodes 2 --nproc-per-node 1`, c10d rendezvous on 127.0.0.1, gloo: two "nodes" as two agents."""
    endpoint = f"127.0.0.1:{free_port()}"
    overrides = [p for p in TINY if not p.startswith("registry.")] + [
        "trainer=ddp_sim", "trainer.devices=1", "trainer.num_nodes=2", "registry.model_name=pg-two-nodes",
        "tracking.experiment_name=pg-two-nodes"]
    env = step_env(pg_mlflow_server.uri, OMP_NUM_THREADS="1")
    nodes = [subprocess.Popen(
        [f"{VENV_BIN}/torchrun", "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
         "--rdzv-endpoint", endpoint, "--rdzv-id", "two-nodes", "--max-restarts", "0",
         str(ROOT / "steps/train.py"), *overrides],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL) for _ in range(2)]
    outputs = [node.communicate(timeout=400)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[-3000:] for o in outputs)

    client = MlflowClient(pg_mlflow_server.uri)
    runs = steps_of(client, "pg-two-nodes")
    assert {k: len(v) for k, v in runs.items()} == {"train": 1}, "exactly one run for the job"
    run = runs["train"][0]
    assert run.info.status == "FINISHED" and run.data.tags[tag.JOB].startswith("torchrun:")
    assert [str(v.version) for v in client.search_model_versions("name = 'pg-two-nodes'")] == ["1"]
    assert sum(o.count("train output:") for o in outputs) == 1
    # rank zero alone logs: every metric has one value per step, never one per rank
    # (`epoch` is Lightning's: it rides along with each of the train and val logging calls)
    assert {"train/loss", "val/acc", "test/acc"} <= set(run.data.metrics)
    for key in set(run.data.metrics) - {"epoch"}:
        steps = [(m.step, m.timestamp) for m in client.get_metric_history(run.info.run_id, key)]
        assert len({s for s, _ in steps}) == len(steps), (key, steps)


def sweep_fails(tracking_uri: str, storage: str, extra: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "steps/sweep.py", *TINY, "hparams_search=digits_optuna", "sweep.n_trials=1",
         f"sweep.storage={storage}", "sweep.study_name=pg-bad", "tracking.experiment_name=pg-bad", *extra],
        cwd=ROOT, env=step_env(tracking_uri), capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize(("storage", "expected"), [
    ("no_such_database", r"database \"no_such_database\" does not exist"),
    ("down", "Connection refused"),
])
def test_a_wrong_or_down_database_fails_in_one_line_naming_it(postgres: PostgresServer, sqlite_uri: str,
                                                              storage: str, expected: str) -> None:
    url = postgres.url(storage) if storage != "down" else \
        f"postgresql://{postgres.USER}:{postgres.PASSWORD}@127.0.0.1:{free_port()}/optuna"
    done = sweep_fails(sqlite_uri, url)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    masked = url.replace(postgres.PASSWORD, "***")
    assert last.startswith(f"error: sweep.storage: cannot connect to {masked}: "), last
    import re

    assert re.search(expected, last), last
    assert postgres.PASSWORD not in done.stdout + done.stderr
    _assert_nothing_running(sqlite_uri)


def test_a_study_that_exists_with_the_other_direction_fails_naming_it(postgres: PostgresServer,
                                                                      sqlite_uri: str) -> None:
    import optuna

    url = postgres.create_database("other_direction")
    optuna.create_study(study_name="pg-bad", storage=url, direction="minimize")
    done = sweep_fails(sqlite_uri, url)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last == (f"error: sweep.direction: study 'pg-bad' in {url.replace(postgres.PASSWORD, '***')} exists "
                    "with direction minimize, not maximize"), last
    assert postgres.PASSWORD not in done.stdout + done.stderr
    _assert_nothing_running(sqlite_uri)
    assert len(optuna.load_study(study_name="pg-bad", storage=url).trials) == 0, "nothing was queued"


def _assert_nothing_running(tracking_uri: str) -> None:
    from helpers import all_runs

    runs = all_runs(tracking_uri)
    assert runs, "the sweep's run records the failure"
    assert {r.info.status for r in runs} == {"FAILED"}
    for run in runs:
        assert PostgresServer.PASSWORD not in str(run.data.params) + str(run.data.tags)
