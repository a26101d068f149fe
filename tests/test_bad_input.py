"""Bad input: one line naming the culprit, a non-zero exit, nothing claimed.

Each case runs the step as its script would, in-process for speed: the
override precheck, then the step contract around the step. None may register
a version, move an alias, or leave a FINISHED run that claims an output.
"""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient

from helpers import ROOT, TINY, compose_config, new_sqlite_store
from servers import free_port
from trainflow.cli import precheck_overrides
from trainflow.data.dataset import MANIFEST, files_digest
from trainflow.tracking import tags as tag
from trainflow.tracking.run import step_run

MODEL = "bad-input-model"
RUN_ID = "0123456789abcdef0123456789abcdef"


def _step(config_name: str) -> Callable:
    if config_name == "train":
        from trainflow.training.train import train

        return train
    if config_name == "evaluate":
        from trainflow.training.evaluate import evaluate

        return evaluate
    if config_name == "predict":
        from trainflow.pipeline.predict import predict

        return predict
    from trainflow.pipeline.prepare import prepare_data

    return prepare_data


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One embedded store with a registered champion, shared by every case."""
    import mlflow
    from hydra.core.global_hydra import GlobalHydra

    from trainflow.training.train import train

    tmp = tmp_path_factory.mktemp("bad-input")
    uri = new_sqlite_store(tmp)
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    overrides = [p for p in TINY if not p.startswith("registry.")] + [f"registry.model_name={MODEL}"]
    cfg = compose_config("train", overrides, tmp / "train")
    with step_run("train", cfg) as run:
        result = train(cfg, run)
    client = MlflowClient(uri)
    client.set_registered_model_alias(MODEL, "champion", "1")
    yield {"uri": uri, "client": client, "run_id": run.run_id, "dataset": result.dataset.path, "tmp": tmp}
    GlobalHydra.instance().clear()
    mp.undo()


def registry_state(client: MlflowClient) -> tuple:
    versions = sorted(str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))
    return versions, client.get_model_version_by_alias(MODEL, "champion").version


def run_case(compose, capsys, tmp_path, config_name: str, overrides: list[str]) -> tuple[int, str]:
    """Exit code and the one `error:` line of a step run with these overrides: the last line on stderr,
    with no traceback beside it."""
    capsys.readouterr()
    code = 0
    try:
        precheck_overrides(config_name, overrides)
        cfg = compose(config_name, overrides, output_dir=tmp_path / "out")
        with step_run(config_name, cfg) as run:
            _step(config_name)(cfg, run)
    except SystemExit as exc:
        code = int(exc.code or 0)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert lines[-1] == errors[0], err[-3000:]
    return code, errors[0]


def check_nothing_claimed(store, before: tuple) -> None:
    client = store["client"]
    assert registry_state(client) == before
    for run in client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000):
        if run.info.run_id != store["run_id"] and run.info.status == "FINISHED":
            assert tag.OUTPUT not in run.data.tags, run.data.tags


def corrupt_dataset(store, tmp_path: Path, how: str) -> Path:
    folder = tmp_path / how
    shutil.copytree(store["dataset"], folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    if how == "digest":
        shutil.copy(folder / "val.parquet", folder / "test.parquet")
    elif how == "parquet":
        (folder / "train.parquet").write_bytes(b"PAR1 this is not parquet")
        manifest["digest"] = files_digest(folder, list(manifest["splits"]))
    elif how == "empty":
        table = pq.read_table(folder / "train.parquet").slice(0, 0)
        pq.write_table(table, folder / "train.parquet")
        manifest["digest"] = files_digest(folder, list(manifest["splits"]))
    elif how == "schema":
        pq.write_table(pa.table({"x": [1.0]}), folder / "train.parquet")
        manifest["digest"] = files_digest(folder, list(manifest["splits"]))
    elif how == "manifest":
        (folder / MANIFEST).write_text("{not json")
        return folder
    elif how == "missing":
        (folder / "val.parquet").unlink()
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


CONLLU = ["data=conllu", "data.val_file=null", "data.test_file={conllu_good}", "data.val_fraction=0.5"]
GOOD_SENTENCE = ("# sent_id = s1\n1\tDogs\tdog\tNOUN\tNNS\t_\t2\tnsubj\t_\t_\n"
                 "2\tbark\tbark\tVERB\tVBP\t_\t0\troot\t_\t_\n\n")
CONLLU_FILES = {
    "conllu_good": GOOD_SENTENCE * 4,
    "conllu_columns": "# sent_id = s1\n# text = Dogs bark\n1\tDogs\tdog\tNOUN\n\n",
    "conllu_id": GOOD_SENTENCE + "# sent_id = s2\nx\tDogs\tdog\tNOUN\tNNS\t_\t0\troot\t_\t_\n\n",
    "conllu_tag": "# sent_id = s1\n# text = dogs\n1\tdogs\tdog\t_\tNNS\t_\t0\troot\t_\t_\n\n",
}
CONLLU_NAMES = {"conllu_good": "good", "conllu_columns": "columns", "conllu_id": "bad-id", "conllu_tag": "no-tag"}


def write_bad_sources(tmp_path: Path) -> dict[str, str]:
    """Small CoNLL-U files and image folders, each broken in one way."""
    from PIL import Image

    fill = {}
    for key, text in CONLLU_FILES.items():
        path = tmp_path / f"{CONLLU_NAMES[key]}.conllu"
        path.write_text(text, encoding="utf-8")
        fill[key] = str(path)
    for name in ("images_corrupt", "images_empty_class"):
        for label in ("a", "b"):
            folder = tmp_path / name / label
            folder.mkdir(parents=True)
            for i in range(6):
                Image.new("L", (8, 8), color=40 * i).save(folder / f"{i}.png")
        fill[name] = str(tmp_path / name)
    (tmp_path / "images_corrupt" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tmp_path / "images_empty_class" / "c").mkdir()
    return fill


# (config, overrides, what the error line must contain, exit code). `{...}` fill from the fixture.
CASES = [
    ("train", ["trainer.max_epoch=3"], "trainer.max_epoch", 2),
    ("train", ["trainer.max_epochs=ten"], "trainer.max_epochs", 2),
    ("train", ["data=nope"], "data/nope", 2),
    ("train", ["experiment=nope"], "experiment/nope", 2),
    ("train", ["trainer=tpu_pod"], "trainer/tpu_pod", 2),
    ("train", ["seed=abc"], "seed", 2),
    ("train", ["extras.print_config=maybe"], "extras.print_config", 2),
    ("train", ["tracking.connect_timeout_s=soon"], "tracking.connect_timeout_s", 2),
    ("evaluate", ["promote=perhaps"], "promote", 2),
    ("main", ["cache=sometimes"], "cache", 2),
    ("train", ["+model.optimizer.lrr=0.1"], "model.optimizer.lrr", 2),
    ("train", ["model.net.lin1_size=wide"], "model.net.lin1_size", 2),
    ("train", ["model.optimizer.lr=abc"], "model.optimizer.lr: expected float, got str 'abc'", 2),  # float | Tensor
    ("train", ["trainer.max_epochs=[1"], "no viable alternative at input '[1'", 2),  # override grammar
    ("train", ["callbacks=nope"], "callbacks/nope", 2),
    ("train", ["model._target_=trainflow.models.nope.Module"], "model._target_", 2),
    ("train", ["+callbacks.model_checkpoint.every_n_epoch=1"], "callbacks.model_checkpoint.every_n_epoch", 2),
    ("train", ["data.val_fraction=1.5"], "data.val_fraction", 1),
    ("train", ["data.uri=/no/such/dataset"], "/no/such/dataset", 1),
    ("train", ["data.uri={empty_dir}"], "no manifest.json", 1),
    ("train", ["data.uri={digest}"], "digest mismatch", 1),
    ("train", ["data.uri={parquet}"], "train.parquet: unreadable parquet", 1),
    ("train", ["data.uri={empty}"], "train split is empty", 1),
    ("train", ["data.uri={schema}"], "not a digits dataset", 1),
    ("train", ["data.uri={manifest}"], "malformed manifest", 1),
    ("train", ["data.uri={missing}"], "val.parquet", 1),
    ("train", [f"data.uri=runs:/{RUN_ID}/dataset"], f"runs:/{RUN_ID}/dataset", 1),
    ("train", ["data.uri=runs:/{run_id}/no-such-path"], "no-such-path", 1),
    ("train", ["ckpt_path=/no/such.ckpt"], "/no/such.ckpt", 1),
    ("train", ["ckpt_path={not_a_ckpt}"], "is not a torch checkpoint", 1),
    ("evaluate", [], "model_uri / ckpt_path", 1),
    ("evaluate", ["model_uri=models:/no-such-model@champion"], "no registered model 'no-such-model'", 1),
    ("evaluate", ["model_uri=models:/no-such-model/3"], "no registered model 'no-such-model'", 1),
    ("evaluate", ["model_uri=models:/no-such-model/latest"], "no registered model 'no-such-model'", 1),
    ("evaluate", [f"model_uri=models:/{MODEL}@no-such-alias"], "no alias 'no-such-alias'", 1),
    ("evaluate", [f"model_uri=models:/{MODEL}/999"], "no version '999'", 1),
    ("evaluate", [f"model_uri=runs:/{RUN_ID}/model"], f"runs:/{RUN_ID}/model", 1),
    ("evaluate", ["model_uri=models:/m-0000000000000000000000000000dead"],
     "models:/m-0000000000000000000000000000dead", 1),
    ("evaluate", ["model_uri=ftp:/somewhere"], "ftp:/somewhere", 1),
    ("evaluate", [f"model_uri=models:/{MODEL}/1", "data.uri={digest}"], "digest mismatch", 1),
    ("evaluate", ["ckpt_path=runs:/{run_id}/checkpoints/none"], "checkpoints/none", 1),
    ("evaluate", [f"model_uri=models:/{MODEL}/1", "optimized_metric=test/nope", "promote=true"], "test/nope", 1),
    ("train", ["tracking.uri=bogus://nowhere"], "bogus://nowhere", 1),
    # CoNLL-U treebanks: the file and line of the malformed token
    ("prepare_data", [*CONLLU, "data.train_file={conllu_columns}"], "columns.conllu:3: expected 10", 1),
    ("prepare_data", [*CONLLU, "data.train_file={conllu_id}"], "bad-id.conllu:6: bad ID 'x'", 1),
    ("prepare_data", [*CONLLU, "data.train_file={conllu_tag}"], "no-tag.conllu:3: word 'dogs' has no UPOS", 1),
    ("prepare_data", [*CONLLU, "data.train_file=/no/such.conllu"], "data.train_file: no such file: /no/such.conllu", 1),
    ("prepare_data", [*CONLLU, "data.tag_column=lemma"], "data.tag_column", 1),
    # image folders: the corrupt file, a missing folder, an empty class
    ("prepare_data", ["data=image_folder", "data.root={images_corrupt}"], "broken.png", 1),
    ("prepare_data", ["data=image_folder", "data.root={images_empty_class}"], "class folder without", 1),
    ("prepare_data", ["data=image_folder", "data.root=/no/such/images"], "data.root: no such folder", 1),
    ("prepare_data", ["data=image_folder"], "data.root: not set", 1),
    ("prepare_data", ["data=image_folder", "data.root={images_corrupt}", "data.on_bad_image=ignore"],
     "data.on_bad_image", 1),
    # hub weights, however they are spelt: the how-to line when the config is checked, not "no such file"
    ("train", ["experiment=digits_images_tiny", "model.net.pretrained=hf-hub:timm/resnet18.a1_in1k"],
     "model.net.pretrained=hf-hub:timm/resnet18.a1_in1k would download weights from the Hugging Face hub", 2),
    ("train", ["experiment=digits_images_tiny", "model.net.pretrained=timm/resnet18.a1_in1k"],
     "pass a file instead: model.net.pretrained=/path/to/weights.pth", 2),
    ("train", ["experiment=digits_images_tiny", "model.net.pretrained=https://example.org/resnet18.safetensors"],
     "model.net.pretrained=https://example.org/resnet18.safetensors would download weights", 2),
    # predict: the model, the input file or folder, and its own settings
    ("predict", ["input={empty_dir}"], "model_uri: required", 1),
    ("predict", [f"model_uri=models:/{MODEL}/1"], "input: required", 1),
    ("predict", ["model_uri=models:/no-such-model/1", "input={empty_dir}"], "no registered model 'no-such-model'", 1),
    ("predict", [f"model_uri=models:/{MODEL}/1", "input=/no/such/input"],
     "input: no such file or folder: /no/such/input", 1),
    ("predict", [f"model_uri=models:/{MODEL}/1", "input={not_a_ckpt}"], "neither a folder of images nor a .parquet", 1),
    ("predict", [f"model_uri=models:/{MODEL}/1", "input={parquet}/train.parquet"], "unreadable parquet", 1),
    ("predict", [f"model_uri=models:/{MODEL}/1", "input={empty}/train.parquet"], "train.parquet has no rows", 1),
    ("predict", [f"model_uri=models:/{MODEL}/1", "input={schema}/train.parquet"],
     "lacks the model's input column(s) pixel_00", 1),
    ("predict", [f"model_uri=models:/{MODEL}/1", "input={empty_dir}"],
     f"is a folder, but models:/{MODEL}/1 does not read folders", 1),
    ("predict", [f"model_uri=models:/{MODEL}/1", f"input=runs:/{RUN_ID}/x.parquet"],
     f"input: cannot download runs:/{RUN_ID}/x.parquet", 1),
    ("predict", [f"model_uri=models:/{MODEL}/1", "input={empty_dir}", "on_bad_image=maybe"], "on_bad_image='maybe'", 1),
    ("predict", [f"model_uri=models:/{MODEL}/1", "input={empty_dir}", "batch_size=0"], "batch_size=0", 1),
    ("predict", ["batch_size=many"], "batch_size", 2),
]


@pytest.mark.parametrize(("config_name", "overrides", "expected", "exit_code"), CASES,
                         ids=[f"{c[0]}:{' '.join(c[1]) or 'none'}" for c in CASES])
def test_bad_input_fails_in_one_line(store, compose, capsys, tmp_path, monkeypatch, config_name, overrides,
                                     expected, exit_code) -> None:
    if any("tracking.uri" in o for o in overrides):
        monkeypatch.delenv("MLFLOW_TRACKING_URI")
    fill = {
        "run_id": store["run_id"],
        "empty_dir": str(tmp_path / "empty-dir"),
        "not_a_ckpt": str(tmp_path / "notes.ckpt"),
    }
    (tmp_path / "empty-dir").mkdir()
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    fill.update(write_bad_sources(tmp_path))
    for how in ("digest", "parquet", "empty", "schema", "manifest", "missing"):
        if any("{" + how + "}" in o for o in overrides):
            fill[how] = str(corrupt_dataset(store, tmp_path, how))
    overrides = [o.format(**fill) for o in overrides]
    before = registry_state(store["client"])
    code, line = run_case(compose, capsys, tmp_path, config_name, [*TINY_FOR[config_name], *overrides])
    assert code == exit_code, line
    assert expected in line, line
    check_nothing_claimed(store, before)


TINY_FOR = {
    "train": [p for p in TINY if not p.startswith("registry.")] + [f"registry.model_name={MODEL}"],
    "evaluate": ["extras.print_config=false", "trainer.limit_test_batches=2"],
    "prepare_data": ["extras.print_config=false"],
    "main": ["extras.print_config=false"],
    "predict": ["extras.print_config=false"],
}


def test_an_unreachable_server_and_a_wrong_port(store, compose, capsys, tmp_path, monkeypatch) -> None:
    """A closed port fails fast; a port where something else answers fails naming the URI."""
    closed = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", closed)
    code, line = run_case(compose, capsys, tmp_path, "train", TINY_FOR["train"])
    assert code == 1 and line.startswith(f"error: cannot reach tracking server {closed}")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        other = f"http://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
        code, line = run_case(compose, capsys, tmp_path, "train", TINY_FOR["train"])
    finally:
        server.shutdown()
    assert code == 1 and other in line, line


# Steps whose bad input needs more than a step contract in-process: the file that runs their script.
ELSEWHERE = {"sweep": "test_postgres_backend.py", "reproduce": "test_reproduce.py"}


def test_every_step_script_has_its_bad_input_in_the_corpus_or_names_where() -> None:
    """A new step script fails here until its bad input is tested."""
    scripts = {path.stem for path in (ROOT / "steps").glob("*.py")}
    assert scripts - set(ELSEWHERE) - {case[0] for case in CASES} == set()
    for step, test_file in ELSEWHERE.items():
        text = (ROOT / "tests" / test_file).read_text()
        assert f"steps/{step}.py" in text and 'splitlines()[-1]' in text, (step, test_file)
