"""Sequence classification (``task: classify``) of text and of (multichannel, variable-length) time series.

Text: ``<label> <text>`` lines (SST, TREC, MR), a CSV or a DataFrame with a text and a label column, tokenised by
a char / word / subword tokeniser fitted on the training split (``data.tokenizer``). Time series: UCR/UEA ``.ts``
files, a long CSV (one row per time step), or one CSV per sequence in a folder or zip. Sequences are bucketed
by length and padded per batch; ``lengths`` reach the model, so padding never reaches a prediction.

The fitted state (class names, the tokeniser and its vocabulary, channels, normalisation statistics) is saved in
the run directory as ``classes.json`` and ``text_encoder.json``; a loaded run predicts without the training data.

Metrics (:mod:`~hybridrnn.tasks.classify_metrics`): ``loss`` (mean cross-entropy, unweighted), ``accuracy``,
``macro_f1``; after training the confusion matrix of the test split (JSON + PNG) and, with attention pooling,
a heat map of the attention over the tokens of a few test examples (:mod:`~hybridrnn.tasks.classify_plots`).
"""
from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from hybridrnn._io import atomic_write_json, read_json
from hybridrnn.data.text import Coverage, bucket_batches, load_glove, load_text_encoder, pad_batch, pad_series
from hybridrnn.data.uea import SeriesSet, class_weights
from hybridrnn.errors import ConfigError, DataError, RunDirError
from hybridrnn.nn.attention import SelfAttentionPooling
from hybridrnn.nn.classifier import SequenceClassifier
from hybridrnn.tasks._common import data_path, encoder_options, model_device
from hybridrnn.tasks.classify_config import ClassifyConfig, TextDataConfig
from hybridrnn.tasks.classify_data import (data_errors, natural_key, read_series, read_texts,
                                           read_unlabelled_texts, series_inputs, split_by_groups, val_split)
from hybridrnn.tasks.classify_metrics import (classification_metrics, confusion_matrix, confusion_report,
                                              majority_accuracy)
from hybridrnn.tasks.classify_plots import plot_attention_rows, plot_confusion_matrix
from hybridrnn.tasks.classify_transfer import check_vocabulary, load_pretrained, pretrained_run, pretrained_tokenizer
from hybridrnn.train.task import Task

ARTIFACT = "classes.json"
TEXT_ENCODER = "text_encoder.json"
FORMAT = "hybridrnn.classify/1"


