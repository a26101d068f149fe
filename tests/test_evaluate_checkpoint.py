"""Evaluating `ckpt_path=` rebuilds the network the checkpoint was trained with, or says in one line why not."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from helpers import TINY, new_sqlite_store, run_step_here
from trainflow.tracking import tags as tag

pytestmark = pytest.mark.slow

# experiment=example's network (lin1_size 128, ...) differs from the default model config (64, ...)
QUIET = [o for o in TINY if not o.startswith("experiment=")]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    uri = new_sqlite_store(tmp_path_factory.mktemp("ckpt-store"))
    done = run_step_here(["steps/train.py", *TINY], uri)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return uri, runs[0].info.run_id


def test_evaluate_without_the_experiment_rebuilds_the_trained_network(trained) -> None:
    """The README's order: train with experiment=example, then evaluate its checkpoint by URI alone (the
    evaluate script in this process; test_pipeline.py runs `mlflow run -e evaluate` as users do)."""
    uri, run_id = trained
    done = run_step_here(["steps/evaluate.py", f"ckpt_path=runs:/{run_id}/checkpoints/best", *QUIET], uri)
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(uri)
    evaluated = [r for r in client.search_runs([e.experiment_id for e in client.search_experiments()])
                 if r.data.tags.get(tag.STEP) == "evaluate"]
    assert len(evaluated) == 1 and "test/acc" in evaluated[0].data.metrics
    assert evaluated[0].data.tags[tag.EVALUATED] == f"runs:/{run_id}/checkpoints/best"


def test_a_local_checkpoint_of_another_network_fails_in_one_line(trained, tmp_path: Path) -> None:
    """A file names no run: the configured model is built, and the mismatch is named, not a traceback."""
    uri, run_id = trained
    local = MlflowClient(uri).download_artifacts(run_id, "checkpoints/best", str(tmp_path))
    ckpt = next(Path(local).glob("*.ckpt"))
    done = run_step_here(["steps/evaluate.py", f"ckpt_path={ckpt}", f"data.uri=runs:/{run_id}/dataset", *QUIET],
                         uri)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: ckpt_path: {ckpt} does not fit the configured model (size mismatch for net."), last
    assert "experiment=" in last and "Traceback" not in done.stderr
