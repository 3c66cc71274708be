"""Predicting a modality a cell lacks: the posterior over the best-start candidates.

A cell observed in one modality is scored against every best-start candidate (each basal
mixture component's mean with each combination of covariate class means) by the NB
negative log-likelihood of what it has. Its posterior weight on candidate ``j`` is

    w_j  proportional to  pi_j * exp(-nll_j / T)

where ``pi_j`` is the product of the candidate's basal-component and covariate-class mixture
weights and ``T`` a temperature (``T = 1``: the plain posterior). The missing modality is
predicted as the weighted mean of the candidates' decoded profiles: when the observation
says little (a few ATAC fragments) the weights spread and the prediction falls back towards
what the model believes over all plausible cells; when it says much, the weights
concentrate on one candidate. The temperature flattens a likelihood that is too sure of
itself (features are not independent given the cell, as the NB model assumes); its
defaults were chosen on the development files (``docs/design.md``, "Predicting a missing
modality").

Modalities a cell has are decoded from its optimised representation, as before.
"""

from __future__ import annotations

import numpy as np

__all__ = ["DEFAULT_TEMPERATURE", "posterior_weights", "prediction_certainty", "cell_temperature"]

#: Default temperature by what a cell has: ``"rna"`` (RNA only), ``"atac"`` (ATAC only),
#: ``"both"``. Chosen on the development files (``docs/design.md``).
DEFAULT_TEMPERATURE = {"rna": 50.0, "atac": 3.0, "both": 50.0}


def cell_temperature(observed: np.ndarray, temperature: float | None) -> np.ndarray:
    """Per-cell temperature: ``temperature`` for every cell, or (None) the default for what
    each cell has (``observed``: (n, 2) bool, columns rna, atac).
    """
    observed = np.asarray(observed, dtype=bool)
    if temperature is not None:
        if not np.isfinite(temperature) or not temperature > 0:
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        return np.full(len(observed), float(temperature))
    kind = np.where(observed.all(axis=1), "both", np.where(observed[:, 0], "rna", "atac"))
    return np.array([DEFAULT_TEMPERATURE[k] for k in kind], dtype=np.float64)


def posterior_weights(nll: np.ndarray, log_prior: np.ndarray, temperature: np.ndarray | float) -> np.ndarray:
    """Posterior weights of the candidates for each cell.

    Parameters
    ----------
    nll
        (n, J) negative log-likelihood of each cell's observed counts at each candidate;
        ``inf`` for a candidate not allowed for the cell.
    log_prior
        (J,) log prior weight of each candidate.
    temperature
        Scalar or (n,) temperature dividing the log-likelihood.

    Returns
    -------
    numpy.ndarray
        (n, J) float64 weights, each row summing to 1.
    """
    nll = np.asarray(nll, dtype=np.float64)
    t = np.broadcast_to(np.asarray(temperature, dtype=np.float64), (nll.shape[0],))[:, None]
    if not np.isfinite(nll).any(axis=1).all():
        raise ValueError("every cell needs at least one allowed candidate (a finite NLL)")
    logw = -nll / t + np.asarray(log_prior, dtype=np.float64)[None, :]
    logw -= logw.max(axis=1, keepdims=True)
    w = np.exp(logw)
    return w / w.sum(axis=1, keepdims=True)


def prediction_certainty(weights: np.ndarray) -> np.ndarray:
    """How sure each cell's prediction is: 1 minus the entropy of its weights over that of
    uniform weights (1: one candidate; 0: every candidate equally likely).

    Parameters
    ----------
    weights
        (n, J) posterior weights (:func:`posterior_weights`).

    Returns
    -------
    numpy.ndarray
        (n,) float in [0, 1].
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.shape[1] < 2:
        return np.ones(w.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(w > 0, w * np.log(w), 0.0).sum(axis=1)
    return np.clip(1.0 - h / np.log(w.shape[1]), 0.0, 1.0)
