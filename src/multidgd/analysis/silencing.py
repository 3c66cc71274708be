"""Gene-to-peak associations by in-silico silencing, as in the multiDGD paper.

For a gene g and the cells that express it, the gene's count is set to 0, the negative
binomial loss of that gene alone is computed from each cell's decoded profile, and the
cell's basal representation is moved along the gradient of that loss (by default one first
Adam step of learning rate 0.01, as in the original analysis). Decoding before and after
gives, for every peak (or gene) j,

    ΔX̂_j = X̂_j(z) − X̂_j(z_silenced),

so a **positive** ΔX̂ means the peak loses accessibility when the gene is silenced (it
"closes": a positive association), a negative one that it opens.

:func:`gene2peak` goes in four steps: check the arguments, prepare the cells (counts,
representations, library sizes, groups), silence the (gene, cell) pairs block by block while
summing their effects per gene and group, and summarise the sums into the table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ..data import MODALITIES, positions
from ..representation import adam_rows
from ..settings import settings
from .cells import CellSource, cell_representations
from .tables import FEATURE_COLUMN, cell_groups, check_genes, check_modality, check_size, check_top_n

__all__ = ["gene2peak"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the silencing step
def _silencing_gradient(module, z, covariate, log_library, gene, dispersion) -> torch.Tensor:
    """Gradient, row by row, of the NB loss of a zero count of each row's gene."""
    zt = z.detach().requires_grad_(True)
    with torch.enable_grad():
        logf = module.decode(zt, covariate, ["rna"])["rna"]
        log_mu = logf.gather(1, gene[:, None]).squeeze(1) + log_library
        loss = (dispersion * torch.nn.functional.softplus(log_mu - torch.log(dispersion))).sum()
        (g,) = torch.autograd.grad(loss, zt)
    return g


def _silenced_representations(
    module,
    basal: torch.Tensor,
    covariate: torch.Tensor,
    log_library: torch.Tensor,
    gene: torch.Tensor,
    *,
    n_steps: int,
    lr: float,
    step_size: float | None,
    betas: tuple[float, float],
    eps: float = 1e-8,
) -> torch.Tensor:
    """Basal representations after ``n_steps`` steps on each row's silenced-gene loss.

    Row i's loss is the NB negative log-likelihood of a zero count of gene ``gene[i]``,
    ``r * log(1 + mu / r)`` with ``mu = library * fraction``; rows are independent, so one
    backward pass of their sum gives every row's own gradient. Steps are Adam's (with bias
    correction; the first one is ``lr * g / (|g| + eps)`` per coordinate) or, with
    ``step_size``, of that length along the normalised gradient.
    """
    z = basal.clone()
    if n_steps == 0 or (step_size is None and lr == 0) or step_size == 0:
        return z
    r = module.dispersion("rna").detach()[gene]
    m = torch.zeros_like(z)
    v = torch.zeros_like(z)
    for t in range(1, n_steps + 1):
        g = _silencing_gradient(module, z, covariate, log_library, gene, r)
        if step_size is not None:
            z = z - step_size * g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
            continue
        z = adam_rows(z, g, m, v, t, lr=lr, betas=betas, eps=eps, correct_before_sqrt=True)
    return z.detach()


# ----------------------------------------------------------------------------- checked arguments
@dataclass(frozen=True)
class _Target:
    """The genes to silence and how their effects are reported."""

    genes: list[str]
    modality: str
    scale: str

    @classmethod
    def checked(cls, model, genes, modality: str, scale: str) -> _Target:
        model.state  # noqa: B018 - raises when untrained
        modality = check_modality(modality)
        genes = check_genes(genes, model.var_names["rna"])
        if scale not in ("fraction", "counts"):
            raise ValueError(f"scale must be 'fraction' or 'counts', got {scale!r}")
        return cls(genes, modality, scale)


