"""Log-densities used by the model: negative binomial (dense and sparse-aware) and priors.

All functions work in log space. The negative binomial is parameterised by its mean ``mu``
and dispersion ``r`` (variance ``mu + mu^2 / r``)::

    log NB(x | mu, r) = lgamma(x+r) - lgamma(r) - lgamma(x+1) + x log(mu/(mu+r)) + r log(r/(mu+r))
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "log_ball_volume",
    "nb_log_prob",
    "nb_log_prob_sparse",
    "softball_log_prob",
    "softball_sample",
    "normal_log_prob",
    "dirichlet_log_prob",
    "nb_nll_from_logits",
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
    torch.Tensor
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
    torch.Tensor
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
    radius
        Radius R of the ball.
    sharpness
        Steepness a of the fall-off at the boundary.

    Returns
    -------
    torch.Tensor
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


# ----------------------------------------------------------------------------- fused dense passes
# The (cells x features) part of the loss is memory-bound element-wise work. Compiled with
# torch.compile (inductor), the forward is three passes (row max, row sum of exponentials,
# then t, softplus and their weighted row sum) and the backward two, instead of about ten
# and twelve eager passes. Without a working compiler the same functions run eagerly.


def _dense_forward(y: torch.Tensor, log_library: torch.Tensor, rho: torch.Tensor):
    peak = y.amax(dim=1, keepdim=True)
    e = torch.exp(y - peak)
    denom = e.sum(dim=1)
    lse = peak.squeeze(1) + torch.log(denom)
    log_r = torch.nn.functional.softplus(rho)  # r = 1 + exp(rho), log r = softplus(rho)
    r = torch.exp(log_r)
    t = e * (torch.exp(log_library) / denom)[:, None] / r  # t = mu / r
    sp = torch.log1p(t)  # softplus(u), u = log mu - log r
    return (sp * r).sum(dim=1), t, sp, lse, log_r, r


def _dense_backward(t: torch.Tensor, sp: torch.Tensor, r: torch.Tensor, go: torch.Tensor):
    sig = t / (1.0 + t)  # sigmoid(u)
    grad_r = (go[:, None] * (sp - sig)).sum(dim=0)
    return sig * r * go[:, None], grad_r


def _dense_softmax_correction(g: torch.Tensor, t: torch.Tensor, r: torch.Tensor, log_library: torch.Tensor):
    # log mu = y - logsumexp(y) + log L: dL/dy = g - softmax(y) rowsum(g), softmax = t r / L
    total = g.sum(dim=1)
    return g - t * r * (total * torch.exp(-log_library))[:, None]


_COMPILED: dict[str, object] = {}
_COMPILE_FAILED = False


def _kernel(name: str, fn, device_type: str):
    """``fn`` compiled for CPU (once), or ``fn`` itself where compiling is off or failed.

    ``MULTIDGD_COMPILE=0`` turns compiling off. A compile or run failure is logged once and
    the eager functions are used from then on.
    """
    import os

    if _COMPILE_FAILED or device_type != "cpu" or os.environ.get("MULTIDGD_COMPILE", "1") == "0":
        return fn
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _COMPILED[name]


def _run(name: str, fn, *args):
    global _COMPILE_FAILED
    kernel = _kernel(name, fn, args[0].device.type)
    if kernel is fn:
        return fn(*args)
    try:
        return kernel(*args)
    except Exception as err:  # no C++ compiler, unsupported platform, ...
        import logging

        _COMPILE_FAILED = True
        logging.getLogger(__name__).warning(
            "compiling the loss failed (%s: %s); running it uncompiled (slower)", type(err).__name__, err
        )
        return fn(*args)


class _NBNLLFromLogits(torch.autograd.Function):
    """Per-row NB negative log-likelihood of sparse counts, from softmax logits, in one node.

    See :func:`nb_nll_from_logits`. With ``u = log mu - log r``, the forward computes
    ``t = exp(u) = mu / r`` from the softmax's own exponentials (one ``exp`` pass) and the
    zero-count term ``sum_j r_j log1p(t_ij)`` (one ``log1p`` pass); the backward needs no
    transcendental function: ``sigmoid(u) = t / (1 + t)`` and ``softmax = t r / L``. It keeps
    two (n, F) float32 buffers; it is differentiated once (a second backward raises).
    """

    @staticmethod
    def forward(ctx, logits, log_library, rho, rows, cols, values):
        y = logits.float()
        # nll_i = sum_j r_j softplus(u_ij): the zero-count term of every entry
        nll, t, sp, lse, log_r, r = _run("forward", _dense_forward, y, log_library, rho.float())
        if values.numel():
            r_nz = r[cols]
            u_nz = y[rows, cols] + (log_library - lse)[rows] - log_r[cols]
            nz = (
                values * torch.nn.functional.softplus(-u_nz)
                - torch.lgamma(values + r_nz)
                + torch.lgamma(r)[cols]  # per feature, then gathered: fewer lgamma calls
                + torch.lgamma(values + 1.0)
            )
            nll = nll.index_add(0, rows, nz)
        else:
            u_nz = values
        ctx.save_for_backward(log_library, rho, r, t, sp, rows, cols, values, u_nz)
        ctx.logits_dtype = logits.dtype
        ctx.used = False
        return nll

    @staticmethod
    def backward(ctx, grad_out):
        if ctx.used:
            raise RuntimeError("nb_nll_from_logits can be differentiated once (its buffers are reused)")
        ctx.used = True
        log_library, rho, r, t, sp, rows, cols, values, u_nz = ctx.saved_tensors
        go = grad_out.float()
        need_logits, _, need_rho = ctx.needs_input_grad[:3]
        grad_logits = grad_rho = None
        # dense part: d/du [r softplus(u)] = r sigmoid(u); d/dr (u = log mu - log r) = softplus(u) - sigmoid(u)
        g, grad_r = _run("backward", _dense_backward, t, sp, r, go)
        del sp
        if values.numel():
            s_nz = torch.sigmoid(u_nz)
            g_nz = go[rows]
            r_nz = r[cols]
            if need_rho:
                d_r = (values / r_nz) * (1.0 - s_nz) - torch.digamma(values + r_nz) + torch.digamma(r)[cols]
                grad_r = grad_r.index_add(0, cols, g_nz * d_r)
        if need_logits:
            # dL/du = dL/dlog mu: sigmoid(u) r_j go_i, minus x_ij (1 - sigmoid(u_ij)) go_i at the non-zeros
            if values.numel():
                g.index_put_((rows, cols), -g_nz * values * (1.0 - s_nz), accumulate=True)
            g = _run("correction", _dense_softmax_correction, g, t, r, log_library)
            grad_logits = g.to(ctx.logits_dtype)
        if need_rho:
            grad_rho = grad_r * torch.exp(rho)  # dr/drho
        return grad_logits, None, grad_rho, None, None, None


def nb_nll_from_logits(
    logits: torch.Tensor,
    log_library: torch.Tensor,
    rho: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    values: torch.Tensor,
) -> torch.Tensor:
    """Per-row NB negative log-likelihood of sparse counts given the decoder's logits.

    The mean is ``mu = L * softmax(logits)`` and the dispersion ``r = 1 + exp(rho)``. The
    result equals ``-nb_log_prob_sparse(log_softmax(logits) + log L, 1 + exp(rho), ...)``;
    the gradient reaches ``logits`` and ``rho`` through a hand-written backward that reuses
    two (n, F) float32 buffers kept from the forward (so the result can be differentiated
    once). Computed in float32 whatever the logits' dtype.

    Parameters
    ----------
    logits
        (n, F) decoder output before the softmax.
    log_library
        (n,) log library size.
    rho
        (F,) dispersion parameter.
    rows, cols, values
        The non-zero counts, as in :func:`nb_log_prob_sparse`.

    Returns
    -------
    torch.Tensor
        (n,) negative log-likelihood of each row.
    """
    return _NBNLLFromLogits.apply(logits, log_library.float(), rho, rows, cols, values)
