"""Tidy gene-to-feature tables: their column conventions and the checks the analyses share.

Every table of :mod:`multidgd.analysis` has one row per (gene, feature, group): columns
``gene``, ``peak`` (``target_gene`` when the affected features are genes), ``group``, the
scores and ``n_cells``; ``attrs["method"]`` names the analysis that made it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from ..data import MODALITIES, obs_column

__all__ = [
    "SCORE_COLUMNS",
    "FEATURE_COLUMN",
    "check_genes",
    "check_top_n",
    "check_modality",
    "check_size",
    "cell_groups",
    "label_codes",
    "score_column",
    "one_group",
    "several_groups",
    "stack_groups",
    "feature_column",
    "peak_column",
]

logger = logging.getLogger(__name__)

#: Default ranking column of each kind of table (by ``table.attrs["method"]``).
SCORE_COLUMNS = {"silencing": "mean_abs_delta", "spearman": "abs_rho", "links": "score"}
#: Name of the affected-feature column by modality.
FEATURE_COLUMN = {"atac": "peak", "rna": "target_gene"}


# ----------------------------------------------------------------------------- input checks
def check_genes(genes, known: pd.Index) -> list[str]:
    """Check the genes to analyse.

    Parameters
    ----------
    genes
        A gene name or a sequence of names.
    known
        The genes that may be asked for.

    Returns
    -------
    list[str]
        The names, as strings, in the given order.

    Raises
    ------
    ValueError
        When ``genes`` is empty, repeats a name or names an unknown gene.
    """
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


def check_top_n(top_n) -> None:
    """Check that ``top_n`` is a positive integer or None.

    Parameters
    ----------
    top_n
        Number of features kept per gene and group, or None for all.

    Raises
    ------
    ValueError
        Otherwise.
    """
    if top_n is not None and (not isinstance(top_n, int | np.integer) or top_n < 1):
        raise ValueError(f"top_n must be a positive integer or None, got {top_n!r}")


def check_modality(modality: str) -> str:
    """Check the modality of the affected features.

    Parameters
    ----------
    modality
        ``"atac"`` or ``"rna"``.

    Returns
    -------
    str
        ``modality``.

    Raises
    ------
    ValueError
        For any other value.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality must be one of {list(MODALITIES)} (the affected features), got {modality!r}")
    return modality


def check_size(n_rows: int, limit: int, advice: str) -> None:
    """Refuse a result longer than ``limit`` rows before any work is done.

    Parameters
    ----------
    n_rows
        Rows the result would have.
    limit
        Most rows allowed.
    advice
        How to ask for fewer, appended to the error message.

    Raises
    ------
    ValueError
        When ``n_rows > limit``.
    """
    if n_rows > limit:
        raise ValueError(f"the result would have {n_rows:,} rows (more than {limit:,}); {advice}")


