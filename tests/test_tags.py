"""Tag keys are a public interface: README names them, saved UI searches filter on them."""

from __future__ import annotations

import importlib.util
import re

from helpers import ROOT
from trainflow.tracking import tags as tag

# trainflow's packages: `trainflow.<package>.<module>` in README is a module, not a tag key
PACKAGES = ("config", "data", "tracking", "training", "pipeline", "models", "sweep", "registry", "slurm")


def _keys() -> dict[str, str]:
    return {name: value for name, value in vars(tag).items() if name.isupper() and isinstance(value, str)}


def test_every_key_is_a_distinct_trainflow_key() -> None:
    keys = _keys()
    assert all(value.startswith(tag.PREFIX) for value in keys.values())
    plain = [v for n, v in keys.items() if n not in ("PREFIX", "EVAL_PREFIX")]
    assert len(plain) == len(set(plain)), "two constants spell the same key"


def test_the_keys_the_readme_documents_are_the_ones_written() -> None:
    """A renamed constant would silently break users' searches; README is what they read."""
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"trainflow\.[a-z_][a-z_./]*[a-z_]", readme))
    modules = {n for n in named if importlib.util.find_spec(n.rsplit(".", 1)[0]) is not None
               and n.split(".")[1] in PACKAGES}
    documented = named - modules
    assert documented, "README documents tag keys"
    written = set(_keys().values())
    # `trainflow.promotion.*` in prose names a family: some written key must start with it
    unknown = {n for n in documented if n not in written and not any(w.startswith(n + ".") for w in written)}
    assert not unknown, sorted(unknown)


def test_key_families() -> None:
    assert tag.output() == "trainflow.output_uri"
    assert tag.output("model") == "trainflow.output_uri.model"
    assert tag.eval_metric("test/acc") == "trainflow.eval.test/acc"
    assert tag.pipeline_step("train", "run_id") == "trainflow.pipeline.train.run_id"
