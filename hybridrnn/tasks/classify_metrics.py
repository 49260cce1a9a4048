"""Classification metrics from predicted probabilities: loss, accuracy, macro F1, the confusion matrix and the
majority-class baseline. Pure numpy, so they can be checked against scikit-learn."""
from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """``(K, K)`` counts, rows = true class, columns = predicted class."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def macro_f1(cm: np.ndarray) -> float:
    """Mean F1 over the classes that occur in the truth or the predictions (``2TP / (2TP + FP + FN)``)."""
    tp = np.diag(cm).astype(float)
    fp = cm.sum(0) - tp
    fn = cm.sum(1) - tp
    denom = 2 * tp + fp + fn
    present = denom > 0
    return float((2 * tp[present] / denom[present]).mean()) if present.any() else 0.0


def classification_metrics(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """``loss`` (mean negative log-likelihood of the true class, unweighted), ``accuracy`` and ``macro_f1`` of
    probabilities ``(n, K)`` against true class ids ``(n,)``."""
    pred = probs.argmax(1)
    cm = confusion_matrix(y, pred, probs.shape[1])
    nll = -np.log(np.clip(probs[np.arange(len(y)), y], 1e-300, None)).mean()
    return {"loss": float(nll), "accuracy": float((pred == y).mean()), "macro_f1": macro_f1(cm)}


def confusion_report(cm: np.ndarray, class_names: list[str], split: str) -> dict:
    """What ``confusion_matrix.json`` holds: the matrix with its classes, accuracy and macro F1."""
    return {"split": split, "classes": list(class_names), "rows": "true", "columns": "predicted",
            "matrix": cm.tolist(), "accuracy": float(np.trace(cm) / max(cm.sum(), 1)), "macro_f1": macro_f1(cm)}


def majority_accuracy(train_y: np.ndarray, y: np.ndarray, num_classes: int) -> float:
    """Accuracy on ``y`` of always predicting the most frequent class of ``train_y``: the baseline to beat."""
    majority = np.bincount(train_y, minlength=num_classes).argmax()
    return float((np.asarray(y) == majority).mean())
