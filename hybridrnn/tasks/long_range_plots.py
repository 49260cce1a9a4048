"""The long-range task's test plot: predictions against targets (adding), recalled symbols (copy) or the
confusion matrix (digits). Written through ``hybridrnn._io.save_figure``."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hybridrnn._io import new_figure, save_figure
from hybridrnn.tasks.long_range_config import COPY_RECALL


def plot_long_range(problem: str, length: int, pred: torch.Tensor, y: torch.Tensor, path: Path) -> Path:
    """One figure of the model outputs ``pred`` against the targets ``y`` of the test split."""
    fig, ax = new_figure(figsize=(5.5, 4.5))
    if problem == "adding":
        n = min(1000, len(y))
        ax.scatter(y[:n].numpy(), pred[:n, 0].numpy(), s=4, alpha=0.5)
        ax.plot([0, 2], [0, 2], color="black", lw=1, label="perfect")
        ax.axhline(1.0, color="grey", ls="--", lw=1, label="always 1 (MSE 0.167)")
        ax.set(xlabel="target (sum of the marked values)", ylabel="prediction",
               title=f"adding problem, T={length}: test predictions")
        ax.legend(loc="upper left")
    elif problem == "copy":
        k = min(8, len(y))
        shown = pred[:k, -COPY_RECALL:].argmax(-1)
        image = np.concatenate([y[:k, -COPY_RECALL:].numpy(), np.full((k, 1), np.nan), shown.numpy()], axis=1)
        im = ax.imshow(image, cmap="tab10", vmin=0, vmax=9, aspect="auto")
        ax.set(title=f"copy memory, T={length}: target (left) | predicted (right)",
               xlabel="recall step", ylabel="test sequence")
        ax.set_xticks([])
        fig.colorbar(im, ax=ax, label="symbol")
    else:
        counts = np.zeros((10, 10), dtype=np.int64)   # rows: true digit, columns: predicted
        np.add.at(counts, (y.numpy(), pred.argmax(-1).numpy()), 1)
        ax.imshow(counts, cmap="Blues")
        for (i, j), c in np.ndenumerate(counts):
            if c:
                ax.text(j, i, str(c), ha="center", va="center", fontsize=7,
                        color="white" if c > counts.max() / 2 else "black")
        ax.set(xlabel="predicted label", ylabel="true label", xticks=range(10), yticks=range(10))
        ax.set_title("sequential digits (64 steps): test confusion matrix")
    fig.tight_layout()
    return save_figure(fig, path, tight=False)
