"""Decoder: shared trunk plus one head per modality, ending in a softmax over features."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Decoder", "head_width"]


def head_width(hidden_dim: int, n_features: int) -> int:
    """Width of a head's penultimate layer: ``max(H, round(sqrt(F)))``."""
    return max(hidden_dim, int(round(math.sqrt(n_features))))


class Decoder(nn.Module):
    """Maps representations to per-modality log-fractions.

    Parameters
    ----------
    input_dim
        Basal dimension plus all covariate dimensions.
    n_features
        Features per modality, in modality order.
    hidden_dim, n_trunk, n_head
        See :class:`~multidgd.ModelConfig`.
    """

    def __init__(
        self, input_dim: int, n_features: dict[str, int], *, hidden_dim: int, n_trunk: int, n_head: int
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = input_dim
        for _ in range(n_trunk):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU()]
            width = hidden_dim
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleDict()
        for name, n_out in n_features.items():
            head: list[nn.Module] = []
            w_in = width
            for _ in range(n_head - 2):
                head += [nn.Linear(w_in, hidden_dim), nn.ReLU()]
                w_in = hidden_dim
            if n_head >= 2:
                w = head_width(hidden_dim, n_out)
                head += [nn.Linear(w_in, w), nn.ReLU()]
                w_in = w
            head.append(nn.Linear(w_in, n_out))
            self.heads[name] = nn.Sequential(*head)

    def forward(self, z: torch.Tensor, modalities: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Decode representations.

        Parameters
        ----------
        z
            (n, input_dim) concatenated basal and covariate representations.
        modalities
            Which heads to run (default all).

        Returns
        -------
        Mapping modality -> (n, F_m) log-fractions (``log_softmax`` over features).
        """
        return {m: torch.log_softmax(y, dim=1) for m, y in self.logits(z, modalities).items()}

    def logits(self, z: torch.Tensor, modalities: list[str] | None = None) -> dict[str, torch.Tensor]:
        """The heads' outputs before the softmax: modality -> (n, F_m).

        Under autocast (reduced precision) the last layer's bias, which carries each
        feature's base level and so most of a logit's magnitude, is added in float32 after
        the low-precision matmul: the rounding error is then relative to the cell-specific
        part only, and the logits are float32.
        """
        h = self.trunk(z)
        names = list(self.heads) if modalities is None else modalities
        if not torch.is_autocast_enabled(z.device.type):
            return {m: self.heads[m](h) for m in names}
        out = {}
        for m in names:
            head = self.heads[m]
            x = head[:-1](h)
            last = head[-1]
            out[m] = torch.nn.functional.linear(x, last.weight).float() + last.bias
        return out

    def penultimate(self, z: torch.Tensor, modality: str) -> torch.Tensor:
        """Input of ``modality``'s last layer, (n, w): its logits are ``heads[modality][-1]`` of it."""
        return self.heads[modality][:-1](self.trunk(z))

    def _weight_blocks(self, chunk_elements: int, grads_only: bool = False):
        """(Linear, first row, block of its weight rows, same-shaped scratch view) for every
        weight matrix. The scratch is one small kept buffer: a fresh allocation the size of
        the largest weight costs several times the passes themselves.
        """
        for m in self.modules():
            if not isinstance(m, nn.Linear) or (grads_only and m.weight.grad is None):
                continue
            w = m.weight
            rows = max(1, chunk_elements // w.shape[1])
            need = min(w.numel(), rows * w.shape[1])
            buf = self.__dict__.get("_sign_buffer")
            if buf is None or buf.device != w.device or buf.dtype != w.dtype or buf.numel() < need:
                buf = self.__dict__["_sign_buffer"] = torch.empty(need, dtype=w.dtype, device=w.device)
            for r0 in range(0, w.shape[0], rows):
                wb = w[r0 : r0 + rows]
                yield m, r0, wb, buf[: wb.numel()].view_as(wb)

    @torch.no_grad()
    def add_l1_grad(self, coefficient: float, chunk_elements: int = 1 << 22) -> None:
        """Add the gradient of ``coefficient * weight_l1()`` to the weights' ``.grad``, a
        block of rows at a time.
        """
        for m, r0, wb, scratch in self._weight_blocks(chunk_elements, grads_only=True):
            m.weight.grad[r0 : r0 + len(wb)].add_(torch.sign(wb, out=scratch), alpha=coefficient)

    def weight_l1(self, chunk_elements: int = 1 << 22) -> torch.Tensor:
        """Sum of absolute values of all weight matrices (biases excluded).

        With gradients off it is summed a block of rows at a time (in float64 across blocks),
        without a temporary the size of a weight matrix.
        """
        if torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            return sum(m.weight.abs().sum() for m in self.modules() if isinstance(m, nn.Linear))
        total = None
        for _, _, wb, scratch in self._weight_blocks(chunk_elements):
            part = torch.abs(wb, out=scratch).sum().double()
            total = part if total is None else total + part
        return total if total is not None else torch.zeros((), dtype=torch.float64)
