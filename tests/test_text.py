"""Text and time-series data layer: tokenisers, vocabularies, subword model, padding, buckets, GloVe, .ts files."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridrnn.data.text import (EOS, PAD, UNK, CharTokenizer, Vocabulary, WordTokenizer, bucket_batches,
                                 build_text_encoder, load_glove, load_text_encoder, pad_batch, pad_series,
                                 read_labelled_lines, unigram_perplexity)
from hybridrnn.data.uea import class_weights, read_sequence_files, read_series_table, read_ts

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared data folder not present")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is many times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

TEXTS = ["The film is GOOD, isn't it?", "A bad film.", "good good film"]


# ---- tokenisers ----------------------------------------------------------------------------------------
def test_word_tokenizer_rules():
    assert WordTokenizer().tokenize("Don't stop!  Now") == ["don", "'", "t", "stop", "!", "now"]
    assert WordTokenizer(lower=False).tokenize("Don't") == ["Don", "'", "t"]
    assert WordTokenizer(split_punctuation=False).tokenize("it 's  GOOD .") == ["it", "'s", "good", "."]


def test_char_tokenizer_keeps_everything():
    text = "To be,\n or NOT"
    assert CharTokenizer().detokenize(CharTokenizer().tokenize(text)) == text
    assert CharTokenizer(lower=True).tokenize("AbC") == ["a", "b", "c"]


@pytest.mark.parametrize("kind", ["char", "word"])
def test_round_trip_and_unknown(kind, tmp_path):
    enc = build_text_encoder(kind, TEXTS, min_freq=1)
    text = "good film" if kind == "word" else "a good film"
    ids = enc.encode(text)
    assert enc.unk_id not in ids
    assert enc.decode(ids) == text
    unknown = "zebra" if kind == "word" else "Z"
    ids = enc.encode(f"good {unknown}")
    assert ids[-1] == enc.unk_id == 1 and enc.pad_id == 0
    # save / load as JSON gives the same ids
    enc.save(tmp_path / "vocab.json")
    data = json.loads((tmp_path / "vocab.json").read_text())
    assert data["kind"] == kind and data["tokens"][:2] == [PAD, UNK]
    again = load_text_encoder(tmp_path / "vocab.json")
    assert again.encode(f"good {unknown} film") == enc.encode(f"good {unknown} film")
    assert again.vocab_size == enc.vocab_size


def test_min_freq_maps_rare_words_to_unk():
    enc = build_text_encoder("word", TEXTS, min_freq=2)
    # "good" x3, "film" x3 survive; "bad" (once) does not
    assert enc.vocabulary.itos == [PAD, UNK, "film", "good"]
    assert enc.encode("bad film") == [1, 2]


def test_vocabulary_is_deterministic_and_capped():
    a = Vocabulary.build([["b", "a", "b", "c", "a", "b"]], max_size=4)
    assert a.itos == [PAD, UNK, "b", "a"]        # frequency, then alphabetical
    with pytest.raises(ValueError, match="outside the vocabulary"):
        a.decode([7])
    with pytest.raises(ValueError, match="must start with"):
        Vocabulary(["a", "b"])


def test_subword_tokenizer_round_trip(tmp_path):
    texts = ["the unforgettable film", "an unforgettable night", "forget the film", "the night"] * 20
    enc = build_text_encoder("subword", texts, subword_vocab_size=120, extra_specials=[EOS])
    ids = enc.encode("the unforgettable night")
    assert enc.decode(ids) == "the unforgettable night"
    assert enc.pad_id == 0 and enc.unk_id == 1
    # an unseen character becomes <unk>, it is not dropped
    assert enc.unk_id in enc.encode("the night \u00e6")
    enc.save(tmp_path / "tok.json")
    assert "model" in json.loads((tmp_path / "tok.json").read_text())   # the tokenizers library's own JSON
    assert load_text_encoder(tmp_path / "tok.json").encode("forget the night") == enc.encode("forget the night")


# ---- padding and buckets -----------------------------------------------------------------------------------
def test_pad_batch_and_series():
    x, lengths = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert x.tolist() == [[5, 6, 7], [8, 0, 0]] and lengths.tolist() == [3, 1]
    with pytest.raises(ValueError, match="empty"):
        pad_batch([[1], []])
    s, lengths = pad_series([np.ones((2, 3)), np.full((4, 3), 2.0)])
    assert s.shape == (2, 4, 3) and lengths.tolist() == [2, 4] and float(s[0, 2:].abs().sum()) == 0.0
    with pytest.raises(ValueError, match="channel"):
        pad_series([np.ones((2, 3)), np.ones((2, 2))])


def test_bucket_batches_cover_everything_once_and_group_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 100, size=1000).tolist()
    gen = torch.Generator().manual_seed(0)
    batches = bucket_batches(lengths, 20, gen, pool_batches=10)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    # padding per batch is much smaller than with random batches
    waste = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    perm = rng.permutation(1000)
    rand = [perm[i:i + 20] for i in range(0, 1000, 20)]
    waste_random = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in rand)
    assert waste < 0.2 * waste_random
    # same generator seed, same batches; no generator: sorted, deterministic
    assert bucket_batches(lengths, 20, torch.Generator().manual_seed(0), pool_batches=10) == batches
    plain = bucket_batches(lengths, 20)
    assert [lengths[i] for b in plain for i in b] == sorted(lengths)


# ---- GloVe ---------------------------------------------------------------------------------------------------
def test_load_glove_coverage(tmp_path):
    vocab = Vocabulary.build([["good", "film", "Paris", "zzz"]])
    path = tmp_path / "glove.txt"
    path.write_text("good 1 2 3\nfilm 4 5 6\nparis 7 8 9\nother 0 0 0\n", encoding="utf-8")
    weights, cov = load_glove(path, vocab)
    assert weights.shape == (len(vocab), 3)
    assert weights[vocab.stoi["film"]].tolist() == [4, 5, 6]
    assert weights[vocab.stoi["Paris"]].tolist() == [7, 8, 9]          # found through lower-casing
    assert float(weights[0].abs().sum()) == 0.0                         # <pad> is zero
    assert (cov.found, cov.total, cov.found_lowercase) == (3, 4, 1)
    assert "3/4" in str(cov)
    path.write_text("good 1 2 3\nfilm 4 5\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"glove.txt:2: 2 values"):
        load_glove(path, vocab)


def test_read_labelled_lines_rejects_bad_lines(tmp_path):
    p = tmp_path / "data.txt"
    p.write_text("1 a fine film\n0\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"data.txt:2"):
        read_labelled_lines(p)


def test_read_labelled_lines_encoding(tmp_path):
    """A byte that is not UTF-8 is an error naming the file, line and the option; latin-1 reads it. A \\x85
    (a line break for str.splitlines) inside a text does not split the line."""
    p = tmp_path / "trec.txt"
    p.write_bytes(b"1 first question ?\n3 a sister\xf0city and a \x85 dash ?\n")
    with pytest.raises(ValueError, match=r"trec.txt:2: not valid utf-8.*encoding"):
        read_labelled_lines(p)
    texts, labels = read_labelled_lines(p, encoding="latin-1")
    assert labels == ["1", "3"] and texts[1] == "a sister\xf0city and a \x85 dash ?"


def test_unigram_perplexity_of_uniform_stream():
    ids = torch.arange(2, 12).repeat(50)         # 10 tokens, equally frequent
    # add-one smoothing over a 12-token vocabulary: p = 51 / (500 + 12) per seen token
    assert unigram_perplexity(ids, ids, 12) == pytest.approx(512 / 51, rel=1e-9)


# ---- time series ----------------------------------------------------------------------------------------------
TS = """# comment
@problemName Toy
@univariate false
@dimensions 2
@equalLength false
@classLabel true up down
@data
1,2,3:4,5,6:up
7,8:9,10:down
"""


def test_read_ts_multichannel_variable_length(tmp_path):
    p = tmp_path / "toy.ts"
    p.write_text(TS)
    s = read_ts(p)
    assert [x.shape for x in s.series] == [(3, 2), (2, 2)]
    assert s.series[0][:, 1].tolist() == [4, 5, 6] and s.labels == ["up", "down"]
    assert s.class_names == ["up", "down"]
    p.write_text(TS.replace("7,8:9,10", "7,?:9,10"))
    with pytest.raises(ValueError, match=r"toy.ts:9: channel 0 has missing"):
        read_ts(p)
    p.write_text(TS.replace("7,8:9,10", "7,8:9"))
    with pytest.raises(ValueError, match="different lengths"):
        read_ts(p)


def test_read_series_table(tmp_path):
    p = tmp_path / "long.csv"
    p.write_text("series,t,a,b,label\ns1,1,1.0,2.0,x\ns1,0,0.5,1.5,x\ns2,0,3.0,4.0,y\n")
    s = read_series_table(p, "series", "label", time_column="t")
    assert s.series[0].tolist() == [[0.5, 1.5], [1.0, 2.0]] and s.labels == ["x", "y"]
    p.write_text("series,a,label\ns1,1.0,x\ns1,,x\n")
    with pytest.raises(ValueError, match="'a' has 1 missing"):
        read_series_table(p, "series", "label")


def test_read_sequence_files_from_zip(tmp_path):
    z = tmp_path / "seq.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("d/seq_1.csv", "#a,b\n1,2\n3,4\n")
        f.writestr("d/seq_2.csv", "#a,b\n5,6\n")
        f.writestr("d/target.csv", "#id,label\n1,1\n2,-1\n")
        f.writestr("d/groups.csv", "#id,group\n1,1\n2,2\n")
    s = read_sequence_files(z, "d/seq_{id}.csv", "d/target.csv", "d/groups.csv")
    assert [x.shape for x in s.series] == [(2, 2), (1, 2)] and s.labels == ["1", "-1"] and s.groups == ["1", "2"]


def test_class_weights_balanced():
    w = class_weights([0, 0, 0, 1], 2)
    assert w.tolist() == pytest.approx([4 / 6, 2.0])
    with pytest.raises(ValueError, match="no training examples"):
        class_weights([0, 0], 2)


@needs_shared
def test_shared_files_parse():
    s = read_ts(SHARED / "ucr" / "BasicMotions" / "BasicMotions_TRAIN.ts")
    assert len(s) == 40 and s.channels == 6 and s.series[0].shape == (100, 6)
    s = read_sequence_files(SHARED / "indoor_movement" / "IndoorMovement.zip", "dataset/MovementAAL_RSS_{id}.csv",
                            "dataset/MovementAAL_target.csv", "groups/MovementAAL_DatasetGroup.csv")
    assert len(s) == 314 and sum(x.shape[0] for x in s.series) == 13197     # the README's counts
    texts, labels = read_labelled_lines(SHARED / "sst" / "stsa.binary.dev")
    assert len(texts) == 872 and set(labels) == {"0", "1"}


# ---- the tokenizer section of text configs ----------------------------------------------------------------------
def test_tokenizer_config_is_one_section_for_classification_and_language_models():
    """Both text tasks read data.tokenizer with the same keys and defaults; a string names the level alone."""
    from hybridrnn.tasks.classify_config import TextDataConfig
    from hybridrnn.tasks.language_model import LMDataConfig
    from hybridrnn.tasks.text_config import TokenizerConfig

    clf, lm = TextDataConfig(train="t.txt"), LMDataConfig(train="c.txt")
    assert clf.tokenizer == lm.tokenizer == TokenizerConfig()
    assert TokenizerConfig().model_dump() == {"level": "word", "lower": None, "split_punctuation": True, "min_freq": 1,
                                              "max_vocab": None, "subword_vocab_size": 4000}
    assert LMDataConfig(train="c.txt", tokenizer="char").tokenizer == TokenizerConfig(level="char")
    enc = TokenizerConfig(level="word", min_freq=2).fit(TEXTS)
    assert enc.encode("good film zebra") == build_text_encoder("word", TEXTS, min_freq=2).encode("good film zebra")


def test_flat_tokenizer_keys_of_older_configs_move_into_the_section():
    """Run directories trained before data.tokenizer existed keep loading: data.level (language model),
    data.tokenizer: word (classification) and the flat lower / split_punctuation / min_freq / max_vocab /
    subword_vocab_size keys move into data.tokenizer; a key given both ways is an error."""
    from pydantic import ValidationError

    from hybridrnn.tasks.classify_config import TextDataConfig
    from hybridrnn.tasks.language_model import LMDataConfig

    lm = LMDataConfig.model_validate({"train": "c.txt", "level": "word", "lower": None, "split_punctuation": False,
                                      "min_freq": 2, "max_vocab": 50, "subword_vocab_size": 4000})
    assert lm.tokenizer.model_dump() == {"level": "word", "lower": None, "split_punctuation": False, "min_freq": 2,
                                         "max_vocab": 50, "subword_vocab_size": 4000}
    clf = TextDataConfig.model_validate({"train": "t.txt", "tokenizer": "char", "lower": True, "min_freq": 3})
    assert (clf.tokenizer.level, clf.tokenizer.lower, clf.tokenizer.min_freq) == ("char", True, 3)
    with pytest.raises(ValidationError, match="data.min_freq and data.tokenizer.min_freq"):
        TextDataConfig.model_validate({"train": "t.txt", "tokenizer": {"min_freq": 2}, "min_freq": 3})
    with pytest.raises(ValidationError, match="data.level and data.tokenizer.level"):
        LMDataConfig.model_validate({"train": "c.txt", "tokenizer": "char", "level": "word"})
