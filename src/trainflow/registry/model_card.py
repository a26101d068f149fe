"""A model card on every registered version: its description, in markdown.

The registry page shows a version's tags as one cell of ~20 `trainflow.*`
pairs: the evidence is there, but nobody reads it at a glance. The
description is what the page renders first, so it says in a few lines what
the version is, what data it saw, how it tested, what the promotion gate
decided (both numbers), and links to the runs that made and measured it.
The card is rendered from the version's tags and runs (tags stay for
machines), and rewritten whenever they change: at registration, after
evaluate.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trainflow.tracking import tags as tag

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion


@dataclass
class RunLink:
    run_id: str
    experiment_id: str
    name: str

    def markdown(self) -> str:
        # relative to the UI's hash router: right on any host the server is reached by
        return f"[{self.name}](#/experiments/{self.experiment_id}/runs/{self.run_id})"


@dataclass
class CardFacts:
    """Everything the card shows, gathered from the registry and the tracking store."""

    name: str
    version: str
    tags: Mapping[str, str]
    model_class: str
    train: RunLink | None
    evaluate: RunLink | None = None
    train_test_metrics: Mapping[str, float] = field(default_factory=dict)


def render_model_card(facts: CardFacts) -> str:
    """The card's markdown; sections whose evidence is missing say so instead of vanishing."""
    tags = facts.tags
    lines = [_headline(facts), "", _what_it_is(facts), "",
             f"**Data**: `{tags.get(tag.DATA_URI, 'unknown')}`, "
             f"digest `{tags.get(tag.DATA_DIGEST, tags.get(tag.EVAL_DATA_DIGEST, 'unknown'))}`", ""]
    lines += _metrics_table(facts)
    lines += ["", _promotion(tags), ""]
    links = [f"train run {facts.train.markdown()}" if facts.train else "train run unknown"]
    if facts.evaluate:
        links.append(f"evaluate run {facts.evaluate.markdown()}")
    lines.append("**Runs**: " + " · ".join(links))
    return "\n".join(lines) + "\n"


def _headline(facts: CardFacts) -> str:
    """Plain text, figures first: the versions table previews a description's first ~30 characters, raw."""
    metrics = _test_metrics(facts)[1]
    metric = facts.tags.get(tag.PROMOTION_METRIC) or ("test/acc" if "test/acc" in metrics else None)
    figure = f"{metric} {_number(metrics[metric])} · " if metric and metric in metrics else ""
    if facts.tags.get(tag.PROMOTION_DECISION):
        state = facts.tags[tag.PROMOTION_DECISION]
    elif facts.tags.get(tag.EVAL_RUN_ID):
        state = "evaluated, no promotion decision"
    else:
        state = "not evaluated yet"
    return f"{figure}{state}"


def _test_metrics(facts: CardFacts) -> tuple[str, Mapping[str, Any]]:
    """Evaluate's test figures when there are any, else train's own test on its best checkpoint."""
    evaluated = {k.removeprefix(tag.EVAL_PREFIX): v for k, v in facts.tags.items()
                 if k.startswith(tag.EVAL_PREFIX + "test/")}
    if evaluated:
        scope = facts.tags.get(tag.EVAL_TEST_SCOPE, "all")
        return f"measured by evaluate on the test split ({'all of it' if scope == 'all' else scope})", evaluated
    return "measured by the train run on its best checkpoint; not evaluated yet", facts.train_test_metrics


def _what_it_is(facts: CardFacts) -> str:
    tags = facts.tags
    monitor, value = tags.get(tag.MONITOR), tags.get(tag.MONITOR_VALUE)
    best = f" Best `{monitor}` in training: {_number(value)}." if monitor and value else ""
    commit = tags.get(tag.GIT_COMMIT)
    code = f" from commit `{commit[:12]}`" if commit else ""
    return f"{facts.name} v{facts.version}: a `{facts.model_class}` trained{code}.{best} Served as an MLflow pyfunc."


def _metrics_table(facts: CardFacts) -> list[str]:
    source, values = _test_metrics(facts)
    if not values:
        return ["**Test metrics**: none recorded yet."]
    rows = [f"| `{key}` | {_number(values[key])} |" for key in sorted(values)]
    return [f"**Test metrics** ({source}):", "", "| metric | value |", "| --- | --- |", *rows]


def _promotion(tags: Mapping[str, str]) -> str:
    decision = tags.get(tag.PROMOTION_DECISION)
    if not decision:
        return "**Promotion**: not decided yet (evaluate with `promote=true`)."
    metric = tags.get(tag.PROMOTION_METRIC, "?")
    candidate = _number(tags.get(tag.PROMOTION_CANDIDATE))
    champion = tags.get(tag.PROMOTION_CHAMPION, "none")
    champion_version = tags.get(tag.PROMOTION_CHAMPION_VERSION, "none")
    against = "no champion before it" if champion == "none" else f"champion v{champion_version}: {_number(champion)}"
    return f"**Promotion**: {decision} on `{metric}`: this version {candidate} vs {against}."


def _number(value: Any) -> str:
    try:
        return f"{float(value):.4f}"
    except (TypeError, ValueError):
        return str(value)


def write_model_card(client: Any, name: str, version: str, registered: ModelVersion | None = None) -> str:
    """Render the card from what the registry and the runs hold now, and set it as the description.

    `registered`: the version as registration just returned it, when that is
    what the registry holds now (no second fetch).
    """
    mv = registered if registered is not None else client.get_model_version(name, version)
    tags = dict(mv.tags)
    train_id = tags.get(tag.RUN_ID) or mv.run_id
    train_run = client.get_run(train_id) if train_id else None
    eval_id = tags.get(tag.EVAL_RUN_ID)
    facts = CardFacts(
        name=name, version=str(version), tags=tags,
        model_class=_model_class(train_run.data.params if train_run else {}),
        train=_link(train_run),
        evaluate=_link(client.get_run(eval_id)) if eval_id else None,
        train_test_metrics={k: v for k, v in (train_run.data.metrics if train_run else {}).items()
                            if k.startswith("test/")},
    )
    text = render_model_card(facts)
    client.update_model_version(name, version, description=text)
    return text


def _link(run: Any) -> RunLink | None:
    if run is None:
        return None
    return RunLink(run.info.run_id, run.info.experiment_id, run.info.run_name or run.info.run_id)


def _model_class(params: Mapping[str, str]) -> str:
    """`Classifier(SimpleDenseNet)`: the LightningModule and its network, from the train run's params."""
    module = params.get("model._target_", "model").rsplit(".", 1)[-1]
    net = params.get("model.net._target_")
    return f"{module}({net.rsplit('.', 1)[-1]})" if net else module
