"""Params, redaction and config identity."""

from __future__ import annotations

import pytest

from trainflow.config.hashing import config_hash
from trainflow.config.redact import REDACTED, is_secret_key, redact
from trainflow.errors import ConfigError
from trainflow.tracking.params import flatten, new_params, same_value


def test_flatten_uses_override_syntax_keys() -> None:
    flat = flatten({"model": {"optimizer": {"lr": 0.01}}, "tags": ["a", "b"], "seed": None, "x": {}})
    assert flat == {"model.optimizer.lr": "0.01", "tags": '["a", "b"]', "seed": "None", "x": "{}"}


def test_params_already_logged_by_mlflow_run_are_not_relogged() -> None:
    assert new_params({"a": "1", "b": "2"}, {"a": "'1'"}) == {"b": "2"}


def test_secrets_are_redacted_at_any_depth() -> None:
    cfg = {"db": {"password": "hunter2", "host": "h"}, "api_key": "k", "items": [{"token": "t"}],
           "monitor": "val/acc", "model": {"key": "abc"}, "sort_keys": True}
    out = redact(cfg)
    assert out["db"] == {"password": REDACTED, "host": "h"}
    assert out["api_key"] == REDACTED
    assert out["items"] == [{"token": REDACTED}]
    assert out["model"]["key"] == REDACTED
    assert out["monitor"] == "val/acc"
    assert not is_secret_key("sort_keys") and not is_secret_key("max_tokens")
    assert is_secret_key("MLFLOW_TRACKING_PASSWORD") and is_secret_key("aws.secret-access-key")


def test_config_hash_tells_types_apart_and_ignores_run_local_keys() -> None:
    a = config_hash({"trainer": {"max_epochs": 3}, "paths": {"output_dir": "/a"}})
    assert a == config_hash({"paths": {"output_dir": "/b"}, "trainer": {"max_epochs": 3}})
    assert a != config_hash({"trainer": {"max_epochs": "3"}, "paths": {"output_dir": "/a"}})


def test_a_param_logged_with_another_value_is_an_error_naming_both() -> None:
    with pytest.raises(ConfigError, match=r"^param trainer.max_epochs: the run already has trainer.max_epochs='1', "
                                          r"this step has trainer.max_epochs='2'; MLflow params cannot change"):
        new_params({"trainer.max_epochs": "2"}, {"trainer.max_epochs": "1"})
    assert new_params({"paths.output_dir": "/b", "x": "1"}, {"paths.output_dir": "/a"},
                      may_differ=["paths.output_dir"]) == {"x": "1"}


@pytest.mark.parametrize(("logged", "resolved"), [
    ("'1'", "1"),
    ("2e-3", "0.002"),
    ("false", "False"),
    ("[smoke,'with space']", '["smoke", "with space"]'),
    # what `mlflow run -P "tags=[smoke,'with space']"` logs: the typed value, shlex-quoted
    ("'[smoke,'\"'\"'with space'\"'\"']'", '["smoke", "with space"]'),
    ("my run: a/b@c", "my run: a/b@c"),
])
def test_a_value_as_mlflow_run_logged_it_is_the_same_value(logged: str, resolved: str) -> None:
    assert same_value("k", logged, resolved)
    assert not same_value("k", logged, resolved + "1")


def test_a_number_the_schema_widened_is_the_same_value() -> None:
    """`-P tracking.flush_every_s=0` is logged as '0'; the float key resolves to 0.0: not a changed param."""
    assert new_params({"tracking.flush_every_s": "0.0"}, {"tracking.flush_every_s": "0"}) == {}
    with pytest.raises(ConfigError, match="flush_every_s"):
        new_params({"tracking.flush_every_s": "0.5"}, {"tracking.flush_every_s": "0"})
