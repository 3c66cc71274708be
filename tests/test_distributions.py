"""Log-densities: negative binomial (dense, sparse, fused from logits) and the priors."""

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from multidgd.distributions import (
    dirichlet_log_prob,
    nb_log_prob,
    nb_log_prob_sparse,
    nb_nll_from_logits,
    normal_log_prob,
    softball_log_prob,
    softball_sample,
)


def test_nb_matches_scipy():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 40, size=(7, 11)).astype(np.float64)
    mu = rng.gamma(2.0, 3.0, size=(7, 11))
    r = rng.uniform(1.0, 6.0, size=11)
    ours = nb_log_prob(torch.tensor(x), torch.log(torch.tensor(mu)), torch.tensor(r)).numpy()
    expected = scipy.stats.nbinom.logpmf(x, r, r / (r + mu))
    np.testing.assert_allclose(ours, expected, rtol=1e-10, atol=1e-10)


def test_sparse_nb_equals_dense():
    rng = np.random.default_rng(1)
    x = rng.poisson(0.3, size=(9, 50)).astype(np.float32)
    log_mu = torch.randn(9, 50, dtype=torch.float64)
    r = torch.tensor(rng.uniform(1.0, 4.0, 50))
    rows, cols = np.nonzero(x)
    sparse = nb_log_prob_sparse(
        log_mu, r, torch.from_numpy(rows), torch.from_numpy(cols), torch.tensor(x[rows, cols], dtype=torch.float64)
    )
    dense = nb_log_prob(torch.tensor(x, dtype=torch.float64), log_mu, r).sum(1)
    np.testing.assert_allclose(sparse.numpy(), dense.numpy(), rtol=1e-12)
    # the gradients agree too
    lm1 = log_mu.clone().requires_grad_(True)
    lm2 = log_mu.clone().requires_grad_(True)
    nb_log_prob_sparse(
        lm1, r, torch.from_numpy(rows), torch.from_numpy(cols), torch.tensor(x[rows, cols], dtype=torch.float64)
    ).sum().backward()
    nb_log_prob(torch.tensor(x, dtype=torch.float64), lm2, r).sum().backward()
    np.testing.assert_allclose(lm1.grad.numpy(), lm2.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_sparse_nb_all_zero_rows():
    log_mu = torch.zeros(3, 4, dtype=torch.float64)
    r = torch.full((4,), 2.0, dtype=torch.float64)
    empty = torch.zeros(0, dtype=torch.int64)
    out = nb_log_prob_sparse(log_mu, r, empty, empty, torch.zeros(0, dtype=torch.float64))
    # mu = 1, r = 2: log P(0) = 2 log(2/3) per entry
    np.testing.assert_allclose(out.numpy(), 4 * 2 * math.log(2 / 3))


@pytest.mark.parametrize("dim,radius,a", [(2, 2.0, 5.0), (20, 2.0, 5.0), (5, 1.5, 3.0)])
def test_softball_formula(dim, radius, a):
    x = torch.randn(6, dim, dtype=torch.float64) * radius
    vol = math.pi ** (dim / 2) * radius**dim / math.gamma(dim / 2 + 1)
    norm = np.linalg.norm(x.numpy(), axis=1)
    expected = -math.log(vol) - np.log1p(np.exp(a * (norm / radius - 1)))
    np.testing.assert_allclose(softball_log_prob(x, radius, a).numpy(), expected, rtol=1e-10)


def test_softball_sample_inside_ball():
    s = softball_sample(2000, 3, 2.0, torch.Generator().manual_seed(0))
    norms = torch.linalg.vector_norm(s, dim=1)
    assert norms.max() <= 2.0 + 1e-6
    # uniform in the ball: P(|x| < R/2) = 1/8 in 3-D
    assert abs(float((norms < 1.0).float().mean()) - 1 / 8) < 0.03


def test_normal_and_dirichlet():
    x = torch.tensor([0.3, -1.2], dtype=torch.float64)
    np.testing.assert_allclose(normal_log_prob(x, 0.5, 2.0).numpy(), scipy.stats.norm.logpdf(x.numpy(), 0.5, 2.0))
    w = np.array([0.2, 0.5, 0.3])
    for alpha in (1.0, 2.0, 0.7):
        ours = float(dirichlet_log_prob(torch.tensor(np.log(w)), alpha))
        assert ours == pytest.approx(scipy.stats.dirichlet.logpdf(w, [alpha] * 3), rel=1e-10)


def _fused_case(seed=0, n=9, f=40, density=0.3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(n, f, generator=gen) * 3) * (torch.rand(n, f, generator=gen) < density)
    rows, cols = x.nonzero(as_tuple=True)
    logits = torch.randn(n, f, generator=gen, dtype=torch.float64) * 2
    rho = torch.randn(f, generator=gen, dtype=torch.float64)
    log_lib = torch.rand(n, generator=gen, dtype=torch.float64) * 4 + 1
    return x, rows, cols, logits, rho, log_lib


def test_fused_nb_nll_matches_scipy_and_autograd():
    x, rows, cols, logits, rho, log_lib = _fused_case()
    # value against scipy at mu = L softmax(logits), r = 1 + exp(rho)
    mu = np.exp(log_lib.numpy())[:, None] * scipy.special.softmax(logits.numpy(), axis=1)
    r = 1 + np.exp(rho.numpy())
    expected = -scipy.stats.nbinom.logpmf(x.numpy(), r, r / (r + mu)).sum(axis=1)
    y = logits.float().requires_grad_(True)
    p = rho.float().requires_grad_(True)
    ours = nb_nll_from_logits(y, log_lib.float(), p, rows, cols, x[rows, cols])
    np.testing.assert_allclose(ours.detach().numpy(), expected, rtol=2e-5)
    # gradients (weighted rows, so the non-constant path runs) against float64 autograd
    weights = torch.linspace(0.5, 2.0, len(log_lib), dtype=torch.float64)
    gy, gp = torch.autograd.grad((ours * weights.float()).sum(), [y, p])
    y64, p64 = logits.clone().requires_grad_(True), rho.clone().requires_grad_(True)
    ref = -nb_log_prob_sparse(
        torch.log_softmax(y64, 1) + log_lib[:, None], 1 + torch.exp(p64), rows, cols, x[rows, cols].double()
    )
    ry, rp = torch.autograd.grad((ref * weights).sum(), [y64, p64], retain_graph=True)
    np.testing.assert_allclose(gy.numpy(), ry.numpy(), atol=2e-5)
    np.testing.assert_allclose(gp.numpy(), rp.numpy(), atol=2e-5)
    # a summed loss (constant output gradient) takes the one-pass path: same gradients
    y2 = logits.float().requires_grad_(True)
    g2 = torch.autograd.grad(nb_nll_from_logits(y2, log_lib.float(), rho.float(), rows, cols, x[rows, cols]).sum(), y2)
    ry2 = torch.autograd.grad(ref.sum(), y64)[0]
    np.testing.assert_allclose(g2[0].numpy(), ry2.numpy(), atol=2e-5)


def test_fused_nb_nll_without_counts_and_twice_differentiated():
    x, rows, cols, logits, rho, log_lib = _fused_case(seed=1)
    empty = torch.zeros(0, dtype=torch.int64)
    y = logits.float().requires_grad_(True)
    out = nb_nll_from_logits(y, log_lib.float(), rho.float(), empty, empty, torch.zeros(0))
    mu = np.exp(log_lib.numpy())[:, None] * scipy.special.softmax(logits.numpy(), axis=1)
    r = 1 + np.exp(rho.numpy())
    np.testing.assert_allclose(out.detach().numpy(), -(r * np.log(r / (r + mu))).sum(axis=1), rtol=2e-5)
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="once"):
        out.sum().backward()


