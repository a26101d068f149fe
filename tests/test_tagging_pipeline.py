"""POS tagging through the pipeline, in-process on an embedded store: prepare_data -> train ->
registry -> evaluate, on experiment=ud_ewt_tiny (the first sentences of UD English EWT)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from helpers import compose_config, load_in_fresh_process, using_store
from trainflow.tracking import tags as tag
from trainflow.tracking.run import step_run

MODEL = "ud-ewt-tiny-tagger"
QUIET = ["experiment=ud_ewt_tiny", "extras.print_config=false", "callbacks.rich_progress_bar=null",
         "callbacks.model_summary=null", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """prepare_data, then train on its runs:/ dataset URI with a registered version, as `main` chains them."""

    from trainflow.pipeline.prepare import prepare_data
    from trainflow.training.train import train

    tmp = tmp_path_factory.mktemp("tagging")
    with using_store(tmp) as uri:
        cache = [f"paths.cache_dir={tmp / 'cache'}"]
        cfg = compose_config("prepare_data", [*QUIET, *cache], tmp / "prepare")
        with step_run("prepare_data", cfg) as prep_run:
            prepared = prepare_data(cfg, prep_run)
        cfg = compose_config("train", [*QUIET, *cache, f"data.uri={prepared.uri}"], tmp / "train")
        with step_run("train", cfg) as train_run:
            trained = train(cfg, train_run)
        yield {"client": MlflowClient(uri), "prepared": prepared, "trained": trained, "run_id": train_run.run_id,
               "tmp": tmp, "cache": cache}
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()


def test_train_reads_the_prepared_dataset_and_logs_the_sizes_it_took_from_it(tagged) -> None:
    client, prepared, trained = tagged["client"], tagged["prepared"], tagged["trained"]
    assert prepared.uri.startswith("runs:/") and prepared.manifest.task == "token-classification/pos-tagging/upos"
    assert prepared.manifest.splits == {"train": 48, "val": 12, "test": 60}
    assert trained.registered == f"models:/{MODEL}/1"
    run = client.get_run(tagged["run_id"])
    assert run.data.tags[tag.DATA_URI] == prepared.uri
    for key in ("train/acc", "val/acc", "val/f1", "test/acc", "test/f1", "test/loss"):
        assert key in run.data.metrics, key
    # the model config logged with the weights carries the sizes the data module gave
    from trainflow.registry.versions import resolve_model

    model = resolve_model(f"models:/{MODEL}/1", client, tagged["tmp"] / "model")
    logged = yaml.safe_load((model.local_dir / "artifacts" / "model.yaml").read_text())
    vocab = prepared.manifest.extra["vocab"]
    assert logged["vocab_size"] == len(vocab["words"]) and logged["num_classes"] == len(vocab["tags"])
    assert logged["label_names"] == prepared.manifest.label_names


def test_the_registered_tagger_returns_one_tag_per_token(tagged) -> None:
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(f"models:/{MODEL}/1")
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["tokens"]
    sentences = [["The", "zyxwvutsrq", "flurbled", "."], ["Hello"], [], ["word"] * 70]
    out = model.predict(pd.DataFrame({"tokens": sentences}))
    assert list(out.columns) == ["tags", "probabilities"]
    labels = set(tagged["prepared"].manifest.label_names)
    for tokens, tags, probs in zip(sentences, out.tags, out.probabilities, strict=True):
        assert len(tags) == len(probs) == len(tokens)
        assert set(tags) <= labels and all(0 < p <= 1 for p in probs)


def test_evaluate_a_tagger_checkpoint_gives_per_tag_scores(tagged) -> None:
    from trainflow.training.evaluate import evaluate

    tmp, client = tagged["tmp"], tagged["client"]
    cfg = compose_config("evaluate", [*QUIET, *tagged["cache"], f"ckpt_path=runs:/{tagged['run_id']}/checkpoints/best"],
                       tmp / "evaluate")
    with step_run("evaluate", cfg) as run:
        result = evaluate(cfg, run)
    # the same weights on the same test split as the train step's own test
    assert result.metrics["test/acc"] == pytest.approx(tagged["trained"].metrics["test/acc"])
    assert list(result.per_class.label) == tagged["prepared"].manifest.label_names
    support = int(result.per_class.support.sum())
    test_words = sum(len(w) for w in pd.read_parquet(tagged["prepared"].local_path / "test.parquet").words)
    assert support == test_words  # every word once, no padding
    table = json.loads(Path(client.download_artifacts(run.run_id, "evaluation/per_class_metrics.json",
                                                      str(tmp / "report"))).read_text())
    assert "f1" in table["columns"]


@pytest.mark.slow
def test_the_model_loads_in_a_new_interpreter_from_its_own_code(tagged, tmp_path: Path) -> None:
    """The model carries the whole package, not a part that would shadow the installed one."""
    import mlflow

    shipped = load_in_fresh_process(f"models:/{MODEL}/1", mlflow.get_tracking_uri(), tmp_path)
    assert {"code/trainflow/registry/pyfunc.py", "code/trainflow/models/tagger.py"} <= shipped
