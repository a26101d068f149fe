"""CoNLL-U treebanks as sentences of (word, tag) pairs, read with the `conllu` library.

What feeds the tagger: the *syntactic words* of each sentence, in order, with
the tag of the chosen column (UPOS or XPOS). In CoNLL-U, a multiword token
(`1-2  didn't`) is a surface range over the syntactic words that follow it
(`1 did`, `2 n't`); the tagger sees those words, never the range's surface
form, because only words carry tags. Empty nodes (`8.1`) exist for enhanced
dependencies, have no surface position, and are skipped. Users of a trained
tagger therefore send syntactic words too (`did`, `n't`).

Files are streamed (`conllu.parse_incr`) so a treebank of any size costs one
sentence of memory at a time. `conllu` reports neither file nor line when a
line is malformed, so every line passes a cheap check first that knows its
line number; a malformed line raises `DataError("path:LINE: ...")`. Handled
as well: Unicode text (UTF-8, with or without BOM), CRLF line ends, blank
lines repeated, and a file that ends without the final blank line.

`data.*_file` values may be local paths or MLflow URIs (`runs:/<id>/x.conllu`,
`mlflow-artifacts:/...`); a URI is downloaded to a temporary folder, and
MLflow is imported only then, never when this module is imported.
"""

from __future__ import annotations

import re
import tempfile
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from trainflow.errors import ConfigError, DataError
from trainflow.fetch import is_artifact_uri

COLUMNS = ("id", "form", "lemma", "upos", "xpos", "feats", "head", "deprel", "deps", "misc")
TAG_COLUMNS = ("upos", "xpos")
_WORD_ID = re.compile(r"[1-9][0-9]*")
_RANGE_ID = re.compile(r"([1-9][0-9]*)-([1-9][0-9]*)")
_EMPTY_ID = re.compile(r"(0|[1-9][0-9]*)\.[1-9][0-9]*")
_HEAD = re.compile(r"_|0|[1-9][0-9]*")


@dataclass
class Sentence:
    """One sentence as the tagger sees it: syntactic words and their tags."""

    sent_id: str
    words: list[str]
    tags: list[str]
    # every `# key = value` comment (sent_id, text, newdoc id, ...), as conllu parsed it
    metadata: dict[str, str | None] = field(default_factory=dict)
    # line of the sentence's first line in its file: where to look when a figure is odd
    line: int = 0

    @property
    def text(self) -> str | None:
        return self.metadata.get("text")


def check_tag_column(tag_column: str) -> None:
    if tag_column not in TAG_COLUMNS:
        raise ConfigError(f"data.tag_column: '{tag_column}' is not one of {', '.join(TAG_COLUMNS)}")


class _CheckedLines:
    """The file's lines for `conllu.parse_incr`, each checked first with its line number.

    Also remembers where each sentence block starts, in the order conllu
    will yield the sentences, so a parsed sentence knows its line.
    """

    def __init__(self, handle: IO[bytes], origin: str, tag_column: str) -> None:
        self.handle, self.origin = handle, origin
        self.tag_index = COLUMNS.index(tag_column)
        self.block_starts: deque[int] = deque()
        self.lineno = 0
        self.next_word = 1  # the id the next syntactic word must have
        self.in_block = False

    def read(self, size: int = -1) -> str:  # parse_incr asks for a file-like object
        raise NotImplementedError("read line by line")

    def __iter__(self) -> Iterator[str]:
        for lineno, raw in enumerate(self.handle, start=1):
            self.lineno = lineno
            line = self._decode(raw)
            if not line.strip():
                self.in_block, self.next_word = False, 1
            else:
                if not self.in_block:
                    self.block_starts.append(self.lineno)
                    self.in_block = True
                if not line.startswith("#"):
                    self._check_token_line(line.rstrip("\r\n"))
            yield line

    def fail(self, message: str, lineno: int | None = None) -> DataError:
        return DataError(f"{self.origin}:{lineno or self.lineno}: {message}")

    def _decode(self, raw: bytes) -> str:
        """Decoded line by line, so a bad byte is reported on its own line; CRLF -> LF."""
        if self.lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a byte-order mark some editors write
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"not UTF-8 text (byte {exc.start + 1}: {exc.reason})") from exc
        return line[:-2] + "\n" if line.endswith("\r\n") else line

    def _check_token_line(self, line: str) -> None:
        cols = line.split("\t")
        if len(cols) != len(COLUMNS):
            raise self.fail(f"expected {len(COLUMNS)} tab-separated columns, found {len(cols)}")
        empty = [COLUMNS[i].upper() for i, value in enumerate(cols) if not value.strip()]
        if empty:
            raise self.fail(f"column {empty[0]} is empty (CoNLL-U writes '_' for no value)")
        token_id = cols[0]
        if not _HEAD.fullmatch(cols[6]):
            raise self.fail(f"HEAD '{cols[6]}' is not a word ID")
        if _WORD_ID.fullmatch(token_id):
            self._check_word(int(token_id), cols)
        elif match := _RANGE_ID.fullmatch(token_id):
            start, end = int(match.group(1)), int(match.group(2))
            if start != self.next_word or end <= start:
                raise self.fail(f"bad multiword range '{token_id}' (the next word is {self.next_word})")
        elif not _EMPTY_ID.fullmatch(token_id):
            raise self.fail(f"bad ID '{token_id}' (expected N, N-M or N.M)")

    def _check_word(self, word_id: int, cols: list[str]) -> None:
        if word_id != self.next_word:
            raise self.fail(f"word ID {word_id} out of order (expected {self.next_word})")
        self.next_word += 1
        if cols[self.tag_index] == "_":
            raise self.fail(f"word '{cols[1]}' has no {COLUMNS[self.tag_index].upper()} ('_'); "
                            "the tagger needs a tag on every word")


