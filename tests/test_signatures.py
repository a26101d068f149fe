"""A registered model takes what pandas and JSON give, the same way by every door.

`pd.read_csv` and JSON numbers arrive as float64 (or int64); a signature of
float32 columns refused them ("Can not safely convert float64 to float32").
The same rows go through `pyfunc.load_model(...).predict`, `mlflow models
predict -t csv|json` and the scoring server, and all answer alike.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import TINY, new_sqlite_store, run_step_here, step_env
from servers import VENV_BIN, free_port, wait_http
from trainflow.registry.versions import as_users_send

pytestmark = pytest.mark.slow

MODEL = "signature-digits"
ROWS = 12

_LOAD_AND_PREDICT = """
import sys
import mlflow
import pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
print("LOADED", file=sys.stderr, flush=True)
model.predict(pd.read_csv(sys.argv[2])).to_json(sys.argv[3], orient="records")
"""


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], Path]:
    """A digits model registered by the train step, and test rows as a user's CSV holds them."""
    folder = tmp_path_factory.mktemp("signature")
    uri = new_sqlite_store(folder)
    overrides = [o for o in TINY if not o.startswith("registry.")] + [f"registry.model_name={MODEL}"]
    done = run_step_here(["steps/train.py", *overrides], uri)
    assert done.returncode == 0, done.stderr[-3000:]
    from sklearn.datasets import load_digits

    pixels = load_digits().data[-ROWS:] / 16.0
    csv = folder / "test.csv"
    pd.DataFrame(pixels, columns=[f"pixel_{i:02d}" for i in range(64)]).to_csv(csv, index=False)
    return step_env(uri), csv


@pytest.fixture(scope="module")
def served(registered) -> Iterator[str]:
    """One `mlflow models serve` of the version for every request test (its start is the slow part)."""
    env, csv = registered
    port = free_port()
    log = open(csv.parent / "serve.log", "wb")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(
        [f"{VENV_BIN}/mlflow", "models", "serve", "-m", f"models:/{MODEL}/1", "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=csv.parent, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/ping", 180, proc)
        yield f"http://127.0.0.1:{port}/invocations"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def _ask(url: str, body: bytes, content_type: str) -> list[dict]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=60) as response:
        return list(json.loads(response.read())["predictions"])


@pytest.fixture(scope="module")
def loaded(registered) -> tuple[list[dict], str]:
    """`pyfunc.load_model(...).predict(pd.read_csv(...))` in a fresh interpreter: its answer and what it printed.

    Python's default warning filters, as a user's script has them: MLflow's
    "Add type hints to the `predict` method" UserWarning showed on every load.
    """
    env, csv = registered
    out = csv.parent / "loaded.json"
    done = subprocess.run([sys.executable, "-c", _LOAD_AND_PREDICT, f"models:/{MODEL}/1", str(csv), str(out)],
                          cwd=csv.parent, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text()), done.stderr


def _same(a: list[dict], b: list[dict]) -> None:
    assert [r["label"] for r in a] == [r["label"] for r in b]
    assert np.allclose([r["probability"] for r in a], [r["probability"] for r in b], atol=1e-6)


def test_a_pandas_table_read_from_csv_gets_labels(loaded) -> None:
    rows, _ = loaded
    assert len(rows) == ROWS and all(r["label"] in {str(d) for d in range(10)} for r in rows)


def test_loading_the_model_prints_no_warning(loaded) -> None:
    _, stderr = loaded
    loading = stderr.split("LOADED")[0]
    assert "Warning" not in loading and "type hints" not in loading, loading[-2000:]


@pytest.mark.parametrize("kind", ["csv", "json"])
def test_mlflow_models_predict_answers_the_same(registered, loaded, kind: str) -> None:
    env, csv = registered
    source = csv
    if kind == "json":
        source = csv.with_suffix(".json")
        frame = pd.read_csv(csv)
        source.write_text(json.dumps({"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}))
    out = csv.parent / f"predicted-{kind}.json"
    done = subprocess.run(
        [f"{VENV_BIN}/mlflow", "models", "predict", "-m", f"models:/{MODEL}/1", "-i", str(source), "-t", kind,
         "-o", str(out), "--env-manager", "local"],
        cwd=csv.parent, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    _same(json.loads(out.read_text())["predictions"], loaded[0])


def test_the_scoring_server_answers_csv_and_json_the_same(registered, loaded, served) -> None:
    _, csv = registered
    frame = pd.read_csv(csv)
    split = {"dataframe_split": json.loads(frame.to_json(orient="split", index=False))}
    records = {"dataframe_records": frame.to_dict(orient="records")}
    _same(_ask(served, csv.read_bytes(), "text/csv"), loaded[0])
    _same(_ask(served, json.dumps(split).encode(), "application/json"), loaded[0])
    _same(_ask(served, json.dumps(records).encode(), "application/json"), loaded[0])


def test_whole_numbers_in_json_are_accepted_too(served, loaded) -> None:
    """A JSON client may send 0 and 1 for pixels: int64 columns widen to the declared double."""
    rows = [[int(i % 2) for i in range(64)]]
    answer = _ask(served, json.dumps({"dataframe_split": {"columns": [f"pixel_{i:02d}" for i in range(64)],
                                                          "data": rows}}).encode(), "application/json")
    assert len(answer) == 1 and answer[0]["label"] in {str(d) for d in range(10)}


def test_the_signature_declares_what_pandas_gives() -> None:
    """float32 -> double, small ints -> long; image bytes and token lists unchanged."""
    example = pd.DataFrame({
        "pixel": np.array([0.5, 1.0], dtype=np.float32),
        "count": np.array([1, 2], dtype=np.int32),
        "image": [b"\x89PNG", b"\x89PNG"],
        "tokens": [["a", "b"], ["c"]],
    })
    widened = as_users_send(example)
    assert [str(t) for t in widened.dtypes] == ["float64", "int64", "object", "object"]
    assert widened["image"].tolist() == example["image"].tolist()
    from mlflow.models import infer_signature

    inputs = infer_signature(widened).inputs.to_dict()
    assert [c["type"] for c in inputs] == ["double", "long", "binary", "array"]
