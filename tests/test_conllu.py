"""CoNLL-U parsing, the tagging dataset and the masked tagger, on small files each test writes."""

from __future__ import annotations

import ast
import re
from functools import partial
from pathlib import Path

import pytest
import torch

from helpers import ROOT
from trainflow.data.conllu import load_treebank, read_sentences
from trainflow.data.dataset import read_split, verify_dataset
from trainflow.data.tagging import IGNORE_TAG, PAD_INDEX, UNK, UNK_INDEX, ConlluDataModule, pad_batch
from trainflow.errors import ConfigError, DataError


def word(i: int | str, form: str, upos: str = "NOUN", xpos: str = "NN", head: str = "0") -> str:
    return "\t".join([str(i), form, form.lower(), upos, xpos, "_", head, "dep", "_", "_"])


def sentence(sent_id: str | None, *words: tuple[str, str]) -> str:
    """A sentence block (no trailing blank line) of (form, upos) words."""
    lines = [f"# sent_id = {sent_id}"] if sent_id else []
    lines += [word(i, form, upos) for i, (form, upos) in enumerate(words, start=1)]
    return "\n".join(lines) + "\n"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode())
    return path


def test_syntactic_words_metadata_and_line_numbers(tmp_path: Path) -> None:
    """Multiword ranges give way to their words; empty nodes are skipped; comments are kept."""
    text = "\n".join([
        "# newdoc id = d1",
        "# sent_id = s1",
        "# text = I didn't go",
        word(1, "I", "PRON"),
        "2-3\tdidn't\t_\t_\t_\t_\t_\t_\t_\t_",
        word(2, "did", "AUX"),
        word(3, "n't", "PART"),
        word(4, "go", "VERB"),
        "4.1\tgo\tgo\tVERB\tVB\t_\t_\t_\t2:conj\t_",
        "",
        "",
        word(1, "Bye", "INTJ"),
        "",
    ]) + "\n"
    first, second = read_sentences(write(tmp_path, "a.conllu", text))
    assert first.sent_id == "s1" and first.line == 1
    assert first.words == ["I", "did", "n't", "go"] and first.tags == ["PRON", "AUX", "PART", "VERB"]
    assert first.text == "I didn't go" and first.metadata["sent_id"] == "s1"
    assert second.sent_id == "a.conllu#2" and second.line == 12 and second.words == ["Bye"]


def test_unicode_crlf_bom_and_no_final_blank_line_read_like_plain_lf(tmp_path: Path) -> None:
    plain = sentence("u1", ("Zürich", "PROPN"), ("東京", "PROPN"), ("naïve", "ADJ")) + "\n" + \
        sentence("u2", ("Ça", "PRON"), ("va", "VERB"))
    crlf = "\ufeff" + plain.replace("\n", "\r\n").rstrip("\r\n")  # BOM, CRLF, no blank line at the end
    want = [(s.sent_id, s.words, s.tags) for s in read_sentences(write(tmp_path, "lf.conllu", plain + "\n"))]
    got = [(s.sent_id, s.words, s.tags) for s in read_sentences(write(tmp_path, "crlf.conllu", crlf))]
    assert got == want and want[0][1] == ["Zürich", "東京", "naïve"]


