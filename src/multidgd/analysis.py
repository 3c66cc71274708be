"""Gene-to-peak associations by in-silico silencing, with the analyses of the multiDGD paper.

For a gene g and the cells that express it, the gene's count is set to 0, the negative
binomial loss of that gene alone is computed from each cell's decoded profile, and the
cell's basal representation is moved along the gradient of that loss (by default one first
Adam step of learning rate 0.01, as in the original analysis). Decoding before and after
gives, for every peak (or gene) j,

    ΔX̂_j = X̂_j(z) − X̂_j(z_silenced),

so a **positive** ΔX̂ means the peak loses accessibility when the gene is silenced (it
"closes": a positive association), a negative one that it opens.

Tables are tidy: one row per (gene, peak, group). The Spearman baseline
(:func:`spearman_gene2peak`) gives the same rows, so both can go through
:func:`link_enrichment`, :func:`tss_profile` and :func:`motif_enrichment`.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .data import MODALITIES, obs_column
from .data import positions as _positions

__all__ = [
    "gene2peak",
    "spearman_gene2peak",
    "link_enrichment",
    "LinkEvaluation",
    "tss_profile",
    "motif_enrichment",
    "plot_gene2peak",
    "plot_tss_profile",
    "plot_motif_enrichment",
    "SCORE_COLUMNS",
]

logger = logging.getLogger(__name__)

#: Default ranking column of each kind of table (by ``table.attrs["method"]``).
SCORE_COLUMNS = {"silencing": "mean_abs_delta", "spearman": "abs_rho"}
_FEATURE_COLUMN = {"atac": "peak", "rna": "target_gene"}


# ----------------------------------------------------------------------------- input checks
def _check_genes(genes, known: pd.Index) -> list[str]:
    if isinstance(genes, str):
        genes = [genes]
    genes = [str(g) for g in genes]
    if not genes:
        raise ValueError("genes is empty; give at least one gene name")
    dup = pd.Index(genes)[pd.Index(genes).duplicated()].unique().tolist()
    if dup:
        raise ValueError(f"genes repeat: {dup[:5]}")
    missing = [g for g in genes if g not in known]
    if missing:
        raise ValueError(
            f"{len(missing)} of the genes are not genes of the model/data, e.g. {missing[:5]} "
            f"(gene names look like {known[:3].tolist()})"
        )
    return genes


def _check_top_n(top_n) -> None:
    if top_n is not None and (not isinstance(top_n, int | np.integer) or top_n < 1):
        raise ValueError(f"top_n must be a positive integer or None, got {top_n!r}")


def _check_modality(modality: str) -> str:
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {list(MODALITIES)} (the affected features), got {modality!r}")
    return modality


def _groups(data: Any, groupby: str | None, obs_names: pd.Index, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """(codes per selected cell, -1 where the label is missing; group names)."""
    if groupby is None:
        return np.zeros(len(rows), dtype=np.int64), ["all"]
    try:
        col = obs_column(data, groupby, obs_names).iloc[rows]
    except KeyError:
        avail = sorted(set(data.obs.columns).union(*[set(m.obs.columns) for m in getattr(data, "mod", {}).values()]))
        raise ValueError(f"groupby: no obs column {groupby!r}; available: {avail}") from None
    if isinstance(col.dtype, pd.CategoricalDtype):
        names = [str(c) for c in col.cat.categories]
    else:
        names = sorted(col.dropna().astype(str).unique().tolist())
    codes = pd.Categorical(col.astype(str).where(col.notna()), categories=names).codes.astype(np.int64)
    if (codes < 0).any():
        logger.warning("groupby %r: %d cells have no label and are left out", groupby, int((codes < 0).sum()))
    return codes, names


def _check_size(n_rows: int, limit: int, advice: str) -> None:
    if n_rows > limit:
        raise ValueError(f"the result would have {n_rows:,} rows (more than {limit:,}); {advice}")


# ----------------------------------------------------------------------------- silencing
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
        zt = z.detach().requires_grad_(True)
        with torch.enable_grad():
            logf = module.decode(zt, covariate, ["rna"])["rna"]
            log_mu = logf.gather(1, gene[:, None]).squeeze(1) + log_library
            loss = (r * torch.nn.functional.softplus(log_mu - torch.log(r))).sum()
            (g,) = torch.autograd.grad(loss, zt)
        if step_size is not None:
            z = z - step_size * g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
            continue
        m.mul_(betas[0]).add_(g, alpha=1 - betas[0])
        v.mul_(betas[1]).addcmul_(g, g, value=1 - betas[1])
        m_hat = m / (1 - betas[0] ** t)
        v_hat = v / (1 - betas[1] ** t)
        z = z - lr * m_hat / (v_hat.sqrt() + eps)
    return z.detach()


class _Cells(NamedTuple):
    names: pd.Index  # selected data cells
    latent: np.ndarray  # (n, L)
    covariate: np.ndarray  # (n, C)
    library: np.ndarray  # (n, 2) library sizes over all model features
    rna: sp.csc_matrix  # (n, n_genes) counts of the requested genes
    groups: np.ndarray  # (n,) codes
    group_names: list[str]


def _prepare_cells(model, data, genes, *, cells, groupby, embedding, rna_mod, atac_mod, layer, infer_kwargs) -> _Cells:
    """Counts of the genes, representations and library sizes of the selected cells."""
    from .inference import Embedding
    from .query import read_query

    names = model.modality_names(rna_mod, atac_mod)
    query = read_query(
        data, var_names=model.var_names, modality_names=names, covariate_keys=[], layer=layer, min_feature_fraction=0
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
    rows = _positions(query.obs_names, cells, "cells")
    codes, group_names = _groups(data, groupby, query.obs_names, rows)
    keep = codes >= 0
    rows, codes = rows[keep], codes[keep]
    obs = query.obs_names[rows]

    n = len(rows)
    latent = np.empty((n, model.config.latent_dim), dtype=np.float32)
    cov_dim = model.config.covariate_dim * len(model.covariate_keys)
    covariate = np.empty((n, cov_dim), dtype=np.float32)
    library = query.library_size[rows].astype(np.float64)
    pos = model.obs_names.get_indexer(obs)
    known = pos >= 0
    known[known] = (model.split != "none").to_numpy()[pos[known]]
    if known.any():
        latent[known] = model.get_latent_representation()[pos[known]]
        covariate[known] = model.get_covariate_matrix()[pos[known]]
        try:
            library[known] = model.get_library_size()[pos[known]]
        except ValueError:  # a model file without library sizes
            pass
    unknown = np.flatnonzero(~known)
    if len(unknown):
        if embedding is None:
            logger.info("%d cells are not cells of the model: placing them with infer()", len(unknown))
            sub = data[np.asarray(query.obs_names.isin(obs[unknown]))]
            embedding = model.infer(sub, rna_mod=rna_mod, atac_mod=atac_mod, layer=layer, **(infer_kwargs or {}))
        if not isinstance(embedding, Embedding):
            raise TypeError(f"embedding must be an Embedding from DGD.infer(), got {type(embedding).__name__}")
        epos = embedding.obs_names.get_indexer(obs[unknown])
        if (epos < 0).any():
            raise ValueError(
                f"{int((epos < 0).sum())} cells are neither cells of the model nor in the embedding, "
                f"e.g. {obs[unknown][epos < 0][:3].tolist()}"
            )
        latent[unknown] = embedding.latent[epos]
        covariate[unknown] = embedding.covariate[epos]
        library[unknown] = embedding.library_size[epos]
    rna = query.counts["rna"][rows][:, col].tocsc()
    return _Cells(obs, latent, covariate, library, rna, codes, group_names)


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
        MuData or AnnData of raw counts holding (at least) the RNA counts of ``genes`` for
        the cells to use. Cells of the model use their learned representations; other
        cells are placed with :meth:`~multidgd.DGD.infer` (or taken from ``embedding``).
        Not modified.
    genes
        Gene names (of the model's RNA features) to silence.
    groupby
        ``obs`` column (e.g. cell type): effects are averaged within each group. Default:
        one group ``"all"``.
    cells
        Names, positions or a boolean mask of the data's cells to use (default all).
    embedding
        :class:`~multidgd.inference.Embedding` of the data's cells that are not cells of the
        model (default: computed with ``infer(**infer_kwargs)``).
    modality
        Affected features reported: ``"atac"`` (peaks) or ``"rna"`` (genes).
    features
        Subset of those features to report (names, positions or mask; default all).
    n_steps, lr
        Adam steps on each cell's silenced-gene loss and their learning rate. The default,
        one step of 0.01, is the original analysis: about ±0.01 on every coordinate.
    step_size
        Instead of Adam: steps of this length (in the latent space) along the normalised
        gradient.
    scale
        ``"fraction"`` (decoded fractions, each cell's profile sums to 1) or ``"counts"``
        (fractions times the cell's library size of that modality).
    min_cells
        Genes expressed (count > 0) in fewer of the selected cells are skipped with a
        warning.
    top_n
        Keep only the ``top_n`` features with the largest mean |ΔX̂| per gene and group
        (default all).
    return_cells
        Also return the per-cell effects as an AnnData (one row per silenced gene and cell).
    rna_mod, atac_mod, layer
        Where the counts are (default: the names used in training; ``X``).
    batch_size
        Most (gene, cell) pairs processed together.
    memory_budget_mb
        Working memory of one block of pairs; the block is cut to fit.
    max_rows
        Refuse (before any work) a table longer than this; pass ``top_n`` or ``features``.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda[:N]"``.
    progress_bar
        Show a progress bar.
    infer_kwargs
        Keyword arguments of :meth:`~multidgd.DGD.infer` for cells the model lacks.

    Returns
    -------
    A DataFrame with columns ``gene``, ``peak`` (``target_gene`` when ``modality="rna"``),
    ``group``, ``mean_delta`` (mean ΔX̂ over the group's expressing cells; positive: the
    feature closes / drops when the gene is silenced), ``mean_abs_delta``, ``mean_logfc``
    and ``mean_abs_logfc`` (the same for the relative change ``log X̂ − log X̂_silenced``,
    natural log, which does not favour abundant features) and ``n_cells``, sorted by gene,
    group and decreasing ``mean_abs_delta``. ``attrs`` holds the settings.
    With ``return_cells=True``, ``(table, AnnData)``: X is ΔX̂ (pairs × features, float32),
    ``layers["logfc"]`` the log ratio, obs has ``gene``, ``cell`` and ``group``.
    """
    from tqdm.auto import tqdm

    from .model import resolve_device
    from .module import frozen as _frozen

    model.state  # noqa: B018 - raises when untrained
    modality = _check_modality(modality)
    genes = _check_genes(genes, model.var_names["rna"])
    if scale not in ("fraction", "counts"):
        raise ValueError(f"scale must be 'fraction' or 'counts', got {scale!r}")
    if not isinstance(n_steps, int | np.integer) or n_steps < 0:
        raise ValueError(f"n_steps must be an integer >= 0, got {n_steps!r}")
    if not lr >= 0:
        raise ValueError(f"lr must be >= 0, got {lr!r}")
    if step_size is not None and not step_size >= 0:
        raise ValueError(f"step_size must be >= 0 or None, got {step_size!r}")
    _check_top_n(top_n)
    for name, value in (("batch_size", batch_size), ("memory_budget_mb", memory_budget_mb), ("min_cells", min_cells)):
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")
    all_features = model.var_names[modality]
    cols = _positions(all_features, features, "features")
    if len(cols) == 0:
        raise ValueError("features selects no feature")
    dev = resolve_device(device)

    c = _prepare_cells(
        model,
        data,
        genes,
        cells=cells,
        groupby=groupby,
        embedding=embedding,
        rna_mod=rna_mod,
        atac_mod=atac_mod,
        layer=layer,
        infer_kwargs=infer_kwargs,
    )
    n_groups = len(c.group_names)
    pair_gene, pair_cell = [], []
    kept_genes = []
    for k, g in enumerate(genes):
        expressing = c.rna.indices[c.rna.indptr[k] : c.rna.indptr[k + 1]][
            c.rna.data[c.rna.indptr[k] : c.rna.indptr[k + 1]] > 0
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
    pair_gene = np.concatenate(pair_gene)
    pair_cell = np.concatenate(pair_cell)
    n_pairs = len(pair_gene)
    present = np.zeros((len(kept_genes), n_groups), dtype=bool)
    present[pair_gene, c.groups[pair_cell]] = True
    per_gene = top_n if top_n is not None else len(cols)
    _check_size(int(present.sum()) * min(per_gene, len(cols)), max_rows, "pass top_n= or features=, or fewer genes")
    if return_cells:
        _check_size(
            n_pairs * len(cols),
            max_rows,
            "the per-cell effects are a dense pairs x features matrix: pass features= or cells=, or return_cells=False",
        )

    j_mod = MODALITIES.index(modality)
    n_feat = {m: len(v) for m, v in model.var_names.items()}
    per_pair_bytes = 4 * (4 * n_feat["rna"] + 3 * n_feat[modality] + 6 * model.config.hidden_dim + 2 * len(cols))
    block = int(max(1, min(batch_size, memory_budget_mb * 2**20 // per_pair_bytes)))
    module = model.module.to(dev).eval()
    col_t = torch.from_numpy(cols).to(dev)
    full = len(cols) == n_feat[modality] and bool((cols == np.arange(len(cols))).all())
    gene_t = torch.from_numpy(model.var_names["rna"].get_indexer(kept_genes)).to(dev)
    betas = tuple(model.train_config.betas) if model.train_config is not None else (0.5, 0.7)

    # genes are processed in chunks whose accumulators fit the budget; within a chunk the
    # pairs go cell by cell, so each cell's unsilenced profile is decoded once per block
    acc_bytes = 4 * 4 * n_groups * len(cols)
    chunk = int(max(1, min(len(kept_genes), memory_budget_mb * 2**20 // acc_bytes)))
    pieces = []
    cell_parts = [] if return_cells else None
    cell_order = [] if return_cells else None
    bar = tqdm(total=n_pairs, desc="silencing", unit="pair", disable=not progress_bar)
    with _frozen(module), torch.no_grad():
        for g0 in range(0, len(kept_genes), chunk):
            g1 = min(g0 + chunk, len(kept_genes))
            idx = np.flatnonzero((pair_gene >= g0) & (pair_gene < g1))
            idx = idx[np.lexsort((pair_gene[idx], pair_cell[idx]))]
            # float32 sums: a gene-group sums at most one value per cell
            acc = torch.zeros((4, (g1 - g0) * n_groups, len(cols)), dtype=torch.float32, device=dev)
            counts = np.zeros(((g1 - g0) * n_groups), dtype=np.int64)
            for start in range(0, len(idx), block):
                sel = idx[start : start + block]
                cell, gk = pair_cell[sel], pair_gene[sel]
                uniq, inverse = np.unique(cell, return_inverse=True)
                inv = torch.from_numpy(inverse).to(dev)
                z_u = torch.from_numpy(c.latent[uniq]).to(dev)
                cov_u = torch.from_numpy(c.covariate[uniq]).to(dev)
                lib = torch.from_numpy(c.library[cell]).to(dev, torch.float32)
                z_ko = _silenced_representations(
                    module,
                    z_u[inv],
                    cov_u[inv],
                    torch.log(lib[:, 0]),
                    gene_t[torch.from_numpy(gk).to(dev)],
                    n_steps=int(n_steps),
                    lr=float(lr),
                    step_size=step_size,
                    betas=betas,
                )
                before = module.decode(z_u, cov_u, [modality])[modality]
                after = module.decode(z_ko, cov_u[inv], [modality])[modality]
                if not full:
                    before, after = before[:, col_t], after[:, col_t]
                delta = torch.exp(before)[inv]
                delta.sub_(torch.exp(after))
                logfc = before[inv]
                logfc.sub_(after)
                del before, after
                if scale == "counts":
                    delta.mul_(lib[:, j_mod : j_mod + 1])
                if cell_parts is not None:
                    cell_parts.append((delta.cpu().numpy().copy(), logfc.cpu().numpy().copy()))
                    cell_order.append(sel)
                key_np = (gk - g0) * n_groups + c.groups[cell]
                key = torch.from_numpy(key_np).to(dev)
                acc[0].index_add_(0, key, delta)
                acc[2].index_add_(0, key, logfc)
                acc[1].index_add_(0, key, delta.abs_())
                acc[3].index_add_(0, key, logfc.abs_())
                counts += np.bincount(key_np, minlength=len(counts))
                bar.update(len(sel))
            means = acc.cpu().numpy().astype(np.float64) / np.maximum(counts, 1)[None, :, None]
            means = means.reshape(4, g1 - g0, n_groups, -1)
            counts = counts.reshape(g1 - g0, n_groups)
            for k in range(g1 - g0):
                for grp in np.flatnonzero(counts[k] > 0):
                    mean, mean_abs, lfc, abs_lfc = means[:, k, grp]
                    order = np.argsort(-mean_abs, kind="stable")[:per_gene]
                    pieces.append(
                        pd.DataFrame(
                            {
                                "gene": kept_genes[g0 + k],
                                _FEATURE_COLUMN[modality]: all_features[cols[order]],
                                "group": c.group_names[grp],
                                "mean_delta": mean[order],
                                "mean_abs_delta": mean_abs[order],
                                "mean_logfc": lfc[order],
                                "mean_abs_logfc": abs_lfc[order],
                                "n_cells": int(counts[k, grp]),
                            }
                        )
                    )
            del acc
    bar.close()

    table = pd.concat(pieces, ignore_index=True)
    table["group"] = pd.Categorical(table["group"], categories=c.group_names)
    table.attrs.update(
        method="silencing",
        modality=modality,
        scale=scale,
        n_steps=int(n_steps),
        lr=float(lr),
        step_size=step_size,
        groupby=groupby,
    )
    if not return_cells:
        return table
    import anndata as ad

    obs = pd.DataFrame(
        {
            "gene": pd.Categorical(np.asarray(kept_genes)[pair_gene], categories=kept_genes),
            "cell": np.asarray(c.names)[pair_cell],
            "group": pd.Categorical(np.asarray(c.group_names)[c.groups[pair_cell]], categories=c.group_names),
        }
    )
    obs.index = obs["gene"].astype(str) + ":" + obs["cell"].astype(str)
    order = np.concatenate(cell_order)
    x_cells = np.empty((n_pairs, len(cols)), dtype=np.float32)
    lfc_cells = np.empty((n_pairs, len(cols)), dtype=np.float32)
    x_cells[order] = np.concatenate([d for d, _ in cell_parts])
    lfc_cells[order] = np.concatenate([lfc for _, lfc in cell_parts])
    cells_ad = ad.AnnData(
        X=x_cells,
        obs=obs,
        var=pd.DataFrame(index=pd.Index(all_features[cols], dtype=str)),
        layers={"logfc": lfc_cells},
    )
    cells_ad.uns["gene2peak"] = dict(table.attrs)
    return table, cells_ad


# ----------------------------------------------------------------------------- Spearman baseline
def _rank_dense(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, method="average")


def _centred_sparse_ranks(x: sp.csc_matrix) -> tuple[sp.csc_matrix, np.ndarray]:
    """For a non-negative CSC matrix: S (same pattern, rank minus the zeros' average rank,
    column-wise, ties averaged) and each column's sum of squared centred ranks."""
    n = x.shape[0]
    x = x.tocsc(copy=True)
    x.eliminate_zeros()
    x.sort_indices()
    nnz_col = np.diff(x.indptr)
    col = np.repeat(np.arange(x.shape[1]), nnz_col)
    order = np.lexsort((x.data, col))
    values, cols_sorted = x.data[order], col[order]
    pos = np.arange(len(order)) - x.indptr[cols_sorted]  # 0-based position within the column
    new_run = np.r_[True, (np.diff(values) != 0) | (np.diff(cols_sorted) != 0)]
    run = np.cumsum(new_run) - 1
    first = pos[new_run]
    last = np.r_[pos[np.flatnonzero(new_run)[1:] - 1], pos[-1]] if len(pos) else pos
    avg = (first + last) / 2.0  # average 0-based position of the tie run
    zeros = n - nnz_col
    ranks_sorted = zeros[cols_sorted] + avg[run] + 1.0  # 1-based rank among all n
    zero_rank = (zeros + 1) / 2.0
    mean_rank = (n + 1) / 2.0
    s_sorted = ranks_sorted - zero_rank[cols_sorted]
    data = np.empty_like(s_sorted)
    data[order] = s_sorted
    s = sp.csc_matrix((data, x.indices, x.indptr), shape=x.shape)
    centred = ranks_sorted - mean_rank
    ss = np.bincount(cols_sorted, weights=centred**2, minlength=x.shape[1]) + zeros * (zero_rank - mean_rank) ** 2
    return s, ss


def spearman_gene2peak(
    data: Any,
    *,
    genes,
    groupby: str | None = None,
    cells=None,
    modality: str = "atac",
    features=None,
    expressing_only: bool = False,
    top_n: int | None = None,
    rna_mod: str = "rna",
    atac_mod: str = "atac",
    layer: str | None = None,
    max_rows: int = 50_000_000,
) -> pd.DataFrame:
    """Baseline: Spearman correlation of each gene's expression with each peak's accessibility.

    Counts are divided by the cell's total in that modality first (so sequencing depth does
    not correlate everything), then ranked (ties averaged) across the cells of each group.

    Parameters
    ----------
    data
        MuData or AnnData of raw counts (cells with no counts in a modality are left out).
    genes, groupby, cells, modality, features, top_n, max_rows
        As in :func:`gene2peak`.
    expressing_only
        Correlate across the cells expressing the gene only (the cells :func:`gene2peak`
        silences) instead of all cells of the group.
    rna_mod, atac_mod, layer
        Where the counts are.

    Returns
    -------
    A DataFrame with columns ``gene``, ``peak`` (``target_gene`` for ``modality="rna"``),
    ``group``, ``rho``, ``abs_rho`` and ``n_cells``, sorted like :func:`gene2peak`'s; NaN
    where a feature is constant across the cells.
    """
    from .data import read_multiome

    modality = _check_modality(modality)
    d = read_multiome(data, rna_mod=rna_mod, atac_mod=atac_mod, layer=layer, drop_empty_cells=True)
    genes = _check_genes(genes, d.var_names["rna"])
    _check_top_n(top_n)
    all_features = d.var_names[modality]
    cols = _positions(all_features, features, "features")
    rows_all = _positions(d.input_obs_names, cells, "cells")
    kept_pos = np.full(len(d.input_obs_names), -1)
    kept_pos[np.flatnonzero(d.kept)] = np.arange(d.n_cells)
    rows = kept_pos[rows_all]
    rows = rows[rows >= 0]
    codes, group_names = _groups(data, groupby, d.obs_names, rows)
    rows, codes = rows[codes >= 0], codes[codes >= 0]
    per_gene = top_n if top_n is not None else len(cols)
    _check_size(len(genes) * len(group_names) * min(per_gene, len(cols)), max_rows, "pass top_n= or features=")

    j_mod = MODALITIES.index(modality)
    lib = d.library_size.astype(np.float64)
    gene_cols = d.var_names["rna"].get_indexer(genes)
    expr = sp.csc_matrix(d.counts["rna"][:, gene_cols]).toarray() / lib[:, :1]
    target = sp.diags(1.0 / lib[:, j_mod]) @ d.counts[modality][:, cols]
    target = sp.csr_matrix(target)
    pieces = []
    for grp, gname in enumerate(group_names):
        in_group = rows[codes == grp]
        shared = None if expressing_only or len(in_group) < 3 else _centred_sparse_ranks(target[in_group].tocsc())
        for k, g in enumerate(genes):
            sel = in_group[expr[in_group, k] > 0] if expressing_only else in_group
            if len(sel) < 3:
                continue
            s, ss = shared if shared is not None else _centred_sparse_ranks(target[sel].tocsc())
            gr = _rank_dense(expr[sel, k])
            gr = gr - gr.mean()
            cov = np.asarray(s.T @ gr).ravel()
            with np.errstate(invalid="ignore", divide="ignore"):
                rho = cov / np.sqrt(ss * (gr**2).sum())
            rho[ss == 0] = np.nan
            order = np.argsort(-np.nan_to_num(np.abs(rho), nan=-1.0), kind="stable")[:per_gene]
            pieces.append(
                pd.DataFrame(
                    {
                        "gene": g,
                        _FEATURE_COLUMN[modality]: all_features[cols[order]],
                        "group": gname,
                        "rho": rho[order],
                        "abs_rho": np.abs(rho[order]),
                        "n_cells": len(sel),
                    }
                )
            )
    if not pieces:
        raise ValueError("no gene/group has at least 3 cells to correlate across")
    table = pd.concat(pieces, ignore_index=True)
    table["group"] = pd.Categorical(table["group"], categories=group_names)
    table = table.sort_values(["gene", "group"], kind="stable", key=_gene_order(genes)).reset_index(drop=True)
    table.attrs.update(method="spearman", modality=modality, groupby=groupby, expressing_only=expressing_only)
    return table


def _gene_order(genes: list[str]):
    rank = {g: i for i, g in enumerate(genes)}

    def key(col: pd.Series) -> pd.Series:
        return col.map(rank) if col.name == "gene" else col.cat.codes

    return key


# ----------------------------------------------------------------------------- evaluation
class LinkEvaluation(NamedTuple):
    """Result of :func:`link_enrichment`.

    Attributes
    ----------
    per_gene
        One row per gene with at least one linked and one other feature: ``n_features``,
        ``n_linked``, ``mean_linked`` and ``mean_other`` (mean score),
        ``mean_linked_other_genes`` (the mean score of the same linked features when the
        table's other genes are silenced: a control that shares the features' abundance),
        ``auprc`` (average precision of ranking the linked features by score) and
        ``prevalence`` (the AUPRC of a random ranking).
    summary
        ``n_genes``, ``n_linked_higher`` (genes whose linked mean exceeds the other mean),
        ``wilcoxon_p`` (one-sided paired signed-rank test, linked > other, across genes),
        ``mean_auprc``, ``median_auprc``, ``mean_prevalence``, ``score``; with several
        genes also ``n_linked_specific`` and ``specific_wilcoxon_p`` (linked features score
        higher for their own gene than for the other genes).
    """

    per_gene: pd.DataFrame
    summary: dict[str, Any]


def _score_column(table: pd.DataFrame, score: str | None) -> str:
    if score is None:
        score = SCORE_COLUMNS.get(table.attrs.get("method", ""), "mean_abs_delta")
    if score not in table.columns:
        raise ValueError(f"score column {score!r} is not in the table; columns: {list(table.columns)}")
    return score


def _one_group(table: pd.DataFrame, group) -> pd.DataFrame:
    groups = table["group"].astype(str).unique()
    if group is None:
        if len(groups) > 1:
            raise ValueError(f"the table has {len(groups)} groups ({list(groups[:5])}...); pass group= to pick one")
        return table
    if str(group) not in groups:
        raise ValueError(f"group {group!r} is not in the table; groups: {list(groups)}")
    return table[table["group"].astype(str) == str(group)]


def _feature_column(table: pd.DataFrame) -> str:
    for name in ("peak", "target_gene"):
        if name in table.columns:
            return name
    raise ValueError(f"the table has neither a 'peak' nor a 'target_gene' column; columns: {list(table.columns)}")


def link_enrichment(table: pd.DataFrame, links, *, score: str | None = None, group=None) -> LinkEvaluation:
    """Do features linked to a gene (e.g. its promoter and enhancer peaks) score higher?

    Parameters
    ----------
    table
        Output of :func:`gene2peak` or :func:`spearman_gene2peak` with every feature per gene
        (no ``top_n``).
    links
        The known links: a Series mapping feature -> gene (e.g. ``atac.var["linked_gene"]``),
        or a DataFrame with columns ``gene`` and ``peak`` (many-to-many).
    score
        Column to rank by (default ``mean_abs_delta`` / ``abs_rho`` by the table's method).
    group
        Which group of a table with several.

    Returns
    -------
    :class:`LinkEvaluation`.
    """
    from scipy.stats import wilcoxon
    from sklearn.metrics import average_precision_score

    score = _score_column(table, score)
    feature = _feature_column(table)
    t = _one_group(table, group)
    if isinstance(links, pd.Series):
        pairs = pd.DataFrame({"peak": links.index.astype(str), "gene": links.astype(str).to_numpy()})
    elif isinstance(links, pd.DataFrame) and {"gene", "peak"} <= set(links.columns):
        pairs = links[["gene", "peak"]].astype(str)
    else:
        raise TypeError("links must be a Series feature -> gene or a DataFrame with columns 'gene' and 'peak'")
    linked = set(zip(pairs["gene"], pairs["peak"], strict=True))
    wide = t.pivot_table(index=t["gene"].astype(str), columns=t[feature].astype(str), values=score, observed=True)
    col_sum = wide.sum(axis=0, skipna=True)
    col_n = wide.notna().sum(axis=0)
    rows = []
    for gene, sub in t.groupby("gene", sort=False, observed=True):
        values = sub[score].to_numpy(dtype=np.float64)
        ok = ~np.isnan(values)
        is_linked = np.array([(str(gene), str(p)) in linked for p in sub[feature]])[ok]
        values = values[ok]
        if is_linked.sum() == 0 or is_linked.all():
            continue
        linked_names = sub[feature].astype(str).to_numpy()[ok][is_linked]
        own = wide.loc[str(gene), linked_names]
        n_other = col_n[linked_names] - own.notna()
        other_genes = ((col_sum[linked_names] - own.fillna(0)) / n_other.where(n_other > 0)).mean()
        rows.append(
            {
                "gene": gene,
                "n_features": len(values),
                "n_linked": int(is_linked.sum()),
                "mean_linked": values[is_linked].mean(),
                "mean_other": values[~is_linked].mean(),
                "mean_linked_other_genes": other_genes,
                "auprc": average_precision_score(is_linked, values),
                "prevalence": is_linked.mean(),
            }
        )
    columns = ["gene", "n_features", "n_linked", "mean_linked", "mean_other", "mean_linked_other_genes"]
    per_gene = pd.DataFrame(rows, columns=[*columns, "auprc", "prevalence"])
    summary: dict[str, Any] = {"score": score, "n_genes": len(per_gene)}
    if len(per_gene):
        diff = per_gene["mean_linked"] - per_gene["mean_other"]
        summary.update(
            n_linked_higher=int((diff > 0).sum()),
            wilcoxon_p=float(wilcoxon(diff, alternative="greater").pvalue) if (diff != 0).any() else 1.0,
            mean_auprc=float(per_gene["auprc"].mean()),
            median_auprc=float(per_gene["auprc"].median()),
            mean_prevalence=float(per_gene["prevalence"].mean()),
        )
        spec = (per_gene["mean_linked"] - per_gene["mean_linked_other_genes"]).dropna()
        if len(spec):
            summary.update(
                n_linked_specific=int((spec > 0).sum()),
                specific_wilcoxon_p=float(wilcoxon(spec, alternative="greater").pvalue) if (spec != 0).any() else 1.0,
            )
    return LinkEvaluation(per_gene, summary)


# ----------------------------------------------------------------------------- TSS profile
def _peak_column(table: pd.DataFrame) -> str:
    if "peak" not in table.columns:
        raise ValueError("this analysis needs a table of peaks (gene2peak/spearman_gene2peak with modality='atac')")
    return "peak"


def tss_profile(
    table: pd.DataFrame,
    peaks,
    tss="GRCh38",
    *,
    window: int = 10_000,
    bin_size: int = 1_000,
    score: str | None = None,
    group=None,
    n_control: int = 10,
    rna_var: pd.DataFrame | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Effect against the distance of the peak to the silenced gene's TSS, with a control.

    For each gene of the table, every peak within ``window`` bp of one of the gene's TSSs is
    placed by its signed distance (positive downstream, see
    :func:`multidgd.genome.tss_distance`). Its score is taken as is and relative to the
    gene's mean score over all peaks (1 = an average peak), so genes with large effects do
    not dominate. The control scores the same peaks (at the same distances) when
    ``n_control`` random *other* genes of the table are silenced instead, so it shares the
    peaks' accessibility and position and differs only in which gene was silenced.

    Parameters
    ----------
    table
        :func:`gene2peak` (or :func:`spearman_gene2peak`) output for peaks, all peaks per gene.
    peaks
        The ATAC ``var`` (or peak names) for the coordinates (see
        :func:`multidgd.genome.parse_peak_coordinates`).
    tss
        ``"GRCh38"`` (bundled Ensembl 93 table), a TSV/GTF path or a DataFrame
        (:func:`multidgd.genome.load_tss`).
    window, bin_size
        Half-width of the window and bin width, in bp.
    score
        Column (default ``mean_abs_delta`` / ``abs_rho`` by the table's method).
    group
        Which group of a table with several.
    n_control
        Random other genes of the table whose effects on the same peaks are the control.
    rna_var
        RNA ``var`` whose ``gene_ids`` column maps gene names to Ensembl ids.
    seed
        Seed of the control genes.

    Returns
    -------
    DataFrame with one row per (``set``, bin): ``set`` (``silenced`` or ``control``),
    ``bin_start``, ``bin_end``, ``distance`` (bin centre), ``mean_score``,
    ``mean_relative``, ``sem_relative``, ``n_pairs`` (gene-peak pairs) and ``n_genes``.
    ``attrs`` has the genes found in the annotation and those with a peak in the window.
    """
    from .genome import gene_tss, parse_peak_coordinates, tss_distance

    if not (isinstance(window, int | np.integer) and window > 0 and isinstance(bin_size, int | np.integer)):
        raise ValueError(f"window and bin_size must be positive integers, got {window!r}, {bin_size!r}")
    if not 0 < bin_size <= window:
        raise ValueError(f"bin_size must be in 1..window ({window}), got {bin_size}")
    score = _score_column(table, score)
    t = _one_group(table, group)
    col = _peak_column(t)
    coords = parse_peak_coordinates(peaks)
    genes = t["gene"].astype(str).unique().tolist()
    found = gene_tss(genes, tss, var=rna_var)
    rng = np.random.default_rng(seed)
    scores = t.pivot_table(index=t["gene"].astype(str), columns=t[col].astype(str), values=score, observed=True)
    scores = scores.reindex(index=genes, columns=coords.index).to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        gene_mean = np.nanmean(np.abs(scores), axis=1)
    relative = scores / np.where(gene_mean > 0, gene_mean, np.nan)[:, None]
    edges = np.arange(-window, window + bin_size, bin_size)
    records = {"silenced": [], "control": []}
    with_peaks = []
    for i, gene in enumerate(genes):
        if found[gene].empty:
            continue
        d = tss_distance(coords, found[gene])
        near = np.flatnonzero(np.abs(d) <= window)
        if not len(near):
            continue
        with_peaks.append(gene)
        records["silenced"].append((gene, d[near], scores[i, near], relative[i, near]))
        others = np.delete(np.arange(len(genes)), i)
        for h in rng.choice(others, size=min(n_control, len(others)), replace=False):
            records["control"].append((gene, d[near], scores[h, near], relative[h, near]))
    if len(genes) < 2:
        logger.warning("tss_profile: the table has one gene, so there is no control of other silenced genes")
    out = []
    for name, recs in records.items():
        if not recs:
            continue
        dist = np.concatenate([r[1] for r in recs])
        val = np.concatenate([r[2] for r in recs])
        rel = np.concatenate([r[3] for r in recs])
        gene_of = np.concatenate([np.full(len(r[1]), r[0], dtype=object) for r in recs])
        b = np.clip(np.digitize(dist, edges) - 1, 0, len(edges) - 2)
        for k in range(len(edges) - 1):
            m = (b == k) & ~np.isnan(val)
            n = int(m.sum())
            out.append(
                {
                    "set": name,
                    "bin_start": int(edges[k]),
                    "bin_end": int(edges[k + 1]),
                    "distance": (edges[k] + edges[k + 1]) / 2,
                    "mean_score": float(val[m].mean()) if n else np.nan,
                    "mean_relative": float(rel[m].mean()) if n else np.nan,
                    "sem_relative": float(rel[m].std(ddof=1) / np.sqrt(n)) if n > 1 else np.nan,
                    "n_pairs": n,
                    "n_genes": len(set(gene_of[m])),
                }
            )
    profile = pd.DataFrame(
        out,
        columns=[
            "set",
            "bin_start",
            "bin_end",
            "distance",
            "mean_score",
            "mean_relative",
            "sem_relative",
            "n_pairs",
            "n_genes",
        ],
    )
    profile.attrs.update(
        score=score,
        window=int(window),
        bin_size=int(bin_size),
        genes_in_annotation=[g for g in genes if not found[g].empty],
        genes_with_peaks_in_window=with_peaks,
    )
    return profile


# ----------------------------------------------------------------------------- motifs
def motif_enrichment(
    table: pd.DataFrame,
    motifs,
    *,
    score: str = "mean_delta",
    group=None,
    seed: int = 0,
) -> pd.DataFrame:
    """Do peaks with a silenced TF's motif close more often than random motif-bearing peaks?

    For each gene of the table with a motif (matched by name; ``FOS::JUN`` matches both),
    the peaks carrying any of its motifs are compared with as many random peaks (seeded)
    that carry some other motif but none of the TF's: the fraction that close
    (``score`` > 0; with ``mean_delta``, accessibility drops when the TF is silenced), the
    mean score, and Welch's t-test of the scores.

    Parameters
    ----------
    table
        :func:`gene2peak` output for peaks, all peaks per gene.
    motifs
        :class:`multidgd.genome.MotifMatches` (from :func:`multidgd.genome.motif_matrix`) or
        a peaks × motifs DataFrame of bool whose column names are the TF names.
    score
        Signed column to test (default ``mean_delta``).
    group
        Which group of a table with several.
    seed
        Seed of the random peaks.

    Returns
    -------
    DataFrame with one row per TF: ``gene``, ``motifs``, ``n_motif_peaks``,
    ``n_random_peaks``, ``frac_closing_motif``, ``frac_closing_random``, ``mean_motif``,
    ``mean_random``, ``t`` and ``p`` (two-sided).
    """
    from scipy.stats import ttest_ind

    from .genome import MotifMatches, _tf_names

    t = _one_group(table, group)
    col = _peak_column(t)
    if score not in t.columns:
        raise ValueError(f"score column {score!r} is not in the table; columns: {list(t.columns)}")
    if isinstance(motifs, MotifMatches):
        matrix = sp.csc_matrix(motifs.matrix, dtype=bool)
        peak_names, labels = pd.Index(motifs.peaks.astype(str)), list(motifs.motif_names)
    elif isinstance(motifs, pd.DataFrame):
        matrix = sp.csc_matrix(motifs.to_numpy(dtype=bool))
        peak_names, labels = pd.Index(motifs.index.astype(str)), [str(c) for c in motifs.columns]
    else:
        raise TypeError("motifs must be a MotifMatches (genome.motif_matrix) or a peaks x motifs DataFrame of bool")
    tf_of = [set(_tf_names(name)) for name in labels]
    any_motif = np.asarray(matrix.sum(axis=1)).ravel() > 0
    rng = np.random.default_rng(seed)
    rows = []
    for gene, sub in t.groupby("gene", sort=False, observed=True):
        cols = [j for j, names in enumerate(tf_of) if str(gene).upper() in names]
        if not cols:
            continue
        has = np.asarray(matrix[:, cols].sum(axis=1)).ravel() > 0
        values = pd.Series(sub[score].to_numpy(dtype=np.float64), index=sub[col].astype(str)).reindex(peak_names)
        ok = values.notna().to_numpy()
        motif_peaks = np.flatnonzero(has & ok)
        others = np.flatnonzero(any_motif & ~has & ok)
        if len(motif_peaks) < 2 or len(others) < 2:
            continue
        random_peaks = rng.choice(others, size=min(len(motif_peaks), len(others)), replace=False)
        a, b = values.to_numpy()[motif_peaks], values.to_numpy()[random_peaks]
        test = ttest_ind(a, b, equal_var=False)
        rows.append(
            {
                "gene": gene,
                "motifs": ",".join(sorted({labels[j] for j in cols})),
                "n_motif_peaks": len(a),
                "n_random_peaks": len(b),
                "frac_closing_motif": float((a > 0).mean()),
                "frac_closing_random": float((b > 0).mean()),
                "mean_motif": float(a.mean()),
                "mean_random": float(b.mean()),
                "t": float(test.statistic),
                "p": float(test.pvalue),
            }
        )
    columns = [
        "gene",
        "motifs",
        "n_motif_peaks",
        "n_random_peaks",
        "frac_closing_motif",
        "frac_closing_random",
        "mean_motif",
        "mean_random",
        "t",
        "p",
    ]
    result = pd.DataFrame(rows, columns=columns)
    result.attrs["score"] = score
    return result


# ----------------------------------------------------------------------------- plots
def plot_gene2peak(table: pd.DataFrame, path, *, top: int = 10, score: str | None = None, max_genes: int = 12):
    """Bars of the ``top`` features per gene (first group), by ``score``, coloured by the sign
    of the mean effect (red: closes when the gene is silenced); writes a PNG."""
    from .plotting import _pyplot, _save

    plt = _pyplot()
    score = _score_column(table, score)
    signed = {"mean_abs_delta": "mean_delta", "mean_abs_logfc": "mean_logfc", "abs_rho": "rho"}.get(score, score)
    feature = _feature_column(table)
    first = table["group"].astype(str).iloc[0]
    t = table[table["group"].astype(str) == first]
    genes = t["gene"].astype(str).unique()[:max_genes]
    ncol = min(3, len(genes))
    nrow = int(np.ceil(len(genes) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 0.3 * top * nrow + 1.2 * nrow), squeeze=False)
    for ax, gene in zip(axes.ravel(), genes, strict=False):
        sub = t[t["gene"].astype(str) == gene].nlargest(top, score)[::-1]
        colours = np.where(sub[signed] > 0, "#c0392b", "#2e6da4")
        ax.barh(sub[feature].astype(str), sub[signed], color=colours)
        ax.axvline(0, color="k", lw=0.6)
        ax.set_title(f"{gene} ({first}, n={int(sub['n_cells'].iloc[0]) if len(sub) else 0})", fontsize=9)
        ax.tick_params(axis="y", labelsize=6)
        ax.set_xlabel(signed, fontsize=8)
    for ax in axes.ravel()[len(genes) :]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)


def plot_tss_profile(profile: pd.DataFrame, path, *, title: str = ""):
    """Relative effect against distance to the TSS, silenced genes vs control; writes a PNG."""
    from .plotting import _pyplot, _save

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for name, colour in (("silenced", "#c0392b"), ("control", "#7f8c8d")):
        p = profile[profile["set"] == name]
        if p.empty:
            continue
        x, y, e = p["distance"] / 1000, p["mean_relative"], p["sem_relative"].fillna(0)
        label = "silenced gene" if name == "silenced" else "same peaks, other genes silenced"
        ax.plot(x, y, "o-", color=colour, label=f"{label} ({int(p['n_pairs'].sum())} gene-peak pairs)", ms=3)
        ax.fill_between(x, y - e, y + e, color=colour, alpha=0.2)
    ax.axhline(1, color="k", lw=0.5, ls=":")
    ax.set_xlabel("distance of the peak to the silenced gene's TSS (kb; + downstream)")
    ax.set_ylabel(f"{profile.attrs.get('score', 'score')} / gene's mean")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_motif_enrichment(result: pd.DataFrame, path, *, max_tfs: int = 30):
    """Fraction of closing peaks with the TF's motif vs random motif peaks; writes a PNG."""
    from .plotting import _pyplot, _save

    plt = _pyplot()
    r = result.sort_values("p").head(max_tfs)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(r) + 1.5), 3.5))
    x = np.arange(len(r))
    ax.bar(x - 0.2, r["frac_closing_motif"], 0.4, label="peaks with the TF's motif", color="#c0392b")
    ax.bar(x + 0.2, r["frac_closing_random"], 0.4, label="random motif peaks", color="#7f8c8d")
    ax.set_xticks(x, r["gene"].astype(str), rotation=90, fontsize=7)
    ax.set_ylabel("fraction closing on silencing")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
