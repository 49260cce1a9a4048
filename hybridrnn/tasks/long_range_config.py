"""The long-range task's config and the problems' constants (see :mod:`hybridrnn.tasks.long_range`)."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from hybridrnn.config import RunConfig, Section

PROBLEMS = ("adding", "copy", "digits")
COPY_SYMBOLS = 8          # symbols 1..8; 0 is blank, 9 the delimiter
COPY_RECALL = 10          # how many symbols are shown and recalled
COPY_INPUTS = COPY_SYMBOLS + 2
COPY_CLASSES = COPY_SYMBOLS + 1   # outputs: blank or one of the 8 symbols
DIGITS_STEPS = 64
ADDING_SOLVED_MSE = 0.01
COPY_SOLVED_FRACTION = 0.1
#: what "solved" means, per problem, in a comparison over lengths: (results column, threshold: a run with a
#: value below it solved its length, description); the same thresholds as the ``solved`` metric of evaluate()
SOLVED_CRITERIA = {
    "adding": ("test_mse", ADDING_SOLVED_MSE, "test MSE < 0.01 (always predicting 1 gives 0.167)"),
    "copy": ("test_baseline_ratio", COPY_SOLVED_FRACTION,
             "test loss < 10% of the memoryless baseline 10·log(8)/(T+20)"),
}
#: defaults for the split sizes when a config leaves them out
SYNTHETIC_SIZES = {"n_train": 10000, "n_val": 1000, "n_test": 1000}
DIGITS_SIZES = {"n_train": 1197, "n_val": 300, "n_test": 300}   # 1797 images in all


class LongRangeData(Section):
    """Which problem, how long, how many examples; everything is generated from ``seed``."""

    problem: Literal["adding", "copy", "digits"] = "adding"
    length: Optional[int] = Field(
        None, ge=2, description="adding: sequence length T; copy: the blank delay T (sequences are T+20 long); "
                                "digits: must be 64 or left out. Default 100 (adding, copy).")
    n_train: Optional[int] = Field(None, ge=1, description="default 10000 (adding, copy) or 1197 (digits)")
    n_val: Optional[int] = Field(None, ge=1, description="default 1000 (adding, copy) or 300 (digits)")
    n_test: Optional[int] = Field(None, ge=1, description="default 1000 (adding, copy) or 300 (digits)")
    seed: int = Field(0, description="seed of the data generator (independent of train.seed)")

    @model_validator(mode="after")
    def _check_problem_sizes(self):
        if self.problem == "digits":
            if self.length is not None and self.length != DIGITS_STEPS:
                raise ValueError(f"data.length: digits are read pixel by pixel in {DIGITS_STEPS} steps; "
                                 f"got length={self.length} (leave it out or set {DIGITS_STEPS})")
            sizes = self.sizes()
            total = sum(sizes.values())
            if total > 1797:
                raise ValueError(f"data.n_train + n_val + n_test = {total} but load_digits has 1797 images "
                                 f"(got {sizes})")
        return self

    def resolved_length(self) -> int:
        """The length actually used (``length`` or the problem's default)."""
        if self.problem == "digits":
            return DIGITS_STEPS
        return 100 if self.length is None else self.length

    def sizes(self) -> dict[str, int]:
        defaults = DIGITS_SIZES if self.problem == "digits" else SYNTHETIC_SIZES
        return {k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in defaults.items()}


class LongRangeConfig(RunConfig):
    """A config for ``task: long_range``."""

    task: Literal["long_range"] = "long_range"
    data: LongRangeData = Field(default_factory=LongRangeData)