class ClassifyTask(Task):
    """Text or time-series classification. Monitors the validation ``loss``."""

    name = "classify"
    config_class = ClassifyConfig
    monitor = "loss"
    monitor_mode = "min"
    display_metrics = ("accuracy", "macro_f1")
    supports_predict = True

    def __init__(self, config: ClassifyConfig):
        super().__init__(config)
        self.is_text = isinstance(config.data, TextDataConfig)
        # fitted state (setup on the training split, or load_artifacts)
        self.fitted = False
        self.class_names: list[str] = []
        self.encoder = None
        self.channels = 0
        self.features: Optional[list[str]] = None
        self.norm: Optional[dict] = None
        self.pretrained: Optional[torch.Tensor] = None
        self.coverage: Optional[Coverage] = None
        # model.pretrained: the run whose embedding and encoder the first build_model copies (not once loaded)
        self.transfer_from: Optional[Path] = None
        # data: split -> (texts, labels) or SeriesSet as read; split -> (model inputs, label ids)
        self.raw: dict[str, Any] = {}
        self.splits: dict[str, tuple[list, np.ndarray]] = {}
        self.weights: Optional[torch.Tensor] = None

    # ---- data ----------------------------------------------------------------------------------------
    def setup(self, data: Any = None, *, whole: bool = False) -> None:
        """Read the splits (``data``: None for the config's files, else a file or, for text, a DataFrame that
        replaces ``data.train``); fit the class names, tokeniser / normalisation on the training split unless
        ``load_artifacts`` restored them. ``whole``: every example of ``data`` (or of ``data.test``) is "test"."""
        if whole and not self.fitted:
            raise RuntimeError("setup(whole=True) evaluates a trained model: call load_artifacts(run_dir) first")
        self.raw = self._read_text_splits(data, whole) if self.is_text else self._read_series_splits(data, whole)
        if not self.fitted and self.is_text:
            self._fit_text()
        elif not self.fitted:
            self._fit_series()
        self._derive_splits()
        self.weights = None
        if self.config.classifier.class_weights and "train" in self.splits:
            self.weights = torch.from_numpy(class_weights(self.splits["train"][1], len(self.class_names)))

    def _source(self, data: Any, configured: Optional[str], key: str) -> Any:
        if data is not None:
            return data
        if configured is None:
            raise ConfigError(f"data.{key} is not set: name a file in the config or pass the data to the task")
        return configured

    def _read_text_splits(self, data: Any, whole: bool) -> dict[str, tuple[list[str], list[str], str]]:
        """split -> ``(texts, labels, where they came from)``."""
        d = self.config.data

        def read(source: Any) -> tuple[list[str], list[str], str]:
            where = "the DataFrame" if isinstance(source, pd.DataFrame) else str(source)
            return (*read_texts(source, d), where)

        if whole:
            return {"test": read(self._source(data, d.test, "test"))}
        texts, labels, where = read(self._source(data, d.train, "train"))
        raw = {"train": (texts, labels, where)}
        if d.val:
            raw["val"] = read(d.val)
        else:
            tr, va = val_split(len(texts), d.val_fraction, self.config.train.seed)
            raw["val"] = ([texts[i] for i in va], [labels[i] for i in va], f"{where} (validation part)")
            raw["train"] = ([texts[i] for i in tr], [labels[i] for i in tr], f"{where} (training part)")
        if d.test:
            raw["test"] = read(d.test)
        return raw

    def _read_series_splits(self, data: Any, whole: bool) -> dict[str, SeriesSet]:
        d = self.config.data
        features = self.features if self.fitted else None
        if whole:
            return {"test": read_series(self._source(data, d.test, "test"), d, features)}
        full = read_series(self._source(data, d.train, "train"), d, features)
        sets = split_by_groups(full, d) if d.format == "files" and d.groups_file else {"train": full}
        if d.test and "test" not in sets:
            sets["test"] = read_series(d.test, d, features or full.meta.get("features"))
        if d.val:
            sets["val"] = read_series(d.val, d, features or full.meta.get("features"))
        elif "val" not in sets:
            tr, va = val_split(len(sets["train"]), d.val_fraction, self.config.train.seed)
            sets["val"], sets["train"] = sets["train"].subset(va.tolist()), sets["train"].subset(tr.tolist())
        return sets

    def _fit_text(self) -> None:
        d = self.config.data
        texts, labels, _ = self.raw["train"]
        self.class_names = sorted(set(labels), key=natural_key)
        if self.config.model.pretrained:
            if d.embeddings:
                raise ConfigError("model.pretrained and data.embeddings both give the embedding; keep one")
            self.transfer_from = pretrained_run(self.config.model.pretrained)
            self.encoder = pretrained_tokenizer(self.transfer_from, d.tokenizer)   # the run's vocabulary
            self.fitted = True
            return
        self.encoder = d.tokenizer.fit(texts)
        if d.embeddings:
            gen = torch.Generator().manual_seed(self.config.train.seed)
            with data_errors():
                self.pretrained, self.coverage = load_glove(data_path(d.embeddings), self.encoder.vocabulary,
                                                            generator=gen)
            if self.pretrained.shape[1] != self.config.classifier.embedding_dim:
                raise ConfigError(f"{d.embeddings} has {self.pretrained.shape[1]}-dimensional vectors but "
                                  f"classifier.embedding_dim is {self.config.classifier.embedding_dim}")
            print(f"pretrained embeddings: {self.coverage}", file=sys.stderr)   # also saved in classes.json
        self.fitted = True

    def _fit_series(self) -> None:
        train = self.raw["train"]
        self.class_names = list(train.class_names)
        self.channels = train.channels
        self.features = train.meta.get("features")
        if self.config.data.normalize == "channel":
            stacked = np.concatenate(train.series, axis=0).astype(np.float64)
            std = stacked.std(0)
            self.norm = {"mean": stacked.mean(0).tolist(), "std": np.where(std > 0, std, 1.0).tolist()}
        self.fitted = True

    def _derive_splits(self) -> None:
        """Model inputs and label ids of every split read, with the fitted (or loaded) state."""
        self.splits = {}
        for split, raw in self.raw.items():
            if self.is_text:
                texts, labels, where = raw
                self.splits[split] = (self._encode_texts(texts, where), self._label_ids(labels, where))
            else:
                where = f"the {split} split ({raw.meta.get('source')})"
                self.splits[split] = (self._series_inputs(raw.series, where), self._label_ids(raw.labels, where))

    def _label_ids(self, labels: list[str], where: str) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.class_names)}
        unknown = sorted(set(labels) - set(index))
        if unknown:
            raise DataError(f"{where}: labels {unknown[:5]} do not occur in the training split "
                            f"(classes: {self.class_names})")
        return np.asarray([index[label] for label in labels], dtype=np.int64)

    def _encode_texts(self, texts: list[str], where: str) -> list[list[int]]:
        ids = [self.encoder.encode(t) for t in texts]
        empty = [i for i, s in enumerate(ids) if len(s) == 0]
        if empty:
            raise DataError(f"{where}: example {empty[0] + 1} ({texts[empty[0]][:40]!r}) has no tokens")
        max_length = self.config.data.max_length
        return [s[:max_length] for s in ids] if max_length else ids

    def _series_inputs(self, series: list[np.ndarray], where: str) -> list[np.ndarray]:
        bad = [i for i, s in enumerate(series) if s.shape[1] != self.channels]
        if bad:
            raise DataError(f"{where}: series {bad[0] + 1} has {series[bad[0]].shape[1]} channels, the model was "
                            f"trained on {self.channels}")
        return [self._normalize(x) for x in series]

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
        info = {"format": FORMAT, "class_names": self.class_names, "input": "text" if self.is_text else "timeseries",
                "channels": self.channels, "features": self.features, "normalize": self.norm,
                "vocab_size": self.encoder.vocab_size if self.encoder is not None else None}
        if self.coverage is not None:
            info["embedding_coverage"] = {"found": self.coverage.found, "total": self.coverage.total,
                                          "fraction": self.coverage.fraction}
        atomic_write_json(Path(run_dir) / ARTIFACT, info)
        if self.encoder is not None:
            self.encoder.save(Path(run_dir) / TEXT_ENCODER)

    def load_artifacts(self, run_dir: Path) -> None:
        """Class names, channels and normalisation statistics from ``classes.json``; the tokeniser and its
        vocabulary from ``text_encoder.json``. Data already read is re-derived with this state."""
        path = Path(run_dir) / ARTIFACT
        info = read_json(path)
        kind = "text" if self.is_text else "timeseries"
        if not isinstance(info, dict) or info.get("format", FORMAT) != FORMAT or info.get("input") != kind:
            raise RunDirError(f"{path}: not the artifacts of a {kind} classification run "
                              f"(format {FORMAT!r}, input {kind!r})")
        self.class_names = [str(c) for c in info["class_names"]]
        self.channels = int(info.get("channels") or 0)
        self.features = info.get("features")
        self.norm = info.get("normalize")
        if not self.is_text and self.config.data.normalize == "channel" and self.norm is None:
            raise RunDirError(f"{path}: no normalisation statistics, but data.normalize is 'channel'")
        if self.is_text:
            self.encoder = _read_encoder(Path(run_dir) / TEXT_ENCODER, info.get("vocab_size"))
            self.pretrained = None  # the weights come from the checkpoint
            self.transfer_from = None
        self.fitted = True
        if self.raw:
            self._derive_splits()

    # ---- model -----------------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        if not self.fitted:
            raise RuntimeError("build_model needs the fitted state: call setup() or load_artifacts() first")
        cfg, m = self.config.classifier, self.config.model
        common = dict(pooling=self.config.pooling, attention_heads=m.attention_heads, dropout=m.dropout,
                      head_hidden=cfg.head_hidden, encoder_options=encoder_options(m), weight_drop=m.weight_drop)
        if not self.is_text:
            return SequenceClassifier(len(self.class_names), m.encoder, input_size=self.channels, **common)
        model = SequenceClassifier(len(self.class_names), m.encoder, vocab_size=self.encoder.vocab_size,
                                   embedding_dim=cfg.embedding_dim, padding_idx=self.encoder.pad_id, **common)
        if self.pretrained is not None:
            with torch.no_grad():
                model.embedding.weight.copy_(self.pretrained)
            model.embedding.weight.requires_grad_(not self.config.data.freeze_embeddings)
        if self.transfer_from is not None:
            check_vocabulary(self.transfer_from, self.encoder)
            load_pretrained(model, self.transfer_from)
            model.embedding.weight.requires_grad_(not self.config.data.freeze_embeddings)
        return model

    # ---- batches -----------------------------------------------------------------------------------------
    def num_examples(self, split: str) -> int:
        return len(self.splits[split][1]) if split in self.splits else 0

    def num_train_batches(self) -> int:
        return math.ceil(self.num_examples("train") / self.config.train.batch_size)

    def _pad(self, inputs: list) -> tuple[torch.Tensor, torch.Tensor]:
        return pad_batch(inputs, self.encoder.pad_id) if self.is_text else pad_series(inputs)

    def _batch(self, split: str, index: list[int]):
        inputs, labels = self.splits[split]
        x, lengths = self._pad([inputs[i] for i in index])
        return x, lengths, torch.from_numpy(labels[index])

    def train_batches(self, epoch: int, generator: torch.Generator) -> Iterator:
        lengths = [len(s) for s in self.splits["train"][0]]
        for index in bucket_batches(lengths, self.config.train.batch_size, generator):
            yield self._batch("train", index)

    def training_step(self, model: nn.Module, batch) -> tuple[torch.Tensor, int]:
        x, lengths, y = batch
        penalty = self.config.classifier.attention_penalty
        if penalty > 0 and self.config.pooling == "attention":
            logits, weights = model(x, lengths, return_attention=True)
            extra = penalty * SelfAttentionPooling.penalty(weights)
        else:
            logits, extra = model(x, lengths), 0.0
        weight = self.weights.to(logits.device) if self.weights is not None else None
        return F.cross_entropy(logits.float(), y, weight=weight) + extra, int(y.shape[0])

    # ---- evaluation ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def probabilities(self, model: nn.Module, inputs: list, batch_size: int = 256) -> np.ndarray:
        """Class probabilities ``(n, K)`` (float64) of model inputs (token id lists or normalised series), in
        their order; batches of similar lengths."""
        device = model_device(model)
        probs = np.zeros((len(inputs), len(self.class_names)), dtype=np.float64)
        for index in bucket_batches([len(s) for s in inputs], batch_size):
            x, lengths = self._pad([inputs[i] for i in index])
            probs[index] = torch.softmax(model(x.to(device), lengths).double(), -1).cpu().numpy()
        return probs

    def predict_split(self, model: nn.Module, split: str, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """``(probabilities (n, K), true label ids (n,))`` of a split, in the split's order."""
        if split not in self.splits:
            raise DataError(f"no {split!r} split: the data read has {sorted(self.splits)} (set data.{split} in the "
                            "config, or evaluate another split)")
        return self.probabilities(model, self.splits[split][0], batch_size), self.splits[split][1]

    def evaluate(self, model: nn.Module, split: str) -> dict[str, float]:
        probs, y = self.predict_split(model, split)
        return classification_metrics(probs, y)

    def majority_accuracy(self, split: str) -> float:
        """Accuracy of always predicting the most frequent training class: the baseline to beat."""
        return majority_accuracy(self.splits["train"][1], self.splits[split][1], len(self.class_names))

    # ---- plots -------------------------------------------------------------------------------------------
    def plots(self, model: nn.Module, run_dir: Path) -> list[Path]:
        split = "test" if "test" in self.splits else "val"
        probs, y = self.predict_split(model, split)
        cm = confusion_matrix(y, probs.argmax(1), len(self.class_names))
        run_dir = Path(run_dir)
        atomic_write_json(run_dir / "confusion_matrix.json", confusion_report(cm, self.class_names, split))
        paths = [plot_confusion_matrix(cm, self.class_names, run_dir / "confusion_matrix.png",
                                       title=f"confusion matrix ({split}, {cm.sum()} examples)")]
        k = self.config.classifier.attention_examples
        if self.is_text and self.config.pooling == "attention" and k > 0:
            paths.append(self.plot_attention(model, split, list(range(min(k, self.num_examples(split)))),
                                             run_dir / "attention.png"))
        return paths

    @torch.no_grad()
    def plot_attention(self, model: nn.Module, split: str, examples: list[int], path: Path) -> Path:
        """Heat map of the attention weights (mean over heads) over the tokens of ``examples`` of ``split``."""
        x, lengths, y = self._batch(split, examples)
        logits, weights = model(x.to(model_device(model)), lengths, return_attention=True)
        weights, pred = weights.mean(1).cpu().numpy(), logits.argmax(-1).cpu().numpy()
        rows = []
        for b in range(len(examples)):
            ids = x[b, :int(lengths[b])].tolist()
            rows.append(([self.encoder.id_to_token(i) for i in ids], weights[b, :len(ids)],
                         self.class_names[int(y[b])], self.class_names[int(pred[b])]))
        return plot_attention_rows(rows, path)

    # ---- predict -----------------------------------------------------------------------------------------
    def predict(self, model: nn.Module, data: Any) -> pd.DataFrame:
        """Class probabilities of new inputs: one row per input, in input order, with the predicted ``label``
        and a ``p(<class>)`` column per class.

        Text ``data``: a file with one text per line (a CSV with ``data.text_column`` when the data's format is
        ``csv``), a DataFrame with that column, or a list of strings. Time series: a file in the data's format
        (its labels are not used), a list of ``(time, channels)`` arrays or an ``(n, time, channels)`` array.
        """
        if not self.fitted:
            raise RuntimeError("predict needs the fitted state: call load_artifacts(run_dir) (or setup) first")
        if self.is_text:
            texts, where = read_unlabelled_texts(data, self.config.data)
            inputs = self._encode_texts(texts, where)
        else:
            series, where = series_inputs(data, self.config.data, self.features)
            inputs = self._series_inputs(series, where)
        was_training = model.training
        model.eval()
        try:
            probs = self.probabilities(model, inputs)
        finally:
            model.train(was_training)
        frame = pd.DataFrame(probs, columns=[f"p({c})" for c in self.class_names])
        frame.insert(0, "label", [self.class_names[i] for i in probs.argmax(1)])
        return frame


def _read_encoder(path: Path, vocab_size: Optional[int]):
    """The saved text encoder; a missing, malformed or inconsistent file is a RunDirError naming it."""
    try:
        encoder = load_text_encoder(path)
    except FileNotFoundError:
        raise RunDirError(f"{path} is missing: the run's vocabulary is needed to read text") from None
    except ValueError as exc:
        raise RunDirError(f"{path}: {exc}") from None
    if vocab_size is not None and encoder.vocab_size != vocab_size:
        raise RunDirError(f"{path} has {encoder.vocab_size} tokens, {ARTIFACT} says {vocab_size}")
    return encoder
