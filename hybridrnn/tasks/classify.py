"""Sequence classification (``task: classify``) of text and of (multichannel, variable-length) time series.

Text: ``<label> <text>`` lines (SST, TREC, MR) or a CSV with a text and a label column, tokenised by a char /
word / subword tokeniser fitted on the training split. Time series: UCR/UEA ``.ts`` files, a long CSV (one row
per time step), or one CSV per sequence in a folder or zip. Sequences are bucketed by length and padded per
batch; ``lengths`` reach the model, so padding never reaches a prediction.

Metrics: ``loss`` (mean cross-entropy, unweighted), ``accuracy``, ``macro_f1``; after training the confusion
matrix of the test split (JSON + PNG) and, with attention pooling, a heat map of the attention over the tokens
of a few test examples.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Iterator, Literal, Optional, Union

import numpy as np
import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import nn
from torch.nn import functional as F

from hybridrnn.config import RunConfig, Section
from hybridrnn.data.text import (Coverage, build_text_encoder, bucket_batches, load_glove, load_text_encoder,
                                 pad_batch, pad_series, read_labelled_lines)
from hybridrnn.data.uea import SeriesSet, class_weights, read_sequence_files, read_series_table, read_ts
from hybridrnn.tasks._common import config_relative, data_path, encoder_options, model_device, save_figure
from hybridrnn.train.checkpoint import atomic_write_json, read_json
from hybridrnn.train.task import Task


# ---------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------
class TextDataConfig(Section):
    """Labelled text. ``format: label_text``: ``<label> <text>`` per line; ``csv``: ``text_column``, ``label_column``."""

    kind: Literal["text"] = "text"
    train: str
    val: Optional[str] = Field(None, description="validation file; None: val_fraction of train, chosen at random")
    test: Optional[str] = None
    format: Literal["label_text", "csv"] = "label_text"
    text_column: str = "text"
    label_column: str = "label"
    encoding: str = "utf-8"
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    tokenizer: Literal["word", "char", "subword"] = "word"
    lower: Optional[bool] = Field(None, description="default: True for word/subword, False for char")
    split_punctuation: bool = Field(True, description="word tokenizer: punctuation marks are tokens of their own")
    min_freq: int = Field(1, ge=1)
    max_vocab: Optional[int] = Field(None, ge=3)
    subword_vocab_size: int = Field(4000, ge=100)
    max_length: Optional[int] = Field(None, ge=1, description="truncate longer token sequences (None: keep all)")
    embeddings: Optional[str] = Field(None, description="GloVe text-format word vectors (word tokenizer only)")
    freeze_embeddings: bool = False

    _paths = field_validator("train", "val", "test", "embeddings")(classmethod(
        lambda cls, v, info: config_relative(v, info)))


class SeriesDataConfig(Section):
    """Labelled time series: ``ts`` (UCR/UEA), ``csv`` (one row per step), ``files`` (one CSV per sequence)."""

    kind: Literal["timeseries"] = "timeseries"
    format: Literal["ts", "csv", "files"] = "ts"
    train: str = Field(description="ts/csv: the training file; files: the folder or zip of sequence files")
    val: Optional[str] = None
    test: Optional[str] = None
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    # csv
    id_column: str = "series"
    label_column: str = "label"
    time_column: Optional[str] = None
    feature_columns: Optional[list[str]] = None
    # files
    pattern: Optional[str] = Field(None, description="files: per-sequence file name with {id}")
    labels_file: Optional[str] = None
    groups_file: Optional[str] = None
    train_groups: Optional[list[str]] = None
    val_groups: Optional[list[str]] = None
    test_groups: Optional[list[str]] = None
    normalize: Literal["none", "channel", "series"] = Field(
        "channel", description="channel: per-channel mean/std of the training split; series: each series z-scored")

    _paths = field_validator("train", "val", "test")(classmethod(lambda cls, v, info: config_relative(v, info)))

    @model_validator(mode="after")
    def _check_format(self):
        if self.format == "files":
            missing = [k for k in ("pattern", "labels_file") if getattr(self, k) is None]
            if missing:
                raise ValueError(f"format 'files' needs {', '.join(missing)}")
            if self.groups_file and not self.train_groups:
                raise ValueError("format 'files' with groups_file needs train_groups (and test_groups)")
        return self


class ClassifierConfig(Section):
    """The classifier around the encoder."""

    pooling: Literal["auto", "last", "mean", "max", "attention"] = Field(
        "auto", description="auto: attention when model.attention is 'self', else last")
    embedding_dim: int = Field(128, ge=1)
    head_hidden: Optional[int] = Field(None, ge=1)
    class_weights: bool = Field(False, description="weight the loss by n / (k * n_c) for imbalanced classes")
    attention_penalty: float = Field(0.0, ge=0.0, description="Lin et al. head-redundancy penalty weight")
    attention_examples: int = Field(4, ge=0, description="test examples drawn in the attention heat map")


class ClassifyConfig(RunConfig):
    task: Literal["classify"] = "classify"
    data: Annotated[Union[TextDataConfig, SeriesDataConfig], Field(discriminator="kind")]
    classifier: ClassifierConfig = Field(default_factory=ClassifierConfig)

    @model_validator(mode="after")
    def _check_attention(self):
        att = self.model.attention
        if att not in (None, "self"):
            raise ValueError(f"model.attention {att!r} is a query attention; classification pools with 'self' "
                             "(or set classifier.pooling)")
        if att == "self" and self.classifier.pooling not in ("auto", "attention"):
            raise ValueError(f"model.attention 'self' contradicts classifier.pooling {self.classifier.pooling!r}")
        return self

    @property
    def pooling(self) -> str:
        if self.classifier.pooling != "auto":
            return self.classifier.pooling
        return "attention" if self.model.attention == "self" else "last"


# ---------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------
def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` counts, rows = true class, columns = predicted class."""
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes that occur in the truth or the predictions (``2TP / (2TP + FP + FN)``)."""
    tp = np.diag(cm).astype(float)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    denom = 2 * tp + fp + fn
    present = denom > 0
    return float((2 * tp[present] / denom[present]).mean()) if present.any() else 0.0


# ---------------------------------------------------------------------------------------------------------
# the task
# ---------------------------------------------------------------------------------------------------------
ARTIFACT = "classes.json"
TEXT_ENCODER = "text_encoder.json"


class ClassifyTask(Task):
    """Text or time-series classification. Monitors the validation ``loss``."""

    name = "classify"
    config_class = ClassifyConfig
    monitor = "loss"
    monitor_mode = "min"
    display_metrics = ("accuracy", "macro_f1")

    def __init__(self, config: ClassifyConfig):
        super().__init__(config)
        self.is_text = isinstance(config.data, TextDataConfig)
        self.class_names: list[str] = []
        self.splits: dict[str, tuple[list, np.ndarray]] = {}   # split -> (inputs, label ids)
        self.texts: dict[str, list[str]] = {}
        self.encoder = None
        self.channels = 0
        self.norm: Optional[dict] = None
        self.raw_series: dict[str, list[np.ndarray]] = {}
        self.pretrained: Optional[torch.Tensor] = None
        self.coverage: Optional[Coverage] = None

    # ---- data ----------------------------------------------------------------------------------------
    def _path(self, p: str) -> Path:
        return data_path(p)

    def setup(self, run_dir: Path | None = None) -> None:
        if self.is_text:
            self._setup_text()
        else:
            self._setup_series()
        if self.config.classifier.class_weights:
            self.weights = torch.from_numpy(class_weights(self.splits["train"][1], len(self.class_names)))
        else:
            self.weights = None

    def _label_ids(self, labels: list[str], where: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.class_names)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise ValueError(f"{where}: labels {unknown[:5]} do not occur in the training split "
                             f"(classes: {self.class_names})")
        return np.asarray([index[l] for l in labels], dtype=np.int64)

    def _val_split(self, n: int, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        perm = np.random.default_rng(self.config.train.seed).permutation(n)
        n_val = max(1, int(round(n * fraction)))
        if n_val >= n:
            raise ValueError(f"val_fraction {fraction} leaves no training examples out of {n}")
        return np.sort(perm[n_val:]), np.sort(perm[:n_val])

    def _read_texts(self, path: str) -> tuple[list[str], list[str]]:
        d = self.config.data
        p = self._path(path)
        if d.format == "label_text":
            return read_labelled_lines(p, encoding=d.encoding)
        import pandas as pd

        if not p.is_file():
            raise FileNotFoundError(f"text file not found: {p}")
        frame = pd.read_csv(p, encoding=d.encoding)
        for col in (d.text_column, d.label_column):
            if col not in frame.columns:
                raise ValueError(f"{p}: column {col!r} not found; columns are {list(frame.columns)}")
        if frame[d.text_column].isna().any():
            raise ValueError(f"{p}: column {d.text_column!r} has empty texts (row {int(frame[d.text_column].isna().idxmax()) + 2})")
        return frame[d.text_column].astype(str).tolist(), frame[d.label_column].astype(str).tolist()

    def _setup_text(self) -> None:
        d = self.config.data
        texts, labels = self._read_texts(d.train)
        raw = {"train": (texts, labels)}
        if d.val:
            raw["val"] = self._read_texts(d.val)
        else:
            tr, va = self._val_split(len(texts), d.val_fraction)
            raw["val"] = ([texts[i] for i in va], [labels[i] for i in va])
            raw["train"] = ([texts[i] for i in tr], [labels[i] for i in tr])
        if d.test:
            raw["test"] = self._read_texts(d.test)
        self.class_names = sorted(set(raw["train"][1]), key=_natural_key)
        self.encoder = build_text_encoder(d.tokenizer, raw["train"][0], lower=d.lower,
                                          split_punctuation=d.split_punctuation, min_freq=d.min_freq,
                                          max_size=d.max_vocab, subword_vocab_size=d.subword_vocab_size)
        self._encode_text_splits(raw)
        if d.embeddings:
            if d.tokenizer != "word":
                raise ValueError("data.embeddings (GloVe word vectors) needs data.tokenizer: word")
            gen = torch.Generator().manual_seed(self.config.train.seed)
            self.pretrained, self.coverage = load_glove(self._path(d.embeddings), self.encoder.vocabulary,
                                                        generator=gen)
            if self.pretrained.shape[1] != self.config.classifier.embedding_dim:
                raise ValueError(f"{d.embeddings} has {self.pretrained.shape[1]}-dimensional vectors but "
                                 f"classifier.embedding_dim is {self.config.classifier.embedding_dim}")
            print(f"pretrained embeddings: {self.coverage}", file=sys.stderr)

    def _encode_text_splits(self, raw: dict) -> None:
        d = self.config.data
        for split, (texts, labels) in raw.items():
            where = getattr(d, split) or f"{d.train} ({split} part)"
            ids = [self.encoder.encode(t) for t in texts]
            empty = [i for i, s in enumerate(ids) if len(s) == 0]
            if empty:
                raise ValueError(f"{where}: example {empty[0] + 1} ({texts[empty[0]][:40]!r}) has no tokens")
            if d.max_length:
                ids = [s[:d.max_length] for s in ids]
            self.splits[split] = (ids, self._label_ids(labels, where))
            self.texts[split] = texts

    def _read_series(self, path: str) -> SeriesSet:
        d = self.config.data
        if d.format == "ts":
            return read_ts(self._path(path))
        if d.format == "csv":
            return read_series_table(self._path(path), d.id_column, d.label_column, d.feature_columns, d.time_column)
        return read_sequence_files(self._path(path), d.pattern, d.labels_file, d.groups_file)

    def _setup_series(self) -> None:
        d = self.config.data
        train = self._read_series(d.train)
        sets: dict[str, SeriesSet] = {}
        if d.format == "files" and d.groups_file:
            groups = np.asarray(train.groups)
            known = sorted(set(train.groups), key=_natural_key)
            for split, wanted in (("train", d.train_groups), ("val", d.val_groups), ("test", d.test_groups)):
                if wanted:
                    bad = sorted(set(wanted) - set(known))
                    if bad:
                        raise ValueError(f"{d.groups_file}: groups {bad} not found; groups are {known}")
                    sets[split] = train.subset(np.flatnonzero(np.isin(groups, wanted)).tolist())
            train = sets["train"]
        else:
            sets["train"] = train
            if d.test:
                sets["test"] = self._read_series(d.test)
        if d.val:
            sets["val"] = self._read_series(d.val)
        elif "val" not in sets:
            tr, va = self._val_split(len(train), d.val_fraction)
            sets["val"], sets["train"] = train.subset(va.tolist()), train.subset(tr.tolist())
        self.class_names = list(train.class_names)
        self.channels = train.channels
        if d.normalize == "channel":
            stacked = np.concatenate(sets["train"].series, axis=0).astype(np.float64)
            std = stacked.std(0)
            self.norm = {"mean": stacked.mean(0).tolist(), "std": np.where(std > 0, std, 1.0).tolist()}
        for split, s in sets.items():
            if s.channels != self.channels:
                raise ValueError(f"the {split} series have {s.channels} channels, the training series {self.channels}")
            self.raw_series[split] = s.series
            self.splits[split] = ([self._normalize(x) for x in s.series],
                                  self._label_ids(s.labels, f"{split} split ({s.meta.get('source')})"))

    def _normalize(self, x: np.ndarray) -> np.ndarray:
        mode = self.config.data.normalize
        if mode == "channel":
            return ((x - np.asarray(self.norm["mean"])) / np.asarray(self.norm["std"])).astype(np.float32)
        if mode == "series":
            std = x.std(0)
            return ((x - x.mean(0)) / np.where(std > 0, std, 1.0)).astype(np.float32)
        return x.astype(np.float32)

    # ---- artifacts -----------------------------------------------------------------------------------
    def save_artifacts(self, run_dir: Path) -> None:
        info = {"class_names": self.class_names, "input": "text" if self.is_text else "timeseries",
                "channels": self.channels, "normalize": self.norm}
        if self.coverage is not None:
            info["embedding_coverage"] = {"found": self.coverage.found, "total": self.coverage.total,
                                          "fraction": self.coverage.fraction}
        atomic_write_json(Path(run_dir) / ARTIFACT, info)
        if self.encoder is not None:
            self.encoder.save(Path(run_dir) / TEXT_ENCODER)

    def load_artifacts(self, run_dir: Path) -> None:
        info = read_json(Path(run_dir) / ARTIFACT)
        self.class_names = list(info["class_names"])
        self.channels = int(info["channels"])
        self.norm = info.get("normalize")
        for split, series in self.raw_series.items():   # re-normalise with the saved statistics
            self.splits[split] = ([self._normalize(x) for x in series], self.splits[split][1])
        if self.is_text:
            self.encoder = load_text_encoder(Path(run_dir) / TEXT_ENCODER)
            self.pretrained = None  # the weights come from the checkpoint
            if self.splits:   # re-encode the data with the saved vocabulary
                raw = {s: (self.texts[s], [self.class_names[i] for i in self.splits[s][1]]) for s in self.splits}
                self._encode_text_splits(raw)

    # ---- model -----------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from hybridrnn.nn.classifier import SequenceClassifier

        cfg, m = self.config.classifier, self.config.model
        common = dict(pooling=self.config.pooling, attention_heads=m.attention_heads, dropout=m.dropout,
                      head_hidden=cfg.head_hidden, encoder_options=encoder_options(m))
        if self.is_text:
            model = SequenceClassifier(len(self.class_names), m.encoder, vocab_size=self.encoder.vocab_size,
                                       embedding_dim=cfg.embedding_dim, padding_idx=self.encoder.pad_id, **common)
            if self.pretrained is not None:
                with torch.no_grad():
                    model.embedding.weight.copy_(self.pretrained)
                model.embedding.weight.requires_grad_(not self.config.data.freeze_embeddings)
            return model
        return SequenceClassifier(len(self.class_names), m.encoder, input_size=self.channels, **common)

    # ---- batches -----------------------------------------------------------------------------------------
    def num_examples(self, split: str) -> int:
        return len(self.splits[split][1]) if split in self.splits else 0

    def num_train_batches(self) -> int:
        return math.ceil(self.num_examples("train") / self.config.train.batch_size)

    def _batch(self, split: str, index: list[int]):
        inputs, labels = self.splits[split]
        if self.is_text:
            x, lengths = pad_batch([inputs[i] for i in index], self.encoder.pad_id)
        else:
            x, lengths = pad_series([inputs[i] for i in index])
        return x, lengths, torch.from_numpy(labels[index])

    def _lengths(self, split: str) -> list[int]:
        return [len(s) for s in self.splits[split][0]]

    def train_batches(self, epoch: int, generator: torch.Generator) -> Iterator:
        for index in bucket_batches(self._lengths("train"), self.config.train.batch_size, generator):
            yield self._batch("train", index)

    def training_step(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        x, lengths, y = batch
        penalty = self.config.classifier.attention_penalty
        if penalty > 0 and self.config.pooling == "attention":
            logits, weights = model(x, lengths, return_attention=True)
            from hybridrnn.nn.attention import SelfAttentionPooling

            extra = penalty * SelfAttentionPooling.penalty(weights)
        else:
            logits, extra = model(x, lengths), 0.0
        weight = self.weights.to(logits.device) if self.weights is not None else None
        return F.cross_entropy(logits.float(), y, weight=weight) + extra, int(y.shape[0])

    # ---- evaluation ----------------------------------------------------------------------------------------
    def predict_split(self, model: nn.Module, split: str, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities (n, K), true label ids (n,))`` of a split, in the split's order."""
        if split not in self.splits:
            raise ValueError(f"no {split!r} split in this task (have {sorted(self.splits)})")
        device = model_device(model)
        n = self.num_examples(split)
        probs = np.zeros((n, len(self.class_names)), dtype=np.float64)
        for index in bucket_batches(self._lengths(split), batch_size):
            x, lengths, _ = self._batch(split, index)
            logits = model(x.to(device), lengths)
            probs[index] = torch.softmax(logits.double(), -1).cpu().numpy()
        return probs, self.splits[split][1]

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        probs, y = self.predict_split(model, split)
        pred = probs.argmax(1)
        cm = confusion_matrix(y, pred, len(self.class_names))
        nll = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-300, None)).mean()
        return {"loss": float(nll), "accuracy": float((pred == y).mean()), "macro_f1": macro_f1(cm)}

    def majority_accuracy(self, split: str) -> float:
        """Accuracy of always predicting the most frequent training class: the baseline to beat."""
        majority = np.bincount(self.splits["train"][1], minlength=len(self.class_names)).argmax()
        return float((self.splits[split][1] == majority).mean())

    # ---- plots -------------------------------------------------------------------------------------------
    def plots(self, model: nn.Module, run_dir: Path) -> list[Path]:
        split = "test" if "test" in self.splits else "val"
        probs, y = self.predict_split(model, split)
        cm = confusion_matrix(y, probs.argmax(1), len(self.class_names))
        run_dir = Path(run_dir)
        atomic_write_json(run_dir / "confusion_matrix.json",
                          {"split": split, "classes": self.class_names, "rows": "true", "columns": "predicted",
                           "matrix": cm.tolist(), "accuracy": float(np.trace(cm) / cm.sum()),
                           "macro_f1": macro_f1(cm)})
        paths = [plot_confusion_matrix(cm, self.class_names, run_dir / "confusion_matrix.png",
                                       title=f"confusion matrix ({split}, {cm.sum()} examples)")]
        k = self.config.classifier.attention_examples
        if self.is_text and self.config.pooling == "attention" and k > 0:
            paths.append(self.plot_attention(model, split, list(range(min(k, self.num_examples(split)))),
                                             run_dir / "attention.png"))
        return paths

    def plot_attention(self, model: nn.Module, split: str, examples: list[int], path: Path) -> Path:
        """Heat map of the attention weights (mean over heads) over the tokens of ``examples`` of ``split``."""
        device = model_device(model)
        x, lengths, y = self._batch(split, examples)
        logits, weights = model(x.to(device), lengths, return_attention=True)
        weights = weights.mean(1).cpu().numpy()
        pred = logits.argmax(-1).cpu().numpy()
        rows = []
        for b in range(len(examples)):
            ids = x[b, :int(lengths[b])].tolist()
            rows.append(([self.encoder.id_to_token(i) for i in ids], weights[b, :len(ids)],
                         self.class_names[int(y[b])], self.class_names[int(pred[b])]))
        return plot_attention_rows(rows, path)

    # ---- predict -----------------------------------------------------------------------------------------
    def predict(self, model: nn.Module, input_path: Path, output_path: Path | None) -> None:
        """Text: one text per line of ``input_path``. Time series: a ``.ts`` / CSV file in the data's format.

        Writes a header ``label<TAB>p(<class>)...`` and one line per input: the predicted label and the
        probability of each class (to ``output_path``, or stdout).
        """
        model.eval()
        device = model_device(model)
        if self.is_text:
            lines = Path(input_path).read_text(encoding=self.config.data.encoding).splitlines()
            texts = [t.strip() for t in lines]
            empty = [i + 1 for i, t in enumerate(texts) if not t]
            if empty:
                raise ValueError(f"{input_path}: line {empty[0]} is empty; give one text per line")
            ids = [self.encoder.encode(t) for t in texts]
            bad = [i + 1 for i, s in enumerate(ids) if not s]
            if bad:
                raise ValueError(f"{input_path}: line {bad[0]} has no tokens")
            if self.config.data.max_length:
                ids = [s[:self.config.data.max_length] for s in ids]
            inputs = ids
        else:
            series = self._read_series(str(input_path)).series
            if series and series[0].shape[1] != self.channels:
                raise ValueError(f"{input_path}: {series[0].shape[1]} channels, the model was trained on {self.channels}")
            inputs = [self._normalize(s) for s in series]
        probs = np.zeros((len(inputs), len(self.class_names)))
        for index in bucket_batches([len(s) for s in inputs], 256):
            if self.is_text:
                x, lengths = pad_batch([inputs[i] for i in index], self.encoder.pad_id)
            else:
                x, lengths = pad_series([inputs[i] for i in index])
            probs[index] = torch.softmax(model(x.to(device), lengths).double(), -1).cpu().numpy()
        out_lines = ["label\t" + "\t".join(f"p({c})" for c in self.class_names)]
        for p in probs:
            out_lines.append(self.class_names[int(p.argmax())] + "\t" + "\t".join(f"{v:.4f}" for v in p))
        text = "\n".join(out_lines) + "\n"
        if output_path is None:
            sys.stdout.write(text)
        else:
            from hybridrnn.train.checkpoint import atomic_write_text

            atomic_write_text(output_path, text)