BAD_LINES = [
    ("1\tDogs\tdog\tNOUN\tNNS\t_\t0\troot\t_", "expected 10 tab-separated columns, found 9"),
    (word("x", "Dogs"), "bad ID 'x'"),
    (word("1-1", "Dogs"), "bad multiword range '1-1'"),
    (word(2, "Dogs"), "word ID 2 out of order (expected 1)"),
    (word(1, "Dogs", upos="_"), "word 'Dogs' has no UPOS"),
    (word(1, "Dogs", head="x"), "HEAD 'x' is not a word ID"),
    ("1\tDogs\t\tNOUN\tNNS\t_\t0\troot\t_\t_", "column LEMMA is empty"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES, ids=[m.split(" (")[0] for _, m in BAD_LINES])
def test_a_malformed_line_names_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    text = sentence("ok", ("Cats", "NOUN"), ("sleep", "VERB")) + "\n# sent_id = bad\n" + line + "\n"
    path = write(tmp_path, "bad.conllu", text)
    with pytest.raises(DataError) as info:
        list(read_sentences(path))
    assert str(info.value).startswith(f"{path}:6: {message}")


def test_bad_bytes_and_missing_tags_are_named_too(tmp_path: Path) -> None:
    path = tmp_path / "latin1.conllu"
    path.write_bytes(sentence("a", ("ok", "ADJ")).encode() + b"\n" + word(1, "caf\xe9").encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:4: not UTF-8 text"):
        list(read_sentences(path))
    no_xpos = write(tmp_path, "x.conllu", "\t".join(["1", "a", "a", "DET", "_", "_", "0", "root", "_", "_"]) + "\n")
    assert [s.tags for s in read_sentences(no_xpos)] == [["DET"]]
    with pytest.raises(DataError, match=rf"^{re.escape(str(no_xpos))}:1: word 'a' has no XPOS"):
        list(read_sentences(no_xpos, tag_column="xpos"))
    with pytest.raises(ConfigError, match=r"data\.tag_column: 'lemma'"):
        list(read_sentences(no_xpos, tag_column="lemma"))
    with pytest.raises(DataError, match=r"^data.test_file: no such file: .*nope.conllu"):
        load_treebank(str(tmp_path / "nope.conllu"), "data.test_file")


def test_a_treebank_is_read_from_an_mlflow_uri(tmp_path: Path, sqlite_uri: str, tracking_env) -> None:
    from mlflow import MlflowClient

    tracking_env(sqlite_uri)
    client = MlflowClient(sqlite_uri)
    run = client.create_run(client.create_experiment("conllu", artifact_location=(tmp_path / "art").as_uri()))
    folder = tmp_path / "upload"
    folder.mkdir()
    write(folder, "tb.conllu", sentence("r1", ("Hello", "INTJ")) + "\n" + word(1, "x", upos="_") + "\n")
    client.log_artifact(run.info.run_id, str(folder / "tb.conllu"), "treebanks")
    uri = f"runs:/{run.info.run_id}/treebanks/tb.conllu"
    with pytest.raises(DataError, match=rf"^{re.escape(uri)}:4: word 'x' has no UPOS"):
        load_treebank(uri, "data.train_file")
    assert [s.words for s in load_treebank(uri, "data.train_file", max_sentences=1)] == [["Hello"]]
    with pytest.raises(DataError, match=rf"^data.train_file: cannot download runs:/{run.info.run_id}/nope"):
        load_treebank(f"runs:/{run.info.run_id}/nope.conllu", "data.train_file")


def test_data_and_model_modules_do_not_import_mlflow_at_import_time() -> None:
    for rel in ("data/conllu.py", "data/tagging.py", "models/tagger.py", "models/components/bilstm_tagger.py"):
        tree = ast.parse((ROOT / "src/trainflow" / rel).read_text())
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        names = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n.split(".")[0] == "mlflow"], rel


def treebank(tmp_path: Path) -> ConlluDataModule:
    train = "\n".join([
        sentence("t1", ("The", "DET"), ("dog", "NOUN"), ("barks", "VERB")),
        sentence("t2", ("the", "DET"), ("Dog", "NOUN"), ("sleeps", "VERB")),
        sentence("t3", ("A", "DET"), ("dog", "NOUN"), ("runs", "VERB"), ("home", "ADV")),
    ])
    test = sentence("e1", ("the", "DET"), ("zyxwvut", "NOUN"), ("quickly", "ADV"), ("!", "PUNCT"))
    return ConlluDataModule(str(write(tmp_path, "train.conllu", train)), str(write(tmp_path, "test.conllu", test)),
                            val_file=str(write(tmp_path, "val.conllu", train)), min_freq=2, batch_size=2)


def test_vocabularies_come_from_the_training_split_only(tmp_path: Path) -> None:
    dm = treebank(tmp_path)
    manifest = dm.build_dataset(tmp_path / "ds")
    vocab = manifest.extra["vocab"]
    # lowercased, min_freq 2: only "the" and "dog" are words; <pad> 0, <unk> 1
    assert vocab["words"] == ["<pad>", "<unk>", "dog", "the"]
    assert vocab["chars"][:2] == ["<pad>", "<unk>"] and "D" in vocab["chars"] and "z" not in vocab["chars"]
    # PUNCT is only in test: it maps to an <unk> tag, added last because a test token needs it
    assert manifest.label_names == vocab["tags"] == ["ADV", "DET", "NOUN", "VERB", UNK]
    test = read_split(tmp_path / "ds", "test").to_pylist()[0]
    assert test["words"] == ["the", "zyxwvut", "quickly", "!"]
    assert test["word_ids"] == [3, UNK_INDEX, UNK_INDEX, UNK_INDEX]
    assert test["tag_ids"] == [1, 2, 0, 4]
    assert verify_dataset(tmp_path / "ds").splits == {"train": 3, "val": 3, "test": 1}
    dm.uri = str(tmp_path / "ds")
    assert dm.model_kwargs() == {"vocab_size": 4, "char_vocab_size": len(vocab["chars"]), "num_classes": 5,
                                 "label_names": vocab["tags"], "pad_index": PAD_INDEX}


def test_val_fraction_split_is_seeded(tmp_path: Path) -> None:
    lines = "\n".join(sentence(f"s{i}", ("w", "X")) for i in range(20))
    path = str(write(tmp_path, "t.conllu", lines))

    def val_ids(seed: int) -> list[str]:
        return [s.sent_id for s in ConlluDataModule(path, path, val_fraction=0.25, seed=seed).read_sentences()["val"]]

    assert val_ids(1) == val_ids(1) != val_ids(2) and len(val_ids(1)) == 5


def tiny_tagger(dm: ConlluDataModule) -> torch.nn.Module:
    from trainflow.models.tagger import TaggerModule

    torch.manual_seed(0)
    module = TaggerModule(optimizer=partial(torch.optim.Adam), embedding_dim=8, char_embedding_dim=4,
                          char_filters=6, hidden_size=5, **dm.model_kwargs())
    return module.eval()


def test_padding_counts_in_no_loss_or_metric(tmp_path: Path) -> None:
    """A batch padded to 40 positions gives each sentence what it gets alone."""
    dm = treebank(tmp_path)
    dm.build_dataset(tmp_path / "ds")
    dm.uri = str(tmp_path / "ds")
    dm.setup()
    module = tiny_tagger(dm)
    examples = [*dm.splits["train"], *dm.splits["test"]]
    alone = [module.predict_probabilities(pad_batch([ex])) for ex in examples]
    inputs, targets = pad_batch(examples)
    width = 40 - targets.size(1)
    padded = ({"words": torch.nn.functional.pad(inputs["words"], (0, width), value=PAD_INDEX),
               "chars": torch.nn.functional.pad(inputs["chars"], (0, 3, 0, width), value=PAD_INDEX)},
              torch.nn.functional.pad(targets, (0, width), value=IGNORE_TAG))
    probs, kept = module.predict_probabilities(padded)
    assert len(kept) == sum(len(ex[0]) for ex in examples) == 14  # 14 real tokens out of 5 x 40 positions
    torch.testing.assert_close(probs, torch.cat([p for p, _ in alone]))
    assert torch.equal(kept, torch.cat([t for _, t in alone]))
    loss, preds, _ = module.model_step(padded)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(probs.log(), kept))
    module.test_acc.update(preds, kept)
    for p, t in alone:
        module.val_acc.update(p.argmax(dim=1), t)
    torch.testing.assert_close(module.test_acc.compute(), module.val_acc.compute())


def test_a_config_without_sizes_fails_naming_the_key() -> None:
    from trainflow.models.tagger import TaggerModule

    with pytest.raises(ConfigError, match=r"^model.vocab_size: not set"):
        TaggerModule(optimizer=partial(torch.optim.Adam), char_vocab_size=5, num_classes=3)