@dataclass(frozen=True)
class _Step:
    """How far a silenced cell's representation moves: Adam steps or fixed-length steps."""

    n_steps: int
    lr: float
    step_size: float | None

    @classmethod
    def checked(cls, n_steps, lr, step_size) -> _Step:
        if not isinstance(n_steps, int | np.integer) or n_steps < 0:
            raise ValueError(f"n_steps must be an integer >= 0, got {n_steps!r}")
        if not lr >= 0:
            raise ValueError(f"lr must be >= 0, got {lr!r}")
        if step_size is not None and not step_size >= 0:
            raise ValueError(f"step_size must be >= 0 or None, got {step_size!r}")
        return cls(int(n_steps), float(lr), step_size)


@dataclass(frozen=True)
class _Budget:
    """Limits on the work and the result: rows kept, cells needed, block sizes."""

    top_n: int | None
    min_cells: int
    batch_size: int
    memory_budget_mb: float
    max_rows: int

    @classmethod
    def checked(cls, top_n, min_cells, batch_size, memory_budget_mb, max_rows) -> _Budget:
        check_top_n(top_n)
        for name, value in (
            ("batch_size", batch_size),
            ("memory_budget_mb", memory_budget_mb),
            ("min_cells", min_cells),
        ):
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        return cls(top_n, min_cells, batch_size, memory_budget_mb, max_rows)

    def per_gene(self, n_features: int) -> int:
        """Rows kept per gene and group."""
        return self.top_n if self.top_n is not None else n_features


def _feature_positions(all_features: pd.Index, features) -> np.ndarray:
    cols = positions(all_features, features, "features")
    if len(cols) == 0:
        raise ValueError("features selects no feature")
    return cols


@dataclass(frozen=True)
class _Request:
    """gene2peak's checked arguments, but for the cells."""

    target: _Target
    step: _Step
    budget: _Budget
    cols: np.ndarray  # positions of the reported features
    device: torch.device

    @classmethod
    def checked(cls, model, target: _Target, step: _Step, budget: _Budget, features, device) -> _Request:
        from ..model import resolve_device

        cols = _feature_positions(model.var_names[target.modality], features)
        return cls(target, step, budget, cols, resolve_device(device))


# ----------------------------------------------------------------------------- the cells
@dataclass(frozen=True)
class _Cells:
    """The selected cells with what silencing needs of them."""

    names: pd.Index  # (n,) cell names
    latent: np.ndarray  # (n, L) basal representations
    covariate: np.ndarray  # (n, C)
    library: np.ndarray  # (n, 2) library sizes over all model features
    rna: sp.csc_matrix  # (n, n_genes) counts of the requested genes
    groups: np.ndarray  # (n,) group codes
    group_names: list[str]


def _prepare_cells(model, data, genes: list[str], source: CellSource) -> _Cells:
    """Collect the counts of the genes, representations and library sizes of the selected cells."""
    from ..query import read_query

    names = model.modality_names(source.rna_mod, source.atac_mod)
    query = read_query(
        data,
        var_names=model.var_names,
        modality_names=names,
        covariate_keys=[],
        layer=source.layer,
        min_feature_fraction=0,
    )
    if "rna" not in query.counts:
        raise ValueError("the data has no RNA modality: gene2peak needs the silenced genes' counts")
    gene_pos = model.var_names["rna"].get_indexer(genes)
    col = pd.Index(query.observed["rna"]).get_indexer(gene_pos)
    if (col < 0).any():
        absent = [g for g, c in zip(genes, col, strict=True) if c < 0]
        raise ValueError(
            f"genes of the model absent from the data, so their expressing cells are unknown: {absent[:5]}"
        )
    rows = positions(query.obs_names, source.cells, "cells")
    codes, group_names = cell_groups(data, source.groupby, query.obs_names, rows)
    keep = codes >= 0
    rows, codes = rows[keep], codes[keep]
    obs = query.obs_names[rows]
    reps = cell_representations(model, data, query, rows, source)
    rna = query.counts["rna"][rows][:, col].tocsc()
    return _Cells(obs, reps.latent, reps.covariate, reps.library, rna, codes, group_names)


