"""A step's config as its script would get it, for code that runs a step without `@hydra.main`.

Tests, benchmarks and notebooks call a step's function (`train(cfg, run)`)
directly; the step contract reads Hydra's runtime (output dir, overrides),
so the config is composed with the project's schemas and HydraConfig is set,
exactly as `@hydra.main` leaves them.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig, open_dict

from trainflow.config.schema import register_configs
from trainflow.project import project_root


def compose_step_config(config_name: str = "train", overrides: list[str] | None = None,
                        output_dir: Path | None = None, config_dir: Path | None = None) -> DictConfig:
    """The composed config, HydraConfig set; `output_dir` stands for Hydra's run directory.

    `config_dir` defaults to the project's `configs/` (trainflow.project.project_root).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    register_configs()
    GlobalHydra.instance().clear()
    folder = config_dir or project_root() / "configs"
    with initialize_config_dir(config_dir=str(folder), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides or [], return_hydra_config=True)
    if output_dir is not None:
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def compose_error(exc: BaseException) -> str:
    """Hydra's message on one line: what failed, and the key it names."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(parts) < 2:
        text = " ".join(line.strip() for line in str(seen).splitlines() if line.strip())
        text = re.sub(r"\s*(reference_type|object_type)=\S+", "", text)
        text = re.sub(r"\s*Config search path:.*$", "", text)
        if text and text != "None" and "$VALUE" not in text and not any(text in p for p in parts):
            parts.append(text)
        seen = seen.__cause__ or seen.__context__
    return "; ".join(parts) or type(exc).__name__
