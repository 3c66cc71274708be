"""Predicting a modality a cell lacks: the posterior over the best-start candidates.

A cell observed in one modality is scored against every best-start candidate (each basal
mixture component's mean with each combination of covariate class means) by the NB
negative log-likelihood of what it has. Its posterior weight on candidate ``j`` is

    w_j  proportional to  pi_j * exp(-nll_j / T)

where ``pi_j`` is the product of the candidate's basal-component and covariate-class mixture
weights and ``T`` a temperature (``T = 1``: the plain posterior). The missing modality is
predicted as the weighted mean of the candidates' profiles, each the library-weighted mean
decoded profile of the training cells the candidate stands for (responsibility of its
component times that of its covariate classes): when the observation
says little (a few ATAC fragments) the weights spread and the prediction falls back towards
what the model believes over all plausible cells; when it says much, the weights
concentrate on one candidate. The temperature flattens a likelihood that is too sure of
itself (features are not independent given the cell, as the NB model assumes); its
defaults were chosen on the development files (``docs/design.md``, "Predicting a missing
modality").

A modality a new cell has is denoised the same way: its profile is a blend, α times the
one decoded from its own optimised representation plus 1 − α times the posterior mean of
the candidates' profiles given everything the cell has. With a handful of counts the
optimised representation also fits their noise; the posterior mean does not. α is fitted
per model and modality on its validation cells, placed as new cells
(:func:`fit_denoise_weight`, :meth:`multidgd.DGD.fit_denoising`); a model without fitted
weights uses its own representation alone (α = 1), as do cells the model trained on and
``prediction="point"``.
"""

from __future__ import annotations

import numpy as np
import torch

from .module import DGDModule
from .profiles import decoded_fractions

__all__ = [
    "DEFAULT_TEMPERATURE",
    "DENOISE_WEIGHTS",
    "fit_denoise_weight",
    "PREDICTIONS",
    "check_prediction",
    "check_temperature",
    "posterior_weights",
    "prediction_certainty",
    "cell_temperature",
    "candidate_profiles",
    "CLUSTER_TEMPERATURES",
    "component_posterior",
    "fit_cluster_temperature",
]

#: Default temperature by what a cell has: ``"rna"`` (RNA only), ``"atac"`` (ATAC only),
#: ``"both"``. Chosen on the development files (``docs/design.md``).
DEFAULT_TEMPERATURE = {"rna": 50.0, "atac": 2.0, "both": 50.0}

#: Weights α of a new cell's own decoded profile tried by :func:`fit_denoise_weight` (the
#: posterior mean of the candidates' profiles gets 1 − α); ``docs/design.md``, "Denoising
#: what a new cell has".
DENOISE_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def fit_denoise_weight(counts, own: np.ndarray, posterior: np.ndarray, modality: str) -> tuple[float, dict]:
    """The weight α of :data:`DENOISE_WEIGHTS` whose blend best reconstructs cells' counts.

    Parameters
    ----------
    counts
        (n, F) observed counts of cells the model did not train on (dense or sparse).
    own, posterior
        (n, F) fractions: decoded from each cell's own representation, and the posterior
        mean of the candidates' profiles.
    modality
        ``"rna"``: the lowest RMSE of the counts (fractions times each cell's total);
        ``"atac"``: the highest AUPRC of the counts' presence (the paper's metrics).

    Returns
    -------
    The weight (on ties the larger, closer to the own profile) and ``{α: score}``.
    """
    from .metrics import auprc, rmse

    library = np.asarray(counts.sum(axis=1), dtype=np.float64).ravel()[:, None]
    scores = {}
    for a in DENOISE_WEIGHTS:
        blend = library * (a * own + (1.0 - a) * posterior)
        scores[a] = float(rmse(counts, blend) if modality == "rna" else auprc(counts, blend))
    sign = 1.0 if modality == "rna" else -1.0
    best = min(sorted(scores, reverse=True), key=lambda a: sign * scores[a])
    return best, scores


