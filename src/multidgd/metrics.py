"""Metrics as the multiDGD paper computes them, on arrays (dense or scipy sparse)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["rmse", "mae", "auprc"]


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

    ``observed`` are counts and ``predicted`` the predicted counts (fraction x library).
    """
    return float(np.sqrt(_per_cell_error(observed, predicted, 2).mean()))


def mae(observed, predicted) -> float:
    """Absolute error averaged over features per cell, then over cells."""
    return float(_per_cell_error(observed, predicted, 1).mean())


def auprc(observed, predicted) -> float:
    """Average precision of ``predicted`` against ``observed >= 1``, over the flattened matrix."""
    from sklearn.metrics import average_precision_score

    if observed.shape != predicted.shape:
        raise ValueError(f"observed {observed.shape} and predicted {predicted.shape} differ in shape")
    truth = observed.toarray() if sp.issparse(observed) else np.asarray(observed)
    score = predicted.toarray() if sp.issparse(predicted) else np.asarray(predicted)
    labels = (truth >= 1).ravel()
    if not labels.any():
        raise ValueError("no observed entry is >= 1; AUPRC is undefined")
    return float(average_precision_score(labels, score.ravel()))
