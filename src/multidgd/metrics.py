"""Metrics as the multiDGD paper computes them, on arrays (dense or scipy sparse)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = [
    "rmse",
    "mae",
    "auprc",
    "per_cell_auprc",
    "per_cell_rmse",
    "per_cell_correlation",
    "nb_nll",
    "ari",
    "batch_1_minus_asw",
    "batch_asw",
    "loss_ratio",
    "cluster_sizes",
    "components_used",
    "MIN_COMPONENT_FRACTION",
]

#: A component is "used" when it holds at least this share of the cells.
MIN_COMPONENT_FRACTION = 0.01


def _dense_rows(x, start: int, stop: int) -> np.ndarray:
    block = x[start:stop]
    return np.asarray(block.toarray() if sp.issparse(block) else block, dtype=np.float64)


def _per_cell_error(observed, predicted, power: int, chunk: int = 1024) -> np.ndarray:
    if observed.shape != predicted.shape:
        raise ValueError(f"observed {observed.shape} and predicted {predicted.shape} differ in shape")
    out = np.empty(observed.shape[0])
    for i in range(0, observed.shape[0], chunk):
        diff = _dense_rows(observed, i, i + chunk) - _dense_rows(predicted, i, i + chunk)
        out[i : i + chunk] = (np.abs(diff) ** power).mean(axis=1)
    return out


def rmse(observed, predicted) -> float:
    """Root of the squared error averaged over features per cell, then over cells.

    Parameters
    ----------
    observed
        (n, F) counts.
    predicted
        (n, F) predicted counts (fraction x library).

    Returns
    -------
    float
    """
    return float(np.sqrt(_per_cell_error(observed, predicted, 2).mean()))


def per_cell_rmse(observed, predicted) -> np.ndarray:
    """Root of the squared error averaged over features, per cell.

    Parameters
    ----------
    observed
        (n, F) counts.
    predicted
        (n, F) predicted counts.

    Returns
    -------
    numpy.ndarray
        (n,) RMSE of each cell.
    """
    return np.sqrt(_per_cell_error(observed, predicted, 2))


def mae(observed, predicted) -> float:
    """Absolute error averaged over features per cell, then over cells.

    Parameters
    ----------
    observed
        (n, F) counts.
    predicted
        (n, F) predicted counts.

    Returns
    -------
    float
    """
    return float(_per_cell_error(observed, predicted, 1).mean())


def auprc(observed, predicted) -> float:
    """Average precision of ``predicted`` against ``observed >= 1``, over the flattened matrix.

    Parameters
    ----------
    observed
        (n, F) counts; entries >= 1 are the positives.
    predicted
        (n, F) scores.

    Returns
    -------
    float
    """
    from sklearn.metrics import average_precision_score

    if observed.shape != predicted.shape:
        raise ValueError(f"observed {observed.shape} and predicted {predicted.shape} differ in shape")
    truth = observed.toarray() if sp.issparse(observed) else np.asarray(observed)
    score = predicted.toarray() if sp.issparse(predicted) else np.asarray(predicted)
    labels = (truth >= 1).ravel()
    if not labels.any():
        raise ValueError("no observed entry is >= 1; AUPRC is undefined")
    return float(average_precision_score(labels, score.ravel()))


def _average_precision(labels: np.ndarray, score: np.ndarray) -> float:
    """Average precision of one ranking: sum over distinct score thresholds of the recall
    gained times the precision there (ties share one threshold, as in scikit-learn).
    """
    order = np.argsort(-score, kind="stable")
    s, y = score[order], labels[order]
    last = np.r_[np.flatnonzero(s[1:] != s[:-1]), len(s) - 1]  # end of each run of ties
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    gained = np.diff(np.r_[0, tp])
    return float((gained * precision).sum() / tp[-1])


def per_cell_auprc(observed, predicted, chunk: int = 1024) -> np.ndarray:
    """Average precision of each cell's features: ``predicted`` against ``observed >= 1``.

    Unlike :func:`auprc` over the flattened matrix, which rewards ranking deep cells above
    shallow ones, this asks how well each cell's own open peaks (or expressed genes) are
    ranked above its others.

    Parameters
    ----------
    observed
        (n, F) counts; entries >= 1 are the positives.
    predicted
        (n, F) scores.
    chunk
        Rows made dense together.

    Returns
    -------
    numpy.ndarray
        (n,) average precision per cell; NaN for a cell without any positive.
    """
    if observed.shape != predicted.shape:
        raise ValueError(f"observed {observed.shape} and predicted {predicted.shape} differ in shape")
    out = np.full(observed.shape[0], np.nan)
    for i in range(0, observed.shape[0], chunk):
        truth = _dense_rows(observed, i, i + chunk) >= 1
        score = _dense_rows(predicted, i, i + chunk)
        for j in range(len(truth)):
            if truth[j].any():
                out[i + j] = _average_precision(truth[j], score[j])
    return out


def per_cell_correlation(observed, predicted, method: str = "pearson", chunk: int = 1024) -> np.ndarray:
    """Correlation over features of each cell's observed and predicted values.

    Parameters
    ----------
    observed, predicted
        (n, F) counts and predictions.
    method
        ``"pearson"`` (on log1p of both) or ``"spearman"`` (ranks, ties averaged).
    chunk
        Rows made dense together.

    Returns
    -------
    numpy.ndarray
        (n,) correlation per cell; NaN where either row is constant.
    """
    from scipy.stats import rankdata

    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    if observed.shape != predicted.shape:
        raise ValueError(f"observed {observed.shape} and predicted {predicted.shape} differ in shape")
    out = np.empty(observed.shape[0])
    for i in range(0, observed.shape[0], chunk):
        a, b = _dense_rows(observed, i, i + chunk), _dense_rows(predicted, i, i + chunk)
        if method == "spearman":
            a, b = rankdata(a, axis=1), rankdata(b, axis=1)
        else:
            a, b = np.log1p(a), np.log1p(b)
        a = a - a.mean(axis=1, keepdims=True)
        b = b - b.mean(axis=1, keepdims=True)
        denom = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[i : i + chunk] = np.where(denom > 0, (a * b).sum(axis=1) / denom, np.nan)
    return out


def nb_nll(observed, mu, r) -> np.ndarray:
    """Per-cell negative-binomial negative log-likelihood summed over features.

    Parameters
    ----------
    observed
        (n, F) counts.
    mu
        (n, F) means.
    r
        (F,) dispersions (variance ``mu + mu^2 / r``).

    Returns
    -------
    numpy.ndarray
        (n,) NLL per cell.
    """
    from scipy.special import gammaln

    r = np.asarray(r, dtype=np.float64)[None, :]
    out = np.empty(observed.shape[0])
    for i in range(0, observed.shape[0], 1024):
        x = _dense_rows(observed, i, i + 1024)
        m = np.asarray(mu[i : i + 1024], dtype=np.float64)
        log_p = (
            gammaln(x + r)
            - gammaln(r)
            - gammaln(x + 1)
            + x * (np.log(m) - np.log(m + r))
            + r * (np.log(r) - np.log(m + r))
        )
        out[i : i + 1024] = -log_p.sum(axis=1)
    return out


def ari(labels_true, labels_pred) -> float:
    """Compute the adjusted Rand index between two labellings.

    Parameters
    ----------
    labels_true, labels_pred
        (n,) labels (compared as strings).

    Returns
    -------
    float
    """
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(np.asarray(labels_true).astype(str), np.asarray(labels_pred).astype(str)))


def batch_1_minus_asw(latent, batches) -> float:
    """1 - silhouette width (sklearn, raw, Euclidean) of ``latent`` by batch label.

    0 when batches are perfectly separated ... up to 2; about 1 when they are mixed.

    Parameters
    ----------
    latent
        (n, d) coordinates.
    batches
        (n,) batch labels, at least two distinct.

    Returns
    -------
    float
    """
    from sklearn.metrics import silhouette_score

    batches = np.asarray(batches).astype(str)
    if len(np.unique(batches)) < 2:
        raise ValueError("batch mixing needs at least two batches")
    return float(1.0 - silhouette_score(np.asarray(latent), batches))


def batch_asw(latent, batches, labels) -> float:
    """Batch silhouette as scIB defines it (``silhouette_batch``): within each cell type, each
    cell's silhouette by batch s (Euclidean), scored 1 − |s|; averaged within each type, then
    over the types (types with cells of one batch only are left out).

    1 means batches are mixed within every type; 0 that they are separated. Unlike
    :func:`batch_1_minus_asw`, it lies in [0, 1] and does not count the separation of
    cell types.

    Parameters
    ----------
    latent
        (n, d) coordinates.
    batches, labels
        (n,) batch labels and cell-type labels.

    Returns
    -------
    float
    """
    from sklearn.metrics import silhouette_samples

    latent, batches, labels = np.asarray(latent), np.asarray(batches).astype(str), np.asarray(labels).astype(str)
    per_type = []
    for label in np.unique(labels):
        rows = labels == label
        b = batches[rows]
        if len(np.unique(b)) < 2 or rows.sum() <= len(np.unique(b)):
            continue
        per_type.append(float(np.mean(1.0 - np.abs(silhouette_samples(latent[rows], b)))))
    if not per_type:
        raise ValueError("batch_asw needs a cell type with cells of at least two batches")
    return float(np.mean(per_type))


def loss_ratio(nll, reference_nll) -> float:
    """Median over cells of the per-cell NLL ratio ``nll / reference_nll``.

    Parameters
    ----------
    nll, reference_nll
        (n,) per-cell NLL of the same cells.

    Returns
    -------
    float
    """
    a, b = np.asarray(nll, dtype=float), np.asarray(reference_nll, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.median(a / b))


def cluster_sizes(labels: np.ndarray, n_components: int) -> np.ndarray:
    """(K,) int number of cells of each component (labels < 0 are left out)."""
    labels = np.asarray(labels)
    return np.bincount(labels[labels >= 0], minlength=n_components)


def components_used(labels: np.ndarray, n_components: int, min_fraction: float = MIN_COMPONENT_FRACTION) -> int:
    """Components holding at least ``min_fraction`` of the labelled cells (a component with
    one or two cells of thousands is not a cluster the model uses).
    """
    sizes = cluster_sizes(labels, n_components)
    return int((sizes >= min_fraction * max(sizes.sum(), 1)).sum())
