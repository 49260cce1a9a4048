"""Sequence classification: padding never reaches a prediction, metrics, the task end to end, and learning."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import hybridrnn
from conftest import SHARED, needs_shared, train
from hybridrnn.api import coerce_config
from hybridrnn.errors import DataError, RunDirError
from hybridrnn.nn.classifier import SequenceClassifier
from hybridrnn.tasks.classify import ClassifyTask
from hybridrnn.tasks.classify_config import ClassifyConfig
from hybridrnn.tasks.classify_metrics import classification_metrics, confusion_matrix, macro_f1

# tiny models on a shared 2-core machine: one intra-op thread is many times faster than two
pytestmark = pytest.mark.usefixtures("one_thread")

SPECS = ["lstm:12", "gru:12", "bilstm:6", "lstm:12>gru:8", "(lstm:8|gru:8)"]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("pooling", ["last", "mean", "max", "attention"])
def test_padding_does_not_change_a_prediction(spec, pooling):
    """The same sentence alone and padded inside a batch of longer ones gives the same logits (float64, 1e-12)."""
    torch.manual_seed(0)
    model = SequenceClassifier(3, spec, vocab_size=40, embedding_dim=6, pooling=pooling, attention_heads=2,
                               dropout=0.3).double().eval()
    sentence = torch.randint(2, 40, (1, 5))
    alone = model(sentence, torch.tensor([5]))
    batch = torch.randint(2, 40, (3, 11))
    batch[1] = 0
    batch[1, :5] = sentence[0]
    # garbage (not pad ids) after the end must not matter either
    batch[1, 5:] = torch.randint(2, 40, (6,))
    padded = model(batch, torch.tensor([11, 5, 8]))
    assert torch.allclose(alone[0], padded[1], atol=1e-12, rtol=0)
    # without lengths the padding would be read: the check above is not vacuous
    assert not torch.allclose(alone[0], model(batch)[1], atol=1e-6)


def test_padding_does_not_change_a_time_series_prediction():
    torch.manual_seed(0)
    model = SequenceClassifier(2, "lstm:8>gru:8", input_size=3, pooling="mean").double().eval()
    x = torch.randn(1, 7, 3, dtype=torch.float64)
    batch = torch.randn(2, 15, 3, dtype=torch.float64)
    batch[0, :7] = x[0]
    assert torch.allclose(model(x)[0], model(batch, torch.tensor([7, 15]))[0], atol=1e-12, rtol=0)


def test_attention_weights_are_zero_on_padding_and_sum_to_one():
    torch.manual_seed(0)
    model = SequenceClassifier(2, "gru:8", vocab_size=20, embedding_dim=4, pooling="attention",
                               attention_heads=3).eval()
    x = torch.randint(2, 20, (2, 6))
    logits, weights = model(x, torch.tensor([6, 3]), return_attention=True)
    assert logits.shape == (2, 2) and weights.shape == (2, 3, 6)
    assert float(weights[1, :, 3:].detach().abs().sum()) == 0.0
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3))
    assert model(x, torch.tensor([6, 3]), return_attention=False).shape == (2, 2)


def test_classifier_rejects_bad_input():
    with pytest.raises(ValueError, match="exactly one"):
        SequenceClassifier(2, "lstm:4")
    model = SequenceClassifier(2, "lstm:4", input_size=3)
    with pytest.raises(ValueError, match=r"\(batch, time, 3\)"):
        model(torch.randn(2, 5, 4))


def test_metrics_match_sklearn():
    from sklearn.metrics import confusion_matrix as sk_cm, f1_score

    rng = np.random.default_rng(0)
    y, p = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    cm = confusion_matrix(y, p, 4)
    assert (cm == sk_cm(y, p, labels=range(4))).all()
    assert macro_f1(cm) == pytest.approx(f1_score(y, p, average="macro"), abs=1e-12)
    from sklearn.metrics import accuracy_score, log_loss

    probs = rng.dirichlet(np.ones(4), size=200)
    got = classification_metrics(probs, y)
    assert got["loss"] == pytest.approx(log_loss(y, probs, labels=range(4)), rel=1e-12)
    assert got["accuracy"] == accuracy_score(y, probs.argmax(1))
    assert got["macro_f1"] == pytest.approx(f1_score(y, probs.argmax(1), average="macro"), abs=1e-12)


# ---- the task ------------------------------------------------------------------------------------------------
def _write_lines(path: Path, rows):
    path.write_text("".join(f"{label} {text}\n" for label, text in rows), encoding="utf-8")


def _toy_rows(n: int, rng: np.random.Generator) -> list[tuple[int, str]]:
    """Sentences whose label is decided by one keyword among filler words."""
    pos, neg = ["good", "great", "fine", "superb"], ["bad", "awful", "poor", "dull"]
    filler = ["the", "film", "a", "was", "plot", "and", "it"]
    rows = []
    for _ in range(n):
        label = int(rng.integers(0, 2))
        words = list(rng.choice(filler, size=int(rng.integers(2, 9))))
        words.insert(int(rng.integers(0, len(words))), str(rng.choice(pos if label else neg)))
        rows.append((label, " ".join(words)))
    return rows


def _toy_text_config(folder: Path, tokenizer="word", **classifier) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", 300), ("dev", 60), ("test", 60)):
        _write_lines(folder / f"{name}.txt", _toy_rows(n, rng))
    return {"task": "classify",
            "data": {"kind": "text", "train": str(folder / "train.txt"), "val": str(folder / "dev.txt"),
                     "test": str(folder / "test.txt"), "tokenizer": tokenizer},
            "model": {"encoder": "gru:16", "attention": "self", "attention_heads": 2},
            "classifier": {"embedding_dim": 16, "attention_examples": 3, **classifier},
            "train": {"epochs": 6, "batch_size": 16, "lr": 0.01, "seed": 0, "progress": "none"}}


def test_text_task_end_to_end(tmp_path):
    run_dir = train(_toy_text_config(tmp_path), out=tmp_path / "run")
    run = hybridrnn.load(run_dir)
    metrics = run.metrics(split="test")
    assert metrics["accuracy"] > 0.9, metrics          # the keyword decides the label
    assert {"loss", "accuracy", "macro_f1"} <= set(metrics)
    cm = json.loads((run_dir / "confusion_matrix.json").read_text())
    assert np.asarray(cm["matrix"]).sum() == 60 and cm["classes"] == ["0", "1"]
    for png in ("confusion_matrix.png", "attention.png"):
        assert (run_dir / png).stat().st_size > 1000
    assert json.loads((run_dir / "text_encoder.json").read_text())["kind"] == "word"
    (tmp_path / "texts.txt").write_text("the film was great\nan awful plot\n", encoding="utf-8")
    frame = run.predict(tmp_path / "texts.txt")
    assert list(frame.columns) == ["label", "p(0)", "p(1)"]
    assert frame["label"].tolist() == ["1", "0"]
    np.testing.assert_allclose(frame[["p(0)", "p(1)"]].sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # the same texts as a list and as a DataFrame column give the same rows
    as_list = run.task.predict(run.model, ["the film was great", "an awful plot"])
    pd.testing.assert_frame_equal(as_list, frame)
    pd.testing.assert_frame_equal(run.task.predict(run.model, pd.DataFrame({"text": ["the film was great",
                                                                                    "an awful plot"]})), frame)


def test_text_run_predicts_without_its_data(tmp_path):
    """Train from files, move the files away: the loaded run predicts the same probabilities (its vocabulary
    and classes are saved), and evaluates a labelled file given as input; evaluating on the configured data
    says which file is missing."""
    data = tmp_path / "data"
    run_dir = train(_toy_text_config(data), out=tmp_path / "run")
    texts = tmp_path / "texts.txt"
    texts.write_text("the film was great\nan awful plot\nthe plot was fine and dull\nsuperb\n", encoding="utf-8")
    before = hybridrnn.load(run_dir).predict(texts)
    test_rows = (data / "test.txt").read_text(encoding="utf-8")
    data.rename(tmp_path / "moved")
    run = hybridrnn.load(run_dir)
    after = run.predict(texts)
    pd.testing.assert_frame_equal(after, before, check_exact=True)
    assert after["label"].tolist()[:2] == ["1", "0"]
    (tmp_path / "labelled.txt").write_text(test_rows, encoding="utf-8")
    assert run.metrics(tmp_path / "labelled.txt")["accuracy"] > 0.9
    with pytest.raises(DataError, match="train.txt"):
        hybridrnn.load(run_dir).metrics(split="test")
    # the command line loads the same way: hybridrnn predict RUN --input FILE --output CSV
    from typer.testing import CliRunner

    from hybridrnn.cli import app

    res = CliRunner().invoke(app, ["predict", str(run_dir), "--input", str(texts), "--output",
                                   str(tmp_path / "out.csv")])
    assert res.exit_code == 0, res.output
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "out.csv", dtype={"label": str}), before)


def test_text_classifier_from_a_dataframe(tmp_path):
    """hybridrnn.fit(config, data=frame) with no data file in the config (10% of the frame validates); the run
    predicts a DataFrame of texts, and loads again without the frame."""
    rows = _toy_rows(300, np.random.default_rng(1))
    frame = pd.DataFrame({"review": [t for _, t in rows], "stars": [f"s{label}" for label, _ in rows]})
    cfg = {"task": "classify", "data": {"kind": "text", "text_column": "review", "label_column": "stars"},
           "model": {"encoder": "gru:12"}, "classifier": {"pooling": "mean", "embedding_dim": 12},
           "train": {"epochs": 4, "batch_size": 16, "lr": 0.02, "seed": 0, "progress": "none"}}
    run = hybridrnn.fit(cfg, data=frame, out=tmp_path / "run")
    assert run.task.num_examples("train") == 270 and run.task.num_examples("val") == 30
    new = pd.DataFrame({"review": ["a superb film", "the plot was dull"]})
    got = run.predict(new)
    assert list(got.columns) == ["label", "p(s0)", "p(s1)"] and got["label"].tolist() == ["s1", "s0"]
    pd.testing.assert_frame_equal(hybridrnn.load(tmp_path / "run").predict(new), got, check_exact=True)
    with pytest.raises(DataError, match="column 'review' not found"):
        run.predict(pd.DataFrame({"text": ["good"]}))


def test_loaded_state_is_used_not_refitted(tmp_path):
    """After load_artifacts, setup reads new data with the saved vocabulary and classes (new words are <unk>,
    an unknown label is an error) and build_model needs no data at all."""
    cfg = ClassifyConfig.model_validate(_toy_text_config(tmp_path / "data", tokenizer={"level": "word", "min_freq": 2}))
    task = ClassifyTask(cfg)
    task.setup()
    task.save_artifacts(tmp_path)
    vocab = task.encoder.vocabulary.itos
    loaded = ClassifyTask(cfg)
    loaded.load_artifacts(tmp_path)
    assert loaded.encoder.vocabulary.itos == vocab and loaded.class_names == ["0", "1"]
    model = loaded.build_model()
    assert model.embedding.num_embeddings == len(vocab)
    _write_lines(tmp_path / "other.txt", [(1, "zebra crossing good"), (0, "zebra bad")] * 5)
    loaded.setup(tmp_path / "other.txt", whole=True)
    assert sorted(loaded.splits) == ["test"]
    ids = loaded.splits["test"][0][0]
    assert ids[:2] == [loaded.encoder.unk_id] * 2 and loaded.encoder.vocabulary.itos == vocab
    _write_lines(tmp_path / "other.txt", [(7, "a good film")])
    with pytest.raises(DataError, match=r"other.txt.*labels \['7'\]"):
        loaded.setup(tmp_path / "other.txt", whole=True)


@pytest.mark.parametrize("level", ["char", "subword"])
def test_saved_tokenizer_encodes_like_the_fitted_one(tmp_path, level):
    cfg = ClassifyConfig.model_validate(_toy_text_config(tmp_path / "data", tokenizer={"level": level,
                                                                                         "subword_vocab_size": 100}))
    task = ClassifyTask(cfg)
    task.setup()
    task.save_artifacts(tmp_path)
    loaded = ClassifyTask(cfg)
    loaded.load_artifacts(tmp_path)
    for text in ("the film was superb", "an unseen Zebra!"):
        assert loaded.encoder.encode(text) == task.encoder.encode(text)
    assert loaded.build_model().embedding.num_embeddings == task.encoder.vocab_size


def test_bad_run_dir_and_bad_inputs_are_clear_errors(tmp_path):
    cfg = ClassifyConfig.model_validate(_toy_text_config(tmp_path / "data"))
    task = ClassifyTask(cfg)
    task.setup()
    task.save_artifacts(tmp_path)
    model = task.build_model()
    with pytest.raises(DataError, match=r"texts.txt: text 2 is empty"):
        (tmp_path / "texts.txt").write_text("good\n\nbad\n", encoding="utf-8")
        task.predict(model, tmp_path / "texts.txt")
    with pytest.raises(DataError, match=r"not found"):
        task.predict(model, tmp_path / "missing.txt")
    (tmp_path / "text_encoder.json").unlink()
    with pytest.raises(RunDirError, match="text_encoder.json is missing"):
        ClassifyTask(cfg).load_artifacts(tmp_path)
    with pytest.raises(RunDirError, match="classes.json is missing"):
        ClassifyTask(cfg).load_artifacts(tmp_path / "nowhere")


def test_class_weights_option_weights_the_loss(tmp_path):
    cfg = coerce_config(_toy_text_config(tmp_path, class_weights=True))
    task = ClassifyTask(cfg)
    task.setup()
    counts = np.bincount(task.splits["train"][1])
    assert task.weights.tolist() == pytest.approx((counts.sum() / (2 * counts)).tolist())
    model = task.build_model()
    x, lengths, y = next(task.train_batches(0, torch.Generator().manual_seed(0)))
    loss, n = task.training_step(model, (x, lengths, y))
    logits = model(x, lengths)
    w = task.weights[y]
    manual = (torch.nn.functional.cross_entropy(logits, y, reduction="none") * w).sum() / w.sum()
    assert n == len(y) and float(loss.detach()) == pytest.approx(float(manual.detach()), rel=1e-5)


def test_glove_vectors_reach_the_model_with_coverage(tmp_path):
    """Pretrained vectors (GloVe text format) initialise the embedding rows of the words they cover; the coverage
    is reported and saved; a width that disagrees with classifier.embedding_dim is an error naming the file."""
    cfg = _toy_text_config(tmp_path)
    vectors = {"good": [1.0, 2.0, 3.0, 4.0], "awful": [-1.0, 0.5, 0.0, 2.0], "zebra": [9.0, 9.0, 9.0, 9.0]}
    (tmp_path / "glove.txt").write_text("".join(f"{w} {' '.join(map(str, v))}\n" for w, v in vectors.items()),
                                        encoding="utf-8")
    cfg["data"].update(embeddings=str(tmp_path / "glove.txt"), freeze_embeddings=True)
    cfg["classifier"]["embedding_dim"] = 4
    task = ClassifyTask(coerce_config(cfg))
    task.setup()
    vocab = task.encoder.vocabulary
    assert (task.coverage.found, task.coverage.total) == (2, len(vocab) - 2)   # good, awful (not zebra)
    model = task.build_model()
    emb = model.embedding.weight
    assert emb[vocab.stoi["good"]].tolist() == vectors["good"] and emb[vocab.stoi["awful"]].tolist() == vectors["awful"]
    assert not emb.requires_grad and float(emb[vocab.pad_id].abs().sum()) == 0.0
    task.save_artifacts(tmp_path)
    saved = json.loads((tmp_path / "classes.json").read_text())["embedding_coverage"]
    assert saved["found"] == 2 and saved["total"] == len(vocab) - 2
    cfg["classifier"]["embedding_dim"] = 8
    with pytest.raises(ValueError, match=r"glove.txt has 4-dimensional vectors"):
        ClassifyTask(coerce_config(cfg)).setup()


def test_unknown_label_in_test_split_is_an_error(tmp_path):
    cfg = _toy_text_config(tmp_path)
    _write_lines(tmp_path / "test.txt", [(7, "a good film")])
    task = ClassifyTask(coerce_config(cfg))
    with pytest.raises(DataError, match=r"test.txt.*labels \['7'\]"):
        task.setup()


# ---- time series ------------------------------------------------------------------------------------------------
def _write_ts(path: Path, n: int, rng: np.random.Generator) -> None:
    """A 2-channel .ts file of variable-length series; the label is the sign of channel 0's mean (offset 5 on
    channel 1, so per-channel normalisation statistics matter)."""
    lines = ["@problemName toy", "@univariate false", "@dimensions 2", "@equalLength false",
             "@classLabel true down up", "@data"]
    for _ in range(n):
        label = int(rng.integers(0, 2))
        t = int(rng.integers(6, 16))
        c0 = rng.normal(size=t) + (1.0 if label else -1.0)
        c1 = 5.0 + rng.normal(size=t)
        lines.append(":".join(",".join(f"{v:.4f}" for v in c) for c in (c0, c1)) + f":{'up' if label else 'down'}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_series_run_predicts_without_its_data(tmp_path):
    """A time-series classifier trained from .ts files predicts the same after the files are moved away
    (classes, channels and per-channel statistics saved); a series with the wrong channel count is an error."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    _write_ts(data / "train.ts", 80, rng)
    _write_ts(data / "test.ts", 30, rng)
    _write_ts(tmp_path / "new.ts", 12, rng)
    cfg = {"task": "classify",
           "data": {"kind": "timeseries", "format": "ts", "train": str(data / "train.ts"),
                    "test": str(data / "test.ts"), "normalize": "channel"},
           "model": {"encoder": "gru:8"}, "classifier": {"pooling": "mean"},
           "train": {"epochs": 5, "batch_size": 8, "lr": 0.02, "progress": "none"}}
    run_dir = train(cfg, out=tmp_path / "run")
    before = hybridrnn.load(run_dir).predict(tmp_path / "new.ts")
    data.rename(tmp_path / "moved")
    run = hybridrnn.load(run_dir)
    after = run.predict(tmp_path / "new.ts")
    pd.testing.assert_frame_equal(after, before, check_exact=True)
    assert list(after.columns) == ["label", "p(down)", "p(up)"] and len(after) == 12
    assert run.metrics(tmp_path / "moved" / "test.ts")["accuracy"] > 0.8
    # a list of (time, channels) arrays is an input too; the statistics come from classes.json
    series = [np.asarray(rng.normal(size=(9, 2)) + [2.0, 5.0], dtype=np.float32)]
    stats = json.loads((run_dir / "classes.json").read_text())["normalize"]
    assert stats["mean"][1] == pytest.approx(5.0, abs=0.1)
    assert run.task.predict(run.model, series)["label"].tolist() == ["up"]
    with pytest.raises(DataError, match="3 channels, the model was trained on 2"):
        run.task.predict(run.model, [np.zeros((5, 3), dtype=np.float32)])


