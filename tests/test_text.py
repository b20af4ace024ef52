"""Tokenizer, vocabulary and word vectors (GloVe text files, spaCy vector folders)."""
import math

import msgpack
import numpy as np
import pytest
import torch

from mmi.spacy_hash import hash_string
from mmi.text import PAD_ID, UNK_ID, VECTOR_SCALE, Vocabulary, read_glove, read_spacy_vectors, tokenize


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("The man, in RED -- sitting on the left!") == ["the", "man", "in", "red", "sitting", "on", "the", "left"]
    assert tokenize("   ") == []


def test_vocabulary_encodes_pads_truncates_and_marks_unknown_words():
    vocab = Vocabulary.from_sentences(["the red ball", "the blue ball", "the ball"])
    assert vocab.words[:2] == ["<pad>", "<unk>"] and vocab.words[2:4] == ["ball", "the"]  # by count, then name
    enc = vocab.encode("the green ball", t_max=5)
    assert enc.ids.tolist() == [vocab.index["the"], UNK_ID, vocab.index["ball"], PAD_ID, PAD_ID]
    assert enc.mask.tolist() == [True, True, True, False, False] and enc.unknown == [False, True, False]
    long = vocab.encode("the red ball the blue ball", t_max=4)
    assert long.truncated and long.dropped == ["blue", "ball"] and long.mask.all()
    ids, mask, _ = vocab.encode_batch(["", "red"], t_max=3)
    assert ids.shape == (2, 3) and mask.sum(1).tolist() == [0, 1]
    assert Vocabulary(vocab.to_list()) == vocab


def test_glove_file_is_read_and_malformed_rows_are_named(tmp_path):
    vocab = Vocabulary(["red", "ball"])
    path = tmp_path / "glove.txt"
    path.write_text("red 1 2 3\nunused 4 5 6\nBall 7 8 9\n")
    table, found = read_glove(str(path), vocab, dim=3)
    assert found == 2 and table.shape == (4, 3)
    assert table[vocab.index["red"]].tolist() == [1, 2, 3] and table[vocab.index["ball"]].tolist() == [7, 8, 9]
    assert table[PAD_ID].abs().sum() == 0
    path.write_text("red 1 2\n")
    with pytest.raises(ValueError, match="glove.txt:1"):
        read_glove(str(path), vocab, dim=3)


def test_spacy_hash_matches_spacy():
    assert hash_string("coffee") == 3197928453018144401  # the value spaCy's documentation prints


def test_spacy_vectors_are_found_by_hash_and_rescaled(tmp_path):
    vocab = Vocabulary(["red", "ball", "zzz"])
    rows = np.array([[30.0, 40.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]], dtype=np.float32)
    np.save(tmp_path / "vectors.npy", rows)
    (tmp_path / "vectors.npy").rename(tmp_path / "vectors")
    (tmp_path / "key2row").write_bytes(msgpack.packb({hash_string("red"): 0, hash_string("Ball"): 1}))
    table, found = read_spacy_vectors(str(tmp_path), vocab)
    assert found == 2
    target = VECTOR_SCALE * math.sqrt(4)
    red, ball = table[vocab.index["red"]], table[vocab.index["ball"]]
    assert torch.allclose(red, torch.tensor([0.6, 0.8, 0, 0]) * target)  # direction kept, norm rescaled
    assert torch.allclose(ball, torch.tensor([0, 0, 0, 1.0]) * target)
    assert table[vocab.index["zzz"]].norm() < 3 * target  # random row of the same scale


def test_unreadable_spacy_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="unreadable spaCy vectors"):
        read_spacy_vectors(str(tmp_path), Vocabulary(["red"]))


def test_glove_prefers_the_exact_lowercase_entry_then_the_most_frequent_casing(tmp_path):
    # GloVe 840B is cased and sorted by frequency: the first casing in the file is the most frequent
    rows = [
        ("US", 1), ("us", 2), ("Us", 3),          # exact lower-case entry wins though it comes later
        ("May", 4), ("MAY", 5),                   # no lower-case entry: the first (most frequent) casing
        ("red", 6), ("Red", 7), ("RED", 8),       # exact entry first: later casings change nothing
        ("unrelated", 9),
    ]
    path = tmp_path / "glove.txt"
    path.write_text("".join(f"{w} {v} {v} {v}\n" for w, v in rows))
    vocab = Vocabulary(["us", "may", "red", "blue"])
    table, found = read_glove(str(path), vocab, dim=3)
    assert table[vocab.index["us"]].tolist() == [2, 2, 2]
    assert table[vocab.index["may"]].tolist() == [4, 4, 4]
    assert table[vocab.index["red"]].tolist() == [6, 6, 6]
    assert found == 3  # distinct vocabulary words, not lines read (8 lines matched a word)
    assert table[vocab.index["blue"]].abs().sum() > 0 and table[vocab.index["blue"]].tolist() != [9, 9, 9]
