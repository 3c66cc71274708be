"""Amortised start for new cells: a small network from a cell's counts to its representations.

The statistic. A decoder head ends in ``logits = W h + b`` (``W``: features x H) and a
softmax over features. For the multinomial part of the likelihood, the gradient with respect
to the head's last hidden activation ``h`` is ``W^T (x - n softmax(W h + b))``: at the best
``h`` the cell's count-weighted mean of ``W``'s rows, ``u = W^T x / n``, equals the decoded
profile's. ``u`` has H numbers (H = 100 to 341) and costs one sparse product, so it is a
cheap and nearly sufficient summary of a cell's counts under the trained decoder.

The network. Per modality, ``u`` and the log library size are standardised (training
cells' mean and standard deviation) and a presence flag is added; a modality a cell lacks
is all zeros. A multilayer perceptron maps the concatenation to the basal and covariate
representations (standardised targets). It is fitted by mean squared error to the training
and validation cells' learned representations, with a modality hidden at random (paired
half of the time, each single modality a quarter), so that cells with one modality are
placed too. The decoder, dispersions and mixtures are not touched.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from .data import MODALITIES

__all__ = [
    "EncoderConfig",
    "StartEncoder",
    "count_statistics",
    "fit_encoder",
    "reference_statistics",
    "encoder_payload",
    "encoder_from_payload",
]

logger = logging.getLogger(__name__)


@dataclass
class EncoderConfig:
    """Settings of :func:`fit_encoder`.

    Attributes
    ----------
    hidden_dim
        Width of the two hidden layers.
    epochs
        Passes over the reference cells, at most.
    max_steps
        Adam steps at most: with many cells fewer epochs run (``epochs`` passes of 2,000
        cells are already 2,400 steps), so the fit takes seconds at any size.
    batch_size
        Cells per step.
    lr
        Adam learning rate.
    paired_fraction
        Share of the cells shown with both modalities in an epoch (the rest with one,
        half each).
    seed
        Seed of the initial weights, the modality masks and the order.
    """

    hidden_dim: int = 256
    epochs: int = 300
    max_steps: int = 2000
    batch_size: int = 256
    lr: float = 1e-3
    paired_fraction: float = 0.5
    seed: int = 0


def _last_layer(module, modality: str) -> torch.Tensor:
    """(F, H) weight of a modality head's last linear layer."""
    return module.decoder.heads[modality][-1].weight.detach()


@torch.no_grad()
def count_statistics(
    module,
    counts: dict[str, sp.csr_matrix],
    library_size: np.ndarray,
    present: np.ndarray,
    observed: dict[str, np.ndarray | None] | None = None,
) -> dict[str, torch.Tensor]:
    """Per modality, the (n, H_m + 1) raw inputs of the encoder: ``W^T x / n`` and ``log n``.

    Parameters
    ----------
    module
        The trained :class:`~multidgd.module.DGDModule`.
    counts
        Modality -> (n, F') CSR counts over the features in ``observed`` (all when None).
    library_size
        (n, 2) totals of those counts (columns in ``MODALITIES`` order).
    present
        (n, 2) bool: which cells have each modality (rows of the others are zeros).
    observed
        Modality -> positions of the count columns among the model's features.
    """
    out = {}
    for m, x in counts.items():
        j = MODALITIES.index(m)
        w = _last_layer(module, m).float().cpu()
        obs = None if observed is None else observed.get(m)
        if obs is not None and len(obs) != w.shape[0]:
            w = w[torch.from_numpy(np.asarray(obs))]
        lib = np.where(present[:, j], library_size[:, j], 1.0).astype(np.float64)
        scaled = sp.diags(1.0 / lib) @ x.tocsr().astype(np.float64)
        u = torch.from_numpy(np.asarray(scaled @ w.double().numpy(), dtype=np.float32))
        log_lib = torch.from_numpy(np.log(lib).astype(np.float32)).unsqueeze(1)
        keep = torch.from_numpy(present[:, j]).unsqueeze(1)
        out[m] = torch.where(keep, torch.cat([u, log_lib], 1), torch.zeros(()))
    return out


