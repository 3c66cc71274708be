"""Per-cell representation tables with a row-wise Adam optimiser.

Representations are free parameters, one row per cell. A minibatch reads its rows as a
leaf tensor, and the gradient that comes back is added into the table's gradient buffer.
``step`` then applies Adam (coupled weight decay, as ``torch.optim.Adam``) to the rows
that received gradient, each row keeping its own step count, so a row that was not in a
minibatch is left exactly as it was.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["RepresentationTable", "adam_rows"]


def adam_rows(
    values: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    step: int | torch.Tensor,
    *,
    lr: float,
    betas: tuple[float, float],
    weight_decay: float = 0.0,
    eps: float = 1e-8,
    correct_before_sqrt: bool = False,
) -> torch.Tensor:
    """One Adam step on rows of representations.

    Parameters
    ----------
    values
        (n, dim) rows before the step; not modified.
    grad
        (n, dim) their gradient.
    exp_avg, exp_avg_sq
        (n, dim) Adam's first and second moment estimates of the rows, updated in place.
    step
        Number of this step, counting from 1: an int shared by all rows, or a (n, 1) float
        tensor of each row's own count.
    lr, betas, weight_decay, eps
        As in :class:`torch.optim.Adam` (coupled weight decay: ``grad + weight_decay * values``).
    correct_before_sqrt
        Denominator ``sqrt(exp_avg_sq / (1 - beta2**step)) + eps``, as in Algorithm 1 of
        Kingma & Ba, instead of :class:`torch.optim.Adam`'s
        ``sqrt(exp_avg_sq) / sqrt(1 - beta2**step) + eps``. The two agree up to rounding in
        the last bit; each caller keeps the form it has always used.

    Returns
    -------
    torch.Tensor
        (n, dim) rows after the step.
    """
    beta1, beta2 = betas
    if weight_decay:
        grad = grad + weight_decay * values
    exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    bias1 = 1.0 - beta1**step
    bias2 = 1.0 - beta2**step
    if correct_before_sqrt:
        denom = (exp_avg_sq / bias2).sqrt() + eps
    else:
        bias2_sqrt = bias2.sqrt() if isinstance(bias2, torch.Tensor) else math.sqrt(bias2)
        denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(eps)
    return values - lr * (exp_avg / bias1) / denom


class RepresentationTable(nn.Module):
    """A (n, dim) table of representations and its Adam state.

    Parameters
    ----------
    values
        (n, dim) initial values.
    """

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__()
        values = values.detach().clone().float()
        self.register_buffer("values", values)
        self.register_buffer("exp_avg", torch.zeros_like(values))
        self.register_buffer("exp_avg_sq", torch.zeros_like(values))
        self.register_buffer("steps", torch.zeros(values.shape[0], dtype=torch.int64))
        self.grad = torch.zeros_like(values)
        self._touched = torch.zeros(values.shape[0], dtype=torch.bool)

    def _apply(self, fn, recurse=True):  # keep the gradient buffers on the table's device
        super()._apply(fn, recurse)
        self.grad = fn(self.grad)
        self._touched = fn(self._touched)
        return self

    @property
    def n(self) -> int:
        """Number of rows (cells)."""
        return self.values.shape[0]

    @property
    def dim(self) -> int:
        """Columns per row."""
        return self.values.shape[1]

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Rows as a new leaf tensor that requires grad. Returns (len(index), dim)."""
        return self.values[index].detach().requires_grad_(True)

    def accumulate(self, index: torch.Tensor, grad: torch.Tensor | None) -> None:
        """Add a minibatch's gradient (len(index), dim) into the buffer."""
        if grad is None:
            return
        self.grad.index_add_(0, index, grad)
        self._touched[index] = True

    @torch.no_grad()
    def step(
        self, *, lr: float, betas: tuple[float, float], weight_decay: float, eps: float = 1e-8, block: int = 16384
    ) -> None:
        """One Adam step on every row that received gradient since the last step (``block``
        rows at a time, so the temporaries do not grow with the table).
        """
        touched = torch.nonzero(self._touched, as_tuple=False).squeeze(1)
        for start in range(0, touched.numel(), block):
            self._step_rows(touched[start : start + block], lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)

    def _step_rows(self, idx: torch.Tensor, *, lr: float, betas: tuple[float, float], weight_decay: float, eps: float):
        x = self.values[idx]
        m = self.exp_avg[idx]
        v = self.exp_avg_sq[idx]
        t = (self.steps[idx] + 1).to(x.dtype).unsqueeze(1)
        self.values[idx] = adam_rows(x, self.grad[idx], m, v, t, lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)
        self.exp_avg[idx] = m
        self.exp_avg_sq[idx] = v
        self.steps[idx] += 1
        self.grad[idx] = 0.0
        self._touched[idx] = False
