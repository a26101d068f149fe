"""The MLflow UI in a real browser (Debian's chromium, driven by Playwright) after a pipeline and a sweep.

What a user opens first: the runs table, where pipeline and sweep parents
must carry `test/acc`; the registry page, where the version must show
`@champion` and its model card; and the compare page of a sweep's trials,
where what differs between them must be what the sweep varied. Screenshots land in the test's tmp folder
(CI keeps them as artifacts). Playwright never downloads a browser here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient

from helpers import TINY, mlflow_run, run_step_here

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
# No network, no GPU, no profile sync: a browser that only talks to the test server.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
EXPERIMENT = "ui"
MODEL = "ui-digits-classifier"
PIPELINE = [p for p in TINY if not p.startswith("registry.")] + [f"registry.model_name={MODEL}"]
SWEEP = [*TINY, "hparams_search=digits_optuna", "sweep.n_trials=3", "sweep.n_workers=1"]


@pytest.fixture(scope="module")
def tracked(mlflow_server) -> dict[str, Any]:
    """A pipeline (registers v1, champion) and a 3-trial sweep in one experiment.

    The sweep runs as users start it, `mlflow run -e sweep` (its parent is the run MLflow made); the
    pipeline's script runs in this process (helpers.run_step_here): test_pipeline.py starts it through
    `mlflow run`, and the pages read what its runs recorded, the same however it was started."""
    done = run_step_here(["steps/main.py", *PIPELINE, f"tracking.experiment_name={EXPERIMENT}"], mlflow_server.uri)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    done = mlflow_run("sweep", SWEEP, mlflow_server.uri, timeout=600, experiment=EXPERIMENT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    client = MlflowClient(mlflow_server.uri)
    experiment_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    parents = {r.data.tags["trainflow.step"]: r for r in client.search_runs([experiment_id])
               if r.data.tags.get("trainflow.step") in ("main", "sweep")}
    return {"client": client, "experiment_id": experiment_id, "parents": parents}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    yield page
    context.close()


def test_the_runs_table_shows_test_acc_on_pipeline_and_sweep_parents(tracked, page, mlflow_server,
                                                                     tmp_path) -> None:
    """As a user does it: the Model training runs page, then Columns > test/acc."""
    parents = tracked["parents"]
    assert set(parents) == {"main", "sweep"}
    page.goto(f"{mlflow_server.uri}/#/experiments/{tracked['experiment_id']}/runs?workflowType=machine_learning")
    page.get_by_role("button", name="Close").click()  # the assistant panel: room for the table
    for run in parents.values():
        page.get_by_text(run.info.run_name, exact=True).wait_for()
    page.get_by_role("button", name="Columns").click()
    page.keyboard.type("test/acc")
    page.get_by_text("test/acc", exact=True).click()
    page.keyboard.press("Escape")
    page.get_by_role("columnheader", name="test/acc").first.wait_for()
    page.screenshot(path=str(tmp_path / "runs_table.png"), full_page=True)
    for step, run in parents.items():
        shown = _row_text(page, run.info.run_name)
        values = [float(x) for x in re.findall(r"\b\d+\.\d+\b", shown)]
        assert any(abs(v - run.data.metrics["test/acc"]) < 1e-4 for v in values), (step, shown)
    _keep(tmp_path / "runs_table.png")


def test_comparing_a_sweeps_trials_shows_the_swept_params(tracked, page, mlflow_server, tmp_path) -> None:
    """As a user does it: expand the sweep, tick its three trials, Compare; then "Show diff only"."""
    client, sweep = tracked["client"], tracked["parents"]["sweep"]
    trials = client.search_runs([tracked["experiment_id"]], f"tags.mlflow.parentRunId = '{sweep.info.run_id}'")
    assert len(trials) == 3
    config = Path(client.download_artifacts(sweep.info.run_id, "config.yaml", str(tmp_path)))
    swept = set(yaml.safe_load(config.read_text())["sweep"]["params"])
    # continuous keys always differ; two trials may draw the same batch size or layer width
    differing = {k for k in swept if len({t.data.params[k] for t in trials}) > 1}
    assert {"model.optimizer.lr", "model.optimizer.weight_decay"} <= differing

    page.goto(f"{mlflow_server.uri}/#/experiments/{tracked['experiment_id']}/runs?workflowType=machine_learning")
    page.get_by_role("button", name="Close").click()  # the assistant panel
    sweep_row = page.get_by_role("row").filter(has=page.get_by_text(sweep.info.run_name, exact=True))
    sweep_row.first.get_by_role("button").first.click()  # expand: the trials are nested under the sweep
    for trial in trials:
        page.get_by_text(trial.info.run_name, exact=True).wait_for()
        row = page.get_by_role("row").filter(has=page.get_by_text(trial.info.run_name, exact=True))
        row.first.get_by_role("checkbox").check()
    page.get_by_role("button", name="Compare").click()

    page.get_by_text("Comparing 3 Runs").wait_for()
    page.locator(".axis-title").first.wait_for()  # the parallel-coordinates plot, drawn
    axes = [t.text_content() for t in page.locator(".axis-title").all()]
    params_axes = [a for a in axes if a and a not in trials[0].data.metrics]
    shot = tmp_path / "compare.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"compare page screenshot: {shot}")
    assert params_axes and set(params_axes) <= differing, f"default axes {axes}: swept params only"

    switch = page.get_by_role("switch", name="Parameters - Show diff only")
    switch.click()
    table = page.locator(".du-bois-light-collapse-content-box").filter(has=switch).locator("table").first
    rows = [r.locator("th, td").first.inner_text().strip() for r in table.locator("tr").all()]
    page.screenshot(path=str(tmp_path / "compare_diff.png"), full_page=True)
    assert sorted(rows) == sorted(differing), f"exactly the swept params whose values differ: {rows}"
    _keep(shot, tmp_path / "compare_diff.png")


def _row_text(page: Any, run_name: str) -> str:
    """The whole table row of a run: the grid draws its pinned name cell and its other cells as two rows."""
    name_row = page.get_by_role("row").filter(has=page.get_by_text(run_name, exact=True))
    index = name_row.first.get_attribute("aria-rowindex")
    return "\n".join(row.inner_text() for row in page.locator(f'[role="row"][aria-rowindex="{index}"]').all())


def test_the_registry_page_shows_the_champion_and_the_model_card(tracked, page, mlflow_server, tmp_path) -> None:
    client = tracked["client"]
    version = client.get_model_version_by_alias(MODEL, "champion")
    page.goto(f"{mlflow_server.uri}/#/models/{MODEL}")
    page.get_by_role("button", name="Close").click()  # the assistant panel: room for the description column
    versions = page.get_by_role("row").filter(has_text=f"Version {version.version}")
    versions.first.wait_for()
    row = versions.first.inner_text()
    assert re.search(r"@\s*champion", row), row
    acc = float(version.tags["trainflow.eval.test/acc"])
    assert f"test/acc {acc:.4f} · promoted" in row, "the card's first line, previewed"
    page.screenshot(path=str(tmp_path / "registry.png"), full_page=True)

    page.goto(f"{mlflow_server.uri}/#/models/{MODEL}/versions/{version.version}")
    page.get_by_text("Promotion: promoted").first.wait_for()  # the card's markdown, rendered
    page.screenshot(path=str(tmp_path / "model_card.png"), full_page=True)
    body = page.inner_text("body")
    assert re.search(r"Aliases\s*:\s*@\s*champion", body)
    assert "Promotion: promoted on test/acc: this version" in body and "no champion before it" in body
    assert f"test/acc\t{float(version.tags['trainflow.eval.test/acc']):.4f}" in body, "the metrics table"
    assert f"digest {version.tags['trainflow.data.digest']}" in body
    # the card's link to the train run opens that run's page (in a new tab)
    train_run = client.get_run(version.tags["trainflow.run_id"])
    card = page.locator("p", has_text="Runs:")
    card_link = card.locator(f'a[href="#/experiments/{tracked["experiment_id"]}/runs/{train_run.info.run_id}"]')
    with page.context.expect_page() as opened:
        card_link.click()
    opened.value.get_by_text(train_run.info.run_id).first.wait_for()
    assert opened.value.url.endswith(f"/runs/{train_run.info.run_id}")
    _keep(tmp_path / "registry.png", tmp_path / "model_card.png")


def _keep(*shots: Path) -> None:
    """The screenshots stay in the test's tmp folder (pytest keeps the last three sessions' folders)."""
    for shot in shots:
        assert shot.stat().st_size > 10_000, f"{shot} looks blank"
