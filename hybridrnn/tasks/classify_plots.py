"""Classification plots: the confusion matrix (counts, coloured by the share of the true class) and the
attention-pooling weights over the tokens of a few examples. Both go through ``hybridrnn._io.save_figure``."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from hybridrnn._io import new_figure, save_figure


def plot_confusion_matrix(cm: np.ndarray, class_names: list[str], path: Path, title: str = "") -> Path:
    k = len(class_names)
    fig, ax = new_figure(figsize=(1.2 + 0.7 * k, 1.0 + 0.6 * k))
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
    """One heat-map strip per example ``(tokens, weights, true class, predicted class)``: the tokens as labels,
    colour = attention weight."""
    longest = max(len(r[0]) for r in rows)
    fig, axes = new_figure(len(rows), 1, figsize=(min(2 + 0.55 * longest, 24), 1.25 * len(rows) + 0.4),
                           squeeze=False)
    for ax, (tokens, w, true, pred) in zip(axes[:, 0], rows):
        ax.imshow(w[None, :], cmap="Reds", aspect="auto", vmin=0, vmax=max(float(w.max()), 1e-9))
        ax.set_xticks(range(len(tokens)), [t.replace("$", r"\$") for t in tokens], rotation=60, fontsize=8)
        ax.set_yticks([])
        ax.set_title(f"true {true}, predicted {pred}", fontsize=9, loc="left")
    fig.suptitle("attention pooling weights (mean over heads)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)
