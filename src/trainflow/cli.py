"""`mlflow run` parameters as Hydra overrides.

`mlflow run -P key=value` passes a parameter the MLproject does not declare as
`--key value` (both shell-quoted). Each such pair becomes exactly one Hydra
override `key=value`; Hydra's own flags pass through untouched.
"""

from __future__ import annotations

import sys

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
    """
    out = []
    for item in overrides:
        bare = item.lstrip("+~")
        head = bare.split("=", 1)[0].split(".", 1)[0]
        if head in step_prefixes and "." in bare.split("=", 1)[0] and not item.startswith("~"):
            out.append("++" + bare)
        else:
            out.append(item)
    return out


def accept_mlflow_params(step_prefixes: tuple[str, ...] = ()) -> None:
    """Rewrite sys.argv in place before @hydra.main parses it."""
    argv = mlflow_params_to_overrides(sys.argv[1:])
    sys.argv[1:] = force_step_overrides(argv, step_prefixes) if step_prefixes else argv
