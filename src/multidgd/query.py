"""Validation of new data (query cells) against a trained model's features and covariates.

New data may hold both modalities, one of them (a MuData with one modality, or one
AnnData), or both with some cells lacking one (a MuData whose modalities hold different
cells). Features are matched to the model's by name: reordered, and a subset is allowed
(absent features are left out of the loss).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .data import (
    MODALITIES,
    MultiomeData,
    container_kind,
    feature_modalities,
    find_obs_column,
    mudata_modalities,
    obs_column_names,
    read_counts,
    unique_feature_names,
)

__all__ = ["QueryData", "read_query", "training_query"]

logger = logging.getLogger(__name__)

_ROLE = {"rna": "RNA (genes)", "atac": "ATAC (peaks)"}


@dataclass
class QueryData:
    """Validated new cells, with features in the model's order.

    Attributes
    ----------
    obs_names
        Cell names, in input order.
    counts
        Modality -> (n, len(observed[m])) CSR float32 raw counts, for modalities present in
        the data. Rows of cells that lack the modality are empty.
    observed
        Modality -> int64 positions of the matched features in the model's feature list
        (sorted); column ``j`` of ``counts[m]`` is model feature ``observed[m][j]``.
    present
        (n, 2) bool, whether each cell has counts in each modality (columns in
        ``MODALITIES`` order).
    library_size
        (n, 2) float32 observed totals over the matched features (0 where absent).
    given_library_size
        (n, 2) float32 library sizes read from obs columns the user named (NaN elsewhere).
    covariate_labels
        Per model covariate key: (n,) str labels.
    n_absent_features
        Modality -> number of model features not in the data.
    """

    obs_names: pd.Index
    counts: dict[str, sp.csr_matrix]
    observed: dict[str, np.ndarray]
    present: np.ndarray
    library_size: np.ndarray
    given_library_size: np.ndarray
    covariate_labels: list[np.ndarray] = field(default_factory=list)
    n_absent_features: dict[str, int] = field(default_factory=dict)

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return len(self.obs_names)

    def take(self, rows: np.ndarray) -> QueryData:
        """The cells at integer positions ``rows``, in that order."""
        return QueryData(
            obs_names=self.obs_names[rows],
            counts={m: x[rows] for m, x in self.counts.items()},
            observed=self.observed,
            present=self.present[rows],
            library_size=self.library_size[rows],
            given_library_size=self.given_library_size[rows],
            covariate_labels=[labels[rows] for labels in self.covariate_labels],
            n_absent_features=self.n_absent_features,
        )


def training_query(data: MultiomeData, rows: np.ndarray) -> QueryData | None:
    """Training-data cells at positions ``rows`` as new cells (every model feature present);
    None when the counts stay on disk (backed).
    """
    if not all(isinstance(x, sp.csr_matrix) for x in data.counts.values()):
        return None
    n = len(rows)
    present = np.ones((n, len(data.counts)), dtype=bool) if data.present is None else data.present[rows]
    codes, categories = data.covariate_codes, data.covariate_categories
    labels = [np.asarray(c, dtype=object)[codes[rows, v]] for v, c in enumerate(categories)]
    return QueryData(
        obs_names=data.obs_names[rows],
        counts={m: x[rows] for m, x in data.counts.items()},
        observed={m: np.arange(x.shape[1], dtype=np.int64) for m, x in data.counts.items()},
        present=present,
        library_size=np.asarray(data.library_size[rows], dtype=np.float32),
        given_library_size=np.full((n, len(data.counts)), np.nan, dtype=np.float32),
        covariate_labels=[lab.astype(str) for lab in labels],
        n_absent_features={m: 0 for m in data.counts},
    )


def read_query(
    data: Any,
    *,
    var_names: dict[str, pd.Index],
    modality_names: dict[str, str],
    covariate_keys: list[str],
    layer: str | None = None,
    library_size_keys: dict[str, str] | None = None,
    min_feature_fraction: float = 0.5,
    labels_needed: bool = True,
) -> QueryData:
    """Validate new cells and map their features onto the model's.

    Parameters
    ----------
    data
        MuData or AnnData with raw counts.
    var_names
        The model's features per modality.
    modality_names
        Modality -> its name in a MuData.
    covariate_keys
        The model's covariate keys; each must be an obs column.
    layer
        Layer with raw counts (default ``X``).
    library_size_keys
        Modality -> obs column with that modality's library size (total counts over all
        of the model's features), used to scale predictions of a modality the cell lacks.
    min_feature_fraction
        Refuse a modality when fewer than this fraction of the model's features match.
    labels_needed
        Refuse data lacking a covariate column; otherwise its cells get the label ``""``,
        a class the model does not know (cells placed without labels need none).

    Returns
    -------
    QueryData
        The validated cells. The input is not modified.

    Notes
    -----
    The counts are checked as training counts are (:func:`multidgd.data.to_count_csr`):
    values that are not raw counts are refused; duplicate sparse entries are summed (on a
    copy) and counts above ``2**24`` accepted, both with a warning.
    """
    if not 0 <= min_feature_fraction <= 1:
        raise ValueError(f"min_feature_fraction must be in [0, 1], got {min_feature_fraction}")
    mods, frames = _modalities_of(data, var_names, modality_names)
    obs_names = _query_obs_names(data)
    n = len(obs_names)
    counts, observed, absent = {}, {}, {}
    present = np.zeros((n, len(MODALITIES)), dtype=bool)
    library = np.zeros((n, len(MODALITIES)), dtype=np.float32)
    for j, m in enumerate(MODALITIES):
        if m not in mods:
            continue
        x, observed[m], absent[m] = _matched_counts(
            mods[m], m, var_names[m], modality_names[m], layer, min_feature_fraction
        )
        counts[m] = _in_data_rows(x, mods[m], obs_names, modality_names[m])
        library[:, j] = np.asarray(counts[m].sum(axis=1)).ravel()
        present[:, j] = library[:, j] > 0
    _check_presence(present, counts, obs_names)
    labels = _covariate_labels(frames, covariate_keys, obs_names, labels_needed)
    given = _given_library_sizes(frames, library_size_keys, obs_names)
    return QueryData(
        obs_names=obs_names,
        counts=counts,
        observed=observed,
        present=present,
        library_size=library,
        given_library_size=given,
        covariate_labels=labels,
        n_absent_features=absent,
    )


def _modalities_of(data: Any, model_vars: dict[str, pd.Index], names: dict[str, str]) -> tuple[dict, list]:
    """Find the modalities present: ({modality: AnnData}, [obs frames to look up columns in])."""
    if container_kind(data) == "mudata":
        mods = mudata_modalities(data, names)
        if not mods:
            raise ValueError(
                f"none of the model's modalities ({names['rna']!r} for RNA, {names['atac']!r} for ATAC) "
                f"is in the MuData; its modalities are {list(data.mod)}. Pass rna_mod=/atac_mod= "
                "(CLI: --rna-mod/--atac-mod) to name them."
            )
        unused = [k for k in data.mod if k not in (names["rna"], names["atac"])]
        lacking = [f"{names[m]!r} ({_ROLE[m]})" for m in MODALITIES if m not in mods]
        if lacking and unused:  # most likely a modality under another name: refuse, as training does
            raise ValueError(
                f"the MuData has no modality {' or '.join(lacking)} but holds {unused}, which the model does not "
                f"use; pass rna_mod=/atac_mod= (CLI: --rna-mod/--atac-mod) to name them, or drop them to place "
                "the cells by the modality they have"
            )
        if lacking:
            logger.warning("the MuData has no modality %s, so it is treated as missing", " or ".join(lacking))
        return mods, [data.obs, *(a.obs for a in mods.values())]
    return _anndata_modalities(data, model_vars), [data.obs]


def _anndata_modalities(data: Any, model_vars: dict[str, pd.Index]) -> dict[str, Any]:
    """Split one AnnData's features by ``var["feature_types"]``, else by the model's feature names."""
    if "feature_types" in data.var:
        types = feature_modalities(data.var)
    else:
        # no feature types: a feature belongs to the modality whose model features hold its name
        names_ = pd.Index(data.var_names.astype(str))
        types = pd.Series(np.where(names_.isin(model_vars["rna"]), "rna", None), index=data.var_names)
        types[names_.isin(model_vars["atac"])] = "atac"
    mods = {}
    for m in MODALITIES:
        mask = (types == m).to_numpy()
        if mask.any():
            mods[m] = data[:, mask]
    if not mods:
        found = sorted(data.var["feature_types"].astype(str).unique().tolist()) if "feature_types" in data.var else []
        raise ValueError(
            "no feature of the AnnData belongs to the model: "
            + (
                f"var['feature_types'] has {found}; allowed: 'Gene Expression'/'GEX'/'rna' and 'Peaks'/'ATAC'"
                if found
                else f"none of its var_names (e.g. {data.var_names[:3].tolist()}) is a gene or peak of the model"
            )
        )
    return mods


def _query_obs_names(data: Any) -> pd.Index:
    """Return the data's cell names as strings, refusing repeats and empty data."""
    obs_names = pd.Index(data.obs_names.astype(str))
    if not obs_names.is_unique:
        dup = obs_names[obs_names.duplicated()].unique()[:5].tolist()
        raise ValueError(f"obs names repeat, e.g. {dup}; make them unique (obs_names_make_unique())")
    if len(obs_names) == 0:
        raise ValueError("the data has no cells")
    return obs_names


