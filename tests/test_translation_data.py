"""Tests of rnnjax.data.translation: Pig Latin, number words, pair files, vocabularies, batches."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnjax.data import translation as tr


# --------------------------------------------------------------------------- Pig Latin

@pytest.mark.parametrize("word, expected", [
    ("string", "ingstray"), ("hello", "ellohay"), ("apple", "appleway"), ("egg", "eggway"),
    ("the", "ethay"), ("queen", "eenquay"), ("rhyme", "ymerhay"), ("hmm", "hmmay"),
    ("a", "away"), ("yes", "esyay"), ("school", "oolschay"),
])
def test_pig_latin_rule(word, expected):
    assert tr.pig_latin(word) == expected


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=12))
@settings(max_examples=200, deadline=None)
def test_pig_latin_moves_the_leading_consonant_cluster(word):
    out = tr.pig_latin(word)
    if word[0] in "aeiou":
        assert out == word + "way"
        return
    assert out.endswith("ay")
    body = out[:-2]
    # body is word rotated left by some i >= 1 ...
    cuts = [i for i in range(1, len(word) + 1) if word[i:] + word[:i] == body]
    assert cuts, (word, out)

    def is_cluster_move(i: int) -> bool:
        # the moved word[:i] holds no vowel (a "u" only right after "q", a "y" only first),
        # and what stays starts with a vowel or "y" (or follows a "qu")
        cluster, rest = word[:i], word[i:]
        return (not set(cluster) & set("aeio")
                and all(cluster[k - 1] == "q" for k, c in enumerate(cluster) if c == "u")
                and "y" not in cluster[1:]
                and (rest == "" or rest[0] in "aeiouy" or cluster.endswith("qu")))

    assert any(is_cluster_move(i) for i in cuts), (word, out)


@pytest.mark.parametrize("bad", ["", "Hello", "don't", "two words", "é"])
def test_pig_latin_rejects_non_words(bad):
    with pytest.raises(ValueError, match="a-z"):
        tr.pig_latin(bad)


def test_piglatin_task_from_shakespeare():
    data = tr.load_task("piglatin", seed=0)
    n = len(data.train) + len(data.valid)
    assert n > 20_000  # the unique words of 38 plays
    assert abs(len(data.valid) / n - 0.2) < 0.001
    assert not {s for s, _ in data.train} & {s for s, _ in data.valid}
    assert all(t == tr.pig_latin(s) for s, t in data.train[:500] + data.valid[:500])
    # fixed seed: the same split again
    again = tr.split_pairs(tr.piglatin_pairs(sorted(s for s, _ in data.train + data.valid)), 0.2, 0)
    assert again[1] == data.valid


# --------------------------------------------------------------------------- number words

def test_number_pairs_german_reorders():
    pairs = tr.number_pairs("de", [21, 7])
    assert pairs == [("twenty-one", "einundzwanzig"), ("seven", "sieben")]
    assert tr.number_pairs("fr", [80]) == [("eighty", "quatre-vingts")]


def test_number_task_splits_numbers_disjointly():
    data = tr.load_task("num_fr", max_number=200, seed=3)
    assert len(data.train) == 160 and len(data.valid) == 40
    assert not {s for s, _ in data.train} & {s for s, _ in data.valid}
    assert data.src_vocab.size == len(tr.SPECIALS) + len({c for s, _ in data.train for c in s})


# --------------------------------------------------------------------------- pairs file

def _write(tmp_path, content: bytes | str, name="pairs.tsv"):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return str(path)


def test_pairs_file_reads_pairs(tmp_path):
    path = _write(tmp_path, "hello\tbonjour\n\nthe cat\tle chat\r\nyes\toui")
    assert tr.load_pairs_file(path) == [("hello", "bonjour"), ("the cat", "le chat"), ("yes", "oui")]
    data = tr.load_task("tsv", data_path=path)
    assert len(data.train) == 2 and len(data.valid) == 1


@pytest.mark.parametrize("content, line, words", [
    ("a\tb\nno tab here\n", 2, "found no tab"),
    ("a\tb\nc\td\te\n", 2, "found 2 tabs"),
    ("a\tb\n\t x\n", 2, "empty source"),
    ("a\tb\nc\td\nx\t \n", 3, "empty target"),
    (b"a\tb\n\xff\xfe\tz\n", 2, "not valid UTF-8"),
])
def test_malformed_pairs_file_names_file_and_line(tmp_path, content, line, words):
    path = _write(tmp_path, content)
    with pytest.raises(ValueError) as err:
        tr.load_pairs_file(path)
    assert f"{path}:{line}:" in str(err.value)
    assert words in str(err.value)


def test_pairs_file_missing_empty_or_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        tr.load_pairs_file(str(tmp_path / "nope.tsv"))
    with pytest.raises(FileNotFoundError, match="directory"):
        tr.load_pairs_file(str(tmp_path))
    with pytest.raises(ValueError, match="holds 1 pair"):
        tr.load_pairs_file(_write(tmp_path, "only\tone\n"))
    with pytest.raises(ValueError, match="--data_path"):
        tr.load_task("tsv")
    with pytest.raises(ValueError, match="accepted: piglatin"):
        tr.load_task("klingon")


def test_pairs_file_that_is_not_regular_is_refused(tmp_path):
    fifo = tmp_path / "pairs.fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        tr.load_pairs_file(str(fifo))


def test_pairs_file_drops_byte_order_mark_and_header_line(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"\xef\xbb\xbfSource\tTarget\nabc\tcba\nxy\tyx\n")
    assert tr.load_pairs_file(str(path)) == [("abc", "cba"), ("xy", "yx")]
    # Only a first line of column names is a header; later ones are pairs.
    path.write_text("abc\tcba\nsource\ttarget\n", encoding="utf-8")
    assert tr.load_pairs_file(str(path)) == [("abc", "cba"), ("source", "target")]


def test_pairs_file_line_longer_than_max_length_is_named(tmp_path):
    path = _write(tmp_path, "abc\tcba\n" + "x" * 500 + "\ty\nxy\tyx\n")
    with pytest.raises(ValueError) as err:
        tr.load_task("tsv", data_path=path, max_length=200)
    assert f"{path}:2:" in str(err.value) and "--max_length=200" in str(err.value)
    assert len(tr.load_pairs_file(path)) == 3  # no cap unless asked


# --------------------------------------------------------------------------- vocab, batches

def test_vocab_roundtrip_and_unknowns():
    vocab = tr.build_char_vocab(["abc", "cab d"])
    assert vocab.tokens[:4] == tr.SPECIALS and vocab.size == 4 + 5
    ids = vocab.encode("bad z")
    assert ids[-1] == tr.UNK_ID
    assert vocab.decode(ids + [tr.EOS_ID] + vocab.encode("abc")) == "bad <unk>"
    assert tr.CharVocab.from_json(vocab.to_json()) == vocab


def test_make_batch_layout():
    vocab = tr.build_char_vocab(["abcd"])
    batch = tr.make_batch([("ab", "bcd"), ("abcd", "a")], vocab, vocab, src_len=5, tgt_len=6,
                          batch_size=3)
    assert batch.src.shape == (3, 5) and batch.tgt_in.shape == (3, 6)
    np.testing.assert_array_equal(batch.src_lengths, [2, 4, 2])
    np.testing.assert_array_equal(batch.tgt_lengths, [4, 2, 4])
    np.testing.assert_array_equal(batch.weights, [1, 1, 0])
    a, b, c, d = vocab.encode("abcd")
    np.testing.assert_array_equal(batch.tgt_in[0], [tr.BOS_ID, b, c, d, 0, 0])
    np.testing.assert_array_equal(batch.tgt_out[0], [b, c, d, tr.EOS_ID, 0, 0])
    np.testing.assert_array_equal(batch.src[1], [a, b, c, d, 0])
    with pytest.raises(ValueError, match="does not fit"):
        tr.make_batch([("abcdef", "a")], vocab, vocab, src_len=5, tgt_len=6)


def test_train_batches_are_a_pure_function_of_the_step():
    pairs = [(str(i), str(i)) for i in range(10)]
    data = tr.make_data("t", pairs, pairs[:2])
    first_epoch = np.concatenate([tr.batch_indices(10, 3, s, seed=1) for s in range(3)])
    assert len(set(first_epoch.tolist())) == 9  # no repeats within an epoch
    np.testing.assert_array_equal(tr.batch_indices(10, 3, 4, seed=1),
                                  tr.batch_indices(10, 3, 4, seed=1))
    b1, b2 = tr.train_batch(data, 3, 7), tr.train_batch(data, 3, 7)
    for x, y in zip(b1, b2):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="batch_size"):
        tr.batch_indices(10, 11, 0)


def test_eval_batches_cover_all_pairs_in_one_shape():
    pairs = [("ab", "ba"), ("abc", "cba"), ("a", "a")]
    data = tr.make_data("t", pairs, pairs)
    got = list(tr.eval_batches(data, pairs, batch_size=2))
    assert [chunk for _, chunk in got] == [pairs[:2], pairs[2:]]
    assert {b.src.shape for b, _ in got} == {(2, 3)}
    assert got[1][0].weights.tolist() == [1.0, 0.0]
