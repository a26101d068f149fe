"""Cache keys: what reruns a step and what does not."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import ROOT, project_copy
from trainflow.pipeline.cache import cache_key, scoped_config, source_inputs, step_code_digest
from trainflow.pipeline.main import compose_for_cache, split_overrides
from trainflow.pipeline.sources import step_sources

# an image data module: the one task whose data config has preprocessing keys
IMAGES = "trainflow.data.image_folder.ImageFolderDataModule"
BASE = {"data": {"_target_": IMAGES, "seed": 1, "batch_size": 64, "uri": "runs:/a/dataset"},
        "model": {"lr": 0.1}, "trainer": {"max_epochs": 3}, "seed": 1, "paths": {"output_dir": "/x"}}


def key(step: str, cfg: dict, code: str = "c", inputs: dict | None = None) -> str:
    return cache_key(step, cfg, code, inputs or {})


def test_training_overrides_do_not_touch_prepare_data() -> None:
    changed = {**BASE, "model": {"lr": 0.01}, "trainer": {"max_epochs": 5},
               "data": {**BASE["data"], "batch_size": 32, "uri": "runs:/b/dataset"}}
    assert key("prepare_data", BASE) == key("prepare_data", changed)
    augmented = {**BASE, "data": {**BASE["data"], "image_size": 64, "train_transform": {"_target_": "A.Flip"}}}
    assert key("prepare_data", BASE) == key("prepare_data", augmented), "images are packed encoded, untransformed"
    assert key("train", BASE) != key("train", augmented)
    assert key("train", BASE) != key("train", changed)


def test_types_inputs_and_code_are_part_of_the_key() -> None:
    assert key("train", BASE) != key("train", {**BASE, "trainer": {"max_epochs": "3"}})
    assert key("train", BASE, inputs={"data": "d1"}) != key("train", BASE, inputs={"data": "d2"})
    assert key("train", BASE, code="a") != key("train", BASE, code="b")
    assert key("train", BASE) == key("train", {**BASE, "paths": {"output_dir": "/elsewhere"}})
    assert "uri" not in scoped_config("train", BASE)["data"]


def _digests(root: Path, configs: dict[str, dict]) -> dict[str, str]:
    return {step: step_code_digest(root, step, cfg) for step, cfg in configs.items()}


@pytest.fixture
def step_configs(hydra_configs) -> dict[str, dict]:
    return {step: compose_for_cache(step, ["experiment=example"])[0] for step in ("prepare_data", "train", "evaluate")}


def test_a_changed_source_file_reruns_only_the_steps_that_run_it(step_configs, tmp_path: Path) -> None:
    """What decides whether the pipeline reruns a step after a code change: its key's code digest."""
    copy = project_copy(tmp_path / "project")
    before = _digests(copy, step_configs)
    with (copy / "src/trainflow/models/classifier.py").open("a") as f:
        f.write("\n# a change\n")
    after = _digests(copy, step_configs)
    assert before["prepare_data"] == after["prepare_data"]
    assert before["train"] != after["train"] and before["evaluate"] != after["evaluate"]
    with (copy / "src/trainflow/data/digits.py").open("a") as f:
        f.write("\n# a change\n")
    assert step_code_digest(copy, "prepare_data", step_configs["prepare_data"]) != after["prepare_data"]
    before = _digests(copy, step_configs)
    with (copy / "src/trainflow/cli.py").open("a") as f:  # how overrides are read: every step
        f.write("\n# a change\n")
    assert all(digest != before[s] for s, digest in _digests(copy, step_configs).items())


