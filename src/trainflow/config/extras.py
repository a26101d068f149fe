"""The `extras` switches of lightning-hydra-template: warnings, tags, config tree.

`ignore_warnings` hides only the third-party warnings known to be harmless
(config/known_warnings.py), not every warning as the template does: a real
one must still reach the user.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from trainflow.config.known_warnings import filter_known_warnings
from trainflow.config.redact import redact
from trainflow.errors import ConfigError

log = logging.getLogger(__name__)

# Print order of the tree: what a reader looks for first.
TREE_ORDER = ("data", "model", "callbacks", "trainer", "tracking", "paths", "extras")
# Set by a process that printed its tree for the processes it starts (the
# pipeline's steps): they save theirs as config_tree.log but print none, so a
# pipeline shows one tree, not four.
TREE_SHOWN_ENV = "TRAINFLOW_CONFIG_TREE_SHOWN"


def apply_extras(cfg: DictConfig, output_dir: Path, interactive: bool | None = None) -> str | None:
    """Run the enabled extras; returns the rendered config tree (or None)."""
    extras = cfg.get("extras")
    if not extras:
        log.warning("Extras config not found: <cfg.extras=null>")
        return None
    if extras.get("ignore_warnings"):
        filter_known_warnings()
    if extras.get("enforce_tags"):
        enforce_tags(cfg, output_dir, interactive)
    if extras.get("print_config"):
        return print_config_tree(cfg, output_dir)
    return None


def enforce_tags(cfg: DictConfig, output_dir: Path, interactive: bool | None = None) -> None:
    """Ask for tags when none are set; save them as tags.log.

    Untagged runs are the ones nobody can find a month later. A job nobody
    can answer (CI, `mlflow run` in the background, a multirun) fails instead
    of hanging on a prompt.
    """
    if not cfg.get("tags"):
        if interactive is None:
            interactive = sys.stdin.isatty()
        if _in_multirun():
            raise ConfigError("tags: empty in a multirun; pass tags=[...] (extras.enforce_tags=true)")
        if not interactive:
            raise ConfigError(
                "tags: empty and no terminal to ask on; pass tags=[...] or extras.enforce_tags=false"
            )
        answer = input("Enter a list of comma separated tags: ")
        tags = [t.strip() for t in answer.split(",") if t.strip()]
        if not tags:
            raise ConfigError("tags: none given at the prompt")
        with open_dict(cfg):
            cfg.tags = tags
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "tags.log").write_text(f"{list(cfg.tags)}\n")


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return False
    return str(HydraConfig.get().mode) == "RunMode.MULTIRUN"


def print_config_tree(cfg: DictConfig, output_dir: Path, order: Sequence[str] = TREE_ORDER) -> str:
    """Render the resolved config as a rich tree, print it (unless a parent did), save config_tree.log."""
    import rich
    import rich.syntax
    import rich.tree
    from rich.console import Console

    tree = rich.tree.Tree("CONFIG", style="dim", guide_style="dim")
    container = redact(OmegaConf.to_container(cfg, resolve=True))
    assert isinstance(container, dict)
    keys = [k for k in order if k in container] + [k for k in container if k not in order]
    for key in keys:
        branch = tree.add(str(key), style="dim", guide_style="dim")
        value = container[key]
        text = OmegaConf.to_yaml(value) if isinstance(value, dict | list) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml"))
    if not os.environ.get(TREE_SHOWN_ENV):
        rich.print(tree)
    capture = Console(record=True, width=120, file=open(_devnull(), "w"))  # noqa: SIM115
    capture.print(tree)
    rendered = capture.export_text()
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config_tree.log").write_text(rendered)
    return rendered


def _devnull() -> str:
    return os.devnull