def test_timeseries_task_files_and_groups(tmp_path):
    """Variable-length multichannel sequences from a zip, split by group."""
    import zipfile

    rng = np.random.default_rng(0)
    z = tmp_path / "seq.zip"
    with zipfile.ZipFile(z, "w") as f:
        labels, groups = [], []
        for i in range(1, 61):
            label = i % 2
            n = int(rng.integers(5, 20))
            x = rng.normal(size=(n, 2)) + (1.5 if label else -1.5) * np.array([1.0, 0.0])
            f.writestr(f"s_{i}.csv", "\n".join(",".join(f"{v:.4f}" for v in row) for row in x))
            labels.append(f"{i},{label}")
            groups.append(f"{i},{1 + i % 3}")
        f.writestr("target.csv", "\n".join(labels))
        f.writestr("groups.csv", "\n".join(groups))
    cfg = {"task": "classify",
           "data": {"kind": "timeseries", "format": "files", "train": str(z), "pattern": "s_{id}.csv",
                    "labels_file": "target.csv", "groups_file": "groups.csv", "train_groups": ["1"],
                    "val_groups": ["2"], "test_groups": ["3"]},
           "model": {"encoder": "lstm:8"}, "classifier": {"pooling": "mean"},
           "train": {"epochs": 8, "batch_size": 8, "lr": 0.02, "progress": "none"}}
    run = hybridrnn.load(train(cfg, out=tmp_path / "run"))
    assert run.metrics(split="test")["accuracy"] >= 0.9
    assert {s: run.task.num_examples(s) for s in ("train", "val", "test")} == {"train": 20, "val": 20, "test": 20}


@needs_shared
def test_small_model_beats_majority_on_sst2(tmp_path):
    """A small GRU with mean pooling, a few seconds of training on a slice of SST-2, beats the majority class
    on the (whole) dev set by a clear margin."""
    lines = (SHARED / "sst" / "stsa.binary.train").read_text(encoding="utf-8").splitlines()[:3000]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = {"task": "classify",
           "data": {"kind": "text", "train": str(tmp_path / "train.txt"),
                    "val": str(SHARED / "sst" / "stsa.binary.dev"),
                    "tokenizer": {"level": "word", "split_punctuation": False, "min_freq": 2}},
           "model": {"encoder": "gru:32", "dropout": 0.3},
           "classifier": {"pooling": "mean", "embedding_dim": 32},
           "train": {"epochs": 3, "batch_size": 32, "lr": 0.005, "seed": 0, "progress": "none"}}
    run = hybridrnn.load(train(cfg, out=tmp_path / "run"))
    acc = run.metrics(split="val")["accuracy"]
    majority = run.task.majority_accuracy("val")
    assert majority == pytest.approx(444 / 872, abs=0.01)   # dev: 444 positive, 428 negative
    assert acc > majority + 0.1, (acc, majority)
