"""The forecast task's config: ``data``, ``window`` and forecast options in ``model``.

The shape from the README works verbatim::

    task: forecast
    data: {path: prices.csv, time_column: Date, target: [Close], covariates: [Volume], split: [0.7, 0.1, 0.2], scaler: standard}
    window: {lookback: 64, horizon: 8}
    model: {encoder: "lstm:64>gru:64", attention: additive, dropout: 0.1}
    train: {epochs: 30, batch_size: 64, lr: 0.001, seed: 0}

Relative ``data.path`` values are resolved when the config is validated with a ``config_dir`` in the pydantic
validation context (``ForecastConfig.model_validate(d, context={"config_dir": folder_of_the_yaml})``): a file
that exists relative to the config's folder becomes an absolute path; otherwise the path is kept as written and
resolved against the current directory when the data is loaded (see :mod:`hybridrnn.data.registry`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from hybridrnn.config import ModelConfig, RunConfig, Section


class ForecastDataConfig(Section):
    """Where the series is and how to read, validate, split and scale it."""

    path: Optional[str] = Field(None, description="CSV / Parquet file, 'bundled:NAME', 'shared:NAME' (see `hybridrnn "
                                                "datasets`); may be left out only when a DataFrame is passed to the task")
    time_column: Optional[Union[str, list[str]]] = Field(
        None, description="date column, or columns assembled into a date ([year, month, day, hour]); None: rows are steps")
    target: list[str] = Field(..., min_length=1, description="column(s) to forecast")
    covariates: list[str] = Field(default_factory=list, description="numeric past covariates (observed up to the forecast time)")
    categorical: list[str] = Field(default_factory=list, description="categorical past covariates (one-hot, categories from train)")
    future_covariates: list[str] = Field(default_factory=list, description="numeric covariates known over the horizon "
                                         "too (a weather forecast, promotions, holidays): the model reads them over the "
                                         "look-back and the horizon; predict needs their values for the horizon rows "
                                         "after the last observed target")
    where: dict[str, Union[str, int, float]] = Field(default_factory=dict, description="keep rows with column == value, e.g. {Ticker: AAPL}")
    id_column: Optional[Union[str, list[str]]] = Field(
        None, description="column(s) naming the series of a long table (a panel: one global model over every series, "
                          "each scaled on its own training part); None: the table is one series")
    static_covariates: list[str] = Field(default_factory=list, description="columns holding one value per series of "
                                         "a panel (store size, region): numeric ones standardised across the training "
                                         "series, others one-hot; constant input channels of every window")
    short_series: Literal["error", "skip"] = Field(
        "error", description="a series of the panel too short for one training window: error (named) or skip "
                             "(a warning names it)")
    start: Optional[str] = Field(None, description="keep times >= start")
    end: Optional[str] = Field(None, description="keep times < end")
    frequency: Optional[str] = Field(None, description="pandas offset alias ('h', 'D', 'B', ...), 'steps', or None to infer")
    fill: Optional[Literal["ffill", "interpolate"]] = Field(None, description="fill missing values; None: they are errors")
    split: Union[list[float], dict[str, str]] = Field(
        default_factory=lambda: [0.7, 0.1, 0.2],
        description="train/val/test fractions, row counts, or dates {val: ..., test: ..., end: ...}")
    scaler: Literal["standard", "minmax", "robust", "none"] = "standard"
    calendar: Union[Literal["auto"], list[Literal["minute", "hour", "dayofweek", "dayofmonth", "dayofyear", "month"]]] = Field(
        "auto", description="known-future calendar covariates; 'auto' picks them from the frequency, [] for none")
    calendar_encoding: Literal["sincos", "onehot"] = "sincos"
    season: Optional[int] = Field(None, ge=1, description="seasonal period in steps (seasonal naive, MASE); None: from the frequency")
    header: bool = Field(True, description="False for a CSV without a header row (columns are then '0', '1', ...)")

    @field_validator("target", "covariates", "categorical", "future_covariates", "static_covariates", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("path")
    @classmethod
    def _resolve_relative(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        if v is None:
            return v
        context = info.context or {}
        config_dir = context.get("config_dir")
        if config_dir and ":" not in v.split("/")[0] and not Path(v).expanduser().is_absolute():
            candidate = Path(config_dir) / v
            if candidate.exists():
                return str(candidate.resolve())
        return v

    @model_validator(mode="after")
    def _columns_distinct(self):
        seen: dict[str, str] = {}
        ids = [self.id_column] if isinstance(self.id_column, str) else list(self.id_column or [])
        for c in ids:
            seen[c] = "id_column"
        if self.static_covariates and not ids:
            raise ValueError("data.static_covariates hold one value per series: they need data.id_column")
        for role in ("target", "covariates", "categorical", "future_covariates", "static_covariates"):
            for c in getattr(self, role):
                if c in seen:
                    raise ValueError(f"column {c!r} is listed in both data.{seen[c]} and data.{role}")
                seen[c] = role
        return self


class WindowConfig(Section):
    """Look-back and horizon of each training / evaluation window."""

    lookback: int = Field(64, ge=1, description="past steps the model reads")
    horizon: int = Field(8, ge=1, description="future steps it forecasts")
    stride: int = Field(1, ge=1, description="step between training window origins (evaluation uses every window)")


class ForecastModelConfig(ModelConfig):
    """The network: an encoder spec plus the forecasting head.

    Defaults that depend on the data and the window (``strategy``, ``segment``, ``instance_norm``,
    ``channel_independent``) are chosen by :class:`ForecastConfig` when the config leaves them out (see
    :data:`DEFAULT_RECIPE`); the chosen fields are listed in ``chosen_by_default`` (``hybridrnn config show``)."""

    strategy: Literal["direct", "recursive", "seq2seq", "parallel", "rmf"] = Field(
        "direct", description="direct | recursive | seq2seq | parallel (SegRNN's PMF: all output segments in one "
                              "recurrent step) | rmf (recursive over segments); left out: parallel when the window "
                              "allows segments, else direct")
    decoder: Optional[Literal["shared", "gru", "lstm"]] = Field(
        None, description="seq2seq decoder cell (None: gru); parallel: None/shared = the encoder's own step (its "
                          "weights, per-block final states), gru/lstm = a separate cell from the encoder summary")
    instance_norm: Union[bool, Literal["standard", "last"]] = Field(
        False, description="per-window normalisation: true/standard = own mean/std (RevIN-style), last = subtract "
                           "the window's last value (SegRNN), false = none; left out: " + "last")
    channel_independent: bool = Field(False, description="one shared model per target variable; left out: true "
                                                         "for more than one target")
    linear_skip: bool = Field(False, description="add a linear map of the look-back to the output")
    segment: Optional[int] = Field(None, ge=1, description="segment recurrence (SegRNN): the encoder reads "
                                   "segments of this many steps; lookback and horizon must be multiples of it; "
                                   "left out with the strategy left out (or parallel / rmf): chosen from the window")
    segment_embed: Optional[int] = Field(None, ge=0, description="segment embedding size (None: the first block's "
                                         "hidden size; 0: no embedding, the flattened segment)")
    loss: Literal["mse", "mae", "huber", "quantile", "gaussian", "student_t"] = Field(
        "mse", description="mse | mae | huber (point forecasts); quantile (a head with one output per "
                           "model.quantiles level, pinball loss; the point forecast is the 0.5 quantile); gaussian / "
                           "student_t (location, scale (and degrees of freedom) per step, negative log-likelihood; "
                           "the point forecast is the location)")
    id_embedding: Optional[int] = Field(None, ge=1, description="a panel (data.id_column): a learned embedding of "
                                        "this size of the series id, read with every window; None: none")
    quantiles: list[float] = Field(default_factory=lambda: [0.1, 0.5, 0.9], description="quantile levels of "
                                   "loss: quantile, strictly increasing in (0, 1), 0.5 among them; predictions get a "
                                   "{target}_q{level} column each")
    chosen_by_default: list[str] = Field(default_factory=list, description="informational: the fields above whose "
                                         "value the defaults rule chose from the data and the window")

    @field_validator("quantiles")
    @classmethod
    def _quantile_levels(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < q < 1 for q in v) or any(b <= a for a, b in zip(v, v[1:])):
            raise ValueError(f"model.quantiles must be strictly increasing levels in (0, 1), got {v}")
        if not any(abs(q - 0.5) < 1e-12 for q in v):
            raise ValueError(f"model.quantiles must include 0.5 (the point forecast), got {v}")
        return [float(q) for q in v]


#: ForecastModelConfig fields that are keyword arguments of ``hybridrnn.nn.forecaster.Forecaster`` (the head's
#: options, besides the encoder options every task shares); a new head option is a field here and an argument there
FORECAST_HEAD_OPTIONS = tuple(k for k in ForecastModelConfig.model_fields if k not in ModelConfig.model_fields
                              and k not in ("loss", "quantiles", "id_embedding", "chosen_by_default"))

#: The recipe a forecast config gets for the fields it leaves out (measured: benchmarks/results/forecast_ltsf.md)
DEFAULT_RECIPE = {"instance_norm": "last", "channel_independent": "more than one target",
                  "strategy": "parallel when the window allows segments, else direct",
                  "segment": "auto_segment(lookback, horizon)"}


def auto_segment(lookback: int, horizon: int, *, min_segments: int = 4, max_segment: int = 24) -> Optional[int]:
    """The default segment length for a window: the largest divisor ``W <= max_segment`` of both ``lookback`` and
    ``horizon`` that leaves at least ``min_segments`` look-back segments, or None when that is below 2 (the
    look-back does not allow segments: point-wise recurrence). ``(96, 96|192|336|720) -> 24``, ``(28, 7) -> 7``."""
    import math
    g = math.gcd(lookback, horizon)
    best = None
    for w in range(2, min(g, max_segment) + 1):
        if g % w == 0 and lookback // w >= min_segments:
            best = w
    return best


def apply_default_recipe(model: ForecastModelConfig, window: "WindowConfig", num_targets: int) -> None:
    """Fill the data- and window-dependent fields ``model`` leaves out (in place); see :data:`DEFAULT_RECIPE`."""
    given = set(model.model_fields_set)
    chosen = []
    if "chosen_by_default" in given:        # a resolved config (a run's config.yaml): nothing left to choose
        return
    if "instance_norm" not in given:
        model.instance_norm = "last"
        chosen.append("instance_norm")
    if "channel_independent" not in given:
        model.channel_independent = num_targets > 1
        chosen.append("channel_independent")
    if "strategy" not in given:
        seg = model.segment if "segment" in given else auto_segment(window.lookback, window.horizon)
        model.strategy = "parallel" if seg else "direct"
        chosen.append("strategy")
        if "segment" not in given:
            model.segment = seg
            chosen.append("segment")
    elif model.strategy in ("parallel", "rmf") and "segment" not in given:
        model.segment = auto_segment(window.lookback, window.horizon)
        chosen.append("segment")
    model.chosen_by_default = chosen


class ForecastConfig(RunConfig):
    """``task: forecast``."""

    task: Literal["forecast"] = "forecast"
    data: ForecastDataConfig
    window: WindowConfig = Field(default_factory=WindowConfig)
    model: ForecastModelConfig = Field(default_factory=ForecastModelConfig)

    @model_validator(mode="after")
    def _default_recipe(self):
        apply_default_recipe(self.model, self.window, len(self.data.target))
        return self
