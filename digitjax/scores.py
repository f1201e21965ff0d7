"""Scores of class probabilities against labels, with scikit-learn: accuracy, precision,
recall, F1 and support per class, the confusion matrix, and the worst mistakes."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pandas as pd


def score(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """JSON-ready: `accuracy`, `per_class` (one row per class: class, precision, recall,
    f1, support), `macro_f1` and `confusion_matrix` (rows: true class, columns: predicted)."""
    from sklearn import metrics  # imported late: ~1.5 s that every run would pay at start

    predicted = probs.argmax(axis=1)
    ids = list(range(len(class_names)))
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        labels, predicted, labels=ids, zero_division=0)
    rows = [{"class": name, "precision": float(p), "recall": float(r), "f1": float(f),
             "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support,
                                        strict=True)]
    return {
        "accuracy": float(metrics.accuracy_score(labels, predicted)),
        "macro_f1": float(np.mean(f1)),
        "per_class": rows,
        "confusion_matrix": metrics.confusion_matrix(labels, predicted, labels=ids).tolist(),
    }


def preload() -> None:
    """Imports scikit-learn's metrics now, so that `score` finds them loaded: ~1.6 s
    (with scipy, which they load) that a run's validation report would otherwise wait
    for. The training loop calls it while the training step compiles on another core,
    which leaves this one idle (`loop._epochs`)."""
    from sklearn import metrics  # noqa: F401


def interval(accuracy: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of an accuracy measured on `n` examples: what the
    accuracy of the same model on other data like it may be. At 99.6% on 4,200 digits
    it is about +-0.19 pp; on 42,000 (out-of-fold) about +-0.06 pp.

    Written out (Newcombe 1998, the formula scipy's `binomtest(...).proportion_ci(
    method="wilson")` uses; equal to it to 1e-15, tests/test_folds.py) rather than
    called from scipy: importing scipy.stats took ~2 s, paid at the first epoch's line
    of every run (`configs/quick.py`: 2.3 s of a 50 s run, cProfile).
    """
    k = round(accuracy * n)
    p, z = k / n, NormalDist().inv_cdf(0.5 + 0.5 * confidence)
    denom = 2 * (n + z * z)
    center = (2 * n * p + z * z) / denom
    delta = z / denom * math.sqrt(4 * n * p * (1 - p) + z * z)
    return (0.0 if k == 0 else center - delta), (1.0 if k == n else center + delta)


def with_interval(accuracy: float, n: int) -> str:
    """'0.9921 [0.9892, 0.9942] on 4,200': an accuracy as it is printed everywhere."""
    if n <= 0:
        return f"{accuracy:.4f}"
    low, high = interval(accuracy, n)
    return f"{accuracy:.4f} [{low:.4f}, {high:.4f}] on {n:,}"


def format_table(per_class: list[dict]) -> str:
    """The `per_class` rows of `score` as a printed table (pandas), with the macro mean."""
    frame = pd.DataFrame(per_class)
    mean = frame[["precision", "recall", "f1"]].mean()
    frame.loc[len(frame)] = {"class": "(macro mean)", **mean.to_dict(),
                             "support": int(frame["support"].sum())}
    return frame.to_string(index=False, float_format="{:.4f}".format)


def worst_mistakes(labels: np.ndarray, probs: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the wrongly predicted rows, the most confident first (at most `limit`)."""
    predicted = probs.argmax(axis=1)
    wrong = np.flatnonzero(predicted != labels)
    order = np.argsort(-probs[wrong, predicted[wrong]], kind="stable")
    return wrong[order][:limit]
