"""extras: enforce_tags asks or fails clearly; print_config saves the tree."""

from __future__ import annotations

import pytest

from trainflow.config.extras import apply_extras, enforce_tags
from trainflow.errors import ConfigError


def test_enforce_tags_asks_on_a_terminal_and_saves_tags_log(compose, tmp_path, monkeypatch) -> None:
    cfg = compose("train", ["tags=[]", "extras.print_config=false"], output_dir=tmp_path)
    monkeypatch.setattr("builtins.input", lambda prompt: "exp1, baseline ,")
    enforce_tags(cfg, tmp_path, interactive=True)
    assert list(cfg.tags) == ["exp1", "baseline"]
    assert (tmp_path / "tags.log").read_text().strip() == "['exp1', 'baseline']"


def test_enforce_tags_fails_without_a_terminal(compose, tmp_path) -> None:
    cfg = compose("train", ["tags=[]"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="tags: empty and no terminal"):
        enforce_tags(cfg, tmp_path, interactive=False)


def test_print_config_saves_a_redacted_tree(compose, tmp_path, capsys) -> None:
    cfg = compose("train", ["+tracking_password=hunter2-secret"], output_dir=tmp_path)
    rendered = apply_extras(cfg, tmp_path, interactive=False)
    saved = (tmp_path / "config_tree.log").read_text()
    assert rendered == saved
    assert "model" in saved and "SimpleDenseNet" in saved
    assert "hunter2-secret" not in saved and "hunter2-secret" not in capsys.readouterr().out


def test_extras_can_be_switched_off(compose, tmp_path) -> None:
    cfg = compose("train", ["tags=[]", "extras.enforce_tags=false", "extras.print_config=false"],
                  output_dir=tmp_path)
    assert apply_extras(cfg, tmp_path, interactive=False) is None
    assert not (tmp_path / "config_tree.log").exists()
