"""Log-densities used by the model: negative binomial (dense and sparse-aware) and priors.

All functions work in log space. The negative binomial is parameterised by its mean ``mu``
and dispersion ``r`` (variance ``mu + mu^2 / r``)::

    log NB(x | mu, r) = lgamma(x+r) - lgamma(r) - lgamma(x+1) + x log(mu/(mu+r)) + r log(r/(mu+r))
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "nb_log_prob",
    "nb_log_prob_sparse",
    "softball_log_prob",
    "softball_sample",
    "normal_log_prob",
    "dirichlet_log_prob",
]


def nb_log_prob(x: torch.Tensor, log_mu: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Element-wise NB log-probability from a dense count matrix.

    Parameters
    ----------
    x
        (n, F) counts.
    log_mu
        (n, F) log of the mean.
    r
        (F,) dispersion, > 0.

    Returns
    -------
    (n, F) log-probabilities.
    """
    log_r = torch.log(r)
    log_mu_plus_r = torch.logaddexp(log_mu, log_r)
    return (
        torch.lgamma(x + r)
        - torch.lgamma(r)
        - torch.lgamma(x + 1.0)
        + x * (log_mu - log_mu_plus_r)
        + r * (log_r - log_mu_plus_r)
    )


def nb_log_prob_sparse(
    log_mu: torch.Tensor,
    r: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
) -> torch.Tensor:
    """Per-row NB log-likelihood of a sparse count matrix, summed over features.

    The zero-count term ``r log(r/(mu+r))`` is evaluated for every entry (a dense,
    cheap expression); the lgamma and ``x log(mu/(mu+r))`` terms, which vanish at
    ``x = 0``, are evaluated only at the non-zeros.

    Parameters
    ----------
    log_mu
        (n, F) log of the mean.
    r
        (F,) dispersion.
    rows, cols
        (nnz,) int64 coordinates of the non-zero counts.
    values
        (nnz,) the non-zero counts.

    Returns
    -------
    (n,) log-likelihood of each row.
    """
    log_r = torch.log(r)
    # r log(r/(mu+r)) = -r softplus(log mu - log r): one fused op per entry and its backward
    dense = -(r * torch.nn.functional.softplus(log_mu - log_r)).sum(dim=1)
    if values.numel() == 0:
        return dense
    r_nz = r[cols]
    lmu_nz = log_mu[rows, cols]
    sparse = (
        torch.lgamma(values + r_nz)
        - torch.lgamma(r_nz)
        - torch.lgamma(values + 1.0)
        - values * torch.nn.functional.softplus(log_r[cols] - lmu_nz)
    )
    return dense.index_add(0, rows, sparse)


def log_ball_volume(dim: int, radius: float) -> float:
    """Log-volume of the ``dim``-dimensional ball of the given radius."""
    return 0.5 * dim * math.log(math.pi) + dim * math.log(radius) - math.lgamma(0.5 * dim + 1.0)


def softball_log_prob(x: torch.Tensor, radius: float, sharpness: float) -> torch.Tensor:
    """Softball log-density: ``-log Vol(B(R)) - log(1 + exp(a (|x|/R - 1)))``.

    Parameters
    ----------
    x
        (..., d) points.

    Returns
    -------
    (...,) log-densities.
    """
    dim = x.shape[-1]
    norm = torch.linalg.vector_norm(x, dim=-1)
    return -log_ball_volume(dim, radius) - torch.nn.functional.softplus(sharpness * (norm / radius - 1.0))


def softball_sample(n: int, dim: int, radius: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Points drawn uniformly inside the ``dim``-ball of the given radius. Returns (n, dim)."""
    direction = torch.randn(n, dim, generator=generator)
    direction = direction / torch.linalg.vector_norm(direction, dim=-1, keepdim=True)
    length = radius * torch.rand(n, 1, generator=generator) ** (1.0 / dim)
    return direction * length


def normal_log_prob(x: torch.Tensor, mean: float, sd: float) -> torch.Tensor:
    """Element-wise log-density of N(mean, sd²)."""
    return -0.5 * ((x - mean) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2.0 * math.pi)


def dirichlet_log_prob(log_weights: torch.Tensor, alpha: float) -> torch.Tensor:
    """Log-density of Dirichlet(alpha, ..., alpha) at ``exp(log_weights)``. Returns a scalar."""
    k = log_weights.shape[-1]
    const = math.lgamma(k * alpha) - k * math.lgamma(alpha)
    return const + (alpha - 1.0) * log_weights.sum(-1)