def read_sentences(path: Path, tag_column: str = "upos", origin: str | None = None) -> Iterator[Sentence]:
    """Stream the sentences of a CoNLL-U file; `origin` names it in errors (a URI)."""
    import conllu
    from conllu.exceptions import ParseException

    check_tag_column(tag_column)
    origin = origin or str(path)
    try:
        handle = path.open("rb")  # decoded line by line by _CheckedLines
    except OSError as exc:
        raise DataError(f"{origin}: cannot read: {exc.strerror or exc}") from exc
    with handle:
        lines = _CheckedLines(handle, origin, tag_column)
        parsed = conllu.parse_incr(lines)  # type: ignore[arg-type]  # file-like enough: it iterates lines
        ordinal = 0
        try:
            for tokens in parsed:
                start = lines.block_starts.popleft()
                ordinal += 1
                sentence = _to_sentence(tokens, tag_column, f"{Path(origin).name}#{ordinal}", start)
                if sentence.words:
                    yield sentence
        except ParseException as exc:
            # the sentence conllu was parsing is the oldest block not yet handed out
            block = lines.block_starts[0] if lines.block_starts else None
            raise lines.fail(f"conllu: {exc} (in the sentence starting on this line)", block) from exc


def _to_sentence(tokens: object, tag_column: str, fallback_id: str, line: int) -> Sentence:
    """Syntactic words only: integer ids; ranges (tuple `(1, '-', 2)`) and empty nodes (`(8, '.', 1)`) skipped."""
    words, tags = [], []
    for token in tokens:  # type: ignore[attr-defined]
        if isinstance(token["id"], int):
            words.append(str(token["form"]))
            tags.append(str(token[tag_column]))
    metadata = dict(tokens.metadata)  # type: ignore[attr-defined]
    return Sentence(str(metadata.get("sent_id") or fallback_id), words, tags, metadata, line)


@contextmanager
def local_file(uri: str, key: str) -> Iterator[tuple[Path, str]]:
    """(local path, name for errors) of a treebank given as a path or an MLflow URI.

    A download lives in a temporary folder for as long as the caller reads it.
    """
    if not is_artifact_uri(uri):
        path = Path(uri.removeprefix("file://")).expanduser()
        if not path.is_file():
            raise DataError(f"{key}: no such file: {uri}")
        yield path, str(path)
        return
    with tempfile.TemporaryDirectory(prefix="trainflow-conllu-") as tmp:
        yield download(uri, Path(tmp), key), uri


def download(uri: str, dst: Path, key: str) -> Path:
    """One CoNLL-U file from an MLflow URI (MLflow is imported only then)."""
    from trainflow.fetch import download as download_artifact

    local = download_artifact(uri, dst, key, error=DataError)
    if not local.is_file():
        raise DataError(f"{key}: {uri} is a folder; name one .conllu file in it")
    return local


def iter_treebank(uri: str, key: str, tag_column: str = "upos", max_sentences: int | None = None
                  ) -> Iterator[Sentence]:
    """The sentences of one file (or the first `max_sentences`), streamed; an empty file is an error."""
    with local_file(uri, key) as (path, origin):
        count = 0
        for sentence in read_sentences(path, tag_column, origin):
            yield sentence
            count += 1
            if max_sentences is not None and count >= max_sentences:
                return  # before the next sentence is read: the rest of the file is never touched
    if not count:
        raise DataError(f"{key}: {uri} holds no sentence with words")


def load_treebank(uri: str, key: str, tag_column: str = "upos", max_sentences: int | None = None) -> list[Sentence]:
    """Every sentence of one file as a list (tests, small files); packing streams with `iter_treebank`."""
    return list(iter_treebank(uri, key, tag_column, max_sentences))
