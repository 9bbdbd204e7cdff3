"""The scores of a fine-tuned model, as GLUE reports them, in NumPy alone.

Classification: accuracy and macro-F1 over the classes that occur in the labels or the predictions, plus
Matthews correlation for two classes. Regression: Pearson and Spearman correlation (Spearman with average
ranks for ties). A correlation that is undefined (constant predictions or labels) is 0, as scikit-learn's
Matthews is. Over several seeds: each seed's scores, their median and their spread (min, max, std).
"""

from __future__ import annotations

import numpy as np

PRIMARY = {"classification": "accuracy", "regression": "pearson"}
"""The score that picks the best epoch of a seed and the best seed's model."""


def classification_scores(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    scores = {"accuracy": float(np.mean(predictions == labels)), "f1_macro": f1_macro(predictions, labels)}
    if len(np.union1d(labels, predictions)) <= 2:
        scores["matthews"] = matthews(predictions, labels)
    return scores


def f1_macro(predictions: np.ndarray, labels: np.ndarray) -> float:
    classes = np.union1d(labels, predictions)
    hits = (predictions[:, None] == classes) & (labels[:, None] == classes)  # (N, C)
    true_positives = hits.sum(axis=0)
    predicted = (predictions[:, None] == classes).sum(axis=0)
    actual = (labels[:, None] == classes).sum(axis=0)
    denominator = predicted + actual
    f1 = np.divide(2 * true_positives, denominator, out=np.zeros(len(classes)), where=denominator > 0)
    return float(f1.mean())


def matthews(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation of two classes (the larger class id counts as positive)."""
    positive = max(np.max(labels), np.max(predictions))
    predicted, actual = predictions == positive, labels == positive
    tp = float(np.sum(predicted & actual))
    tn = float(np.sum(~predicted & ~actual))
    fp = float(np.sum(predicted & ~actual))
    fn = float(np.sum(~predicted & actual))
    denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / denominator) if denominator > 0 else 0.0


def regression_scores(predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    predictions = np.asarray(predictions, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    return {
        "pearson": pearson(predictions, labels),
        "spearman": pearson(average_ranks(predictions), average_ranks(labels)),
    }


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / denominator) if denominator > 0 else 0.0


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 0, tied values sharing the mean of their ranks."""
    unique, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return (first + (counts - 1) / 2.0)[inverse]


def scores(task: str, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    if task == "regression":
        return regression_scores(predictions, labels)
    return classification_scores(predictions, labels)


def summarize_seeds(per_seed: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, dict]]:
    """(median of each score over the seeds, {score: {"min", "max", "std"}})."""
    names = [name for name in per_seed[0] if all(name in s for s in per_seed)]
    medians, spread = {}, {}
    for name in names:
        values = np.array([s[name] for s in per_seed])
        medians[name] = float(np.median(values))
        spread[name] = {"min": float(values.min()), "max": float(values.max()), "std": float(values.std())}
    return medians, spread
