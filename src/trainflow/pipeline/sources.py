"""The source files a step can run: its script, everything that imports, and what its config names.

The step cache may reuse a run only if the code that made it is the code we
would run now. A hand-kept list of folders per step had to mirror the import
graph, so moving a module could silently reuse stale runs. Here the list is
derived: the import statements of the step script (at any depth, function
level included) are followed through first-party modules, and so are the
modules that the config's `_target_`s name (Hydra imports those at run
time, so no import statement shows them). Third-party code enters through
`uv.lock`.

Only files are read, nothing is imported: the pipeline computes this in a
process that must not pay for torch.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any

from trainflow.config.static_targets import class_attribute
from trainflow.source_files import config_targets, import_closure

LOCKFILE = "uv.lock"


def step_sources(root: Path, step: str, scoped: dict[str, Any]) -> list[Path]:
    """Every first-party file `steps/<step>.py` runs with this (scoped) config, plus `uv.lock`, sorted."""
    search = module_roots(root)
    script = root / "steps" / f"{step}.py"
    found = import_closure([script], list(config_targets(scoped)), search)
    lock = root / LOCKFILE
    return sorted({*found, *([lock] if lock.is_file() else [])})


def module_roots(root: Path) -> list[Path]:
    """Where first-party modules live: the project's `src/`, and import paths inside the project.

    A task package outside `src/` (on PYTHONPATH, as the tests' own task is)
    counts as the project's code when it lives in the checkout; installed
    packages are pinned by uv.lock instead.
    """
    project, src = root.resolve(), (root / "src").resolve()
    installed = {Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()}  # the venv may sit in the checkout
    inside = []
    for entry in sys.path:
        path = Path(entry or ".").resolve()
        if (path.is_dir() and path.is_relative_to(project) and path not in (project, src)
                and not any(path.is_relative_to(prefix) for prefix in installed)):
            inside.append(path)
    return [root / "src", *dict.fromkeys(inside)]


def declared_strings(target: str, attribute: str) -> tuple[str, ...]:
    """A class's tuple-of-strings attribute (a data module's `preprocessing_keys`), read from its source.

    The pipeline needs what a data module declares before any step starts,
    in a process that must not import the module (torch and Lightning: ~9 s
    on a cached run that needs neither); `config.static_targets` finds the
    class and its bases as the precheck does. A class whose source cannot be
    read declares nothing here, which makes cache keys stricter, never stale.
    """
    value = class_attribute(target, attribute)
    return tuple(str(item) for item in ast.literal_eval(value)) if value is not None else ()