def _natural_key(s: str):
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


# ---------------------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------------------
def plot_confusion_matrix(cm: np.ndarray, class_names: list[str], path: Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * k, 1.0 + 0.6 * k))
    row_share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(row_share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if row_share[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(k), class_names, rotation=45 if k > 4 else 0)
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted class"), ax.set_ylabel("true class")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    return save_figure(fig, path)


def plot_attention_rows(rows: list[tuple[list[str], np.ndarray, str, str]], path: Path) -> Path:
    """One heat-map strip per example: the tokens as labels, colour = attention weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    longest = max(len(r[0]) for r in rows)
    fig, axes = plt.subplots(len(rows), 1, figsize=(min(2 + 0.55 * longest, 24), 1.25 * len(rows) + 0.4),
                             squeeze=False)
    for ax, (tokens, w, true, pred) in zip(axes[:, 0], rows):
        ax.imshow(w[None, :], cmap="Reds", aspect="auto", vmin=0, vmax=max(float(w.max()), 1e-9))
        ax.set_xticks(range(len(tokens)), [t.replace("$", r"\$") for t in tokens], rotation=60, fontsize=8)
        ax.set_yticks([])
        ax.set_title(f"true {true}, predicted {pred}", fontsize=9, loc="left")
    fig.suptitle("attention pooling weights (mean over heads)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