class StartEncoder(nn.Module):
    """Counts statistics -> (basal, covariate) representations (see the module docstring).

    Parameters
    ----------
    input_dims
        Modality -> H_m + 1 (the width of :func:`count_statistics`' output).
    output_dim
        Basal dimension plus all covariate dimensions.
    latent_dim
        Basal dimension (the first ``latent_dim`` outputs).
    hidden_dim
        Width of the hidden layers.
    """

    def __init__(self, input_dims: dict[str, int], output_dim: int, latent_dim: int, hidden_dim: int = 256) -> None:
        super().__init__()
        self.input_dims = dict(input_dims)
        self.latent_dim = latent_dim
        self.hidden_dim = hidden_dim
        width = sum(d + 1 for d in input_dims.values())  # + a presence flag each
        self.net = nn.Sequential(
            nn.Linear(width, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, output_dim),
        )
        for m, d in input_dims.items():
            self.register_buffer(f"in_mean_{m}", torch.zeros(d))
            self.register_buffer(f"in_sd_{m}", torch.ones(d))
        self.register_buffer("out_mean", torch.zeros(output_dim))
        self.register_buffer("out_sd", torch.ones(output_dim))

    def inputs(self, stats: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """(n, width) standardised inputs; a modality a cell lacks is zeros with flag 0."""
        parts = []
        for j, m in enumerate(MODALITIES):
            if m not in self.input_dims:
                continue
            flag = present[:, j : j + 1].float()
            if m in stats:
                z = (stats[m] - getattr(self, f"in_mean_{m}")) / getattr(self, f"in_sd_{m}")
            else:
                z = torch.zeros(present.shape[0], self.input_dims[m], device=present.device)
            parts += [z * flag, flag]
        return torch.cat(parts, 1)

    @torch.no_grad()
    def start(self, module, query) -> tuple[np.ndarray, np.ndarray]:
        """(n, L) basal and (n, d * V) covariate starts of the cells of a
        :class:`~multidgd.query.QueryData` under ``module``.
        """
        stats = count_statistics(module, query.counts, query.library_size, query.present, query.observed)
        basal, cov = self(stats, torch.from_numpy(query.present))
        return basal.numpy(), cov.numpy()

    def forward(self, stats: dict[str, torch.Tensor], present: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, L) basal and (n, d * V) covariate starts."""
        y = self.net(self.inputs(stats, present)) * self.out_sd + self.out_mean
        return y[:, : self.latent_dim], y[:, self.latent_dim :]


def reference_statistics(module, counts: dict, library_size: np.ndarray, rows: np.ndarray, block: int = 8192):
    """:func:`count_statistics` of the data rows ``rows`` (cells with both modalities), read
    ``block`` rows at a time from in-memory or backed CSR matrices.
    """
    parts: dict[str, list[torch.Tensor]] = {m: [] for m in counts}
    for i in range(0, len(rows), block):
        r = rows[i : i + block]
        lib = library_size[r]
        stats = count_statistics(module, {m: x[r] for m, x in counts.items()}, lib, np.ones((len(r), 2), dtype=bool))
        for m, s in stats.items():
            parts[m].append(s)
    return {m: torch.cat(p) if p else torch.zeros(0, _last_layer(module, m).shape[1] + 1) for m, p in parts.items()}


def _standardise(encoder: StartEncoder, stats: dict[str, torch.Tensor], targets: torch.Tensor) -> None:
    """Set the encoder's input and output scales from the reference cells."""
    for m, s in stats.items():
        getattr(encoder, f"in_mean_{m}").copy_(s.mean(0))
        getattr(encoder, f"in_sd_{m}").copy_(s.std(0).clamp_min(1e-6))
    encoder.out_mean.copy_(targets.mean(0))
    encoder.out_sd.copy_(targets.std(0).clamp_min(1e-6))


def _random_present(n: int, paired_fraction: float, gen: torch.Generator) -> torch.Tensor:
    """(n, 2) bool: both modalities for ``paired_fraction`` of the cells, else one of them."""
    u = torch.rand(n, generator=gen)
    single = (1.0 - paired_fraction) / 2
    rna = u >= single  # [0, single): ATAC only
    atac = (u < single) | (u >= 2 * single)  # [single, 2 single): RNA only
    return torch.stack([rna, atac], 1)


def fit_encoder(
    stats: dict[str, torch.Tensor],
    basal: np.ndarray,
    covariate: np.ndarray,
    config: EncoderConfig | None = None,
) -> tuple[StartEncoder, dict]:
    """Fit a :class:`StartEncoder` to reference cells (all with both modalities).

    Parameters
    ----------
    stats
        Modality -> (n, H_m + 1) :func:`count_statistics` of the cells (both modalities).
    basal, covariate
        (n, L) and (n, d * V) learned representations, the targets.
    config
        :class:`EncoderConfig` (default values when None).

    Returns
    -------
    The fitted encoder (in eval mode, on the CPU) and a record: epochs, seconds, final
    training loss (mean squared error of standardised targets).
    """
    config = config or EncoderConfig()
    t0 = time.perf_counter()
    n = basal.shape[0]
    if n < 2:
        raise ValueError(f"the start encoder needs at least 2 reference cells with both modalities, got {n}")
    targets = torch.from_numpy(np.concatenate([basal, covariate], 1).astype(np.float32))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        encoder = StartEncoder(
            {m: s.shape[1] for m, s in stats.items()}, targets.shape[1], basal.shape[1], config.hidden_dim
        )
    with torch.no_grad():
        _standardise(encoder, stats, targets)
    scaled = (targets - encoder.out_mean) / encoder.out_sd
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.Adam(encoder.net.parameters(), lr=config.lr)
    encoder.train()
    loss_value = float("nan")
    per_epoch = -(-n // config.batch_size)
    epochs = max(1, min(config.epochs, -(-config.max_steps // per_epoch)))
    for _ in range(epochs):
        mask = _random_present(n, config.paired_fraction, gen)
        order = torch.randperm(n, generator=gen)
        total = 0.0
        for i in range(0, n, config.batch_size):
            idx = order[i : i + config.batch_size]
            x = encoder.inputs({m: s[idx] for m, s in stats.items()}, mask[idx])
            loss = ((encoder.net(x) - scaled[idx]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        loss_value = total / n
    record = {"epochs": epochs, "steps": epochs * per_epoch, "train_mse": loss_value}
    encoder.eval()
    record["seconds"] = round(time.perf_counter() - t0, 2)
    logger.info("start encoder fitted: %d epochs in %.1f s, MSE %.4f", epochs, record["seconds"], loss_value)
    return encoder, record


def encoder_payload(encoder: StartEncoder | None, record: dict | None) -> dict | None:
    """What a model file keeps of a start encoder (None: none)."""
    if encoder is None:
        return None
    return {
        "input_dims": dict(encoder.input_dims),
        "output_dim": int(encoder.out_mean.numel()),
        "latent_dim": encoder.latent_dim,
        "hidden_dim": encoder.hidden_dim,
        "state": {k: v.detach().cpu() for k, v in encoder.state_dict().items()},
        "record": record,
    }


def encoder_from_payload(payload: dict | None) -> tuple[StartEncoder | None, dict | None]:
    """The encoder and its record from :func:`encoder_payload`'s output."""
    if payload is None:
        return None, None
    encoder = StartEncoder(payload["input_dims"], payload["output_dim"], payload["latent_dim"], payload["hidden_dim"])
    encoder.load_state_dict(payload["state"])
    return encoder.eval(), payload.get("record")
