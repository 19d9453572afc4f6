"""Token vocabularies: words <-> integer ids, and a simple tokeniser.

Ids of a :class:`Vocabulary` built here: ``<pad>`` = 0, ``<unk>`` = 1, optionally ``<start>``
= 2 and ``<end>`` = 3, then the tokens in the order given. A vocabulary read from SCAN's JSON
keeps SCAN's ids (there ``<pad>`` = 0, ``<start>`` = 1, ``<end>`` = 2, ``<unk>`` = 3).
"""
from __future__ import annotations

import json
import os
import re

import numpy as np
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from ._json import read_json
from ..errors import DTypeError, FormatError, UnknownNameError

PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[^\sa-z0-9]")
_WORD_ONLY = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_WORD_ANY_CASE = re.compile(_WORD.pattern.replace("a-z", "a-zA-Z"))
_INVISIBLE = {0xFEFF: " ", 0x200B: " ", 0x200C: None, 0x200D: None, 0x2060: None}


def simple_tokenize(text: str, *, punctuation: bool = True) -> list[str]:
    """Lower-case word tokeniser (an nltk-free stand-in for SCAN's ``word_tokenize(text.lower())``).

    Words are runs of letters and digits (with a trailing ``'s``-style clitic kept); every other
    non-space character is a token of its own, or dropped when ``punctuation=False``.

    >>> simple_tokenize("A dog's toy, on the grass.")
    ['a', "dog's", 'toy', ',', 'on', 'the', 'grass', '.']
    >>> simple_tokenize("What is the blue shape?", punctuation=False)
    ['what', 'is', 'the', 'blue', 'shape']
    """
    if not isinstance(text, str):
        raise DTypeError(f"simple_tokenize: text must be a string, got {type(text).__name__} {text!r}")
    # a byte-order mark (or a zero-width space / joiner) is not a token of its own
    return (_WORD if punctuation else _WORD_ONLY).findall(text.lower().translate(_INVISIBLE))


def word_spans(text: str) -> list[tuple[str, int, int]]:
    """:func:`simple_tokenize`'s tokens with their ``(start, end)`` character spans in ``text``.

    >>> word_spans("The left Cat.")
    [('the', 0, 3), ('left', 4, 8), ('cat', 9, 12), ('.', 12, 13)]
    """
    if not isinstance(text, str):
        raise DTypeError(f"word_spans: text must be a string, got {type(text).__name__} {text!r}")
    text = text.translate({k: " " for k in _INVISIBLE})  # invisible characters are not tokens; spans kept
    return [(m.group(0).lower(), m.start(), m.end()) for m in _WORD_ANY_CASE.finditer(text)]