def _matched_counts(
    adata: Any, m: str, model_names: pd.Index, where: str, layer: str | None, min_feature_fraction: float
) -> tuple[sp.csr_matrix, np.ndarray, int]:
    """Read one modality's counts restricted to the model's features, in the model's order.

    Returns (counts in the modality's cell order, model positions of the columns, number of
    model features absent).
    """
    names = unique_feature_names(adata.var_names, where)
    model_pos = model_names.get_indexer(names)  # data column -> model feature, -1 if unknown
    matched = model_pos >= 0
    n_model = len(model_names)
    if matched.sum() == 0 or matched.sum() < min_feature_fraction * n_model:
        raise ValueError(
            f"only {int(matched.sum())} of the model's {n_model} {_ROLE[m]} features are in the data "
            f"(by var_names; e.g. data has {names[:3].tolist()}, model has {model_names[:3].tolist()}); "
            f"at least {min_feature_fraction:.0%} must match (min_feature_fraction)"
        )
    x = read_counts(adata, layer, where)
    order = np.argsort(model_pos[matched], kind="stable")
    cols = np.flatnonzero(matched)[order]
    absent = n_model - len(cols)
    if absent or (~matched).any():
        logger.warning(
            "%s: %d of the model's %d features found; %d absent (left out of the loss)%s",
            _ROLE[m],
            len(cols),
            n_model,
            absent,
            f"; {int((~matched).sum())} features unknown to the model ignored" if (~matched).any() else "",
        )
    return x[:, cols], model_pos[cols].astype(np.int64), absent


