"""Run names that tell siblings apart in the UI's runs table."""

from __future__ import annotations

from trainflow.tracking.run_name import MAX_NAME, run_name

CHOICES = {"experiment": "example", "data": "digits"}


def test_a_name_says_what_was_overridden_by_its_last_key_part() -> None:
    name = run_name("main", CHOICES, ["experiment=example", "++train.model.optimizer.lr=0.01",
                                      "trainer.max_epochs=5", "model/optimizer=sgd"])
    assert name == "main-example-digits lr=0.01 max_epochs=5 optimizer=sgd"


def test_uris_secrets_and_presentation_keys_stay_out_of_the_name() -> None:
    name = run_name("evaluate", CHOICES, [
        "data.uri=runs:/0123/dataset", "model_uri=models:/m@champion", "tracking.api_token=hunter2",
        "db_password=hunter2", "+db={user:a,password:hunter2}", "extras.print_config=false",
        "callbacks.rich_progress_bar=null", "train.extras.print_config=false", "registry.model_name=x",
        "tags=[a,b]", "promote=true"])
    assert name == "evaluate-example-digits promote=true"
    assert "hunter2" not in name


def test_keys_that_would_read_alike_keep_their_full_path() -> None:
    name = run_name("main", {}, ["train.model.optimizer.lr=0.1", "evaluate.model.optimizer.lr=0.2", "seed=7"])
    assert name == "main train.model.optimizer.lr=0.1 evaluate.model.optimizer.lr=0.2 seed=7"


def test_a_long_name_is_cut_with_an_ellipsis() -> None:
    name = run_name("train", CHOICES, [f"model.k{i}=0.123456789" for i in range(30)])
    assert len(name) == MAX_NAME and name.endswith("…")
