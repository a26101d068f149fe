"""`-P add.<key>=value` adds a key the config lacks (Hydra's `+`), which MLflow refuses as a `-P` name."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from helpers import TINY, mlflow_run, new_sqlite_store
from trainflow.cli import force_step_overrides
from trainflow.config.param_names import override_from_param, param_name
from trainflow.pipeline.main import STEPS, _params, split_overrides
from trainflow.tracking import tags as tag


@pytest.mark.parametrize(("given", "override"), [
    ("add.trainer.detect_anomaly=true", "+trainer.detect_anomaly=true"),
    ("add.train.trainer.detect_anomaly=true", "+train.trainer.detect_anomaly=true"),
    ("trainer.max_epochs=2", "trainer.max_epochs=2"),
    ("+trainer.x=1", "+trainer.x=1"),
    ("model.add.x=1", "model.add.x=1"),  # only a leading `add.`
])
def test_add_stands_for_plus(given: str, override: str) -> None:
    assert override_from_param(given) == override


def test_a_step_override_keeps_its_plus_through_main() -> None:
    """`+train.key` reached train as `key` (the `+` lost), so a key the schema lacks could not be added."""
    forced = force_step_overrides(["+train.trainer.detect_anomaly=true", "train.trainer.max_epochs=2",
                                   "+trainer.benchmark=false", "seed=7"], STEPS)
    shared, per_step = split_overrides(forced)
    assert shared == ["+trainer.benchmark=false", "seed=7"]
    assert per_step["train"] == ["+trainer.detect_anomaly=true", "trainer.max_epochs=2"]


def test_a_step_run_logs_an_added_key_under_the_name_users_pass() -> None:
    assert _params(["+trainer.detect_anomaly=true", "++a=1", "seed=7"]) == {
        "add.trainer.detect_anomaly": "true", "++a": "1", "seed": "7"}
    assert param_name("+x") == "add.x"


@pytest.mark.slow
def test_mlflow_run_main_adds_keys_to_every_step_or_to_one(tmp_path) -> None:
    uri = new_sqlite_store(tmp_path)
    # keys the trainer schema lacks: plain `-P trainer.min_steps=1` fails as a typo would
    done = mlflow_run("main", [*TINY, "add.trainer.min_steps=1", "add.train.trainer.gradient_clip_algorithm=value"],
                      uri, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    client = MlflowClient(uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    by_step = {r.data.tags.get(tag.STEP): r for r in runs}
    assert set(by_step) == {"main", *STEPS}
    for step in STEPS:
        assert by_step[step].data.params["trainer.min_steps"] == "1", step
    assert by_step["train"].data.params["trainer.gradient_clip_algorithm"] == "value"
    assert "trainer.gradient_clip_algorithm" not in by_step["evaluate"].data.params
    assert by_step["main"].info.status == "FINISHED"
