"""Part-of-speech tagging data: CoNLL-U treebanks -> vocabularies, parquet splits, padded batches.

The vocabularies (words, characters, tags) are built from the training split
only and travel in the manifest, so the train step, evaluate and the served
model all map text to the same indices. Index 0 is padding and index 1 the
unknown word/character in the word and character vocabularies. Tags have no
padding entry: padded positions get the target `IGNORE_TAG` (-100), which is
what the model's `mask_outputs` drops before the loss and every metric. A val
or test tag the training split never showed maps to an `<unk>` tag, which is
added (last) only when some token needs it, so it never dilutes a macro
average with an empty class.
"""

from __future__ import annotations

import random
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import torch
from torch.utils.data import Dataset

from trainflow.data.conllu import Sentence, check_tag_column, iter_treebank
from trainflow.data.dataset import SHARD_BYTES, DatasetWriter, Manifest, read_manifest
from trainflow.data.mapped import MappedTable, open_split
from trainflow.data.split_loaders import SplitDataModule
from trainflow.data.task import ServedModel, ServingSpec
from trainflow.errors import ConfigError, DataError

PAD, UNK = "<pad>", "<unk>"
PAD_INDEX, UNK_INDEX = 0, 1
IGNORE_TAG = -100  # target of padded positions: CrossEntropyLoss's default ignore_index
TASK = "token-classification/pos-tagging"
SCHEMA = pa.schema([
    ("sent_id", pa.string()),
    ("text", pa.string()),
    ("words", pa.list_(pa.string())),
    ("tags", pa.list_(pa.string())),
    ("word_ids", pa.list_(pa.int32())),
    ("tag_ids", pa.list_(pa.int32())),
])

Example = tuple[list[int], list[list[int]], list[int]]  # word ids, char ids per word, tag ids
WRITE_BATCH = 1024  # sentences encoded and written at a time: what packing holds of a treebank


def build_vocab(counts: Counter[str], min_freq: int = 1) -> list[str]:
    """`<pad>`, `<unk>`, then items seen at least `min_freq` times, most frequent first (ties by text)."""
    kept = sorted((item for item, n in counts.items() if n >= min_freq), key=lambda item: (-counts[item], item))
    return [PAD, UNK, *kept]


def normalise(word: str, lowercase: bool) -> str:
    return word.lower() if lowercase else word


def encode_words(words: Sequence[str], word_index: dict[str, int], lowercase: bool) -> list[int]:
    return [word_index.get(normalise(w, lowercase), UNK_INDEX) for w in words]


def encode_chars(words: Sequence[str], char_index: dict[str, int], max_chars: int) -> list[list[int]]:
    """Characters keep their case (capitals are a strong PROPN cue) even when words are lowercased."""
    return [[char_index.get(c, UNK_INDEX) for c in w[:max_chars]] or [UNK_INDEX] for w in words]


