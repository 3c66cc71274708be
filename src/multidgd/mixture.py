"""Gaussian mixture priors with hyper-priors (basal and supervised covariate mixtures)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from .distributions import dirichlet_log_prob, normal_log_prob, softball_log_prob, softball_sample

__all__ = ["GaussianMixture"]

_LOG_2PI = math.log(2.0 * math.pi)


class GaussianMixture(nn.Module):
    """Mixture of Gaussians with diagonal or isotropic covariance, in log space.

    Learned: ``mean`` (K, d), ``log_precision`` (K, d) or (K, 1) holding
    ``-log sigma^2``, and ``logits`` (K,) with weights ``softmax(logits)``.

    Hyper-priors: a softball on each mean, N(-2 log sd_init, logprecision_prior_sd²) on each
    log-precision entry, and Dirichlet(alpha) on the weights.

    Parameters
    ----------
    n_components
        K.
    dim
        d.
    sd_init
        Initial component standard deviation ``sigma_0``.
    radius, sharpness
        Softball hyper-prior on the means; means are initialised uniformly in the ball.
    dirichlet_alpha
        Dirichlet concentration on the weights.
    logprecision_prior_sd
        Standard deviation of the log-precision hyper-prior.
    covariance
        ``"diagonal"`` or ``"isotropic"``.
    generator
        Random generator for the initial means.
    """

    def __init__(
        self,
        n_components: int,
        dim: int,
        *,
        sd_init: float,
        radius: float,
        sharpness: float,
        dirichlet_alpha: float,
        logprecision_prior_sd: float = 1.0,
        covariance: Literal["diagonal", "isotropic"] = "diagonal",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if covariance not in ("diagonal", "isotropic"):
            raise ValueError(f"covariance must be 'diagonal' or 'isotropic', got {covariance!r}")
        self.n_components = n_components
        self.dim = dim
        self.radius = float(radius)
        self.sharpness = float(sharpness)
        self.dirichlet_alpha = float(dirichlet_alpha)
        self.logprecision_prior_mean = -2.0 * math.log(sd_init)
        self.logprecision_prior_sd = float(logprecision_prior_sd)
        n_prec = dim if covariance == "diagonal" else 1
        self.mean = nn.Parameter(softball_sample(n_components, dim, radius, generator))
        self.log_precision = nn.Parameter(torch.full((n_components, n_prec), self.logprecision_prior_mean))
        self.logits = nn.Parameter(torch.zeros(n_components))

    @property
    def log_weights(self) -> torch.Tensor:
        """(K,) log mixture weights."""
        return torch.log_softmax(self.logits, dim=0)

    def _gaussian_log_density(self, diff: torch.Tensor, lp: torch.Tensor) -> torch.Tensor:
        """Compute log N(diff | 0, exp(-lp)) over the last axis.

        ``lp`` holds ``d`` or 1 log-precisions per row and broadcasts against ``diff``.
        """
        quad = (diff.square() * torch.exp(lp)).sum(-1)
        log_det = lp.sum(-1) * (self.dim / lp.shape[-1])
        return 0.5 * (log_det - quad) - 0.5 * self.dim * _LOG_2PI

    def component_log_density(self, z: torch.Tensor) -> torch.Tensor:
        """Compute log N(z | mean_k, sigma_k²) for every component, without weights.

        Parameters
        ----------
        z
            (n, d) points.

        Returns
        -------
        torch.Tensor
            (n, K) log-densities.
        """
        # z: (n, d) -> (n, 1, d); mean: (K, d); log-precisions (K, d) or (K, 1) -> (n, K)
        return self._gaussian_log_density(z.unsqueeze(1) - self.mean, self.log_precision)

    def joint_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Compute log pi_k + log N(z | k) for every component. Returns (n, K)."""
        return self.component_log_density(z) + self.log_weights

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Mixture log-density of each point. Returns (n,)."""
        return torch.logsumexp(self.joint_log_prob(z), dim=1)

    def log_responsibilities(self, z: torch.Tensor) -> torch.Tensor:
        """Compute log p(k | z) in log space. Returns (n, K)."""
        return torch.log_softmax(self.joint_log_prob(z), dim=1)

    def class_log_prob(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Log-density of each point under its own class's component (supervised use).

        Parameters
        ----------
        z
            (n, d) points.
        labels
            (n,) int64 component index of each point.

        Returns
        -------
        torch.Tensor
            (n,) log-densities.
        """
        return self._gaussian_log_density(z - self.mean[labels], self.log_precision[labels])

    def hyperprior_log_prob(self) -> torch.Tensor:
        """Compute log p(phi): softball on means + Gaussian on log-precisions + Dirichlet on weights."""
        return (
            softball_log_prob(self.mean, self.radius, self.sharpness).sum()
            + normal_log_prob(self.log_precision, self.logprecision_prior_mean, self.logprecision_prior_sd).sum()
            + dirichlet_log_prob(self.log_weights, self.dirichlet_alpha)
        )

    @torch.no_grad()
    def add_components(self, n: int) -> list[int]:
        """Append ``n`` components; existing values are kept.

        A new component has its mean at the origin, its precision at its prior mean and its
        weight logit at the mean of the others.

        Parameters
        ----------
        n
            Number of components to add.

        Returns
        -------
        list of int
            Indices of the new components.
        """
        k = self.n_components
        dev = self.mean.device
        self.mean = nn.Parameter(torch.cat([self.mean, torch.zeros(n, self.dim, device=dev)]))
        lp = torch.full((n, self.log_precision.shape[1]), self.logprecision_prior_mean, device=dev)
        self.log_precision = nn.Parameter(torch.cat([self.log_precision, lp]))
        self.logits = nn.Parameter(torch.cat([self.logits, self.logits.mean().expand(n)]))
        self.n_components = k + n
        return list(range(k, k + n))

    @property
    def sd_init(self) -> float:
        """The initial standard deviation ``sigma_0`` (the mean of the log-precision hyper-prior)."""
        return math.exp(-0.5 * self.logprecision_prior_mean)

    @property
    def sd(self) -> torch.Tensor:
        """Component standard deviations, (K, d) or (K, 1)."""
        return torch.exp(-0.5 * self.log_precision)
