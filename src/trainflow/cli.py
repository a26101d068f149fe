"""`mlflow run` parameters as Hydra overrides.

`mlflow run -P key=value` passes a parameter the MLproject does not declare as
`--key value` (both shell-quoted). Each such pair becomes exactly one Hydra
override `key=value`; Hydra's own flags pass through untouched. MLflow
refuses names that start with `+`, so `-P add.key=value` stands for Hydra's
`+key=value` (trainflow.config.param_names).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from trainflow.config.compose import compose_error
from trainflow.config.param_names import override_from_param
from trainflow.config.redact import mask_secrets
from trainflow.config.schema import register_configs
from trainflow.config.validate import check_targets
from trainflow.fast_exit import exit_now, status_of
from trainflow.project import project_root
from trainflow.tracking import tags as tag

# Hydra's command-line flags (hydra/_internal/utils.py get_args_parser).
_HYDRA_FLAGS = frozenset({
    "--help", "--hydra-help", "--version", "--cfg", "--resolve", "--package", "--run",
    "--multirun", "--shell-completion", "--config-path", "--config-name", "--config-dir",
    "--info", "--experimental-rerun",
})


def mlflow_params_to_overrides(argv: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and len(arg) > 2 and arg.split("=", 1)[0] not in _HYDRA_FLAGS:
            key = arg[2:]
            if "=" in key:  # --key=value
                out.append(key)
                i += 1
                continue
            value = argv[i + 1] if i + 1 < len(argv) else ""
            out.append(f"{key}={value}")
            i += 2
            continue
        out.append(arg)
        i += 1
    return out


def force_step_overrides(overrides: list[str], step_prefixes: tuple[str, ...]) -> list[str]:
    """`train.trainer.max_epochs=5` -> `++train.trainer.max_epochs=5` for the pipeline.

    The pipeline's per-step nodes start empty; `++` lets Hydra add the key,
    and the pipeline reads the override back as typed.

    A user's own `+train.key=value` (or `-P add.train.key=value`) stays as
    it is: it adds the key to the empty node just as well, and the pipeline
    hands the step `+key=value`, so the step adds a key its schema lacks.
    """
    out = []
    for item in overrides:
        key = item.split("=", 1)[0]
        if key.split(".", 1)[0] in step_prefixes and "." in key:
            out.append("++" + item)
        else:
            out.append(item)
    return out


def accept_mlflow_params(step_prefixes: tuple[str, ...] = (), config_name: str | None = None) -> None:
    """Rewrite sys.argv in place before @hydra.main parses it.

    With `config_name`, the overrides are composed once first, so a bad one
    fails in one line naming the key instead of Hydra's multi-line report.
    """
    argv = [override_from_param(item) for item in mlflow_params_to_overrides(sys.argv[1:])]
    sys.argv[1:] = force_step_overrides(argv, step_prefixes) if step_prefixes else argv
    if config_name is not None:
        precheck_overrides(config_name, sys.argv[1:])


_MULTIRUN = frozenset({"-m", "--multirun"})


def precheck_overrides(config_name: str, overrides: list[str]) -> None:
    """Compose with Hydra's compose API, check `_target_` keys; on failure print one line and exit 2.

    Hydra's other flags (--cfg, --help, ...) are left to Hydra itself; under
    `-m` the sweep overrides (`a=1,2`) are left out and the rest checked.
    `_target_`s are read from their source files, not imported: this runs
    before every step, and importing them (torch, Lightning) would make a user
    with a typo, and a pipeline that only finds cached runs, wait for imports
    (figures: README, Speed).
    """
    args = [arg for arg in overrides if arg not in _MULTIRUN]
    if any(arg.startswith("-") for arg in args):
        return
    from hydra import compose, initialize_config_dir

    register_configs()
    try:
        if len(args) < len(overrides):
            args = _without_sweeps(args)
        with initialize_config_dir(config_dir=str(script_config_dir()), version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=args)
        check_targets(cfg, imported=False)
    except Exception as exc:
        message = mask_secrets(f"{config_name} config: {compose_error(exc)}", overrides)
        print(f"error: {message}", file=sys.stderr, flush=True)
        _record_on_mlflow_run(message)
        raise SystemExit(2) from None


def script_config_dir() -> Path:
    """`configs/` beside the running step's `steps/` folder, as its `@hydra.main(config_path="../configs")`.

    Not cwd: `python /elsewhere/steps/train.py` must check the overrides
    against the same configs Hydra will compose.
    """
    script = Path(sys.argv[0]).resolve()
    beside = script.parent.parent / "configs"
    return beside if script.suffix == ".py" and beside.is_dir() else project_root() / "configs"


def _without_sweeps(overrides: list[str]) -> list[str]:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return [text for text, item in zip(overrides, parsed, strict=True) if not item.is_sweep_override()]


def _record_on_mlflow_run(message: str) -> None:
    """Under `mlflow run` the run exists already: say on it why it failed."""

    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    try:
        from mlflow import MlflowClient

        client = MlflowClient()
        client.set_tag(run_id, tag.ERROR, message[:5000])
        client.set_terminated(run_id, "FAILED")
    except Exception:
        pass


def run_and_exit(main: Callable[[], object]) -> NoReturn:
    """Run a step's Hydra main, then leave without the interpreter's teardown (trainflow.fast_exit).

    The process exits with the code the step chose. An exception that is not
    a SystemExit propagates as usual, traceback and all.
    """
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = status_of(exc)
    exit_now(code)