class Vocabulary:
    """A bijection between tokens and ids.

    Args:
        tokens: the tokens, in id order after the special tokens (duplicates and specials skipped).
        start_end: also reserve ``<start>`` (2) and ``<end>`` (3).

    >>> v = Vocabulary(["red", "circle"])
    >>> v.encode(["red", "circle", "dog"]), v.decode([2, 3]), len(v)
    ([2, 3, 1], ['red', 'circle'], 4)
    """

    def __init__(self, tokens: Sequence[str], *, start_end: bool = False):
        specials = [PAD, UNK] + ([START, END] if start_end else [])
        words = list(specials)
        seen = set(words)
        if isinstance(tokens, (str, bytes)):
            raise DTypeError(f"Vocabulary: tokens must be a sequence of strings, got the string {tokens!r}")
        for k, t in enumerate(tokens):
            if not isinstance(t, str) or not t.strip().strip("\ufeff"):
                raise DTypeError(f"Vocabulary: token {k} is {type(t).__name__} {t!r}, not a non-blank string")
            if t not in seen:
                seen.add(t)
                words.append(t)
        self._init(words)

    def _init(self, idx2word: list[str]):
        self.idx2word: list[str] = list(idx2word)
        self.word2idx: dict[str, int] = {w: i for i, w in enumerate(self.idx2word)}
        if len(self.word2idx) != len(self.idx2word):
            raise FormatError("vocabulary has duplicate tokens")
        for special in (PAD, UNK):
            if special not in self.word2idx:
                raise FormatError(f"vocabulary lacks the special token {special!r}")
        self.pad_id = self.word2idx[PAD]
        self.unk_id = self.word2idx[UNK]
        self.start_id = self.word2idx.get(START)
        self.end_id = self.word2idx.get(END)

    # ------------------------------------------------------------------ mapping
    def __len__(self) -> int:
        return len(self.idx2word)

    def __contains__(self, token) -> bool:
        return token in self.word2idx

    def __getitem__(self, token: str) -> int:
        return self.word2idx.get(token, self.unk_id)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocabulary) and self.idx2word == other.idx2word

    def __repr__(self) -> str:
        return f"Vocabulary({len(self)} tokens)"

    def encode(self, tokens: Sequence[str], *, add_start_end: bool = False) -> list[int]:
        """Ids of ``tokens`` (unknown tokens -> ``unk_id``); optionally framed by start/end ids."""
        if isinstance(tokens, (str, bytes)):
            raise DTypeError(f"encode: tokens must be a sequence of strings, got the string {tokens!r} "
                             f"(tokenise it first, e.g. simple_tokenize)")
        get, unk = self.word2idx.get, self.unk_id
        try:
            ids = [get(t, unk) for t in tokens]
        except TypeError:   # an unhashable token (a list ...)
            raise DTypeError(f"encode: tokens must be strings, got {list(tokens)[:5]!r}") from None
        if add_start_end:
            if self.start_id is None or self.end_id is None:
                raise UnknownNameError("special token", START, self.idx2word[:4])
            ids = [self.start_id, *ids, self.end_id]
        return ids

    def decode(self, ids, *, skip_special: bool = False) -> list[str]:
        """Tokens of ``ids`` (a sequence, ndarray or tensor of ints).

        Raises:
            UnknownNameError: for an id outside ``[0, len(self))``.
        """
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        out = []
        specials = {self.pad_id, self.unk_id, self.start_id, self.end_id}
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                if isinstance(i, (float, np.floating)) and float(i).is_integer():
                    i = int(i)
                else:
                    raise DTypeError(f"decode: ids must be integers, got {type(i).__name__} {i!r}")
            i = int(i)
            if not 0 <= i < len(self.idx2word):
                raise UnknownNameError("token id", str(i), [f"0..{len(self.idx2word) - 1}"])
            if skip_special and i in specials:
                continue
            out.append(self.idx2word[i])
        return out

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_captions(cls, captions: Iterable[Sequence[str]], min_count: int = 1, *,
                      start_end: bool = False) -> "Vocabulary":
        """Tokens seen at least ``min_count`` times, most frequent first (ties alphabetical).

        ``captions`` may hold token sequences or :class:`~attnlens.types.GroundedCaption` s.

        >>> Vocabulary.from_captions([["a", "dog"], ["a", "cat"]], min_count=2).idx2word
        ['<pad>', '<unk>', 'a']
        """
        counts: Counter = Counter()
        for cap in captions:
            counts.update(getattr(cap, "tokens", cap))
        words = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(words, start_end=start_end)

    def to_json(self, path) -> None:
        """Write ``{"idx2word": [...]}`` atomically."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"idx2word": self.idx2word}, f, ensure_ascii=False)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def from_json(cls, path) -> "Vocabulary":
        """Read a vocabulary written by :meth:`to_json` (or SCAN's format, detected)."""
        data = read_json(path, "vocabulary")
        if isinstance(data, dict) and "word2idx" in data:
            return cls.from_scan_json(path)
        if not isinstance(data, dict) or not isinstance(data.get("idx2word"), list):
            raise FormatError("expected an object with an 'idx2word' list", path=path)
        for k, w in enumerate(data["idx2word"]):
            if not isinstance(w, str) or not w.strip().strip("\ufeff"):
                raise FormatError(f"element idx2word[{k}] is {w!r}, not a non-blank string", path=path)
        return cls._from_list(list(data["idx2word"]), path)

    @classmethod
    def from_scan_json(cls, path) -> "Vocabulary":
        """Read SCAN's vocabulary JSON (``{"word2idx": {...}, "idx2word": {...}, "idx": n}``), keeping its ids."""
        data = read_json(path, "vocabulary")
        if not isinstance(data, dict) or not isinstance(data.get("word2idx"), dict):
            raise FormatError("expected SCAN's vocabulary object with a 'word2idx' mapping", path=path)
        w2i = data["word2idx"]
        for w, i in w2i.items():
            if isinstance(i, bool) or not isinstance(i, int):
                raise FormatError(f"element word2idx[{w!r}] is {i!r}, not an integer id", path=path)
            if not w.strip().strip("\ufeff"):
                raise FormatError(f"element word2idx has a blank token {w!r} (id {i})", path=path)
        pairs = sorted((i, w) for w, i in w2i.items())
        ids = [i for i, _ in pairs]
        if ids != list(range(len(ids))):
            missing = sorted(set(range(max(ids, default=-1) + 1)) - set(ids))[:5]
            raise FormatError(f"word2idx ids are not 0..{len(ids) - 1} without gaps or duplicates "
                              f"(missing {missing})", path=path)
        i2w = data.get("idx2word")
        if isinstance(i2w, dict):
            for i, w in pairs:
                if str(i2w.get(str(i), w)) != w:
                    raise FormatError(f"idx2word[{i}] = {i2w.get(str(i))!r} disagrees with word2idx ({w!r})",
                                      path=path)
        if "idx" in data and (isinstance(data["idx"], bool) or not isinstance(data["idx"], int)):
            raise FormatError(f"element idx is {data['idx']!r}, not an integer", path=path)
        if "idx" in data and int(data["idx"]) != len(pairs):
            raise FormatError(f"'idx' is {data['idx']} but word2idx has {len(pairs)} entries", path=path)
        return cls._from_list([w for _, w in pairs], path)

    @classmethod
    def _from_list(cls, idx2word: list[str], path) -> "Vocabulary":
        vocab = cls.__new__(cls)
        try:
            vocab._init(idx2word)
        except FormatError as exc:   # duplicate or missing special tokens: name the file
            raise FormatError(str(exc), path=path) from None
        return vocab


def scenes_vocabulary() -> Vocabulary:
    """The fixed vocabulary of the built-in scenes: specials (with start/end), then ``scenes.VOCABULARY``.

    >>> v = scenes_vocabulary()
    >>> v.pad_id, v.unk_id, "circle" in v
    (0, 1, True)
    """
    from .scenes_spec import VOCABULARY

    return Vocabulary(VOCABULARY, start_end=True)