@dataclass(frozen=True)
class _Pairs:
    """The (gene, cell) pairs to silence: each kept gene with each selected cell expressing it."""

    genes: list[str]  # kept genes
    gene: np.ndarray  # (n_pairs,) position in genes
    cell: np.ndarray  # (n_pairs,) position in the selected cells


def _expressing_pairs(cells: _Cells, genes: list[str], min_cells: int) -> _Pairs:
    """Pairs of each gene expressed in at least ``min_cells`` cells (others skipped with a warning)."""
    pair_gene, pair_cell = [], []
    kept_genes = []
    for k, g in enumerate(genes):
        expressing = cells.rna.indices[cells.rna.indptr[k] : cells.rna.indptr[k + 1]][
            cells.rna.data[cells.rna.indptr[k] : cells.rna.indptr[k + 1]] > 0
        ]
        if len(expressing) < min_cells:
            logger.warning(
                "gene %s is expressed in %d selected cells (< min_cells=%d): skipped", g, len(expressing), min_cells
            )
            continue
        pair_gene.append(np.full(len(expressing), len(kept_genes), dtype=np.int64))
        pair_cell.append(np.sort(expressing))
        kept_genes.append(g)
    if not kept_genes:
        raise ValueError(f"none of the genes is expressed in at least min_cells={min_cells} of the selected cells")
    return _Pairs(kept_genes, np.concatenate(pair_gene), np.concatenate(pair_cell))


def _check_result_size(pairs: _Pairs, cells: _Cells, n_features: int, budget: _Budget, return_cells: bool) -> None:
    present = np.zeros((len(pairs.genes), len(cells.group_names)), dtype=bool)
    present[pairs.gene, cells.groups[pairs.cell]] = True
    per_gene = budget.per_gene(n_features)
    check_size(
        int(present.sum()) * min(per_gene, n_features), budget.max_rows, "pass top_n= or features=, or fewer genes"
    )
    if return_cells:
        check_size(
            len(pairs.gene) * n_features,
            budget.max_rows,
            "the per-cell effects are a dense pairs x features matrix: pass features= or cells=, or return_cells=False",
        )


# ----------------------------------------------------------------------------- silencing in blocks
@dataclass(frozen=True)
class _Effects:
    """ΔX̂ and the log ratio ``log X̂ − log X̂_silenced`` of one block of pairs, (pairs, features)."""

    delta: torch.Tensor
    logfc: torch.Tensor


@dataclass(frozen=True)
class _Silencer:
    """The model's module on its device, with what it takes to silence and decode one block of pairs."""

    module: torch.nn.Module
    gene: torch.Tensor  # model RNA position of each kept gene
    columns: torch.Tensor | None  # reported features; None: all, in order
    modality: str
    library_column: int | None  # library size that multiplies ΔX̂ (scale="counts")
    step: _Step
    betas: tuple[float, float]
    device: torch.device

    @classmethod
    def build(cls, model, genes: list[str], target: _Target, step: _Step, cols: np.ndarray, device) -> _Silencer:
        module = model.module.to(device).eval()
        col_t = torch.from_numpy(cols).to(device)
        n_features = len(model.var_names[target.modality])
        full = len(cols) == n_features and bool((cols == np.arange(len(cols))).all())
        gene_t = torch.from_numpy(model.var_names["rna"].get_indexer(genes)).to(device)
        betas = tuple(model.train_config.betas) if model.train_config is not None else (0.5, 0.7)
        library_column = MODALITIES.index(target.modality) if target.scale == "counts" else None
        return cls(module, gene_t, None if full else col_t, target.modality, library_column, step, betas, device)

    def effects(self, cells: _Cells, cell: np.ndarray, gene: np.ndarray) -> _Effects:
        """Effects of silencing gene ``gene[i]`` (a kept-gene position) in cell ``cell[i]``."""
        dev, mod = self.device, self.modality
        uniq, inverse = np.unique(cell, return_inverse=True)
        inv = torch.from_numpy(inverse).to(dev)
        z_u = torch.from_numpy(cells.latent[uniq]).to(dev)
        cov_u = torch.from_numpy(cells.covariate[uniq]).to(dev)
        lib = torch.from_numpy(cells.library[cell]).to(dev, torch.float32)
        z_ko = _silenced_representations(
            self.module,
            z_u[inv],
            cov_u[inv],
            torch.log(lib[:, 0]),
            self.gene[torch.from_numpy(gene).to(dev)],
            n_steps=self.step.n_steps,
            lr=self.step.lr,
            step_size=self.step.step_size,
            betas=self.betas,
        )
        before = self.module.decode(z_u, cov_u, [mod])[mod]
        after = self.module.decode(z_ko, cov_u[inv], [mod])[mod]
        if self.columns is not None:
            before, after = before[:, self.columns], after[:, self.columns]
        delta = torch.exp(before)[inv]
        delta.sub_(torch.exp(after))
        logfc = before[inv]
        logfc.sub_(after)
        del before, after
        if self.library_column is not None:
            delta.mul_(lib[:, self.library_column : self.library_column + 1])
        return _Effects(delta, logfc)


