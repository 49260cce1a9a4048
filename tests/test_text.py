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
    # an old-style language-model config keeps the old schema's split_punctuation default (false)
    assert LMDataConfig.model_validate({"train": "c.txt", "level": "word"}).tokenizer.split_punctuation is False
    assert LMDataConfig.model_validate({"train": "c.txt", "tokenizer": "word"}).tokenizer.split_punctuation is True
    clf = TextDataConfig.model_validate({"train": "t.txt", "tokenizer": "char", "lower": True, "min_freq": 3})
    assert (clf.tokenizer.level, clf.tokenizer.lower, clf.tokenizer.min_freq) == ("char", True, 3)
    with pytest.raises(ValidationError, match="data.min_freq and data.tokenizer.min_freq"):
        TextDataConfig.model_validate({"train": "t.txt", "tokenizer": {"min_freq": 2}, "min_freq": 3})
    with pytest.raises(ValidationError, match="data.level and data.tokenizer.level"):
        LMDataConfig.model_validate({"train": "c.txt", "tokenizer": "char", "level": "word"})


# ---- user errors: every reader raises a HybridRNNError naming the file and line ------------------------------

def test_text_reader_errors_are_data_and_config_errors(tmp_path):
    from hybridrnn.errors import ConfigError, DataError

    p = tmp_path / "data.txt"
    p.write_bytes(b"1 fine\n0 \xff bad\n")
    with pytest.raises(DataError, match=r"data.txt:2: not valid utf-8 \(invalid start byte at byte 9\)"):
        read_labelled_lines(p)
    for bad in ("nope", "rot13"):   # unknown, or not a text encoding
        with pytest.raises(ConfigError, match=f"unknown text encoding '{bad}'"):
            read_labelled_lines(p, encoding=bad)
    with pytest.raises(DataError, match="not found") as info:
        read_labelled_lines(tmp_path / "missing.txt")
    assert isinstance(info.value, FileNotFoundError)
    p.write_text("")
    with pytest.raises(DataError, match="data.txt: no lines"):
        read_labelled_lines(p)


def test_read_text_file_lines_and_table(tmp_path):
    import gzip

    from hybridrnn.data.text import read_text_file, read_text_lines, read_text_table
    from hybridrnn.errors import DataError

    gz = tmp_path / "corpus.txt.gz"
    gz.write_bytes(gzip.compress("ä line\r\nnext\n".encode("utf-8")))
    assert read_text_file(gz) == "ä line\r\nnext\n"
    gz.write_bytes(gzip.compress(b"abc")[:8])
    with pytest.raises(DataError, match="corpus.txt.gz: not a valid gzip file"):
        read_text_file(gz)
    with pytest.raises(DataError, match="is a folder"):
        read_text_file(tmp_path)
    lines = tmp_path / "in.txt"
    lines.write_text("first text\r\nsecond\n")
    assert read_text_lines(lines) == ["first text", "second"]
    lines.write_text("first\n  \nthird\n\n")
    with pytest.raises(DataError, match=r"in.txt: line 2 is empty \(2 empty line\(s\)\)"):
        read_text_lines(lines)
    table = tmp_path / "t.csv"
    table.write_text('text,label\n"a, b",01\nNA,pos\n"two\nlines",neg\n')
    assert read_text_table(table, "text", "label") == (["a, b", "NA", "two\nlines"], ["01", "pos", "neg"])
    table.write_text("text,label\nfine,pos\n,neg\n")
    with pytest.raises(DataError, match=r"t.csv: column 'text' has 1 empty texts; first at data row 2"):
        read_text_table(table, "text", "label")
    table.write_text("text,label\n")
    with pytest.raises(DataError, match="has a header but no data rows"):
        read_text_table(table, "text", "label")
    table.write_text("body,label\nx,y\n")
    with pytest.raises(DataError, match=r"column 'text' not found; columns are \['body', 'label'\]"):
        read_text_table(table, "text", "label")


def test_load_glove_refuses_non_finite_and_non_utf8(tmp_path):
    from hybridrnn.errors import DataError

    vocab = Vocabulary.build([["good", "film"]])
    path = tmp_path / "glove.txt"
    path.write_text("good 1 2 3\nfilm 4 inf 6\n")
    with pytest.raises(DataError, match=r"glove.txt:2: non-finite value .* of 'film'"):
        load_glove(path, vocab)
    path.write_text("good 1 2 3\nfilm 4 1e39 6\n")        # beyond float32
    with pytest.raises(DataError, match=r"glove.txt:2: non-finite"):
        load_glove(path, vocab)
    path.write_bytes(b"good 1 2 3\nfi\xfflm 4 5 6\n")
    with pytest.raises(DataError, match=r"glove.txt:2: not valid UTF-8"):
        load_glove(path, vocab)


