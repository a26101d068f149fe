"""A step that only checks its config, or a pipeline that only looks up cached runs, imports no torch.

Importing torch and Lightning takes seconds: a user with a typo paid it
before seeing one line, and a fully cached pipeline paid it for nothing.
Each check runs in a fresh interpreter that reports `sys.modules` as it
leaves (tests/probes/sitecustomize.py, through `helpers.probed`), so nothing
imported by this test process can hide an import.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from helpers import ROOT, new_sqlite_store, probe_records, probed, step_env

pytestmark = pytest.mark.slow


def run_probed(code: str, tracking_uri: str, record: Path) -> tuple[Any, list[str], subprocess.CompletedProcess]:
    """Run `code` in a fresh, probed interpreter: (its RESULT json, heavy modules imported, the process)."""
    done = subprocess.run([sys.executable, "-c", "import json, sys\n" + textwrap.dedent(code)], cwd=ROOT,
                          env=probed(step_env(tracking_uri), record), capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)
    results = [json.loads(line[7:]) for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    records = probe_records(record)
    assert done.returncode == 0 and records and results, done.stderr[-3000:]
    return results[-1], records[-1]["heavy"], done


# (overrides, the error line's start): misspelt and mistyped keys in the model, the data and the callbacks,
# a target that does not exist, and a `check_config` hook that refuses hub weights.
BAD = [
    (["+model.optimizer.lrr=1"],
     "error: train config: model.optimizer.lrr: not a parameter of torch.optim.Adam (has: params, lr, betas, "),
    (["model.optimizer.lr=abc"], "error: train config: model.optimizer.lr: expected float, got str 'abc'"),
    (["+data.val_fractoin=0.2"], "error: train config: data.val_fractoin: not a parameter of "
                                 "trainflow.data.digits.DigitsDataModule"),
    (["data.seed=soon"], "error: train config: data.seed: expected int, got str 'soon'"),
    (["+callbacks.early_stopping.patiense=3"], "error: train config: callbacks.early_stopping.patiense: "
                                               "not a parameter of lightning.pytorch.callbacks.EarlyStopping"),
    (["model._target_=trainflow.models.nope.Module"],
     "error: train config: model._target_: cannot import 'trainflow.models.nope.Module'"),
    (["model.optimizer._target_=torch.optim.Adamw"], "error: train config: model.optimizer._target_: cannot import"),
    (["experiment=digits_images_tiny", "model.net.pretrained=hf-hub:timm/resnet18.a1_in1k"],
     "error: train config: model.net.pretrained=hf-hub:timm/resnet18.a1_in1k would download weights"),
]


def test_a_bad_override_fails_in_one_line_without_torch(tmp_path: Path) -> None:
    """`steps/train.py` as users start it: exit 2 and one `error:` line per bad override, torch never imported."""
    cases = [["experiment=example", *overrides] for overrides, _ in BAD]
    code = f"""
    import contextlib, io, runpy
    script = {str(ROOT / "steps" / "train.py")!r}
    outcomes = []
    for overrides in {cases!r}:
        sys.argv = [script, *overrides]
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                runpy.run_path(script, run_name="__main__")
            outcomes.append([None, err.getvalue()])  # not reached: a good config would have run the step
        except SystemExit as exc:
            outcomes.append([exc.code, err.getvalue()])
    print("RESULT " + json.dumps(outcomes), flush=True)
    """
    outcomes, heavy, _ = run_probed(code, new_sqlite_store(tmp_path), tmp_path / "imports.jsonl")
    for (overrides, expected), (exit_code, stderr) in zip(BAD, outcomes, strict=True):
        lines = stderr.strip().splitlines()
        assert exit_code == 2 and len(lines) == 1, (overrides, exit_code, stderr[-2000:])
        assert lines[0].startswith(expected), (overrides, lines[0])
    assert heavy == []


def test_a_good_config_is_checked_without_torch(tmp_path: Path) -> None:
    """Every step's precheck of the shipped experiments, the timm one (a `check_config` hook) included."""
    code = """
    from trainflow.cli import precheck_overrides
    for config_name in ("train", "evaluate", "prepare_data", "main", "sweep"):
        precheck_overrides(config_name, ["experiment=example"])
    for experiment in ("digits_images_tiny", "ud_ewt_tiny"):
        precheck_overrides("train", [f"experiment={experiment}"])
    print("RESULT " + json.dumps("checked"), flush=True)
    """
    result, heavy, _ = run_probed(code, new_sqlite_store(tmp_path), tmp_path / "imports.jsonl")
    assert result == "checked"
    assert heavy == []


def test_cached_runs_are_found_without_torch(tmp_path: Path) -> None:
    """The pipeline's cached path: compose each step's config, key it, and find the run that holds that key."""
    code = f"""
    from pathlib import Path
    from hydra import initialize_config_dir
    from mlflow import MlflowClient
    from trainflow.config.schema import register_configs
    from trainflow.pipeline.cache import cache_key, find_finished_run, source_inputs, step_code_digest
    from trainflow.pipeline.main import STEPS, compose_for_cache
    from trainflow.tracking import tags as tag

    root = Path({str(ROOT)!r})
    client = MlflowClient()
    experiment = client.create_experiment("cache", artifact_location=(Path({str(tmp_path)!r}) / "mlruns").as_uri())
    register_configs()
    found = {{}}
    with initialize_config_dir(config_dir=str(root / "configs"), version_base="1.3"):
        for experiment_name in ("example", "digits_images_tiny"):
            for step in STEPS:
                keyed, as_run = compose_for_cache(step, [f"experiment={{experiment_name}}"])
                key = cache_key(step, keyed, step_code_digest(root, step, keyed), source_inputs(as_run))
                assert find_finished_run(client, [experiment], key) is None
                run_id = client.create_run(experiment, tags={{tag.CACHE_KEY: key, tag.OUTPUT: "x"}}).info.run_id
                client.set_terminated(run_id, "FINISHED")
                hit = find_finished_run(client, [experiment], key)
                found[f"{{experiment_name}}/{{step}}"] = hit.info.run_id == run_id
    print("RESULT " + json.dumps(found), flush=True)
    """
    found, heavy, _ = run_probed(code, new_sqlite_store(tmp_path), tmp_path / "imports.jsonl")
    assert found and all(found.values()), found
    assert heavy == []
