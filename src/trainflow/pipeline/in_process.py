"""A pipeline step run inside main's own process (and a reproduced step inside reproduce's).

Under `--env-manager local` a step's subprocess is this same interpreter in
this same environment: all a new process buys is importing torch, Lightning
and MLflow again, which costs more than a small fit (bench/pipeline.py). So main
runs the step's own script here, through the machinery that runs it alone:
MLflow's project runner makes its run (the tags and params of
`mlflow run -e <step>`), Hydra's runner composes its config and sets up its
output dir, logging and HydraConfig, and the script's task function wraps
one `step_run`. Whatever a step changes in the process (Hydra's globals,
cwd, argv, the MLflow environment variables, signal handlers, logging) is
put back before the next one.

A step that must own its process stays a subprocess: training on several
devices or nodes (Lightning's DDP launcher starts `sys.argv` again, which
here is main), or `in_process=false` (main's setting). `run_script_here` is
the part reproduce shares: a step attached to a run that already exists.

What it saves: the first (uncached) digits pipeline took 59.2 s in one
process against 116.8 s with `in_process=false`, where each step process
started 4-42 s before its run attached; the cached re-run is alike either way
(34.5 s, 27.9 s). One run each, back to back: `uv run python bench/pipeline.py
--floor-repeats 1 --in-process true`, then `--in-process false`, 2026-12-07,
2 cores at load average 5.6-7.3 (T_import measured 13.2 and 21.1 s in them).
"""

from __future__ import annotations

import logging
import os
import runpy
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trainflow.errors import TrainflowError
from trainflow.tracking.clock import step_clock
from trainflow.tracking.ranks import LEADER_RUN_ENV
from trainflow.tracking.run import StepRun
from trainflow.tracking.signals import interruption

log = logging.getLogger(__name__)

# What `mlflow run` hands a step process through its environment (mlflow.projects.utils.get_run_env_vars).
_RUN_ENV = ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_TRACKING_URI")
_SINGLE_PROCESS_STRATEGIES = (None, "auto", "single_device")


def subprocess_reason(resolved: dict[str, Any]) -> str | None:
    """Why a step with this config must run in a process of its own; None when main's will do."""
    trainer = resolved.get("trainer")
    if not isinstance(trainer, dict):
        return None
    num_nodes = trainer.get("num_nodes", 1)
    if num_nodes not in (1, "1", None):
        return f"trainer.num_nodes={num_nodes}"
    devices = trainer.get("devices", 1)
    single = devices in (1, "1", None) or (isinstance(devices, list) and len(devices) == 1) or (
        devices == "auto" and trainer.get("accelerator") == "cpu")
    if not single:
        return f"trainer.devices={devices}"
    strategy = trainer.get("strategy")
    if strategy not in _SINGLE_PROCESS_STRATEGIES:
        return f"trainer.strategy={strategy}"
    return None


def run_step_here(run: StepRun, step: str, params: dict[str, str], overrides: list[str]) -> str:
    """Run `steps/<step>.py` as a child run of `run` in this process; its run id.

    A failed step has ended its own run FAILED (with its error) before this
    raises TrainflowError naming it; an interruption (Ctrl-C, SIGTERM) ends
    the step's run KILLED and propagates, so main ends KILLED too.
    """
    child = _create_project_run(run, step, params)
    try:
        run_script_here(run.root, step, overrides, child, run.experiment_id, run.tracking_uri)
    except SystemExit as exc:
        if exc.code in (0, None):
            return child
        if interruption() is not None:
            raise
        raise TrainflowError(f"pipeline: step {step} failed (run {child}, exit status {exc.code})") from None
    except Exception as exc:
        traceback.print_exc()  # as the step's own process would have printed it
        raise TrainflowError(f"pipeline: step {step} failed (run {child}): {_root_cause(exc)}") from exc
    return child