@pytest.mark.parametrize("content,reason", [
    (b"[1, 2]", "expected a JSON object"),
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe", "not UTF-8"),
    (b'{"kind": "char", "tokens": ["<pad>", "<unk>", "a", "a"]}', "duplicate tokens"),
    (b'{"kind": "word", "tokens": ["<pad>", "<unk>", 3]}', "'tokens' list of strings"),
    (b'{"kind": "char", "tokens": ["<pad>", "<unk>"], "min_freq": "x"}', "'min_freq' must be a whole number"),
    (b'{"model": {"type": "nothing"}}', "not a valid tokenizers JSON"),
    (b'{"kind": "bytes"}', "neither a vocabulary JSON"),
])
def test_load_text_encoder_refuses_malformed_files(tmp_path, content, reason):
    from hybridrnn.errors import RunDirError

    path = tmp_path / "text_encoder.json"
    path.write_bytes(content)
    with pytest.raises(RunDirError, match=reason):
        load_text_encoder(path)


@pytest.mark.parametrize("replace,reason", [
    (("7,8:9,10", "7,inf:9,10"), r"toy.ts:9: channel 0 has 1 non-finite value\(s\).*position 1: 'inf'"),
    (("7,8:9,10", "7,8:9,1e39"), r"toy.ts:9: channel 1 has 1 non-finite value\(s\) \(inf, or beyond float32\)"),
    (("7,8:9,10:down", "7,8:9,10:"), r"toy.ts:9: the case has no class label"),
    (("7,8:9,10", "7,x8:9,10"), r"toy.ts:9: channel 0 has a non-numeric value 'x8'"),
    (("@dimensions 2", "@dimensions two"), r"@dimensions 'two' is not a whole number"),
    (("@classLabel true up down", "@classLabel true up up"), "lists a class twice"),
    (("@classLabel true up down", "@classLabel true up"), r"toy.ts: labels \['down'\] are not among"),
    (("@data\n", ""), r"toy.ts:7: expected a '@' header"),
    (("1,2,3:4,5,6:up\n7,8:9,10:down\n", ""), "no cases after '@data'"),
])
def test_read_ts_refuses_bad_cases_with_data_errors(tmp_path, replace, reason):
    from hybridrnn.errors import DataError

    p = tmp_path / "toy.ts"
    p.write_text(TS.replace(*replace))
    with pytest.raises(DataError, match=reason):
        read_ts(p)


def test_read_ts_names_the_line_of_a_non_utf8_byte_and_keeps_crlf(tmp_path):
    from hybridrnn.errors import DataError

    p = tmp_path / "toy.ts"
    p.write_bytes(TS.replace("\n", "\r\n").encode())
    assert read_ts(p).labels == ["up", "down"]
    p.write_bytes(TS.encode().replace(b"7,8:9", b"7,\xe98:9"))
    with pytest.raises(DataError, match=r"toy.ts:9: not valid UTF-8"):
        read_ts(p)


def test_series_table_and_sequence_files_drop_nothing(tmp_path):
    from hybridrnn.errors import DataError

    p = tmp_path / "long.csv"
    p.write_text("series,a,label\ns1,1.0,x\n,2.0,x\n")          # a row without a series id
    with pytest.raises(DataError, match=r"column 'series' has 1 missing values \(first at data row 2\)"):
        read_series_table(p, "series", "label")
    p.write_text("series,a,label\ns1,1.0,x\ns1,inf,x\n")
    with pytest.raises(DataError, match=r"column 'a' has 1 non-finite values"):
        read_series_table(p, "series", "label")
    z = tmp_path / "seq.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("seq_1.csv", "1,2\n3,4\n")
        f.writestr("seq_2.csv", "5,inf\n")
        f.writestr("target.csv", "1,a\n2,b\n1,b\n")
    with pytest.raises(DataError, match=r"target.csv: id '1' appears twice with different values \('a', 'b'\)"):
        read_sequence_files(z, "seq_{id}.csv", "target.csv")
    with zipfile.ZipFile(z, "a") as f:
        f.writestr("target2.csv", "1,a\n2,b\n")
    with pytest.raises(DataError, match=r"seq_2.csv: 1 non-finite values .* row 1, column 2"):
        read_sequence_files(z, "seq_{id}.csv", "target2.csv")
    broken = tmp_path / "broken.zip"
    broken.write_bytes(z.read_bytes()[:-30])
    with pytest.raises(DataError):
        read_sequence_files(broken, "seq_{id}.csv", "target2.csv")


def test_sequence_zip_faults_found_by_fuzzing_are_data_errors(tmp_path):
    from hybridrnn.errors import DataError

    z = tmp_path / "seq.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("seq_1.csv", "1,2\n")
        f.writestr("target.csv", "#id,label\n#1,a\n")      # nothing but comments: no sequences at all
    with pytest.raises(DataError, match=r"target.csv: no rows besides '#' comments"):
        read_sequence_files(z, "seq_{id}.csv", "target.csv")
    raw = bytearray(z.read_bytes())
    at = raw.index(b"PK\x01\x02") + 6                           # central directory: version needed to extract
    raw[at:at + 2] = (64).to_bytes(2, "little")                  # 6.4: zipfile raises NotImplementedError
    z.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"seq.zip: a broken zip archive \(NotImplementedError"):
        read_sequence_files(z, "seq_{id}.csv", "target.csv")