def label_codes(labels: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Codes of group labels: (n,) int64 (-1 where missing) and the group names, a categorical's
    categories in their order, other values sorted as strings.
    """
    if isinstance(labels.dtype, pd.CategoricalDtype):
        names = [str(c) for c in labels.cat.categories]
    else:
        names = sorted(labels.dropna().astype(str).unique().tolist())
    codes = pd.Categorical(labels.astype(str).where(labels.notna()), categories=names).codes.astype(np.int64)
    return codes, names


def cell_groups(data: Any, groupby: str | None, obs_names: pd.Index, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Group of each selected cell, by an ``obs`` column.

    Parameters
    ----------
    data
        MuData or AnnData holding the column (in ``obs`` or a modality's ``obs``).
    groupby
        The column; None puts every cell in one group ``"all"``.
    obs_names
        Names of the cells that ``rows`` index.
    rows
        Positions of the selected cells in ``obs_names``.

    Returns
    -------
    tuple[numpy.ndarray, list[str]]
        The group code of each selected cell (int64, -1 where the label is missing; such
        cells are logged as left out) and the group names. Categorical columns keep their
        categories' order; other columns are sorted.

    Raises
    ------
    ValueError
        When no such column exists.
    """
    if groupby is None:
        return np.zeros(len(rows), dtype=np.int64), ["all"]
    try:
        col = obs_column(data, groupby, obs_names).iloc[rows]
    except KeyError:
        avail = sorted(set(data.obs.columns).union(*[set(m.obs.columns) for m in getattr(data, "mod", {}).values()]))
        raise ValueError(f"groupby: no obs column {groupby!r}; available: {avail}") from None
    codes, names = label_codes(col)
    if (codes < 0).any():
        logger.warning("groupby %r: %d cells have no label and are left out", groupby, int((codes < 0).sum()))
    return codes, names


# ----------------------------------------------------------------------------- table columns
def score_column(table: pd.DataFrame, score: str | None) -> str:
    """Column to rank a table by.

    Parameters
    ----------
    table
        A gene-to-feature table.
    score
        The column, or None for the default of the table's method (:data:`SCORE_COLUMNS`).

    Returns
    -------
    str
        The column name.

    Raises
    ------
    ValueError
        When the table has no such column.
    """
    if score is None:
        score = SCORE_COLUMNS.get(table.attrs.get("method", ""), "mean_abs_delta")
    if score not in table.columns:
        raise ValueError(f"score column {score!r} is not in the table; columns: {list(table.columns)}")
    return score


def one_group(table: pd.DataFrame, group) -> pd.DataFrame:
    """Rows of one group of a table.

    Parameters
    ----------
    table
        A gene-to-feature table.
    group
        The group; None is allowed when the table has one group only.

    Returns
    -------
    pandas.DataFrame
        The group's rows (``table`` itself when group is None).

    Raises
    ------
    ValueError
        When ``group`` is None and the table has several, or the group is not in it.
    """
    groups = table["group"].astype(str).unique()
    if group is None:
        if len(groups) > 1:
            raise ValueError(f"the table has {len(groups)} groups ({list(groups[:5])}...); pass group= to pick one")
        return table
    if str(group) not in groups:
        raise ValueError(f"group {group!r} is not in the table; groups: {list(groups)}")
    return table[table["group"].astype(str) == str(group)]


def several_groups(table: pd.DataFrame, group) -> list[str] | None:
    """The groups of a table with several when no ``group`` is named (each is then analysed
    in turn); None otherwise.
    """
    if group is not None or "group" not in table.columns:
        return None
    groups = table["group"].astype(str).unique().tolist()
    return groups if len(groups) > 1 else None


def stack_groups(parts: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per-group result tables one under the other, with a leading ``group`` column;
    ``attrs["groups"]`` holds each group's ``attrs``.
    """
    out = pd.concat([p.assign(group=g) for g, p in parts.items()], ignore_index=True)
    out = out[["group", *[c for c in out.columns if c != "group"]]]
    out.attrs = {"groups": {g: dict(p.attrs) for g, p in parts.items()}}
    return out


def feature_column(table: pd.DataFrame) -> str:
    """Find the affected-feature column of a table: ``peak`` or ``target_gene``.

    Parameters
    ----------
    table
        A gene-to-feature table.

    Returns
    -------
    str
        ``"peak"`` or ``"target_gene"``, whichever the table has.

    Raises
    ------
    ValueError
        When the table has neither.
    """
    for name in ("peak", "target_gene"):
        if name in table.columns:
            return name
    raise ValueError(f"the table has neither a 'peak' nor a 'target_gene' column; columns: {list(table.columns)}")


def peak_column(table: pd.DataFrame) -> str:
    """Check that a table is one of peaks and return its peak column.

    Parameters
    ----------
    table
        A gene-to-feature table that should hold peaks.

    Returns
    -------
    str
        ``"peak"``.

    Raises
    ------
    ValueError
        When the table is not one of peaks.
    """
    if "peak" not in table.columns:
        raise ValueError("this analysis needs a table of peaks (gene2peak/spearman_gene2peak with modality='atac')")
    return "peak"