def _in_data_rows(x: sp.csr_matrix, adata: Any, obs_names: pd.Index, where: str) -> sp.csr_matrix:
    """Put a modality's rows in the data's cell order; cells the modality lacks get empty rows."""
    n = len(obs_names)
    mod_cells = pd.Index(adata.obs_names.astype(str))
    pos = obs_names.get_indexer(mod_cells)
    if (pos < 0).any():
        raise ValueError(
            f"modality {where!r} holds cells not in the data's obs_names, e.g. {mod_cells[pos < 0][:3].tolist()}"
        )
    if len(mod_cells) != n or not (pos == np.arange(n)).all():
        x = sp.csr_matrix((np.ones(len(pos), dtype=np.float32), (pos, np.arange(len(pos)))), shape=(n, len(pos))) @ x
        x = sp.csr_matrix(x)
        x.sort_indices()
    return x


def _check_presence(present: np.ndarray, counts: dict[str, sp.csr_matrix], obs_names: pd.Index) -> None:
    """Refuse cells without counts in any modality; report cells lacking one."""
    empty = ~present.any(axis=1)
    if empty.any():
        raise ValueError(
            f"{int(empty.sum())} of {len(obs_names)} cells have no counts over the model's features in any modality "
            f"(e.g. {obs_names[empty][:3].tolist()}); remove them before embedding"
        )
    for j, m in enumerate(MODALITIES):
        if m in counts:
            lacking = int((~present[:, j]).sum())
            if lacking:
                logger.info("%d cells have no %s counts; that modality is predicted for them", lacking, _ROLE[m])


def _covariate_labels(frames: list, covariate_keys: list[str], obs_names: pd.Index, needed: bool) -> list[np.ndarray]:
    """Read the model's covariate columns as (n,) str labels ("" for all cells of a column absent and not needed)."""
    labels = []
    for key in covariate_keys:
        col = find_obs_column(frames, key, obs_names)
        if col is None and not needed:
            logger.info("no obs column %r: the cells are placed without a %r label", key, key)
            labels.append(np.full(len(obs_names), "", dtype=object))
            continue
        if col is None:
            raise ValueError(
                f"the model has covariate {key!r}, but the data has no obs column {key!r} "
                f"(available: {obs_column_names(frames)}). Add it (for cells of a batch the model never saw, any "
                "new label such as 'unknown' works), or leave it out with new_classes='naive' and "
                "covariate_start='search', which place cells without labels."
            )
        if col.isna().any():
            raise ValueError(
                f"obs column {key!r} has {int(col.isna().sum())} missing values "
                f"(e.g. {obs_names[col.isna().to_numpy()][:3].tolist()}); fill them (a new label is fine)"
            )
        labels.append(col.astype(str).to_numpy())
    return labels


def _given_library_sizes(frames: list, library_size_keys: dict[str, str] | None, obs_names: pd.Index) -> np.ndarray:
    """Read library sizes from the obs columns named: (n, 2) float32, NaN elsewhere."""
    given = np.full((len(obs_names), len(MODALITIES)), np.nan, dtype=np.float32)
    for m, key in (library_size_keys or {}).items():
        if m not in MODALITIES:
            raise ValueError(f"library_size_keys: modality must be one of {list(MODALITIES)}, got {m!r}")
        col = find_obs_column(frames, key, obs_names)
        if col is None:
            raise ValueError(f"library-size column {key!r} not in obs")
        values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
        if not np.isfinite(values).all() or (values <= 0).any():
            raise ValueError(f"library-size column {key!r} must hold positive finite numbers")
        given[:, MODALITIES.index(m)] = values
    return given
