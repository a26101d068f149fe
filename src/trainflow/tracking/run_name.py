"""Run names that tell runs apart in the UI's runs table.

Three pipelines of the same experiment used to share the name `main-digits`;
the one with `lr=0.01` could only be found by opening each. A name now reads
`main-example-digits lr=0.01 max_epochs=5`: step, experiment and data, then
the overrides that change what is computed. The full overrides stay in the
`trainflow.overrides` tag; the name is for reading.

That name is trainflow's suggestion, never the user's choice overwritten: it
goes only on a run that has no name or the random `adjective-noun-NNN` one
MLflow gives a run created without a name (`is_generated_name`), and is
always on the run as the `trainflow.run_name` tag, for the UI's "group by".
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from trainflow.config.redact import is_secret_key, redact_overrides
from trainflow.tracking.tags import PIPELINE_STEPS

# Overrides that change how a run looks or where it logs, not what it computes.
PRESENTATION_PREFIXES = ("extras.", "tracking.", "paths.", "hydra.", "registry.", "tags",
                         "callbacks.rich_progress_bar", "callbacks.model_summary",
                         "trainer.enable_progress_bar", "trainer.enable_model_summary")
# Group choices already in the name's first part.
NAMED_GROUPS = ("experiment", "data")
# The UI cuts long names anyway; the tag keeps everything.
MAX_NAME = 120
# MLflow's generated names: `<predicate>-<noun>-<0..1000>` (mlflow.utils.name_utils._generate_string).
_GENERATED = re.compile(r"([a-z]+)-([a-z]+)-(\d{1,4})")


def run_name(step: str, choices: Mapping[str, Any], overrides: Sequence[str]) -> str:
    """`train-example-digits lr=0.01`: what a reader needs to tell this run from its siblings."""
    parts = [step]
    for group in NAMED_GROUPS:
        choice = choices.get(group)
        if choice and choice not in parts:
            parts.append(str(choice).replace("/", "-"))
    head = "-".join(parts)
    differs = distinguishing_overrides(overrides)
    name = " ".join([head, *differs])
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 1] + "…"


def distinguishing_overrides(overrides: Sequence[str]) -> list[str]:
    """`model.optimizer.lr=0.01` -> `lr=0.01`, leaving out URIs, secrets and presentation keys.

    A URI handed on by the pipeline (`data.uri=runs:/…`) differs on every run
    and says nothing a reader can compare; an override that carries a secret
    anywhere (a key, a nested key, a URL's password) is left out whole. Keys keep their full path when two
    would shorten to the same last part.
    """
    kept: list[tuple[str, str]] = []
    for item, redacted in zip(overrides, redact_overrides(list(overrides)), strict=True):
        key, sep, value = item.lstrip("+~").partition("=")
        group_key = key.replace("/", ".")
        if (not sep or group_key in NAMED_GROUPS or ":/" in value or redacted != item or is_secret_key(key)
                or group_key.removeprefix(_step_prefix(group_key)).startswith(PRESENTATION_PREFIXES)):
            continue
        kept.append((key, value))
    shorts = [key.replace("/", ".").rsplit(".", 1)[-1] for key, _ in kept]
    return [f"{short if shorts.count(short) == 1 else key}={value}"
            for short, (key, value) in zip(shorts, kept, strict=True)]


def _step_prefix(key: str) -> str:
    """`train.` of `train.extras.x`: the pipeline's per-step overrides name their step first."""
    head, dot, _ = key.partition(".")
    return head + dot if head in PIPELINE_STEPS and dot else ""


def is_generated_name(name: str) -> bool:
    """True for a name MLflow made up (`bold-owl-512`), False for one a user chose.

    MLflow names a run created without a name `<predicate>-<noun>-<n>`, the
    words drawn from two fixed lists in `mlflow.utils.name_utils` and n from
    0 to 1000. A name counts as generated only when both words are on those
    lists: a user's `lr-sweep-3` is theirs. (MLflow cuts a name over 20
    characters after ten draws too long; no pair of its words is that long
    ten times running in practice, so a cut name is left as the user's.)
    """
    match = _GENERATED.fullmatch(name)
    if match is None or int(match.group(3)) > 1000:
        return False
    predicates, nouns = _generator_words()
    return match.group(1) in predicates and match.group(2) in nouns


@cache
def _generator_words() -> tuple[frozenset[str], frozenset[str]]:
    """The word lists MLflow draws run names from (private to MLflow: tests/test_run_name.py pins them)."""
    from mlflow.utils import name_utils

    return (frozenset(w.lower() for w in name_utils._GENERATOR_PREDICATES),
            frozenset(w.lower() for w in name_utils._GENERATOR_NOUNS))