@dataclass(frozen=True)
class _Means:
    """Mean effects per (gene, group, feature) of a chunk of genes (float64), and the cell counts."""

    delta: np.ndarray
    abs_delta: np.ndarray
    logfc: np.ndarray
    abs_logfc: np.ndarray
    counts: np.ndarray  # (genes, groups)


@dataclass
class _Sums:
    """Sums of the effects per (gene, group) key of a chunk of genes, and each key's cell count.

    The sums stay on the device, in float32: a gene-group sums at most one value per cell.
    """

    delta: torch.Tensor  # (keys, features)
    abs_delta: torch.Tensor
    logfc: torch.Tensor
    abs_logfc: torch.Tensor
    counts: np.ndarray  # (keys,)

    @classmethod
    def zeros(cls, n_keys: int, n_features: int, device) -> _Sums:
        def zero() -> torch.Tensor:
            return torch.zeros((n_keys, n_features), dtype=torch.float32, device=device)

        return cls(zero(), zero(), zero(), zero(), np.zeros(n_keys, dtype=np.int64))

    def add(self, key_np: np.ndarray, effects: _Effects) -> None:
        """Add a block's effects to their keys; the effects become their absolute values."""
        key = torch.from_numpy(key_np).to(self.delta.device)
        self.delta.index_add_(0, key, effects.delta)
        self.logfc.index_add_(0, key, effects.logfc)
        self.abs_delta.index_add_(0, key, effects.delta.abs_())
        self.abs_logfc.index_add_(0, key, effects.logfc.abs_())
        self.counts += np.bincount(key_np, minlength=len(self.counts))

    def means(self, n_genes: int, n_groups: int) -> _Means:
        """Means over each key's cells, as (genes, groups, features) arrays."""
        divisor = np.maximum(self.counts, 1)[:, None]

        def mean(total: torch.Tensor) -> np.ndarray:
            return (total.cpu().numpy().astype(np.float64) / divisor).reshape(n_genes, n_groups, -1)

        counts = self.counts.reshape(n_genes, n_groups)
        return _Means(mean(self.delta), mean(self.abs_delta), mean(self.logfc), mean(self.abs_logfc), counts)


@dataclass
class _PerCellEffects:
    """Per-pair effects copied to the host, block by block, with the pairs of each block."""

    order: list[np.ndarray] = field(default_factory=list)
    delta: list[np.ndarray] = field(default_factory=list)
    logfc: list[np.ndarray] = field(default_factory=list)

    def add(self, sel: np.ndarray, effects: _Effects) -> None:
        self.delta.append(effects.delta.cpu().numpy().copy())
        self.logfc.append(effects.logfc.cpu().numpy().copy())
        self.order.append(sel)

    def matrices(self, n_pairs: int, n_features: int) -> tuple[np.ndarray, np.ndarray]:
        """ΔX̂ and log ratio, (pairs, features) float32, rows in pair order."""
        order = np.concatenate(self.order)
        x_cells = np.empty((n_pairs, n_features), dtype=np.float32)
        lfc_cells = np.empty((n_pairs, n_features), dtype=np.float32)
        x_cells[order] = np.concatenate(self.delta)
        lfc_cells[order] = np.concatenate(self.logfc)
        return x_cells, lfc_cells


