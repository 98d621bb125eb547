"""Suspected label errors by confident learning (Northcutt, Jiang & Chuang, JAIR 2021), as cleanlab 2.x computes
`find_label_issues(labels, pred_probs, filter_by="prune_by_noise_rate")` ranked by
`get_label_quality_scores(method="self_confidence")`.

The steps, each as cleanlab's `count.py` / `filter.py` do them:
1. per-class thresholds t_j = mean p_j over the images labelled j (2 for a class nobody is labelled with, so no
   image counts toward it; at least 2e-6);
2. the confident joint C[i][j]: an image labelled i with p_k >= t_k - 1e-6 for at least one k counts toward
   that k when it is the only one, else toward the argmax of its whole vector (cleanlab's rule, not the argmax
   among the confident classes); the diagonal is raised to at least 1;
3. calibration: each row scaled to its label count, the whole to the number of labelled images, rows rounded
   keeping their totals (cleanlab's `round_preserving_row_totals`);
4. at least one image kept per class (`_keep_at_least_n_per_class`, n = 1), then truncated to integers;
5. prune by noise rate: for each off-diagonal (i, j), the C[i][j] images labelled i with the largest margin
   p_j - p_i are issues (no issues in a class with a single labelled image);
6. an image whose argmax equals its label is never an issue; issues are ranked by self-confidence p_label,
   lowest (most suspect) first.

Differences from cleanlab, all in ties only: sorts here are stable, so equal margins or scores are broken by image
index (cleanlab's default quicksort breaks them arbitrarily); the result is the same for any split of the pass.
Unlabelled images (label -1) take no part. With the top-k probabilities the store keeps beyond 256 classes
(`embedding.TOP_CLASSES`), a class outside an image's top k counts as probability 0 for it (it could not be
confident there: its probability is below the k-th, far under any class's mean self-confidence in practice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reportgen.techniques.data_health.embedding import Embeddings

CONFIDENCE_SLACK = 1e-6  # cleanlab's FLOATING_POINT_COMPARISON: p >= t - 1e-6 counts as confident
THRESHOLD_FLOOR = 2e-6  # cleanlab's CONFIDENT_THRESHOLDS_LOWER_BOUND
ABSENT_THRESHOLD = 2.0  # a class no image is labelled with: no probability reaches it


@dataclass(frozen=True)
class LabelIssue:
    index: int  # the image's global index
    label: int  # its given label
    suggested: int  # the model's top class
    score: float  # self-confidence: the probability of the given label (lower: more suspect)


@dataclass(frozen=True)
class LabelIssues:
    issues: tuple[LabelIssue, ...]  # most suspect first
    labelled: int  # images with a label, the ones examined
    thresholds: np.ndarray  # (classes,) per-class confidence thresholds t_j
    confident_joint: np.ndarray  # (classes, classes) int64, calibrated: rows given label, columns suggested

    @property
    def share(self) -> float:
        """Issues per labelled image (NaN without labels)."""
        return len(self.issues) / self.labelled if self.labelled else float("nan")


def find_label_issues(labels: np.ndarray, probabilities: np.ndarray, indices: np.ndarray | None = None) -> LabelIssues:
    """Label issues of images with labels (n,) (-1: unlabelled) and out-of-sample probabilities (n, classes).

    `indices`: the images' global indices (default 0..n-1); images are examined in index order."""
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels, np.int64)
    indices = np.arange(len(labels), dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
    order = np.argsort(indices, kind="stable")
    labels, probabilities, indices = labels[order], probabilities[order], indices[order]
    known = labels >= 0
    rows = probabilities[known]
    given = labels[known]
    self_confidence = rows[np.arange(len(given)), given]
    return _confident_learning(given, self_confidence, rows, None, np.argmax(rows, axis=1), indices[known],
                               probabilities.shape[1])


def find_label_issues_in(table: Embeddings) -> LabelIssues:
    """Label issues from what `EmbeddingStore` kept: the whole vectors, or the top-k beyond 256 classes."""
    known = table.labels >= 0
    given = table.labels[known].astype(np.int64)
    self_confidence = table.label_probability[known].astype(np.float64)
    predicted = table.predicted[known].astype(np.int64)
    if table.probabilities is not None:
        return _confident_learning(given, self_confidence, table.probabilities[known].astype(np.float64), None,
                                   predicted, table.indices[known], table.classes)
    values = table.top_probabilities[known].astype(np.float64)
    classes = table.top_classes[known].astype(np.int64)
    # The labelled class as one more candidate where it is not among the top k (else masked: counted once).
    listed = (classes == given[:, None]).any(axis=1)
    values = np.concatenate([values, np.where(listed, -np.inf, self_confidence)[:, None]], axis=1)
    classes = np.concatenate([classes, given[:, None]], axis=1)
    return _confident_learning(given, self_confidence, values, classes, predicted, table.indices[known],
                               table.classes)


def _confident_learning(given: np.ndarray, self_confidence: np.ndarray, values: np.ndarray,
                        classes: np.ndarray | None, predicted: np.ndarray, indices: np.ndarray,
                        k: int) -> LabelIssues:
    """The six steps over labelled images; `values[:, c]` is the probability of class `classes[:, c]` (every
    class in order when `classes` is None)."""
    n = len(given)
    label_counts = np.bincount(given, minlength=k)
    if n == 0:
        return LabelIssues((), 0, np.full(k, ABSENT_THRESHOLD), np.zeros((k, k), np.int64))
    sums = np.bincount(given, weights=self_confidence, minlength=k)
    thresholds = np.where(label_counts > 0, sums / np.maximum(label_counts, 1), ABSENT_THRESHOLD)
    thresholds = np.maximum(thresholds, THRESHOLD_FLOOR)

    column_thresholds = thresholds[None, :] if classes is None else thresholds[classes]
    confident = values >= column_thresholds - CONFIDENCE_SLACK
    confident_count = confident.sum(axis=1)
    first = np.argmax(confident, axis=1)
    only = first if classes is None else classes[np.arange(n), first]
    guess = np.where(confident_count > 1, predicted, only)
    counted = confident_count > 0
    joint = np.bincount(given[counted] * k + guess[counted], minlength=k * k).reshape(k, k)
    np.fill_diagonal(joint, np.maximum(joint.diagonal(), 1))
    calibrated = _calibrate(joint, label_counts)
    prune = _keep_one_per_class(calibrated.T.astype(np.float64))  # prune[j, i]: issues labelled i, truly j

    issue = np.zeros(n, bool)
    members = np.argsort(given, kind="stable")
    starts = np.searchsorted(given[members], np.arange(k + 1))
    for i in range(k):
        rows = members[starts[i]:starts[i + 1]]
        if len(rows) <= 1:  # cleanlab's min_examples_per_class = 1
            continue
        for j in np.flatnonzero(prune[:, i]):
            if j == i:
                continue
            margin = _probability_of(values, classes, rows, j) - self_confidence[rows]
            issue[rows[np.argsort(-margin, kind="stable")[:prune[j, i]]]] = True
    issue &= predicted != given
    found = np.flatnonzero(issue)
    found = found[np.argsort(self_confidence[found], kind="stable")]
    entries = tuple(LabelIssue(int(indices[r]), int(given[r]), int(predicted[r]), float(self_confidence[r]))
                    for r in found)
    return LabelIssues(entries, n, thresholds, calibrated.astype(np.int64))


def _probability_of(values: np.ndarray, classes: np.ndarray | None, rows: np.ndarray, j: int) -> np.ndarray:
    if classes is None:
        return values[rows, j]
    hit = classes[rows] == j
    return np.where(hit, values[rows], 0.0).max(axis=1, initial=0.0)


def _calibrate(joint: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """cleanlab's `calibrate_confident_joint`: rows to the label counts, the total to the labelled images."""
    tiny = 1e-100
    scaled = (joint.T / np.clip(joint.sum(axis=1), tiny, None) * label_counts).T
    scaled = scaled / np.clip(scaled.sum(), tiny, None) * label_counts.sum()
    return np.stack([_round_preserving_sum(row) for row in scaled])


def _round_preserving_sum(values: np.ndarray) -> np.ndarray:
    """Round to integers keeping the (rounded) total: cleanlab's `round_preserving_sum`, step for step."""
    floats = np.asarray(values, np.float64)
    ints = floats.round()
    total = np.round(floats.sum())
    current = np.round(ints.sum())
    while abs(current - total) > CONFIDENCE_SLACK:
        diff = np.round(total - current)
        step = -1 if diff < 0 else 1
        changes = min(int(abs(diff)), len(floats))
        # The entries rounded the furthest the other way first.
        ints[np.argsort(floats - ints)[::-step][:changes]] += step
        current = np.round(ints.sum())
    return ints.astype(np.int64)


def _keep_one_per_class(prune: np.ndarray) -> np.ndarray:
    """cleanlab's `_keep_at_least_n_per_class` (n = 1, frac_noise = 1) on the transposed joint: a diagonal below
    1 is raised to 1, the amount taken evenly from the column's non-zero noise counts, then truncated to ints."""
    diagonal = prune.diagonal().copy()
    raised = np.maximum(diagonal, 1)
    spread = np.maximum(np.count_nonzero(prune, axis=0) - 1.0, 1.0)
    out = prune - (raised - diagonal) / spread
    out[out < 0] = 0
    np.fill_diagonal(out, raised)
    return out.astype(np.int64)
