"""`mlflow run -P key=value` arrives as `--key value`; each becomes one override."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import ROOT, all_runs, new_sqlite_store, step_env
from trainflow.cli import mlflow_params_to_overrides


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--experiment", "example"], ["experiment=example"]),
        (["--model.optimizer.lr", "0.01"], ["model.optimizer.lr=0.01"]),
        (["--model_uri", "models:/x@champion"], ["model_uri=models:/x@champion"]),
        (["--ckpt_path", "runs:/abc/checkpoints/best"], ["ckpt_path=runs:/abc/checkpoints/best"]),
        (["--tags", "[a,b]"], ["tags=[a,b]"]),
        (["--tracking.run_name", "my run"], ["tracking.run_name=my run"]),
        (["--x", "a=b"], ["x=a=b"]),
        (["--+extra.key", "1"], ["+extra.key=1"]),
        (["--name", "'quoted'"], ["name='quoted'"]),
        (["--empty", ""], ["empty="]),
        # plain Hydra usage passes through untouched
        (["experiment=example", "-m"], ["experiment=example", "-m"]),
        (["--multirun", "seed=1,2"], ["--multirun", "seed=1,2"]),
        (["--config-name", "evaluate"], ["--config-name", "evaluate"]),
        (["--cfg", "job"], ["--cfg", "job"]),
    ],
)
def test_params_become_one_override_each(argv: list[str], expected: list[str]) -> None:
    assert mlflow_params_to_overrides(argv) == expected


def test_hydra_parses_the_values_users_pass() -> None:
    """The override grammar keeps URIs and lists whole."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = parser.parse_overrides(
        mlflow_params_to_overrides(["--model_uri", "models:/x@champion", "--tags", "[a,b]",
                                    "--tracking.run_name", "my run"])
    )
    assert parsed[0].value() == "models:/x@champion"
    assert parsed[1].value() == ["a", "b"]
    assert parsed[2].value() == "my run"


@pytest.mark.parametrize(("args", "culprit"), [
    (["+model.optimizer.lrr=0.1"], "error: train config: model.optimizer.lrr: not a parameter of"),
    (["model.optimizer.lr=abc"], "error: train config: model.optimizer.lr: expected float, got str 'abc'"),
    (["-m", "seed=1,2", "trainer.max_epoch=3"], "error: train config: Could not override 'trainer.max_epoch'"),
])
def test_a_step_started_from_elsewhere_rejects_bad_keys_before_any_run(tmp_path, args, culprit) -> None:
    """Checked against the step's own configs/ (not cwd's), data/model keys included, `-m` too: one line,
    exit 2, and no run in the store."""
    uri = new_sqlite_store(tmp_path)
    done = subprocess.run([sys.executable, str(ROOT / "steps/train.py"), "experiment=example", *args],
                          cwd=tmp_path, env=step_env(uri), capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(culprit), lines[0]
    assert all_runs(uri) == []
