"""Cache keys: what reruns a step and what does not."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import ROOT
from trainflow.pipeline.cache import CODE_SCOPES, cache_key, code_digest, scoped_config
from trainflow.pipeline.main import split_overrides

BASE = {"data": {"_target_": "D", "seed": 1, "batch_size": 64, "uri": "runs:/a/dataset"},
        "model": {"lr": 0.1}, "trainer": {"max_epochs": 3}, "seed": 1, "paths": {"output_dir": "/x"}}


def key(step: str, cfg: dict, code: str = "c", inputs: dict | None = None) -> str:
    return cache_key(step, cfg, code, inputs or {})


def test_training_overrides_do_not_touch_prepare_data() -> None:
    changed = {**BASE, "model": {"lr": 0.01}, "trainer": {"max_epochs": 5},
               "data": {**BASE["data"], "batch_size": 32, "uri": "runs:/b/dataset"}}
    assert key("prepare_data", BASE) == key("prepare_data", changed)
    assert key("train", BASE) != key("train", changed)


def test_types_inputs_and_code_are_part_of_the_key() -> None:
    assert key("train", BASE) != key("train", {**BASE, "trainer": {"max_epochs": "3"}})
    assert key("train", BASE, inputs={"data": "d1"}) != key("train", BASE, inputs={"data": "d2"})
    assert key("train", BASE, code="a") != key("train", BASE, code="b")
    assert key("train", BASE) == key("train", {**BASE, "paths": {"output_dir": "/elsewhere"}})
    assert "uri" not in scoped_config("train", BASE)["data"]


def test_a_changed_source_file_reruns_only_the_steps_that_run_it(tmp_path: Path) -> None:
    copy = tmp_path / "project"
    for part in ("src", "steps", "configs"):
        shutil.copytree(ROOT / part, copy / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "uv.lock", copy / "uv.lock")
    before = {s: code_digest(copy, paths) for s, paths in CODE_SCOPES.items()}
    with (copy / "src/trainflow/models/classifier.py").open("a") as f:
        f.write("\n# a change\n")
    after = {s: code_digest(copy, paths) for s, paths in CODE_SCOPES.items()}
    assert before["prepare_data"] == after["prepare_data"]
    assert before["train"] != after["train"] and before["evaluate"] != after["evaluate"]
    with (copy / "src/trainflow/data/digits.py").open("a") as f:
        f.write("\n# a change\n")
    assert code_digest(copy, CODE_SCOPES["prepare_data"]) != after["prepare_data"]


def test_overrides_are_routed_by_step_prefix() -> None:
    shared, per_step = split_overrides(
        ["experiment=example", "++train.trainer.max_epochs=5", "cache=false", "evaluate.promote=false",
         "++prepare_data.data.seed=3", "trainer.limit_val_batches=2"])
    assert shared == ["experiment=example", "trainer.limit_val_batches=2"]
    assert per_step == {"prepare_data": ["data.seed=3"], "train": ["trainer.max_epochs=5"],
                        "evaluate": ["promote=false"]}