def test_the_code_a_step_runs_is_derived_from_its_imports_and_config(step_configs) -> None:
    """No list to keep: what the script imports (at any depth) and what `_target_`s name is covered."""
    sources = step_sources(ROOT, "train", scoped_config("train", step_configs["train"]))
    train = {p.relative_to(ROOT).as_posix() for p in sources}
    assert {"steps/train.py", "uv.lock", "src/trainflow/training/train.py", "src/trainflow/fetch.py",
            "src/trainflow/data/digits.py", "src/trainflow/models/classifier.py",
            "src/trainflow/models/components/simple_dense_net.py",
            "src/trainflow/training/model_checkpoint.py"} <= train
    assert "src/trainflow/sweep/driver.py" not in train, "only what train can reach"
    prepare = step_sources(ROOT, "prepare_data", scoped_config("prepare_data", step_configs["prepare_data"]))
    assert ROOT / "src/trainflow/models/classifier.py" not in prepare, "prepare_data builds no model"


def test_moving_or_editing_a_module_reruns_the_steps_that_reach_it(step_configs, tmp_path: Path) -> None:
    copy = project_copy(tmp_path / "project")
    before = _digests(copy, step_configs)
    with (copy / "src/trainflow/fetch.py").open("a") as f:  # reached only through imports of imports
        f.write("\n# a change\n")
    edited = _digests(copy, step_configs)
    assert all(edited[s] != before[s] for s in before)

    # the same bytes under another name: every importer changes, and so does the path hashed
    old, new = copy / "src/trainflow/data/split_loaders.py", copy / "src/trainflow/data/loaders.py"
    old.rename(new)
    for module in (copy / "src/trainflow/data").glob("*.py"):
        text = module.read_text()
        module.write_text(text.replace("trainflow.data.split_loaders", "trainflow.data.loaders"))
    moved = _digests(copy, step_configs)
    assert all(moved[s] != edited[s] for s in edited)


def test_a_task_outside_the_package_is_part_of_the_code_version(monkeypatch) -> None:
    """A task on PYTHONPATH inside the checkout (tests/tasks) counts as the project's code."""
    tasks = ROOT / "tests" / "tasks"
    monkeypatch.syspath_prepend(str(tasks))
    cfg = {"data": {"_target_": "winetask.data.WineDataModule"},
           "model": {"_target_": "trainflow.models.classifier.ClassificationModule",
                     "net": {"_target_": "winetask.net.WineNet"}}}
    sources = step_sources(ROOT, "train", cfg)
    assert {tasks / "winetask/data.py", tasks / "winetask/net.py", tasks / "winetask/__init__.py"} <= set(sources)


def test_overrides_are_routed_by_step_prefix() -> None:
    shared, per_step = split_overrides(
        ["experiment=example", "++train.trainer.max_epochs=5", "cache=false", "evaluate.promote=false",
         "++prepare_data.data.seed=3", "trainer.limit_val_batches=2"])
    assert shared == ["experiment=example", "trainer.limit_val_batches=2"]
    assert per_step == {"prepare_data": ["data.seed=3"], "train": ["trainer.max_epochs=5"],
                        "evaluate": ["promote=false"]}


@pytest.fixture
def hydra_configs() -> Iterator[None]:
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from trainflow.config.schema import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def test_the_pipeline_stats_the_files_a_data_config_names_through_paths(hydra_configs, tmp_path: Path) -> None:
    """Treebank files live under ${paths.root_dir}: their digest is an input of prepare_data's key."""
    keyed, as_run = compose_for_cache("prepare_data", ["experiment=ud_ewt_tiny"])
    assert keyed["data"]["train_file"].startswith("<root_dir>/"), "keys do not depend on the checkout's place"
    assert Path(as_run["data"]["train_file"]).is_file()
    assert set(source_inputs(as_run)) == {"source"}

    treebank = tmp_path / "tb.conllu"
    shutil.copy(as_run["data"]["test_file"], treebank)
    overrides = ["experiment=ud_ewt_tiny", f"data.train_file={treebank}"]
    before = source_inputs(compose_for_cache("prepare_data", overrides)[1])
    with treebank.open("a") as f:
        f.write("# sent_id = added\n1\tHi\thi\tINTJ\tUH\t_\t0\troot\t_\t_\n\n")
    assert source_inputs(compose_for_cache("prepare_data", overrides)[1]) != before
