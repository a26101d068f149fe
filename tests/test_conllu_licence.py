"""A treebank's licence travels with the dataset artifact that copies it (EWT is CC BY-SA 4.0)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from helpers import compose_config, using_store
from trainflow.tracking.run import step_run

SENTENCE = ("# sent_id = s{n}\n1\tDogs\tdog\tNOUN\tNNS\t_\t2\tnsubj\t_\t_\n"
            "2\tbark\tbark\tVERB\tVBP\t_\t0\troot\t_\t_\n\n")
TERMS = "Tiny Treebank is licensed under CC BY-SA 4.0.\n"


def write_treebank(folder: Path, licence: str | None) -> None:
    folder.mkdir(parents=True)
    for name in ("train", "test"):
        (folder / f"{name}.conllu").write_text("".join(SENTENCE.format(n=i) for i in range(4)), encoding="utf-8")
    if licence:
        (folder / licence).write_text(TERMS, encoding="utf-8")
    (folder / "README.md").write_text("not a licence")


@pytest.fixture
def store(tmp_path):
    with using_store(tmp_path) as uri:
        yield MlflowClient(uri)
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()


def prepare(tmp_path: Path, treebank: Path):
    from trainflow.pipeline.prepare import prepare_data

    overrides = ["extras.print_config=false", "data=conllu", f"data.train_file={treebank / 'train.conllu'}",
                 "data.val_file=null", "data.val_fraction=0.5", f"data.test_file={treebank / 'test.conllu'}",
                 f"paths.cache_dir={tmp_path / 'cache'}"]
    cfg = compose_config("prepare_data", overrides, tmp_path / "prepare")
    with step_run("prepare_data", cfg) as run:
        return prepare_data(cfg, run), run.run_id


@pytest.mark.parametrize("licence", ["LICENSE.txt", "licence"])
def test_the_licence_beside_the_source_is_in_the_logged_dataset(store, tmp_path, licence) -> None:
    write_treebank(tmp_path / "treebank", licence)
    prepared, run_id = prepare(tmp_path, tmp_path / "treebank")
    downloaded = Path(store.download_artifacts(run_id, "dataset", str(tmp_path / "downloaded")))
    assert (downloaded / licence).read_text(encoding="utf-8") == TERMS
    assert not (downloaded / "README.md").exists()
    manifest = json.loads((downloaded / "manifest.json").read_text())
    assert manifest["extra"]["licence_files"] == [licence]
    assert prepared.manifest.extra["licence_files"] == [licence]


def test_a_source_without_a_licence_says_so(store, tmp_path) -> None:
    write_treebank(tmp_path / "treebank", None)
    prepared, run_id = prepare(tmp_path, tmp_path / "treebank")
    assert prepared.manifest.extra["licence_files"] == []
    assert {a.path for a in store.list_artifacts(run_id, "dataset")} == {
        "dataset/manifest.json", "dataset/train.parquet", "dataset/val.parquet", "dataset/test.parquet"}


def test_different_licences_in_two_source_folders_are_both_kept(tmp_path) -> None:
    from trainflow.data.tagging import copy_licences, source_licences

    for name, terms in (("ewt", "CC BY-SA 4.0"), ("other", "CC BY 4.0")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "LICENSE.txt").write_text(terms)
        (tmp_path / name / "x.conllu").write_text("")
    out = tmp_path / "dataset"
    out.mkdir()
    found = source_licences([str(tmp_path / "ewt" / "x.conllu"), None, str(tmp_path / "other" / "x.conllu"),
                             "runs:/0123/treebank.conllu"])
    assert copy_licences(found, out) == ["LICENSE.txt", "other-LICENSE.txt"]
    assert (out / "LICENSE.txt").read_text() == "CC BY-SA 4.0"
    assert (out / "other-LICENSE.txt").read_text() == "CC BY 4.0"
