"""Decoded profiles: the network's normalised expression or accessibility for given
representations, as a DataFrame, a dense array or a thresholded sparse matrix.

This is the one decoding path behind :meth:`multidgd.DGD.decode`,
:meth:`~multidgd.DGD.get_normalized_expression` and
:meth:`~multidgd.DGD.get_normalized_accessibility`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .data import positions
from .module import DGDModule, decoder_input

__all__ = [
    "UNIFORM",
    "CandidateMixture",
    "FeatureBlocks",
    "ProfileRequest",
    "check_threshold",
    "decoded_fractions",
    "normalized_profiles",
]


@torch.no_grad()
def decoded_fractions(
    module: DGDModule,
    latent: np.ndarray,
    covariate: np.ndarray,
    modality: str,
    cols: np.ndarray | None = None,
    batch_size: int = 1024,
    each: Callable[[np.ndarray, int], object] | None = None,
) -> list:
    """Decoded fractions of ``modality`` for consecutive blocks of rows.

    Parameters
    ----------
    module
        The trained network (moved to the CPU and put in eval mode).
    latent, covariate
        (n, L) basal and (n, d * V) covariate representations.
    modality
        ``"rna"`` or ``"atac"``.
    cols
        Feature positions to keep (default all).
    batch_size
        Rows decoded together.
    each
        Called on every block as ``each(values, first_row)``; its results are returned.

    Returns
    -------
    List of (b, F) float32 arrays (or of ``each``'s results), one per block.
    """
    module = module.to("cpu").eval()
    col_t = None if cols is None else torch.from_numpy(cols)
    parts = []
    for i in range(0, len(latent), batch_size):
        z, c = torch.from_numpy(latent[i : i + batch_size]), torch.from_numpy(covariate[i : i + batch_size])
        logf = module.decode(z, c, [modality])[modality]
        values = torch.exp(logf if col_t is None else logf[:, col_t]).numpy()
        parts.append(values if each is None else each(values, i))
    return parts


class FeatureBlocks:
    """Decoded fractions of a fixed set of cells, a block of features at a time.

    Keeps the (n, w) input of the modality's last layer and each cell's log normaliser (one
    pass over all features), so a block of fractions costs one (n, w) x (w, f) product and no
    (n, F) matrix is held.

    Parameters
    ----------
    module
        The trained network (moved to the CPU and put in eval mode).
    latent, covariate
        (n, L) basal and (n, d * V) covariate representations.
    modality
        ``"rna"`` or ``"atac"``.
    batch_size
        Cells through the trunk together.
    block_features
        Features per block of the normaliser's pass.
    """

    @torch.no_grad()
    def __init__(
        self,
        module: DGDModule,
        latent: np.ndarray,
        covariate: np.ndarray,
        modality: str,
        *,
        batch_size: int = 1024,
        block_features: int = 4096,
    ) -> None:
        module = module.to("cpu").eval()
        decoder = module.decoder
        parts = []
        for i in range(0, len(latent), batch_size):
            z = decoder_input(
                torch.from_numpy(latent[i : i + batch_size]), torch.from_numpy(covariate[i : i + batch_size])
            )
            parts.append(decoder.penultimate(z, modality))
        last = decoder.heads[modality][-1]
        self.hidden = torch.cat(parts) if parts else torch.zeros((0, last.in_features))  # (n, w)
        self.weight, self.bias = last.weight.detach(), last.bias.detach()  # (F, w), (F,)
        n_features = len(self.bias)
        log_norm = torch.full((len(self.hidden),), -torch.inf)
        for start in range(0, n_features, block_features):
            logits = self._logits(slice(start, start + block_features))
            log_norm = torch.logaddexp(log_norm, torch.logsumexp(logits, dim=1))
        self.log_norm = log_norm  # (n,)

    def _logits(self, cols) -> torch.Tensor:
        return torch.addmm(self.bias[cols], self.hidden, self.weight[cols].T)

    @torch.no_grad()
    def fractions(self, cols: np.ndarray) -> np.ndarray:
        """(n, len(cols)) float32 decoded fractions of features at positions ``cols``."""
        index = torch.from_numpy(np.asarray(cols, dtype=np.int64))
        return torch.exp(self._logits(index) - self.log_norm[:, None]).numpy()


#: The relative cut-off of sparse profiles: keep a feature where its share of the cell's
#: profile is at least that of a flat profile (1 / number of features).
UNIFORM = "uniform"


def check_threshold(threshold: Any, name: str) -> None:
    """Refuse a sparse cut-off that is neither a number > 0 nor :data:`UNIFORM`."""
    if isinstance(threshold, str):
        if threshold != UNIFORM:
            raise ValueError(f"{name} must be a number > 0 or {UNIFORM!r}, got {threshold!r}")
        return
    if not threshold > 0:
        raise ValueError(
            f"{name} must be > 0 or {UNIFORM!r} (values below it become 0; return_type='sparse' needs "
            f"threshold > 0), got {threshold}"
        )


@dataclass(frozen=True)
class ProfileRequest:
    """Which decoded values :func:`normalized_profiles` returns, and in what form.

    Attributes
    ----------
    features, cells
        Names, integer positions or a boolean mask (default all).
    return_type
        ``"dataframe"``, ``"array"`` or ``"sparse"`` (CSR keeping values >= ``threshold``);
        None: a DataFrame unless it would exceed ``max_dense_elements`` values (an error).
    threshold
        Cut-off of the sparse result: a number > 0, or ``"uniform"`` (:data:`UNIFORM`) to keep
        the features whose share of the cell's profile is at least 1 / (number of features of
        the modality), i.e. those above a flat profile, whatever the cell's library size.
    batch_size
        Cells decoded together.
    max_dense_elements
        Largest default (DataFrame) result, in values.
    """

    features: Any = None
    cells: Any = None
    return_type: str | None = None
    threshold: float | str = 0.0
    batch_size: int = 1024
    max_dense_elements: int = 50_000_000

    def __post_init__(self) -> None:
        if self.return_type not in (None, "dataframe", "array", "sparse"):
            raise ValueError(f"return_type must be 'dataframe', 'array' or 'sparse', got {self.return_type!r}")
        if self.return_type == "sparse":
            check_threshold(self.threshold, "threshold")


@dataclass(frozen=True)
class CandidateMixture:
    """Cells whose profile is the weighted mean of candidates' decoded profiles (or a blend
    of it with their own decoded profile).

    Attributes
    ----------
    cells
        (n,) bool: the cells predicted this way (the others are decoded from their own
        representations).
    weights
        (n, J) each cell's weights over the candidates (rows sum to 1).
    profiles
        ``profiles(cols)``: the (J, F) fractions of the candidates over feature positions
        ``cols`` (None: all).
    own
        (n,) weight of each cell's own decoded profile in its result (the candidates' mean
        gets 1 - own); None: 0 for every cell.
    """

    cells: np.ndarray
    weights: np.ndarray
    profiles: Callable[[np.ndarray | None], np.ndarray]
    own: np.ndarray | None = None


def normalized_profiles(
    module: DGDModule,
    modality: str,
    names: pd.Index,
    latent: np.ndarray,
    covariate: np.ndarray,
    library: np.ndarray | None,
    feature_names: pd.Index,
    request: ProfileRequest,
    mixture: CandidateMixture | None = None,
):
    """Decoded profiles of some cells and features.

    Parameters
    ----------
    module
        The trained network.
    modality
        ``"rna"`` or ``"atac"``.
    names, latent, covariate
        The cells: names (n,), basal (n, L) and covariate (n, d * V) representations.
    library
        (n,) library sizes to scale fractions into counts, or None for fractions.
    feature_names
        The modality's features, in decoder order.
    request
        Which cells and features, and the form of the result.
    mixture
        Cells predicted as a weighted mean of candidates' profiles instead.

    Returns
    -------
    DataFrame (cells x features), (n, F) float32 array or CSR matrix.
    """
    features, cells, return_type = request.features, request.cells, request.return_type
    threshold, batch_size = request.threshold, request.batch_size
    rows = positions(names, cells, "cells")
    cols = positions(feature_names, features, "genes" if modality == "rna" else "peaks")
    n_out, f_out = len(rows), len(cols)
    if return_type is None:
        if n_out * f_out > request.max_dense_elements:
            raise ValueError(
                f"{n_out} cells x {f_out} features is a large dense matrix; pass a subset "
                "(cells=, genes=/peaks=), return_type='sparse' with a threshold, or "
                "return_type='array' to ask for it anyway"
            )
        return_type = "dataframe"
    full = f_out == len(feature_names) and (cols == np.arange(f_out)).all()
    lib_rows = None if library is None else library[rows]
    sub_cols = None if full else cols
    mixed = None
    if mixture is not None and mixture.cells[rows].any():
        own = np.zeros(len(names), np.float32) if mixture.own is None else mixture.own.astype(np.float32)
        mixed = (mixture.cells[rows], mixture.weights[rows].astype(np.float32), mixture.profiles(sub_cols), own[rows])

    def finish(values: np.ndarray, start: int):
        if mixed is not None:
            use, weights, profiles, own = mixed
            block = np.flatnonzero(use[start : start + len(values)])
            if len(block):
                a = own[start + block, None]
                values[block] = a * values[block] + (1 - a) * (weights[start + block] @ profiles)
        keep = values >= 1.0 / len(feature_names) if threshold == UNIFORM else None
        if lib_rows is not None:
            values = values * lib_rows[start : start + len(values), None]
        if return_type == "sparse":
            keep = values >= threshold if keep is None else keep
            values = sp.csr_matrix(np.where(keep, values, 0).astype(np.float32))
        return values

    parts = decoded_fractions(module, latent[rows], covariate[rows], modality, sub_cols, batch_size, finish)
    if return_type == "sparse":
        return sp.vstack(parts, format="csr") if parts else sp.csr_matrix((0, f_out), dtype=np.float32)
    out = np.concatenate(parts) if parts else np.zeros((0, f_out), dtype=np.float32)
    if return_type == "array":
        return out
    return pd.DataFrame(out, index=names[rows], columns=feature_names[cols])
