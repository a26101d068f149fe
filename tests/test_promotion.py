"""The promotion gate compares figures only over the same data and the same part of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from helpers import TINY, compose_config, new_sqlite_store, using_store
from trainflow.registry.versions import CHAMPION, promote_if_better
from trainflow.tracking import tags as tag
from trainflow.tracking.run import step_run

MODEL = "promotion-digits"
TRAIN = [p for p in TINY if not p.startswith("registry.")] + [f"registry.model_name={MODEL}", "trainer.max_epochs=2"]


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


@pytest.fixture(scope="module")
def two_datasets(tmp_path_factory) -> Iterator[dict]:
    """In-process on an embedded store: datasets A and B (other seeds, other test rows); on A a model that
    cannot learn (v1, the first champion) and a model that does (v2)."""
    from hydra.core.global_hydra import GlobalHydra

    from trainflow.pipeline.prepare import prepare_data
    from trainflow.training.train import train

    tmp = tmp_path_factory.mktemp("two-datasets")
    with using_store(tmp) as uri:
        uris = {}
        for name, seed in (("A", 1), ("B", 2)):
            cfg = compose_config("prepare_data", ["extras.print_config=false", f"data.seed={seed}"], tmp / name)
            with step_run("prepare_data", cfg) as run:
                uris[name] = prepare_data(cfg, run).uri
        for lr in ("1e-6", "0.01"):  # v1, then v2
            overrides = [*TRAIN, f"data.uri={uris['A']}", f"model.optimizer.lr={lr}"]
            cfg = compose_config("train", overrides, tmp / f"train-{lr}")
            with step_run("train", cfg) as run:
                train(cfg, run)
        yield {"client": MlflowClient(uri), "uris": uris, "tmp": tmp}
    GlobalHydra.instance().clear()


def evaluated(tmp: Path, model_uri: str, data_uri: str, promote: bool) -> tuple[dict[str, str], float, Path]:
    """An evaluate run's tags, its test/acc and its output folder."""
    from trainflow.training.evaluate import evaluate

    overrides = ["extras.print_config=false", "trainer.limit_test_batches=2", f"model_uri={model_uri}",
                 f"data.uri={data_uri}", f"promote={str(promote).lower()}"]
    output = tmp / f"evaluate-{len(list(tmp.glob('evaluate-*')))}"
    cfg = compose_config("evaluate", overrides, output)
    with step_run("evaluate", cfg) as run:
        result = evaluate(cfg, run)
    return run.client.get_run(run.run_id).data.tags, result.metrics["test/acc"], output


def test_a_champion_measured_on_other_data_is_measured_again_and_a_better_model_takes_the_alias(
        two_datasets) -> None:
    """v1 is champion on A; v2 is evaluated on B: the gate runs v1 on B (evaluate's `_score`), compares, promotes."""
    client, uris, tmp = two_datasets["client"], two_datasets["uris"], two_datasets["tmp"]
    tags, _, output = evaluated(tmp, f"models:/{MODEL}/1", uris["A"], promote=True)
    assert tags[tag.PROMOTION_DECISION] == "promoted" and tags[tag.PROMOTION_CHAMPION] == "none"
    assert not (output / "champion").exists()

    tags, candidate, output = evaluated(tmp, f"models:/{MODEL}/2", uris["B"], promote=True)
    assert tags[tag.PROMOTION_CHAMPION_VERSION] == "1"
    assert list((output / "champion").rglob("weights.pt")), "v1 was fetched to be measured again"
    remeasured = float(tags[tag.PROMOTION_CHAMPION])
    assert tags[tag.PROMOTION_DECISION] == "promoted", (candidate, remeasured)
    assert candidate > remeasured
    assert str(client.get_model_version_by_alias(MODEL, CHAMPION).version) == "2"

    # the figure the gate used is v1's on B, as evaluating v1 on B in a run of its own measures it
    _, v1_on_b, _ = evaluated(tmp, f"models:/{MODEL}/1", uris["B"], promote=False)
    assert remeasured == pytest.approx(v1_on_b, abs=1e-6)
    v1 = client.get_model_version(MODEL, "1").tags
    assert v1[tag.EVAL_DATA_DIGEST] != v1[tag.DATA_DIGEST], "B is not the data v1 was trained and first tested on"