def run_script_here(root: Path, step: str, overrides: list[str], run_id: str, experiment_id: str,
                    tracking_uri: str) -> None:
    """`steps/<step>.py` in this process, attached to `run_id` as `mlflow run` attaches a step's process.

    What the step raises comes through: SystemExit with its exit status (the
    step contract ends its run first), anything else unhandled.
    """
    script = root / "steps" / f"{step}.py"
    env = {"MLFLOW_RUN_ID": run_id, "MLFLOW_EXPERIMENT_ID": experiment_id, "MLFLOW_TRACKING_URI": tracking_uri}
    with _step_process_state(root, env, script, overrides), step_clock():
        _hydra_run(script, step, overrides)


def _root_cause(exc: BaseException) -> str:
    """`MisconfigurationException: limit_train_batches ...`, not the wrappers around it, on one line.

    Hydra's instantiate wraps a constructor's error (and each nesting level
    wraps again); the traceback above has them all, the one-line error the
    cause a user can act on.
    """
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _create_project_run(run: StepRun, step: str, params: dict[str, str]) -> str:
    """The run `mlflow.projects.run(..., env_manager="local")` would make: same tags, same params.

    Made with MLflow's own project-runner functions, not by hand, so the
    child is indistinguishable from a step launched as a subprocess (source,
    git commit, entry point, parent run, parameters, backend). Unnamed, as
    main launches a subprocess step: the step names it.
    """
    from mlflow.projects.utils import fetch_and_validate_project, get_or_create_run
    from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_BACKEND

    uri = str(run.root)
    work_dir = fetch_and_validate_project(uri, None, step, params)
    child = get_or_create_run(None, uri, run.experiment_id, work_dir, None, step, params)
    run_id = str(child.info.run_id)
    run.client.set_tag(run_id, MLFLOW_PROJECT_BACKEND, "local")
    return run_id


@contextmanager
def _step_process_state(root: Path, env: dict[str, str], script: Path, overrides: list[str]) -> Iterator[None]:
    """The process as `mlflow run` gives a step (cwd, argv, environment), and the caller's state back after."""
    saved_env = {key: os.environ.get(key) for key in (*_RUN_ENV, LEADER_RUN_ENV)}
    saved_argv, saved_cwd = list(sys.argv), os.getcwd()
    os.environ.update(env)
    sys.argv = [str(script), *overrides]
    os.chdir(root)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        sys.argv = saved_argv
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _hydra_run(script: Path, step: str, overrides: list[str]) -> None:
    """The step script's task function under Hydra's own runner, as `@hydra.main` runs it.

    Hydra keeps one global instance and one HydraConfig; main's are set
    aside while the step runs and restored after, with main's logging.
    Outside a Hydra app (reproduce), the root logger's handlers the step
    replaced come back, and the step's own (its job log) are closed.
    """
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path, detect_task_name
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import configure_log

    task = runpy.run_path(str(script), run_name=f"trainflow_step_{step}")["main"]
    task_function = getattr(task, "__wrapped__", task)  # the function @hydra.main decorated
    search_path = create_automatic_config_search_path(str(script), None, "../configs")
    global_hydra = GlobalHydra.instance()
    saved_hydra = global_hydra.hydra
    saved_cfg: Any = HydraConfig.instance().cfg  # {"hydra": main's hydra node}; a composed config's, or None
    saved_handlers, saved_level = list(logging.root.handlers), logging.root.level
    global_hydra.clear()
    try:
        hydra = Hydra.create_main_hydra2(task_name=detect_task_name(str(script), None),
                                         config_search_path=search_path)
        hydra.run(config_name=step, task_function=task_function, overrides=overrides)
    finally:
        global_hydra.clear()
        if saved_hydra is not None:
            global_hydra.initialize(saved_hydra)
        HydraConfig.instance().cfg = saved_cfg
        if saved_hydra is not None and saved_cfg is not None:
            configure_log(saved_cfg.hydra.job_logging, saved_cfg.hydra.verbose)
        else:
            for handler in logging.root.handlers:
                if handler not in saved_handlers:
                    handler.close()
            logging.root.handlers[:] = saved_handlers
            logging.root.setLevel(saved_level)
