"""Sequence classification: padding never reaches a prediction, metrics, the task end to end, and learning."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from hybridrnn.nn.classifier import SequenceClassifier
from hybridrnn.tasks.classify import ClassifyTask, confusion_matrix, macro_f1

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="shared data folder not present")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread is many times faster than two."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

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


# ---- the task ------------------------------------------------------------------------------------------------
def _write_lines(path: Path, rows):
    path.write_text("".join(f"{label} {text}\n" for label, text in rows), encoding="utf-8")


def _toy_text_config(tmp_path: Path, **classifier) -> dict:
    rng = np.random.default_rng(0)
    pos, neg = ["good", "great", "fine", "superb"], ["bad", "awful", "poor", "dull"]
    filler = ["the", "film", "a", "was", "plot", "and", "it"]

    def make(n):
        rows = []
        for _ in range(n):
            label = int(rng.integers(0, 2))
            words = list(rng.choice(filler, size=int(rng.integers(2, 9))))
            words.insert(int(rng.integers(0, len(words))), str(rng.choice(pos if label else neg)))
            rows.append((label, " ".join(words)))
        return rows

    for name, n in (("train", 300), ("dev", 60), ("test", 60)):
        _write_lines(tmp_path / f"{name}.txt", make(n))
    return {"task": "classify",
            "data": {"kind": "text", "train": str(tmp_path / "train.txt"), "val": str(tmp_path / "dev.txt"),
                     "test": str(tmp_path / "test.txt"), "tokenizer": "word"},
            "model": {"encoder": "gru:16", "attention": "self", "attention_heads": 2},
            "classifier": {"embedding_dim": 16, "attention_examples": 3, **classifier},
            "train": {"epochs": 6, "batch_size": 16, "lr": 0.01, "seed": 0, "progress": "none"}}


def test_text_task_end_to_end(tmp_path, capsys):
    from hybridrnn.train.run import evaluate_run, predict_run

    from hybridrnn.train.run import train

    run = train(_toy_text_config(tmp_path), out=tmp_path / "run")
    metrics = evaluate_run(run, "test")
    assert metrics["accuracy"] > 0.9, metrics          # the keyword decides the label
    assert {"loss", "accuracy", "macro_f1"} <= set(metrics)
    cm = json.loads((run / "confusion_matrix.json").read_text())
    assert np.asarray(cm["matrix"]).sum() == 60 and cm["classes"] == ["0", "1"]
    for png in ("confusion_matrix.png", "attention.png"):
        assert (run / png).stat().st_size > 1000
    assert json.loads((run / "text_encoder.json").read_text())["kind"] == "word"
    (tmp_path / "texts.txt").write_text("the film was great\nan awful plot\n", encoding="utf-8")
    capsys.readouterr()
    predict_run(run, tmp_path / "texts.txt")
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "label\tp(0)\tp(1)"
    rows = [line.split("\t") for line in lines[1:]]
    assert [r[0] for r in rows] == ["1", "0"]
    for r in rows:
        assert sum(float(v) for v in r[1:]) == pytest.approx(1.0, abs=1e-3)


def test_class_weights_option_weights_the_loss(tmp_path):
    from hybridrnn.config import coerce_config

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
    from hybridrnn.config import coerce_config

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
    from hybridrnn.config import coerce_config

    cfg = _toy_text_config(tmp_path)
    _write_lines(tmp_path / "test.txt", [(7, "a good film")])
    task = ClassifyTask(coerce_config(cfg))
    with pytest.raises(ValueError, match=r"test.txt.*labels \['7'\]"):
        task.setup()


def test_timeseries_task_files_and_groups(tmp_path):
    """Variable-length multichannel sequences from a zip, split by group; predict reads the same format."""
    import zipfile

    from hybridrnn.train.run import load_run, train

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
    run = train(cfg, out=tmp_path / "run")
    config, task, model = load_run(run)
    assert {s: task.num_examples(s) for s in ("train", "val", "test")} == {"train": 20, "val": 20, "test": 20}
    with torch.no_grad():
        assert task.evaluate(model, "test")["accuracy"] >= 0.9


@needs_shared
def test_small_model_beats_majority_on_sst2(tmp_path):
    """A small GRU with mean pooling, a few seconds of training on a slice of SST-2, beats the majority class
    on the (whole) dev set by a clear margin."""
    from hybridrnn.train.run import train

    torch.set_num_threads(1)
    lines = (SHARED / "sst" / "stsa.binary.train").read_text(encoding="utf-8").splitlines()[:3000]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    cfg = {"task": "classify",
           "data": {"kind": "text", "train": str(tmp_path / "train.txt"), "val": str(SHARED / "sst" / "stsa.binary.dev"),
                    "tokenizer": "word", "split_punctuation": False, "min_freq": 2},
           "model": {"encoder": "gru:32", "dropout": 0.3},
           "classifier": {"pooling": "mean", "embedding_dim": 32},
           "train": {"epochs": 3, "batch_size": 32, "lr": 0.005, "seed": 0, "progress": "none"}}
    from hybridrnn.train.run import load_run

    run = train(cfg, out=tmp_path / "run")
    _, task, model = load_run(run)
    with torch.no_grad():
        acc = task.evaluate(model, "val")["accuracy"]
    majority = task.majority_accuracy("val")
    assert majority == pytest.approx(444 / 872, abs=0.01)   # dev: 444 positive, 428 negative
    assert acc > majority + 0.1, (acc, majority)
