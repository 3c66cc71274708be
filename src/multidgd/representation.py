"""Per-cell representation tables with a row-wise Adam optimiser.

Representations are free parameters, one row per cell. A minibatch reads its rows as a
leaf tensor, and the gradient that comes back is added into the table's gradient buffer.
``step`` then applies Adam (coupled weight decay, as ``torch.optim.Adam``) to the rows
that received gradient, each row keeping its own step count, so a row that was not in a
minibatch is left exactly as it was.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RepresentationTable"]


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
        return self.values.shape[0]

    @property
    def dim(self) -> int:
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
        rows at a time, so the temporaries do not grow with the table)."""
        touched = torch.nonzero(self._touched, as_tuple=False).squeeze(1)
        for start in range(0, touched.numel(), block):
            self._step_rows(touched[start : start + block], lr=lr, betas=betas, weight_decay=weight_decay, eps=eps)

    def _step_rows(self, idx: torch.Tensor, *, lr: float, betas: tuple[float, float], weight_decay: float, eps: float):
        beta1, beta2 = betas
        g = self.grad[idx]
        x = self.values[idx]
        if weight_decay:
            g = g + weight_decay * x
        m = self.exp_avg[idx].mul_(beta1).add_(g, alpha=1.0 - beta1)
        v = self.exp_avg_sq[idx].mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        t = (self.steps[idx] + 1).to(x.dtype).unsqueeze(1)
        bias1 = 1.0 - beta1**t
        bias2 = 1.0 - beta2**t
        denom = (v.sqrt() / bias2.sqrt()).add_(eps)
        self.values[idx] = x - lr * (m / bias1) / denom
        self.exp_avg[idx] = m
        self.exp_avg_sq[idx] = v
        self.steps[idx] += 1
        self.grad[idx] = 0.0
        self._touched[idx] = False

    def zero_grad(self) -> None:
        self.grad.zero_()
        self._touched.zero_()
