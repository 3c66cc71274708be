"""Gaussian mixture priors: densities, responsibilities, hyper-priors and initial values."""

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from multidgd.distributions import dirichlet_log_prob, normal_log_prob, softball_log_prob
from multidgd.mixture import GaussianMixture


def _mixture(k=4, d=3, covariance="diagonal", seed=0):
    gm = GaussianMixture(
        k,
        d,
        sd_init=0.4 / k,
        radius=2.0,
        sharpness=5.0,
        dirichlet_alpha=1.0,
        covariance=covariance,
        generator=torch.Generator().manual_seed(seed),
    ).double()
    with torch.no_grad():
        gm.log_precision.copy_(torch.randn_like(gm.log_precision))
        gm.logits.copy_(torch.randn(k))
    return gm


@pytest.mark.parametrize("covariance", ["diagonal", "isotropic"])
def test_mixture_density_equals_brute_force(covariance):
    gm = _mixture(covariance=covariance)
    z = torch.randn(10, 3, dtype=torch.float64)
    weights = torch.softmax(gm.logits, 0).detach().numpy()
    means = gm.mean.detach().numpy()
    var = np.broadcast_to(np.exp(-gm.log_precision.detach().numpy()), (4, 3))
    brute = np.zeros(10)
    for k in range(4):
        brute += weights[k] * scipy.stats.multivariate_normal(means[k], np.diag(var[k])).pdf(z.numpy())
    np.testing.assert_allclose(gm.log_prob(z).detach().numpy(), np.log(brute), rtol=1e-10)


def test_responsibilities_in_log_space_far_points():
    gm = _mixture(k=3, d=2)
    with torch.no_grad():
        gm.mean.copy_(torch.tensor([[0.0, 0.0], [50.0, 0.0], [0.0, 50.0]], dtype=torch.float64))
        gm.log_precision.fill_(4.0)  # sd 0.135: densities underflow to 0 far from the means
    z = torch.tensor([[49.0, 0.5], [0.5, 49.0], [1.0, 0.0]], dtype=torch.float64)
    logr = gm.log_responsibilities(z).detach()
    np.testing.assert_allclose(torch.exp(logr).sum(1).numpy(), 1.0)
    assert logr.argmax(1).tolist() == [1, 2, 0]


def test_class_log_prob_is_component_density():
    gm = _mixture(covariance="isotropic")
    z = torch.randn(5, 3, dtype=torch.float64)
    labels = torch.tensor([0, 3, 1, 1, 2])
    full = gm.component_log_density(z)
    np.testing.assert_allclose(
        gm.class_log_prob(z, labels).detach().numpy(), full[torch.arange(5), labels].detach().numpy()
    )


@torch.no_grad()
def test_hyperprior_formula():
    gm = _mixture(k=3, d=4)
    lp_mean = -2 * math.log(0.4 / 3)
    expected = (
        softball_log_prob(gm.mean, 2.0, 5.0).sum()
        + normal_log_prob(gm.log_precision, lp_mean, 1.0).sum()
        + dirichlet_log_prob(torch.log_softmax(gm.logits, 0), 1.0)
    )
    assert float(gm.hyperprior_log_prob()) == pytest.approx(float(expected), rel=1e-12)
    # Dirichlet(1) is constant: lgamma(K)
    assert float(dirichlet_log_prob(torch.log_softmax(gm.logits, 0), 1.0)) == pytest.approx(math.lgamma(3))


@torch.no_grad()
def test_init_values():
    k = 100  # the original rounds 0.4/K to 0 decimals for K > 80; we do not
    gm = GaussianMixture(k, 20, sd_init=0.4 / k, radius=2.0, sharpness=5.0, dirichlet_alpha=1.0)
    assert torch.allclose(gm.sd, torch.full_like(gm.sd, 0.004), rtol=1e-5)
    assert float(torch.linalg.vector_norm(gm.mean, dim=1).max()) <= 2.0 + 1e-6
    np.testing.assert_allclose(torch.exp(gm.log_weights).detach().numpy(), 1 / k, rtol=1e-6)
