"""The project's own files agree with each other."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
import zipfile
from pathlib import Path

import yaml

from helpers import ROOT


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~\[;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_conda_env_lists_the_same_dependencies_as_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((ROOT / "conda.yaml").read_text())
    pip_deps = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    pip_deps = [d for d in pip_deps if not d.startswith("-e")]
    assert sorted(project) == sorted(pip_deps), "same requirement strings, versions included"
    assert {_name(d) for d in project} == {_name(d) for d in pip_deps}


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"uv run [^`\n]*pytest[^`\n]*", readme)
    assert command, "README shows no test command"
    assert command.group(0) in (ROOT / ".ci" / "run").read_text()


def test_every_mlproject_entry_point_has_a_step_script() -> None:
    spec = yaml.safe_load((ROOT / "MLproject").read_text())
    for name, entry in spec["entry_points"].items():
        words = entry["command"].split()
        script = words[words.index("python") + 1]
        assert (ROOT / script).is_file(), f"{name}: {script}"
        assert (ROOT / "configs" / f"{name}.yaml").is_file() or name == "main", name


def test_every_entry_point_runs_the_code_of_the_project_folder() -> None:
    """An env that MLflow builds (uv, virtualenv) holds the dependencies, never trainflow itself."""
    spec = yaml.safe_load((ROOT / "MLproject").read_text())
    for name, entry in spec["entry_points"].items():
        # as MLflow formats it: declared parameters filled in, `{{`/`}}` unescaped
        command = entry["command"].format(**{k: f"<{k}>" for k in entry.get("parameters") or {}})
        assert command.startswith("PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} python steps/"), name


def test_a_uv_env_builds_from_pyproject_and_lock_alone(tmp_path: Path) -> None:
    """`--env-manager uv` syncs a folder holding only these two files, which builds the project there: the
    build must need nothing else (a `readme` or `license-files` would fail it), and ships no trainflow code."""
    uv = shutil.which("uv")
    assert uv, "uv is not on PATH (.ci/run installs it)"
    for name in ("pyproject.toml", "uv.lock"):
        shutil.copy(ROOT / name, tmp_path / name)
    done = subprocess.run([uv, "build", "--wheel", "--out-dir", str(tmp_path / "dist")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    [wheel] = (tmp_path / "dist").glob("trainflow-*.whl")
    with zipfile.ZipFile(wheel) as built:
        assert not [name for name in built.namelist() if name.endswith(".py")], built.namelist()