def test_fused_nb_nll_bfloat16_logits():
    x, rows, cols, logits, rho, log_lib = _fused_case(seed=2)
    y = logits.to(torch.bfloat16).requires_grad_(True)
    out = nb_nll_from_logits(y, log_lib.float(), rho.float(), rows, cols, x[rows, cols])
    ref = nb_nll_from_logits(y.detach().float(), log_lib.float(), rho.float(), rows, cols, x[rows, cols])
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.detach().numpy(), ref.numpy(), rtol=1e-6)  # the loss itself is float32
    out.sum().backward()
    assert y.grad.dtype == torch.bfloat16 and torch.isfinite(y.grad.float()).all()


def test_compiled_and_eager_fused_loss_agree_and_failure_falls_back(monkeypatch, caplog):
    from multidgd import distributions as D

    gen = torch.Generator().manual_seed(3)
    x = torch.poisson(torch.rand(9, 70, generator=gen) * 2) * (torch.rand(9, 70, generator=gen) < 0.3)
    rows, cols = x.nonzero(as_tuple=True)
    logits, rho = torch.randn(9, 70, generator=gen), torch.randn(70, generator=gen)
    lib = torch.rand(9, generator=gen) * 3 + 2

    def run():
        y = logits.clone().requires_grad_(True)
        p = rho.clone().requires_grad_(True)
        nll = D.nb_nll_from_logits(y, lib, p, rows, cols, x[rows, cols])
        (nll * torch.arange(1.0, 10.0)).sum().backward()
        return nll.detach(), y.grad, p.grad

    compiled = run()
    monkeypatch.setenv("MULTIDGD_COMPILE", "0")
    eager = run()
    for a, b in zip(compiled, eager, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # a compiler that fails: one warning, then the eager functions, same numbers
    monkeypatch.setenv("MULTIDGD_COMPILE", "1")
    monkeypatch.setattr(D, "_COMPILED", {})
    monkeypatch.setattr(D, "_COMPILE_FAILED", False)

    def broken(fn, **kw):
        def fail(*a, **k):
            raise RuntimeError("no compiler here")

        return fail

    monkeypatch.setattr(torch, "compile", broken)
    with caplog.at_level("WARNING", logger="multidgd.distributions"):
        fallback = run()
    assert "compiling the loss failed" in caplog.text and D._COMPILE_FAILED
    for a, b in zip(fallback, eager, strict=True):
        torch.testing.assert_close(a, b)
