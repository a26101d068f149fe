"""Secrets planted through every route (dict and dotted overrides, errors, sweeps) reach nothing logged."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from omegaconf import OmegaConf

from conftest import ROOT, TINY, all_runs
from test_security import logged_bytes
from trainflow.config.redact import REDACTED, is_secret_key, mask_secrets, redact, redact_overrides
from trainflow.tracking import tags as tag
from trainflow.tracking.run import step_run

PLANTED = "planted-" + secrets.token_hex(8)
# One secret per route a key can take: nested in a dict value, dotted, camelCase, plural, in a list.
SECRET_OVERRIDES = [
    f"+warehouse={{user:etl,credentials:{{password:{PLANTED}}},url:'postgresql://etl:{PLANTED}@db:5432/f'}}",
    f"+db.password={PLANTED}",
    f"+hub.accessToken={PLANTED}",
    f"+service.api_keys=[{PLANTED}]",
    f"+dbPassword={PLANTED}",
    f"+clients=[{{name:a,tokens:[{PLANTED}]}}]",
]


@pytest.mark.parametrize("key", [
    "tokens", "passwords", "accessToken", "dbPassword", "api_keys", "AWS_SECRET_ACCESS_KEY", "apiKeys",
    "APIKey", "MLFLOW_TRACKING_TOKEN", "aws.secret-access-key", "hub.token", "db.password", "dbpassword",
    "accesstoken", "credentials.user", "client_secrets", "+db@secrets", "pwd",
])
def test_secret_keys(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize("key", [
    "keyboard", "monkey", "tokenizer", "max_tokens", "max_new_tokens", "sort_keys", "pad_token",
    "special_tokens_map", "key_path", "tokens_per_batch", "monitor", "model.tokenizer.name", "num_tokens",
])
def test_keys_that_only_look_secret(key: str) -> None:
    assert not is_secret_key(key)


def _keys(node: object, prefix: str = "") -> list[str]:
    if isinstance(node, dict):
        return [k for key, value in node.items() for k in [f"{prefix}{key}", *_keys(value, f"{prefix}{key}.")]]
    if isinstance(node, list):
        return [k for item in node for k in _keys(item, prefix)]
    return []


def test_no_key_of_the_project_configs_is_taken_for_a_secret(compose) -> None:
    """Every key in configs/ and in the composed configs (schemas included) stays readable."""
    keys = [k for path in (ROOT / "configs").rglob("*.yaml") for k in _keys(yaml.safe_load(path.read_text()))]
    for experiment in sorted(p.stem for p in (ROOT / "configs" / "experiment").glob("*.yaml")):
        cfg = compose("train", [f"experiment={experiment}", "hparams_search=digits_optuna"])
        keys += _keys(OmegaConf.to_container(cfg))
    for step in ("main", "evaluate", "predict", "prepare_data"):
        keys += _keys(OmegaConf.to_container(compose(step, [])))
    assert len(keys) > 200
    assert [k for k in keys if is_secret_key(k)] == []


def test_overrides_keep_their_shape_and_lose_their_secrets() -> None:
    cleaned = redact_overrides([*SECRET_OVERRIDES, "trainer.max_epochs=3", "+data.max_tokens=7", "~db",
                                "model.optimizer.lr=choice(0.1,0.01)"])
    assert cleaned == [
        "+warehouse={user:'etl',credentials:'***',url:'postgresql://etl:***@db:5432/f'}",
        "+db.password=***", "+hub.accessToken=***", "+service.api_keys=***", "+dbPassword=***",
        "+clients=[{name:'a',tokens:'***'}]",
        "trainer.max_epochs=3", "+data.max_tokens=7", "~db", "model.optimizer.lr=choice(0.1,0.01)",
    ]
    assert PLANTED not in " ".join(cleaned)


def test_a_message_loses_secret_values_and_unparsable_overrides() -> None:
    broken = f"+db={{user:u,password:{PLANTED}"
    message = f"Error parsing override '{broken}'; Value '{PLANTED}' could not be converted"
    masked = mask_secrets(message, [broken, *SECRET_OVERRIDES])
    assert PLANTED not in masked and masked.count(REDACTED) == 2 and "Error parsing override '+db=" in masked


def test_redact_keeps_what_is_not_secret() -> None:
    cfg = {"data": {"max_tokens": 5, "tokenizer": {"pad_token": "<pad>"}}, "db": {"dbPassword": "x"}}
    assert redact(cfg) == {"data": {"max_tokens": 5, "tokenizer": {"pad_token": "<pad>"}},
                           "db": {"dbPassword": REDACTED}}


def test_planted_secrets_reach_no_param_tag_or_artifact_of_a_failing_step(
        compose, tmp_path, sqlite_uri, tracking_env) -> None:
    """Dict, dotted, camelCase and plural overrides; an error that quotes the secret."""
    tracking_env(sqlite_uri)
    cfg = compose("train", [*TINY, *SECRET_OVERRIDES], output_dir=tmp_path / "out")
    with pytest.raises(ValueError), step_run("train", cfg) as run:
        raise ValueError(f"cannot connect as etl/{cfg.warehouse.credentials.password}")
    client = MlflowClient(sqlite_uri)
    everything, names = logged_bytes(client, run.run_id, tmp_path / "artifacts")
    assert {"config.yaml", "overrides.yaml", "error.txt"} <= names
    tags = client.get_run(run.run_id).data.tags
    assert tags[tag.ERROR] == f"ValueError: cannot connect as etl/{REDACTED}"
    assert "+db.password=***" in tags[tag.OVERRIDES]
    assert PLANTED.encode() not in everything


def test_a_secret_from_the_environment_is_masked_in_the_error_it_appears_in(
        compose, tmp_path, sqlite_uri, tracking_env, monkeypatch) -> None:
    """The value never appears on the command line (`${oc.env:...}`), only in the resolved config."""
    tracking_env(sqlite_uri)
    monkeypatch.setenv("TRAINFLOW_TEST_VAULT", PLANTED)
    cfg = compose("train", [*TINY, "+vault.token=${oc.env:TRAINFLOW_TEST_VAULT}"], output_dir=tmp_path / "out")
    with pytest.raises(RuntimeError), step_run("train", cfg) as run:
        raise RuntimeError(f"vault refused {cfg.vault.token}")
    everything, _ = logged_bytes(MlflowClient(sqlite_uri), run.run_id, tmp_path / "artifacts")
    assert MlflowClient(sqlite_uri).get_run(run.run_id).data.tags[tag.ERROR] == \
        f"RuntimeError: vault refused {REDACTED}"
    assert PLANTED.encode() not in everything


def test_a_compose_error_under_mlflow_run_masks_the_secret(
        tmp_path, sqlite_uri, tracking_env, monkeypatch, capsys) -> None:
    from trainflow.cli import precheck_overrides

    tracking_env(sqlite_uri)
    client = MlflowClient(sqlite_uri)
    experiment = client.create_experiment("compose-error", artifact_location=(tmp_path / "mlruns").as_uri())
    run_id = client.create_run(experiment).info.run_id  # what `mlflow run` makes before the step starts
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    broken = [f"+db={{user:u,password:{PLANTED}", f"trainer.max_epochs={{password:{PLANTED}}}"]
    for override in broken:
        with pytest.raises(SystemExit):
            precheck_overrides("train", [*TINY, override])
        error = client.get_run(run_id).data.tags[tag.ERROR]
        assert error.startswith("train config: ") and PLANTED not in error
    assert client.get_run(run_id).info.status == "FAILED"
    assert PLANTED not in capsys.readouterr().err


@pytest.mark.slow
def test_a_sweep_logs_no_secret_in_any_run(compose, tmp_path, sqlite_uri, tracking_env) -> None:
    """One trial: the parent's best.yaml and trials table, the trial's config, overrides and tags."""
    from trainflow.sweep.driver import run_sweep

    tracking_env(sqlite_uri)
    cfg = compose("sweep", [*TINY, "hparams_search=digits_optuna", "sweep.n_trials=1", *SECRET_OVERRIDES],
                  output_dir=tmp_path / "out")
    with step_run("sweep", cfg) as run:
        run_sweep(cfg, run)
    client = MlflowClient(sqlite_uri)
    runs = all_runs(sqlite_uri)
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    for index, logged in enumerate(runs):
        everything, names = logged_bytes(client, logged.info.run_id, tmp_path / f"artifacts-{index}")
        assert PLANTED.encode() not in everything, names
    best = Path(client.download_artifacts(run.run_id, "sweep/best.yaml", str(tmp_path / "best"))).read_text()
    assert "+db.password=***" in yaml.safe_load(best)["command"]