def pad_batch(examples: Sequence[Example]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """((words (B,T), chars (B,T,L)), targets (B,T)); padded targets are IGNORE_TAG."""
    longest = max(len(words) for words, _, _ in examples)
    longest_word = max(len(c) for _, chars, _ in examples for c in chars)
    words = torch.full((len(examples), longest), PAD_INDEX, dtype=torch.long)
    chars = torch.full((len(examples), longest, longest_word), PAD_INDEX, dtype=torch.long)
    targets = torch.full((len(examples), longest), IGNORE_TAG, dtype=torch.long)
    for i, (word_ids, char_ids, tag_ids) in enumerate(examples):
        n = len(word_ids)
        words[i, :n] = torch.tensor(word_ids)
        targets[i, :n] = torch.tensor(tag_ids)
        for j, word_chars in enumerate(char_ids):
            chars[i, j, :len(word_chars)] = torch.tensor(word_chars)
    return {"words": words, "chars": chars}, targets


def held_out(count: int, fraction: float, seed: int) -> set[int]:
    """Ordinals of the training sentences held out for validation: a seeded `fraction` of `count`."""
    if not 0 < fraction < 1:
        raise ConfigError(f"data.val_fraction={fraction}: must be in (0, 1) when data.val_file is not given")
    held = set(random.Random(seed).sample(range(count), max(1, round(fraction * count))))
    if len(held) >= count:
        raise ConfigError(f"data.val_fraction={fraction} leaves no training sentences ({count} in all)")
    return held


def split_sentences(sentences: list[Sentence], fraction: float, seed: int) -> tuple[list[Sentence], list[Sentence]]:
    """(train, val): a seeded `fraction` of the sentences is held out, order kept within each."""
    held = held_out(len(sentences), fraction, seed)
    return ([s for i, s in enumerate(sentences) if i not in held], [s for i, s in enumerate(sentences) if i in held])


def source_licences(files: Iterable[str | None]) -> list[Path]:
    """LICENSE* / LICENCE* files (any case) in the folders of the local source files, in source order.

    Treebanks come with their own terms (UD English EWT: CC BY-SA 4.0, which
    asks that the licence travel with every copy), and the dataset artifact is
    a copy. A source given as an MLflow URI has no folder to look in here.
    """
    from trainflow.fetch import is_artifact_uri

    folders: list[Path] = []
    for uri in files:
        if not uri:
            continue
        local = str(uri).removeprefix("file://")
        if is_artifact_uri(local):
            continue
        folder = Path(local).expanduser().resolve().parent
        if folder not in folders:
            folders.append(folder)
    return [path for folder in folders for path in sorted(folder.iterdir())
            if path.is_file() and path.name.upper().startswith(("LICENSE", "LICENCE"))]


def copy_licences(licences: list[Path], folder: Path) -> list[str]:
    """Copy each licence into the dataset folder; the names they have there.

    Two source folders may each hold a LICENSE.txt with different terms: the
    second keeps its folder's name in front rather than overwrite the first.
    """
    names: list[str] = []
    for path in licences:
        name = path.name
        if (folder / name).exists() and (folder / name).read_bytes() != path.read_bytes():
            name = f"{path.parent.name}-{path.name}"
        if name not in names:
            shutil.copyfile(path, folder / name)
            names.append(name)
    return names


def to_table(sentences: list[Sentence], word_index: dict[str, int], tag_index: dict[str, int],
             lowercase: bool) -> pa.Table:
    unk_tag = tag_index.get(UNK, -1)
    return pa.table({
        "sent_id": [s.sent_id for s in sentences],
        "text": [s.text for s in sentences],
        "words": [s.words for s in sentences],
        "tags": [s.tags for s in sentences],
        "word_ids": [encode_words(s.words, word_index, lowercase) for s in sentences],
        "tag_ids": [[tag_index.get(t, unk_tag) for t in s.tags] for s in sentences],
    }, schema=SCHEMA)


class TaggedSentences(Dataset):
    """A mapped split's sentences as (word ids, char ids, tag ids), encoded per item in whichever process asks."""

    def __init__(self, rows: MappedTable, char_index: dict[str, int], max_word_chars: int) -> None:
        self.rows, self.char_index, self.max_word_chars = rows, char_index, max_word_chars

    def __len__(self) -> int:
        return len(self.rows)

    def words(self, index: int) -> list[str]:
        return list(self.rows.value("words", index))

    def __getitem__(self, index: int) -> Example:
        return (list(self.rows.value("word_ids", index)),
                encode_chars(self.words(index), self.char_index, self.max_word_chars),
                list(self.rows.value("tag_ids", index)))


class ConlluDataModule(SplitDataModule):
    """Sentences of a CoNLL-U treebank, tagged with UPOS or XPOS, as padded batches.

    The task contract (trainflow.data.task.TaskDataModule): `build_dataset`
    writes the splits and vocabularies (what prepare_data logs), `uri` points
    the module at such a folder, `serving_spec` says how the registered model
    reads requests, and `model_kwargs` hands the model the sizes only the data knows.
    """

    def __init__(self, train_file: str, test_file: str, val_file: str | None = None, val_fraction: float = 0.1,
                 tag_column: str = "upos", lowercase: bool = True, min_freq: int = 2, max_word_chars: int = 20,
                 max_sentences: int | None = None, seed: int = 12345, batch_size: int = 32, num_workers: int = 0,
                 pin_memory: bool = False, uri: str | None = None, shard_mb: float = SHARD_BYTES / 2**20) -> None:
        super().__init__(batch_size, num_workers, pin_memory, collate_fn=pad_batch)
        self.save_hyperparameters(logger=False)
        check_tag_column(tag_column)
        if min_freq < 1 or max_word_chars < 1:
            raise ConfigError("data.min_freq and data.max_word_chars must be >= 1")
        self.files = {"train": train_file, "val": val_file, "test": test_file}
        self.val_fraction, self.seed, self.max_sentences = val_fraction, seed, max_sentences
        self.tag_column, self.lowercase, self.min_freq = tag_column, lowercase, min_freq
        self.max_word_chars = max_word_chars
        self.shard_bytes = int(shard_mb * 2**20)
        self.uri = uri
        self.vocab: dict[str, list[str]] = {}

    @property
    def label_names(self) -> list[str]:
        return list(self.vocab.get("tags", []))

    def sentences(self, split: str, held: set[int] | None) -> Iterator[Sentence]:
        """One split's sentences, streamed from its file; without a val file, val is `held` ordinals of train."""
        def stream(name: str) -> Iterator[Sentence]:
            return iter_treebank(str(self.files[name]), f"data.{name}_file", self.tag_column, self.max_sentences)

        if held is None or split == "test":
            yield from stream(split)
            return
        for ordinal, sentence in enumerate(stream("train")):
            if (ordinal in held) == (split == "val"):
                yield sentence

    def read_sentences(self) -> dict[str, list[Sentence]]:
        """train/val/test sentences as lists (small treebanks, tests); packing streams them instead."""
        held = self._held_out()
        return {split: list(self.sentences(split, held)) for split in ("train", "val", "test")}

    def _held_out(self) -> set[int] | None:
        if self.files["val"]:
            return None
        count = sum(1 for _ in iter_treebank(str(self.files["train"]), "data.train_file", self.tag_column,
                                             self.max_sentences))
        return held_out(count, self.val_fraction, self.seed)

    def build_dataset(self, folder: Path) -> Manifest:
        """Vocabularies from one streamed pass over train (and the tags of val/test), then the splits in batches."""
        held = self._held_out()
        word_counts: Counter[str] = Counter()
        char_counts: Counter[str] = Counter()
        seen_tags: set[str] = set()
        for sentence in self.sentences("train", held):
            word_counts.update(normalise(w, self.lowercase) for w in sentence.words)
            char_counts.update(c for w in sentence.words for c in w)
            seen_tags.update(sentence.tags)
        other_tags = {t for split in ("val", "test") for s in self.sentences(split, held) for t in s.tags}
        words, chars = build_vocab(word_counts, self.min_freq), build_vocab(char_counts)
        tags = [*sorted(seen_tags), UNK] if other_tags - seen_tags else sorted(seen_tags)
        word_index, tag_index = {w: i for i, w in enumerate(words)}, {t: i for i, t in enumerate(tags)}
        writer = DatasetWriter(folder, SCHEMA, shard_bytes=self.shard_bytes)
        for split in ("train", "val", "test"):
            batch: list[Sentence] = []
            for sentence in self.sentences(split, held):
                batch.append(sentence)
                if len(batch) >= WRITE_BATCH:
                    writer.write(split, to_table(batch, word_index, tag_index, self.lowercase))
                    batch = []
            writer.write(split, to_table(batch, word_index, tag_index, self.lowercase))
        for name in copy_licences(source_licences(self.files.values()), folder):  # listed in the manifest
            writer.add_file(name)
        return writer.close(
            task=f"{TASK}/{self.tag_column}", source=str(self.files["train"]), label_names=tags,
            extra={"vocab": {"words": words, "chars": chars, "tags": tags}, "pad_index": PAD_INDEX,
                   "unk_index": UNK_INDEX, "ignore_tag": IGNORE_TAG, "tag_column": self.tag_column,
                   "lowercase": self.lowercase, "min_freq": self.min_freq, "files": self.files,
                   "val_fraction": None if self.files["val"] else self.val_fraction, "seed": self.seed,
                   "max_sentences": self.max_sentences,
                   # the source's terms, copied beside the splits (empty: none found beside the files)
                   "licence_files": [f["name"] for f in writer.other_files]},
        )

    def _manifest(self) -> tuple[Path, Manifest]:
        if not self.uri:
            raise ValueError("ConlluDataModule needs `uri`: a dataset folder (train prepares one inline)")
        folder = Path(self.uri)
        manifest = read_manifest(folder)
        if "vocab" not in manifest.extra:
            raise DataError(f"{folder}: not a tagging dataset (the manifest has no vocabularies)")
        return folder, manifest

    def model_kwargs(self) -> dict[str, Any]:
        """Model config keys only the dataset knows; the train step sets them before building the model."""
        _, manifest = self._manifest()
        vocab = manifest.extra["vocab"]
        return {"vocab_size": len(vocab["words"]), "char_vocab_size": len(vocab["chars"]),
                "num_classes": len(vocab["tags"]), "label_names": list(vocab["tags"]),
                "pad_index": manifest.extra["pad_index"]}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        folder, manifest = self._manifest()
        self.vocab = manifest.extra["vocab"]
        # what the dataset was built with wins over this config: the served model describes the dataset
        self.lowercase = bool(manifest.extra.get("lowercase", self.lowercase))
        self.tag_column = str(manifest.extra.get("tag_column", self.tag_column))
        char_index = {c: i for i, c in enumerate(self.vocab["chars"])}
        for split in manifest.splits:
            rows = open_split(folder, split, manifest)
            missing = [c for c in ("words", "word_ids", "tag_ids") if c not in rows.column_names]
            if missing:
                raise DataError(f"{folder}/{split}: not a tagging dataset (no column {missing[0]})")
            if len(rows) == 0:
                raise DataError(f"{folder}/{split}: the {split} split is empty")
            self.splits[split] = TaggedSentences(rows, char_index, self.max_word_chars)

    def serving_spec(self, rows: int = 3) -> ServingSpec:
        """Token lists in, read with the vocabularies (in meta.json); the example is test sentences."""
        meta = {"words": self.vocab["words"], "chars": self.vocab["chars"], "label_names": self.label_names,
                "lowercase": self.lowercase, "max_word_chars": self.max_word_chars, "tag_column": self.tag_column}
        test = self.splits["test"]
        example = pd.DataFrame({"tokens": [test.words(i) for i in range(min(rows, len(test)))]})
        return ServingSpec(TokenTagger, meta, example)


class TokenTagger(ServedModel):
    """Tokenized sentences in (column `tokens`, a list of strings per row); one tag per token out.

    Returns `tags` (list of tag names, as long as `tokens`) and `probabilities`
    (the probability of each chosen tag). Tokens are syntactic words, as in
    the treebank the tagger learnt from (`did`, `n't`, not `didn't`).
    """

    batch_size = 64  # sentences per forward pass: bounds memory on long requests

    def __init__(self, module: Any, meta: dict[str, Any]) -> None:
        super().__init__(module, meta)
        self.word_index = {w: i for i, w in enumerate(meta["words"])}
        self.char_index = {c: i for i, c in enumerate(meta["chars"])}

    def predict(self, rows: pd.DataFrame) -> pd.DataFrame:
        if "tokens" not in rows.columns:
            raise ValueError("input lacks column 'tokens' (a list of words per sentence)")
        sentences = [_as_words(tokens) for tokens in rows["tokens"]]
        tags: list[list[str]] = []
        probabilities: list[list[float]] = []
        for start in range(0, len(sentences), self.batch_size):
            batch_tags, batch_probs = self._tag(sentences[start:start + self.batch_size])
            tags.extend(batch_tags)
            probabilities.extend(batch_probs)
        return pd.DataFrame({"tags": tags, "probabilities": probabilities})

    def _tag(self, sentences: list[list[str]]) -> tuple[list[list[str]], list[list[float]]]:
        # An empty sentence still needs one position to run the network; it is cut off below.
        examples = [(encode_words(s or [""], self.word_index, self.meta["lowercase"]),
                     encode_chars(s or [""], self.char_index, self.meta["max_word_chars"]),
                     [IGNORE_TAG] * max(len(s), 1))
                    for s in sentences]
        inputs, _ = pad_batch(examples)
        with torch.no_grad():
            probs, best = torch.softmax(self.module(inputs), dim=-1).max(dim=-1)
        names = self.label_names
        return ([[names[i] for i in best[row, :len(s)].tolist()] for row, s in enumerate(sentences)],
                [probs[row, :len(s)].double().tolist() for row, s in enumerate(sentences)])


def _as_words(tokens: Any) -> list[str]:
    """A row's tokens as strings: a list, a numpy array (MLflow's schema enforcement), or a string of words."""
    if tokens is None:
        return []
    if isinstance(tokens, str):
        return tokens.split()
    return [str(t) for t in tokens]