def _block_size(model, modality: str, n_features: int, budget: _Budget) -> int:
    """Pairs silenced together, so that one block's working memory fits the budget."""
    n_feat = {m: len(v) for m, v in model.var_names.items()}
    per_pair_bytes = 4 * (4 * n_feat["rna"] + 3 * n_feat[modality] + 6 * model.config.hidden_dim + 2 * n_features)
    return int(max(1, min(budget.batch_size, budget.memory_budget_mb * 2**20 // per_pair_bytes)))


def _chunk_size(n_genes: int, n_groups: int, n_features: int, budget: _Budget) -> int:
    """Genes processed together, so that their sums fit the budget."""
    acc_bytes = 4 * 4 * n_groups * n_features
    return int(max(1, min(n_genes, budget.memory_budget_mb * 2**20 // acc_bytes)))


def _silence_chunk(
    cells: _Cells,
    pairs: _Pairs,
    silencer: _Silencer,
    g0: int,
    g1: int,
    n_features: int,
    *,
    block: int,
    bar,
    per_cell: _PerCellEffects | None,
) -> _Means:
    """Silence the pairs of the kept genes ``g0:g1`` and return their mean effects.

    The pairs go cell by cell, in blocks of ``block``, so each cell's unsilenced profile is
    decoded once per block; ``bar`` is advanced and ``per_cell`` (if not None) collects the
    per-pair effects.
    """
    n_groups = len(cells.group_names)
    idx = np.flatnonzero((pairs.gene >= g0) & (pairs.gene < g1))
    idx = idx[np.lexsort((pairs.gene[idx], pairs.cell[idx]))]
    sums = _Sums.zeros((g1 - g0) * n_groups, n_features, silencer.device)
    for start in range(0, len(idx), block):
        sel = idx[start : start + block]
        cell, gk = pairs.cell[sel], pairs.gene[sel]
        effects = silencer.effects(cells, cell, gk)
        if per_cell is not None:
            per_cell.add(sel, effects)
        sums.add((gk - g0) * n_groups + cells.groups[cell], effects)
        bar.update(len(sel))
    return sums.means(g1 - g0, n_groups)


# ----------------------------------------------------------------------------- summaries
def _chunk_tables(
    means: _Means, genes: list[str], group_names: list[str], features: pd.Index, cols: np.ndarray, column: str, per_gene
) -> list[pd.DataFrame]:
    """One piece of the table per (gene, group) with cells: its top features by mean |ΔX̂|."""
    pieces = []
    for k, gene in enumerate(genes):
        for grp in np.flatnonzero(means.counts[k] > 0):
            order = np.argsort(-means.abs_delta[k, grp], kind="stable")[:per_gene]
            pieces.append(
                pd.DataFrame(
                    {
                        "gene": gene,
                        column: features[cols[order]],
                        "group": group_names[grp],
                        "mean_delta": means.delta[k, grp][order],
                        "mean_abs_delta": means.abs_delta[k, grp][order],
                        "mean_logfc": means.logfc[k, grp][order],
                        "mean_abs_logfc": means.abs_logfc[k, grp][order],
                        "n_cells": int(means.counts[k, grp]),
                    }
                )
            )
    return pieces


@dataclass(frozen=True)
class _Silenced:
    """What silencing all pairs gave: the table's pieces and, if asked for, the per-pair effects."""

    pieces: list[pd.DataFrame]
    per_cell: _PerCellEffects | None


def _silence_and_summarise(model, cells: _Cells, pairs: _Pairs, request: _Request, return_cells, progress_bar):
    """Silence every (gene, cell) pair and summarise the effects per gene and group."""
    from tqdm.auto import tqdm

    from ..module import frozen

    target, cols = request.target, request.cols
    block = _block_size(model, target.modality, len(cols), request.budget)
    silencer = _Silencer.build(model, pairs.genes, target, request.step, cols, request.device)
    chunk = _chunk_size(len(pairs.genes), len(cells.group_names), len(cols), request.budget)
    per_cell = _PerCellEffects() if return_cells else None
    features, column = model.var_names[target.modality], FEATURE_COLUMN[target.modality]
    per_gene = request.budget.per_gene(len(cols))
    bar = tqdm(
        total=len(pairs.gene),
        desc="silencing",
        unit="pair",
        disable=None if settings.shows_progress(progress_bar) else True,
    )
    pieces = []
    with frozen(silencer.module), torch.no_grad():
        for g0 in range(0, len(pairs.genes), chunk):
            g1 = min(g0 + chunk, len(pairs.genes))
            means = _silence_chunk(cells, pairs, silencer, g0, g1, len(cols), block=block, bar=bar, per_cell=per_cell)
            pieces += _chunk_tables(means, pairs.genes[g0:g1], cells.group_names, features, cols, column, per_gene)
    bar.close()
    return _Silenced(pieces, per_cell)


def _table(silenced: _Silenced, cells: _Cells, request: _Request, groupby: str | None) -> pd.DataFrame:
    """Join the pieces into the table, with its settings in ``attrs``."""
    table = pd.concat(silenced.pieces, ignore_index=True)
    table["group"] = pd.Categorical(table["group"], categories=cells.group_names)
    step = request.step
    table.attrs.update(
        method="silencing",
        modality=request.target.modality,
        scale=request.target.scale,
        n_steps=step.n_steps,
        lr=step.lr,
        step_size=step.step_size,
        groupby=groupby,
    )
    return table


def _per_cell_anndata(table: pd.DataFrame, silenced: _Silenced, cells: _Cells, pairs: _Pairs, features: pd.Index):
    """Gather the per-pair effects into an AnnData: ΔX̂ in X, the log ratio in ``layers["logfc"]``."""
    import anndata as ad

    obs = pd.DataFrame(
        {
            "gene": pd.Categorical(np.asarray(pairs.genes)[pairs.gene], categories=pairs.genes),
            "cell": np.asarray(cells.names)[pairs.cell],
            "group": pd.Categorical(
                np.asarray(cells.group_names)[cells.groups[pairs.cell]], categories=cells.group_names
            ),
        }
    )
    obs.index = obs["gene"].astype(str) + ":" + obs["cell"].astype(str)
    x_cells, lfc_cells = silenced.per_cell.matrices(len(pairs.gene), len(features))
    cells_ad = ad.AnnData(
        X=x_cells,
        obs=obs,
        var=pd.DataFrame(index=pd.Index(features, dtype=str)),
        layers={"logfc": lfc_cells},
    )
    cells_ad.uns["gene2peak"] = dict(table.attrs)
    return cells_ad


# ----------------------------------------------------------------------------- gene2peak
def gene2peak(
    model,
    data: Any,
    *,
    genes,
    groupby: str | None = None,
    cells=None,
    embedding=None,
    modality: str = "atac",
    features=None,
    n_steps: int = 1,
    lr: float = 1e-2,
    step_size: float | None = None,
    scale: str = "fraction",
    min_cells: int = 1,
    top_n: int | None = None,
    return_cells: bool = False,
    rna_mod: str | None = None,
    atac_mod: str | None = None,
    layer: str | None = None,
    batch_size: int = 512,
    memory_budget_mb: float = 512,
    max_rows: int = 50_000_000,
    device: str | torch.device = "auto",
    progress_bar: bool = True,
    infer_kwargs: dict | None = None,
):
    """Gene-to-peak associations by in-silico silencing of each gene in the cells expressing it.

    Parameters
    ----------
    model
        A trained :class:`~multidgd.DGD`.
    data
        MuData or AnnData of raw counts with (at least) the RNA counts of ``genes`` for the
        cells to use; not modified. Cells of the model use their learned representations,
        others are placed with :meth:`~multidgd.DGD.infer` (or taken from ``embedding``).
    genes
        Gene names (of the model's RNA features) to silence.
    groupby
        ``obs`` column (e.g. cell type) whose groups average the effects (default one ``"all"``).
    cells
        Names, positions or a boolean mask of the data's cells to use (default all).
    embedding
        :class:`~multidgd.results.Embedding` of the cells the model lacks (default: from ``infer(**infer_kwargs)``).
    modality
        Affected features reported: ``"atac"`` (peaks) or ``"rna"`` (genes).
    features
        Subset of those features to report (names, positions or mask; default all).
    n_steps, lr
        Adam steps on each cell's silenced-gene loss and their learning rate. The default,
        one step of 0.01, is the original analysis: about ±0.01 on every coordinate.
    step_size
        Instead of Adam: steps of this length (latent space) along the normalised gradient.
    scale
        ``"fraction"`` (decoded, sum 1 per cell) or ``"counts"`` (times the cell's library size of the modality).
    min_cells
        Genes expressed (count > 0) in fewer of the selected cells are skipped with a warning.
    top_n
        Keep only the ``top_n`` features of largest mean |ΔX̂| per gene and group (default all).
    return_cells
        Also return the per-cell effects (an AnnData, one row per silenced gene and cell).
    rna_mod, atac_mod, layer
        Where the counts are (default: the names used in training; ``X``).
    batch_size, memory_budget_mb
        Most (gene, cell) pairs processed together, cut so that a block's working memory
        fits ``memory_budget_mb``.
    max_rows
        Refuse (before any work) a longer table; pass ``top_n`` or ``features``.
    device, progress_bar
        ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``; show a progress bar.
    infer_kwargs
        Keyword arguments of :meth:`~multidgd.DGD.infer` for cells the model lacks.

    Returns
    -------
    pandas.DataFrame or tuple[pandas.DataFrame, anndata.AnnData]
        Columns ``gene``, ``peak`` (``target_gene`` when ``modality="rna"``), ``group``,
        ``mean_delta`` (mean ΔX̂ over the group's expressing cells; positive: the feature
        closes / drops when the gene is silenced), ``mean_abs_delta``, ``mean_logfc`` and
        ``mean_abs_logfc`` (the same for ``log X̂ − log X̂_silenced``, natural log, which does
        not favour abundant features) and ``n_cells``, sorted by gene, group and decreasing
        ``mean_abs_delta``; ``attrs`` holds the settings. With ``return_cells=True`` also an
        AnnData: X is ΔX̂ (pairs × features, float32), ``layers["logfc"]`` the log ratio, obs
        has ``gene``, ``cell`` and ``group``.
    """
    target = _Target.checked(model, genes, modality, scale)
    step = _Step.checked(n_steps, lr, step_size)
    budget = _Budget.checked(top_n, min_cells, batch_size, memory_budget_mb, max_rows)
    request = _Request.checked(model, target, step, budget, features, device)
    source = CellSource(cells, groupby, embedding, rna_mod, atac_mod, layer, infer_kwargs)
    prepared = _prepare_cells(model, data, target.genes, source)
    pairs = _expressing_pairs(prepared, target.genes, budget.min_cells)
    _check_result_size(pairs, prepared, len(request.cols), budget, return_cells)
    silenced = _silence_and_summarise(model, prepared, pairs, request, return_cells, progress_bar)
    table = _table(silenced, prepared, request, groupby)
    if not return_cells:
        return table
    return table, _per_cell_anndata(table, silenced, prepared, pairs, model.var_names[target.modality][request.cols])
