"""The learning-curve plot of a run (train and validation loss, and the monitored metric when it differs)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from hybridrnn._io import new_figure, save_figure


def plot_learning_curve(history: list[dict[str, Any]], path: Path, monitor: str = "loss", title: str = "") -> Path:
    epochs = [r["epoch"] for r in history]
    extra = monitor != "loss" and f"val_{monitor}" in history[0]
    fig, axes = new_figure(1, 3 if extra else 2, figsize=(13 if extra else 9, 4.0))
    ax = axes[0]
    ax.plot(epochs, [r["train_loss"] for r in history], marker="o", ms=3, label="train loss")
    if "val_loss" in history[0]:
        ax.plot(epochs, [r["val_loss"] for r in history], marker="o", ms=3, label="validation loss")
    best = [r["epoch"] for r in history if r.get("best")]
    if best:
        ax.axvline(best[-1], color="grey", ls=":", lw=1, label=f"best epoch ({best[-1]})")
    ax.set_xlabel("epoch"), ax.set_ylabel("loss"), ax.legend(), ax.grid(alpha=0.3)
    ax.set_title("loss")
    ax = axes[1]
    ax.plot(epochs, [r["grad_norm"] for r in history], marker="o", ms=3, label="mean pre-clip grad norm")
    ax.plot(epochs, [r["grad_norm_max"] for r in history], marker=".", ms=3, alpha=0.6, label="max pre-clip grad norm")
    ax.set_xlabel("epoch"), ax.set_ylabel("global gradient norm"), ax.grid(alpha=0.3)
    ax.set_yscale("log")
    lr_ax = ax.twinx()
    lr_ax.plot(epochs, [r["lr"] for r in history], color="tab:red", lw=1, label="lr")
    lr_ax.set_ylabel("learning rate", color="tab:red")
    lr_ax.set_ylim(0, max(r["lr"] for r in history) * 1.15 or 1.0)   # a constant lr is a flat line, not noise
    lines = ax.get_legend_handles_labels()[0] + lr_ax.get_legend_handles_labels()[0]
    # below the axes: inside, it would sit on the lr line or the norm curves, whatever their shape
    ax.legend(lines, [l.get_label() for l in lines], fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2),
              ncol=3, frameon=False)
    ax.set_title("gradient norm and learning rate")
    if extra:
        axes[2].plot(epochs, [r[f"val_{monitor}"] for r in history], marker="o", ms=3, color="tab:green")
        axes[2].set_xlabel("epoch"), axes[2].set_ylabel(f"validation {monitor}"), axes[2].grid(alpha=0.3)
        axes[2].set_title(f"validation {monitor} (monitored)")
    for a in axes:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))      # epochs are whole numbers
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, tight=False)
