"""The classification task's config: ``data`` (text or time series), ``classifier`` and the pooling rule.

Text::

    task: classify
    data: {kind: text, train: train.txt, test: test.txt, tokenizer: {level: word, min_freq: 2}}
    model: {encoder: "lstm:128", attention: self}
    classifier: {embedding_dim: 128}

Time series: ``data: {kind: timeseries, format: ts, train: X_TRAIN.ts, test: X_TEST.ts, normalize: series}``.
Relative paths are taken from the config file's folder, then the working directory (``_common.config_relative``).
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, field_validator, model_validator

from hybridrnn.config import RunConfig, Section
from hybridrnn.tasks._common import config_relative
from hybridrnn.tasks.text_config import TokenizerConfig, move_flat_tokenizer_keys


class TextDataConfig(Section):
    """Labelled text. ``format: label_text``: ``<label> <text>`` per line; ``csv``: ``text_column`` and
    ``label_column``."""

    kind: Literal["text"] = "text"
    train: Optional[str] = Field(None, description="training file; may be left out when the data is passed to "
                                                   "the task (hybridrnn.fit(config, data=...))")
    val: Optional[str] = Field(None, description="validation file; None: val_fraction of train, chosen at random")
    test: Optional[str] = None
    format: Literal["label_text", "csv"] = "label_text"
    text_column: str = "text"
    label_column: str = "label"
    encoding: str = "utf-8"
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    max_length: Optional[int] = Field(None, ge=1, description="truncate longer token sequences (None: keep all)")
    embeddings: Optional[str] = Field(None, description="GloVe text-format word vectors (word tokenizer only)")
    freeze_embeddings: bool = False

    _paths = field_validator("train", "val", "test", "embeddings")(classmethod(
        lambda cls, v, info: config_relative(v, info)))

    @model_validator(mode="before")
    @classmethod
    def _flat_tokenizer_keys(cls, data: Any) -> Any:
        return move_flat_tokenizer_keys(data, level_key="tokenizer")

    @model_validator(mode="after")
    def _embeddings_need_words(self):
        if self.embeddings and self.tokenizer.level != "word":
            raise ValueError("data.embeddings (GloVe word vectors) needs data.tokenizer.level: word")
        return self


class SeriesDataConfig(Section):
    """Labelled time series: ``ts`` (UCR/UEA), ``csv`` (one row per step), ``files`` (one CSV per sequence)."""

    kind: Literal["timeseries"] = "timeseries"
    format: Literal["ts", "csv", "files"] = "ts"
    train: Optional[str] = Field(None, description="ts/csv: the training file; files: the folder or zip of "
                                                   "sequence files; may be left out when the data is passed to "
                                                   "the task")
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

    pooling: Literal["auto", "last", "mean", "max", "attention", "concat"] = Field(
        "auto", description="auto: attention when model.attention is 'self', else last; concat: [last | max | "
                            "mean] (ULMFiT)")
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
