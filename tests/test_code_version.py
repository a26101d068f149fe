"""Which files make a run's code version: tracked ones, and untracked source; never a database or a log."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from trainflow.tracking.codeversion import code_version, is_source


def _git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    _git(tmp_path, "init", "-q")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.py").write_text("x = 1\n")
    (tmp_path / "README.md").write_text("hello\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return tmp_path


def test_a_database_log_or_cache_beside_the_code_leaves_the_run_clean(checkout: Path) -> None:
    """`mlflow server --backend-store-uri sqlite:///server.db` run in the project root creates server.db."""
    before = code_version(checkout)
    assert not before.dirty and before.id.endswith("+clean")
    (checkout / "server.db").write_bytes(b"SQLite format 3\0" + b"\1" * 100)
    (checkout / "train.log").write_text("epoch 1\n")
    (checkout / "exports").mkdir()
    (checkout / "exports" / "predictions.csv").write_text("a,b\n")
    after = code_version(checkout)
    assert not after.dirty and after.id == before.id
    (checkout / "server.db").write_bytes(b"SQLite format 3\0" + b"\2" * 5000)  # the database grows
    assert code_version(checkout).id == before.id


@pytest.mark.parametrize("new_file", ["helper.py", "configs/experiment/mine.yaml", "src/data.bin", "steps/x.txt"])
def test_untracked_source_makes_the_run_dirty_and_changes_its_version(checkout: Path, new_file: str) -> None:
    before = code_version(checkout)
    path = checkout / new_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("a = 2\n")
    first = code_version(checkout)
    assert first.dirty and first.id != before.id
    path.write_text("a = 3\n")
    assert code_version(checkout).id not in (before.id, first.id)


def test_a_change_to_a_tracked_file_makes_the_run_dirty(checkout: Path) -> None:
    before = code_version(checkout)
    (checkout / "README.md").write_text("changed\n")  # tracked, whatever its suffix
    after = code_version(checkout)
    assert after.dirty and after.id != before.id


@pytest.mark.parametrize(("path", "counted"), [
    ("server.db", False), ("mlflow.db-journal", False), ("outputs/run.log", False), ("notes.md", False),
    ("task.py", True), ("configs/local/default.yaml", True), ("src/trainflow/x.json", True),
    ("steps/run.sh", True), ("tools/settings.TOML", True),
])
def test_which_untracked_files_count(path: str, counted: bool) -> None:
    assert is_source(path) is counted
