"""The promotion gate compares figures only over the same data and the same part of it."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import new_sqlite_store
from trainflow.tracking import tags as tag
from trainflow.tracking.registry import CHAMPION, promote_if_better


@pytest.fixture
def registry(tmp_path: Path) -> MlflowClient:
    """Version 1 is champion, its recorded test/acc 0.9 measured on 2 test batches of dataset 'd'."""
    client = MlflowClient(new_sqlite_store(tmp_path))
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source=str(tmp_path))
    client.set_registered_model_alias("m", CHAMPION, "1")
    for key, value in {tag.eval_metric("test/acc"): "0.9", tag.EVAL_DATA_DIGEST: "d",
                       tag.EVAL_TEST_SCOPE: "limit_test_batches=2"}.items():
        client.set_model_version_tag("m", "1", key, value)
    return client


@pytest.mark.parametrize(("digest", "scope", "decision", "champion"), [
    ("d", "limit_test_batches=2", "kept", 0.9),  # same data, same batches: the recorded figure stands
    ("d", "all", "promoted", 0.5),  # the whole test split: the champion is measured again
    ("other", "limit_test_batches=2", "promoted", 0.5),  # other data: measured again
])
def test_a_recorded_figure_counts_only_for_the_same_data_and_batches(registry, digest, scope, decision,
                                                                     champion) -> None:
    measured: list[str] = []

    def champion_value_on(version) -> float:
        measured.append(str(version.version))
        return 0.5

    promotion = promote_if_better(registry, "m", "2", "test/acc", 0.8, digest, True, champion_value_on, scope=scope)
    assert (promotion.decision, promotion.champion) == (decision, champion)
    assert measured == ([] if champion == 0.9 else ["1"])
    assert str(registry.get_model_version_by_alias("m", CHAMPION).version) == ("2" if decision == "promoted" else "1")


@pytest.mark.parametrize(("overrides", "scope"), [
    ([], "all"),
    (["trainer.limit_test_batches=1.0"], "all"),
    (["trainer.limit_test_batches=1"], "limit_test_batches=1,batch_size=64"),  # an int is a batch count
    (["trainer.limit_test_batches=2", "data.batch_size=16"], "limit_test_batches=2,batch_size=16"),
    (["trainer.limit_test_batches=0.5"], "limit_test_batches=0.5,batch_size=64"),
])
def test_the_scope_names_how_much_of_the_test_split_was_seen(compose, tmp_path, overrides, scope) -> None:
    from trainflow.training.evaluate import eval_scope

    cfg = compose("evaluate", ["experiment=example", "model_uri=models:/m/1", *overrides], output_dir=tmp_path)
    assert eval_scope(cfg) == scope
