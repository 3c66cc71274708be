"""Correlation baselines of gene-to-peak associations.

:func:`spearman_gene2peak` correlates each gene's expression with each peak's accessibility
across cells; its table has the rows of :func:`~multidgd.analysis.gene2peak`'s, so both go
through the same evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..data import MODALITIES, positions
from .tables import FEATURE_COLUMN, cell_groups, check_genes, check_modality, check_size, check_top_n

__all__ = ["spearman_gene2peak", "centred_sparse_ranks", "kept_rows"]


def _rank_dense(x: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(x, method="average")


def centred_sparse_ranks(x: sp.csc_matrix) -> tuple[sp.csc_matrix, np.ndarray]:
    """Rank the columns of a non-negative CSC matrix, keeping it sparse.

    Returns S (same pattern, rank minus the zeros' average rank, column-wise, ties averaged)
    and each column's sum of squared centred ranks.
    """
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


@dataclass(frozen=True)
class _Correlands:
    """Depth-normalised counts of every kept cell, and how the correlations are reported."""

    expr: np.ndarray  # (cells, genes) dense
    target: sp.csr_matrix  # (cells, selected features)
    genes: list[str]
    features: pd.Index  # all features of the modality
    cols: np.ndarray  # the selected ones
    column: str  # peak / target_gene
    per_gene: int
    expressing_only: bool


def kept_rows(d, cells) -> np.ndarray:
    """Rows, among the cells :func:`~multidgd.data.read_multiome` kept, of the selected input cells.

    Parameters
    ----------
    d
        :class:`~multidgd.data.MultiomeData`.
    cells
        Names, positions or a boolean mask of the input's cells (None: all).

    Returns
    -------
    numpy.ndarray
        The selected cells' rows in ``d``; cells dropped for lacking counts are left out.
    """
    rows_all = positions(d.input_obs_names, cells, "cells")
    kept_pos = np.full(len(d.input_obs_names), -1)
    kept_pos[np.flatnonzero(d.kept)] = np.arange(d.n_cells)
    rows = kept_pos[rows_all]
    return rows[rows >= 0]


def _selected_cells(data: Any, d, cells, groupby: str | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Rows (among the kept cells) of the selected cells with a group, their group codes and the group names."""
    rows = kept_rows(d, cells)
    codes, group_names = cell_groups(data, groupby, d.obs_names, rows)
    return rows[codes >= 0], codes[codes >= 0], group_names


def _group_correlations(c: _Correlands, in_group: np.ndarray, group: str) -> list[pd.DataFrame]:
    """One piece of the table per gene with at least 3 cells of the group to correlate across."""
    shared = None if c.expressing_only or len(in_group) < 3 else centred_sparse_ranks(c.target[in_group].tocsc())
    pieces = []
    for k, g in enumerate(c.genes):
        sel = in_group[c.expr[in_group, k] > 0] if c.expressing_only else in_group
        if len(sel) < 3:
            continue
        s, ss = shared if shared is not None else centred_sparse_ranks(c.target[sel].tocsc())
        gr = _rank_dense(c.expr[sel, k])
        gr = gr - gr.mean()
        cov = np.asarray(s.T @ gr).ravel()
        with np.errstate(invalid="ignore", divide="ignore"):
            rho = cov / np.sqrt(ss * (gr**2).sum())
        rho[ss == 0] = np.nan
        order = np.argsort(-np.nan_to_num(np.abs(rho), nan=-1.0), kind="stable")[: c.per_gene]
        pieces.append(
            pd.DataFrame(
                {
                    "gene": g,
                    c.column: c.features[c.cols[order]],
                    "group": group,
                    "rho": rho[order],
                    "abs_rho": np.abs(rho[order]),
                    "n_cells": len(sel),
                }
            )
        )
    return pieces


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
        As in :func:`~multidgd.analysis.gene2peak`.
    expressing_only
        Correlate across the cells expressing the gene only (the cells
        :func:`~multidgd.analysis.gene2peak` silences) instead of all cells of the group.
    rna_mod, atac_mod, layer
        Where the counts are.

    Returns
    -------
    pandas.DataFrame
        Columns ``gene``, ``peak`` (``target_gene`` for ``modality="rna"``), ``group``,
        ``rho``, ``abs_rho`` and ``n_cells``, sorted like
        :func:`~multidgd.analysis.gene2peak`'s; NaN where a feature is constant across the
        cells.
    """
    from ..data import read_multiome

    modality = check_modality(modality)
    d = read_multiome(data, rna_mod=rna_mod, atac_mod=atac_mod, layer=layer, drop_empty_cells=True)
    genes = check_genes(genes, d.var_names["rna"])
    check_top_n(top_n)
    all_features = d.var_names[modality]
    cols = positions(all_features, features, "features")
    rows, codes, group_names = _selected_cells(data, d, cells, groupby)
    per_gene = top_n if top_n is not None else len(cols)
    check_size(len(genes) * len(group_names) * min(per_gene, len(cols)), max_rows, "pass top_n= or features=")

    j_mod = MODALITIES.index(modality)
    lib = d.library_size.astype(np.float64)
    gene_cols = d.var_names["rna"].get_indexer(genes)
    expr = sp.csc_matrix(d.counts["rna"][:, gene_cols]).toarray() / lib[:, :1]
    target = sp.diags(1.0 / lib[:, j_mod]) @ d.counts[modality][:, cols]
    c = _Correlands(
        expr, sp.csr_matrix(target), genes, all_features, cols, FEATURE_COLUMN[modality], per_gene, expressing_only
    )
    pieces = []
    for grp, gname in enumerate(group_names):
        pieces += _group_correlations(c, rows[codes == grp], gname)
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