#: How a modality a cell lacks can be predicted: from the posterior over the candidates, or
#: decoded from the cell's own optimised representation.
PREDICTIONS = ("posterior", "point")


def check_prediction(prediction: str, option: str = "prediction") -> None:
    """Refuse a value of ``option`` that is not one of :data:`PREDICTIONS`."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"{option} must be 'posterior' or 'point', got {prediction!r}")


def check_temperature(temperature: float | None) -> None:
    """Refuse a temperature that is neither None nor a finite number > 0."""
    if temperature is not None and (not np.isfinite(temperature) or not temperature > 0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def cell_temperature(observed: np.ndarray, temperature: float | None) -> np.ndarray:
    """Per-cell temperature: ``temperature`` for every cell, or (None) the default for what
    each cell has (``observed``: (n, 2) bool, columns rna, atac).
    """
    observed = np.asarray(observed, dtype=bool)
    check_temperature(temperature)
    if temperature is not None:
        return np.full(len(observed), float(temperature))
    kind = np.where(observed.all(axis=1), "both", np.where(observed[:, 0], "rna", "atac"))
    return np.array([DEFAULT_TEMPERATURE[k] for k in kind], dtype=np.float64)


def posterior_weights(nll: np.ndarray, log_prior: np.ndarray, temperature: np.ndarray | float) -> np.ndarray:
    """Posterior weights of the candidates for each cell.

    Parameters
    ----------
    nll
        (n, J) negative log-likelihood of each cell's observed counts at each candidate;
        ``inf`` for a candidate not allowed for the cell; a row of NaN for a cell that was
        not scored (its weights are NaN).
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
    unscored = np.isnan(nll).all(axis=1)
    if not np.isfinite(nll[~unscored]).any(axis=1).all():
        raise ValueError("every cell needs at least one allowed candidate (a finite NLL)")
    logw = -nll / t + np.asarray(log_prior, dtype=np.float64)[None, :]
    logw[unscored] = 0.0
    logw -= logw.max(axis=1, keepdims=True)
    w = np.exp(logw)
    w /= w.sum(axis=1, keepdims=True)
    w[unscored] = np.nan
    return w


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
        (n,) float in [0, 1]; NaN for a cell whose weights are NaN (not scored).
    """
    w = np.asarray(weights, dtype=np.float64)
    unscored = np.isnan(w).any(axis=1)
    if w.shape[1] < 2:
        return np.where(unscored, np.nan, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(w > 0, w * np.log(w), 0.0).sum(axis=1)
    return np.where(unscored, np.nan, np.clip(1.0 - h / np.log(w.shape[1]), 0.0, 1.0))


#: Temperatures tried by :func:`fit_cluster_temperature` (geometric, 1 to 1,000).
CLUSTER_TEMPERATURES = np.geomspace(1.0, 1000.0, 31)


def component_posterior(
    nll: np.ndarray, log_prior: np.ndarray, n_components: int, temperature: np.ndarray | float
) -> np.ndarray:
    """Posterior probability of each basal component given a cell's counts.

    The candidates' posterior weights (:func:`posterior_weights`; candidate ``j = k * C + c``
    pairs component ``k`` with covariate combination ``c``) summed over the combinations.

    Parameters
    ----------
    nll, log_prior, temperature
        As for :func:`posterior_weights`.
    n_components
        K; ``nll`` has ``K * C`` columns.

    Returns
    -------
    numpy.ndarray
        (n, K) float64, rows summing to 1 (NaN rows for cells not scored).
    """
    nll = np.asarray(nll)
    if nll.ndim != 2 or nll.shape[1] % n_components:
        raise ValueError(f"nll needs K * C columns for K = {n_components}, got shape {nll.shape}")
    w = posterior_weights(nll, log_prior, temperature)
    return w.reshape(len(w), n_components, -1).sum(axis=2)


def fit_cluster_temperature(
    nll: np.ndarray,
    log_prior: np.ndarray,
    labels: np.ndarray,
    n_components: int,
    temperatures: np.ndarray = CLUSTER_TEMPERATURES,
) -> float:
    """The temperature under which a cell's counts best predict its cluster.

    Temperature scaling with the mixture's own clusters as the labels: of ``temperatures``,
    the one minimising the mean log loss ``-log p(label | counts)`` of
    :func:`component_posterior` over the scored cells. No cell types are needed.

    Parameters
    ----------
    nll, log_prior, n_components
        As for :func:`component_posterior`.
    labels
        (n,) int cluster of each cell (the argmax of its responsibilities p(k | z)).
    temperatures
        Values tried.

    Returns
    -------
    float
    """
    labels = np.asarray(labels)
    scored = ~np.isnan(np.asarray(nll, dtype=np.float64)).all(axis=1) & (labels >= 0)
    if not scored.any():
        raise ValueError("no scored cell with a cluster to fit the temperature on")
    nll, labels = np.asarray(nll)[scored], labels[scored]
    rows = np.arange(len(labels))
    losses = [
        -np.log(np.maximum(component_posterior(nll, log_prior, n_components, t)[rows, labels], 1e-300)).mean()
        for t in temperatures
    ]
    return float(temperatures[int(np.argmin(losses))])


@torch.no_grad()
def candidate_profiles(
    module: DGDModule,
    candidates,
    latent: np.ndarray,
    covariate: np.ndarray,
    library: np.ndarray | None,
    modality: str,
    cols: np.ndarray | None = None,
    batch_size: int = 1024,
) -> np.ndarray:
    """Each candidate's profile: the mean decoded fractions of the reference cells it stands for.

    A reference cell's share in candidate ``j = k * C + c`` is its responsibility under basal
    component ``k`` times those of its covariate representations under the classes of
    combination ``c``, times its library size (so that, like the average-profile baseline,
    deep cells weigh more). A candidate with less than a millionth of the total share (a
    class learned after training, an empty component) takes the profile decoded at its own
    representations.

    Parameters
    ----------
    module
        The trained network.
    candidates
        :class:`multidgd.inference.Candidates`.
    latent, covariate
        (m, L) and (m, d * V) representations of the reference (training) cells.
    library
        (m,) their library sizes in ``modality`` (None: equal weights).
    modality
        ``"rna"`` or ``"atac"``.
    cols
        Feature positions to keep (default all).
    batch_size
        Cells decoded together.

    Returns
    -------
    numpy.ndarray
        (J, F) float32 profiles.
    """
    module = module.to("cpu").eval()
    d = module.config.covariate_dim
    log_r = module.basal.log_responsibilities(torch.from_numpy(latent)).double()  # (m, K)
    log_c = torch.zeros(len(latent), len(candidates.combos), dtype=torch.float64)
    for v, mix in enumerate(module.covariates):
        resp = mix.log_responsibilities(torch.from_numpy(covariate[:, v * d : (v + 1) * d])).double()
        log_c += resp[:, torch.from_numpy(candidates.combos[:, v])]
    share = (log_r[:, :, None] + log_c[:, None, :]).exp().reshape(len(latent), -1).numpy()
    if library is not None:
        share = share * np.nan_to_num(np.asarray(library, dtype=np.float64))[:, None]  # NaN: lacks it
    mass = share.sum(axis=0)
    n_feat = len(module.dispersion_rho[modality]) if cols is None else len(cols)
    total = np.zeros((share.shape[1], n_feat))

    def add(values: np.ndarray, start: int) -> None:
        total[:] += share[start : start + len(values)].T @ values

    decoded_fractions(module, latent, covariate, modality, cols, batch_size, add)
    empty = mass <= 1e-6 * max(mass.sum(), 1e-300)
    out = (total / np.where(empty, 1.0, mass)[:, None]).astype(np.float32)
    if empty.any():
        own = decoded_fractions(
            module, candidates.latent[empty], candidates.covariate[empty], modality, cols, batch_size
        )
        out[empty] = np.concatenate(own)
    return out
