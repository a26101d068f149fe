"""The logged model and the registry, in-process on an embedded store."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from helpers import TINY
from trainflow.data.digits import FEATURES
from trainflow.registry.versions import resolve_model
from trainflow.tracking import tags as tag
from trainflow.tracking.run import step_run
from trainflow.training.train import train

MODEL = "digits-registry-test"


@pytest.fixture
def trained(compose, tmp_path, sqlite_uri, tracking_env):
    tracking_env(sqlite_uri)
    overrides = [p for p in TINY if not p.startswith("registry.")] + [f"registry.model_name={MODEL}"]
    cfg = compose("train", overrides, output_dir=tmp_path / "train")
    with step_run("train", cfg) as run:
        result = train(cfg, run)
    return MlflowClient(sqlite_uri), run, result, overrides


def test_train_registers_a_tagged_version(trained) -> None:
    client, run, result, _ = trained
    assert result.registered == f"models:/{MODEL}/1"
    version = client.get_model_version(MODEL, "1")
    assert version.run_id == run.run_id
    assert version.tags[tag.DATA_DIGEST] == result.dataset.manifest.digest
    # its model card, before any evaluate: train's own test figures, and no decision yet
    card = version.description
    assert f"digest `{result.dataset.manifest.digest}`" in card
    assert "measured by the train run on its best checkpoint; not evaluated yet" in card
    test_acc = client.get_run(run.run_id).data.metrics["test/acc"]
    assert f"| `test/acc` | {test_acc:.4f} |" in card
    assert "**Promotion**: not decided yet" in card
    assert card.startswith(f"test/acc {test_acc:.4f} · not evaluated yet\n\n{MODEL} v1: a "), card
    assert f"/runs/{run.run_id})" in card
    assert client.get_run(run.run_id).data.tags[tag.OUTPUT] == f"models:/{MODEL}/1"


def test_every_model_uri_form_resolves_to_the_same_model(trained, tmp_path) -> None:
    client, run, _, _ = trained
    client.set_registered_model_alias(MODEL, "champion", "1")
    model_uri = client.get_run(run.run_id).data.tags[tag.MODEL_URI]
    assert model_uri.startswith("models:/m-")
    forms = [f"models:/{MODEL}@champion", f"models:/{MODEL}/1", f"models:/{MODEL}/latest", model_uri,
             f"runs:/{run.run_id}/model"]
    for i, uri in enumerate(forms):
        resolved = resolve_model(uri, client, tmp_path / str(i))
        assert resolved.run_id == run.run_id, uri
        assert (resolved.local_dir / "artifacts" / "weights.pt").is_file(), uri


def test_pyfunc_returns_label_names_with_probabilities(trained) -> None:
    import mlflow.pyfunc

    assert trained[2].registered == f"models:/{MODEL}/1"
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")
    assert [c.name for c in model.metadata.get_input_schema().inputs] == FEATURES
    from sklearn.datasets import load_digits

    digits = load_digits()
    frame = pd.DataFrame((digits.data[:20] / 16.0).astype(np.float32), columns=FEATURES)
    out = model.predict(frame)
    assert list(out.columns[:2]) == ["label", "probability"]
    assert set(out.label) <= {str(i) for i in range(10)}
    probs = out[[f"prob_{i}" for i in range(10)]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert np.allclose(out.probability, probs.max(axis=1))


def test_digest_mismatch_fails_naming_the_uri_and_registers_nothing(trained, compose, tmp_path, capsys) -> None:
    client, _, result, overrides = trained
    tampered = tmp_path / "tampered"
    shutil.copytree(result.dataset.path, tampered)
    shutil.copy(tampered / "val.parquet", tampered / "test.parquet")
    cfg = compose("train", [*overrides, f"data.uri={tampered}"], output_dir=tmp_path / "again")
    with pytest.raises(SystemExit) as info, step_run("train", cfg) as run:
        train(cfg, run)
    assert info.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: {tampered}: digest mismatch")
    assert [str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")] == ["1"]
    failed = client.get_run(run.run_id)
    assert failed.info.status == "FAILED" and tag.OUTPUT not in failed.data.tags


def test_example_experiment_reaches_95_percent(compose, tmp_path, sqlite_uri, tracking_env) -> None:
    """The documented baseline: experiment=example, 10 CPU epochs, >= 95% test accuracy."""
    tracking_env(sqlite_uri)
    cfg = compose("train", ["experiment=example", "extras.print_config=false", "registry.log_model=false",
                            "callbacks.rich_progress_bar=null", "trainer.enable_progress_bar=false"],
                  output_dir=tmp_path)
    assert cfg.trainer.max_epochs == 10
    with step_run("train", cfg) as run:
        result = train(cfg, run)
    assert result.metrics["test/acc"] >= 0.95
    assert Path(result.best_checkpoint).name == "best.ckpt"
