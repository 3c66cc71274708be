"""From MuData/AnnData to validated arrays: sparse counts, library sizes, label codes.

The whole count matrices are kept in CSR form; a minibatch is turned into coordinate
lists of its non-zeros (:func:`gather_rows`) and never into a dense cells x features block.

The container reader is shared by the training data (:func:`read_multiome`) and new cells
(:func:`multidgd.query.read_query`): :func:`container_kind` and
:func:`mudata_modalities` / :func:`feature_modalities` find the RNA and ATAC parts,
:func:`read_counts` checks and converts a count matrix taken from ``X`` or a layer, and
:func:`find_obs_column` looks up ``obs`` columns.

Bad data is refused with an error naming the modality, column or argument, or handled
with a logged warning: duplicate sparse entries are summed and counts above ``2**24`` kept
(:func:`to_count_csr`), continuous covariate or cell-type columns are refused and classes
with fewer than :data:`MIN_CLASS_CELLS` cells warned about (:func:`small_classes`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from ._backed import BackedCSR, backed_group

__all__ = [
    "MultiomeData",
    "read_multiome",
    "mosaic_kinds",
    "obs_column",
    "make_validation_split",
    "stratified_parts",
    "gather_rows",
    "positions",
    "is_backed",
    "MODALITIES",
    "FEATURE_TYPE_ALIASES",
    "container_kind",
    "mudata_modalities",
    "feature_modalities",
    "layer_matrix",
    "to_count_csr",
    "read_counts",
    "unique_feature_names",
    "find_obs_column",
    "obs_column_names",
    "small_classes",
    "FLOAT32_EXACT_MAX",
    "MIN_CLASS_CELLS",
    "MAX_NUMERIC_CLASSES",
]

logger = logging.getLogger(__name__)

#: Internal modality names, in decoder order.
MODALITIES = ("rna", "atac")

#: ``var["feature_types"]`` values (stripped, lower case) -> modality.
FEATURE_TYPE_ALIASES = {
    "gene expression": "rna",
    "gex": "rna",
    "rna": "rna",
    "peaks": "atac",
    "atac": "atac",
    "chromatin accessibility": "atac",
}

#: The largest integer float32 holds exactly (``2**24``); larger counts are warned about.
FLOAT32_EXACT_MAX = 2**24

#: Covariate and cell-type classes with fewer cells than this are warned about: a class
#: representation, a class-wise validation split or a clustering score has too little to
#: go on (see :func:`small_classes`).
MIN_CLASS_CELLS = 3

#: A numeric (not categorical) ``obs`` column used as covariate or cell types is refused
#: when it holds more distinct values than this, or more than half as many as there are
#: cells: it looks continuous.
MAX_NUMERIC_CLASSES = 50

_SPLIT_VALUES = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}


@dataclass
class MultiomeData:
    """Validated training input.

    Attributes
    ----------
    obs_names
        Names of the cells used (empty cells removed), in order.
    input_obs_names
        Names of every cell of the input, in order.
    kept
        (n_input,) bool, which input cells are in ``obs_names``.
    counts
        Modality -> (n, F_m) CSR float32 raw counts.
    var_names
        Modality -> feature names.
    library_size
        (n, n_modalities) float32 total counts per modality.
    covariate_keys, covariate_codes, covariate_categories
        Per covariate key: (n, V) int64 class codes and the class names.
    cell_type_key, cell_type_codes, cell_type_categories
        Optional cell-type labels: (n,) int64 codes and class names.
    split
        (n,) array of "train"/"validation"/"test" when the user gave a split, else None.
    source_modality
        Modality -> the name it had in the input.
    present
        (n, 2) bool, which modalities each cell has (columns in ``MODALITIES`` order), for a
        mosaic: modalities holding different, overlapping cells; a cell's counts in a
        modality it lacks are an empty row and its library size 0. None: every cell has both.
    """

    obs_names: pd.Index
    input_obs_names: pd.Index
    kept: np.ndarray
    counts: dict[str, sp.csr_matrix]
    var_names: dict[str, pd.Index]
    library_size: np.ndarray
    covariate_keys: list[str] = field(default_factory=list)
    covariate_codes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))
    covariate_categories: list[list[str]] = field(default_factory=list)
    cell_type_key: str | None = None
    cell_type_codes: np.ndarray | None = None
    cell_type_categories: list[str] | None = None
    split: np.ndarray | None = None
    source_modality: dict[str, str] = field(default_factory=dict)
    present: np.ndarray | None = None

    @property
    def n_cells(self) -> int:
        """Number of cells used."""
        return len(self.obs_names)

    @property
    def n_features(self) -> dict[str, int]:
        """Modality -> number of features."""
        return {m: x.shape[1] for m, x in self.counts.items()}

    def fingerprint(self) -> str:
        """Hash the cells, features, labels and library sizes (SHA-256).

        A checkpoint written for other data is refused on resume.

        Returns
        -------
        str
            Hexadecimal digest.
        """
        h = hashlib.sha256()
        for part in (
            list(self.obs_names),
            *(list(v) for v in self.var_names.values()),
            self.covariate_keys,
            self.covariate_categories,
            self.cell_type_categories or [],
        ):
            h.update("\x1f".join(map(str, part)).encode())
            h.update(b"\x1e")
        for m in MODALITIES:
            h.update(np.ascontiguousarray(self.library_size[:, MODALITIES.index(m)]).tobytes())
        return h.hexdigest()


# ----------------------------------------------------------------------------- the shared container reader
def container_kind(data: Any) -> str:
    """Tell a MuData from an AnnData.

    Parameters
    ----------
    data
        The input.

    Returns
    -------
    str
        ``"mudata"`` or ``"anndata"``; anything else raises a TypeError.
    """
    import anndata as ad

    try:
        import mudata as md

        if isinstance(data, md.MuData):
            return "mudata"
    except ImportError:  # pragma: no cover - mudata is a dependency
        pass
    if isinstance(data, ad.AnnData):
        return "anndata"
    raise TypeError(f"expected a MuData or an AnnData, got {type(data).__name__}")


def mudata_modalities(data: Any, names: dict[str, str]) -> dict[str, Any]:
    """Find the modalities of a MuData by name.

    Parameters
    ----------
    data
        A MuData.
    names
        Modality (``"rna"``, ``"atac"``) -> its name in ``data.mod``.

    Returns
    -------
    dict
        Modality -> AnnData, in ``MODALITIES`` order, for the names ``data.mod`` holds.
    """
    return {m: data.mod[names[m]] for m in MODALITIES if names[m] in data.mod}


def feature_modalities(var: pd.DataFrame) -> pd.Series:
    """Map ``var["feature_types"]`` to modalities, through :data:`FEATURE_TYPE_ALIASES`.

    Parameters
    ----------
    var
        Feature table with a ``feature_types`` column.

    Returns
    -------
    pandas.Series
        ``"rna"``, ``"atac"`` or NaN (other types) per feature.
    """
    return var["feature_types"].astype(str).str.strip().str.lower().map(FEATURE_TYPE_ALIASES)


def layer_matrix(adata: Any, layer: str | None, mod_name: str):
    """Return ``adata.X`` or a layer, with clear errors when it is not there.

    Parameters
    ----------
    adata
        AnnData of one modality.
    layer
        Layer name; ``None`` for ``X``.
    mod_name
        The modality's name, for messages.

    Returns
    -------
    array or sparse matrix
        The matrix as stored.
    """
    if layer is None:
        if adata.X is None:
            raise ValueError(f"modality {mod_name!r} has no X; pass layer= with one of {list(adata.layers)}")
        return adata.X
    if layer not in adata.layers:
        raise ValueError(f"layer {layer!r} not in the layers of modality {mod_name!r}; available: {list(adata.layers)}")
    return adata.layers[layer]


def to_count_csr(x, mod_name: str, layer: str | None) -> sp.csr_matrix:
    """Check that a matrix holds raw counts and convert it to CSR float32.

    Values that are not counts (NaN, infinite, negative, non-integer, non-numeric) raise a
    ValueError naming the modality and where the values came from. Two kinds of suspicious
    data are handled with a warning (logged) instead:

    * duplicate entries: a sparse matrix may store the same (cell, feature) position more
      than once (legal in scipy). The entries are summed, as ``X.sum_duplicates()`` does,
      on a copy; the input matrix is never changed.
    * counts above ``2**24`` (:data:`FLOAT32_EXACT_MAX`), the largest integer float32
      holds exactly: they are kept, rounded to float32 (relative error below ``6e-8``).
      They are warned about, not refused, since training still works; but a single count
      this large is rare in single-cell data and may mean that the matrix is not raw counts.

    Parameters
    ----------
    x
        Dense array or sparse matrix.
    mod_name
        The modality's name, for messages.
    layer
        The layer ``x`` comes from (``None``: ``X``), for messages.

    Returns
    -------
    scipy.sparse.csr_matrix
        float32 counts without explicit zeros, indices sorted, each position stored once.
    """
    out, notes = _checked_count_csr(x, _where(mod_name, layer))
    _warn_count_notes(notes, _where(mod_name, layer), layer)
    return out


class _CountNotes(NamedTuple):
    """What reading a count matrix found and handled: duplicate entries and very large counts."""

    duplicates: int = 0
    duplicate_cells: int = 0
    large: int = 0
    largest: float = 0.0

    def plus(self, other: _CountNotes) -> _CountNotes:
        """Combine the notes of two blocks of rows."""
        return _CountNotes(
            self.duplicates + other.duplicates,
            self.duplicate_cells + other.duplicate_cells,
            self.large + other.large,
            max(self.largest, other.largest),
        )


def _where(mod_name: str, layer: str | None) -> str:
    """Name a count matrix in messages: its modality and ``X`` or the layer."""
    return f"modality {mod_name!r} ({'X' if layer is None else 'layer ' + repr(layer)})"


def _merged_csr(x) -> tuple[sp.csr_matrix, bool, int, int]:
    """Return a sparse matrix as CSR with duplicate entries summed, never changing ``x``.

    Returns (the CSR matrix, whether it is a copy this function owns, the number of stored
    entries merged away, the number of rows that held duplicates).
    """
    if x.format == "csr":
        csr = sp.csr_matrix(x)  # a new object on the same arrays: its format flags are its own
        if csr.has_canonical_format:
            return csr, False, 0, 0
        csr = csr.copy()
    else:
        csr = x.tocsr()  # new arrays (COO: duplicates already summed here)
    csr.sum_duplicates()
    surplus = x.nnz - csr.nnz if x.format in ("csr", "csc", "coo") else 0
    if surplus <= 0:
        return csr, True, 0, 0
    stored = np.bincount(x.tocoo().row, minlength=x.shape[0])
    cells = int((stored > np.diff(csr.indptr)).sum())
    return csr, True, int(surplus), cells


def _check_count_values(values: np.ndarray, where: str) -> None:
    """Refuse values that are not raw counts (non-numeric, NaN/infinite, negative, non-integer)."""
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise ValueError(f"{where} holds {values.dtype} values; raw counts are needed")
    hint = "multiDGD needs raw integer counts, not normalised, log-transformed, TF-IDF or LSI values"
    if np.issubdtype(values.dtype, np.floating):
        bad = ~np.isfinite(values)
        if bad.any():
            raise ValueError(f"{where} has {int(bad.sum())} NaN or infinite values; {hint}")
    if (values < 0).any():
        raise ValueError(f"{where} has {int((values < 0).sum())} negative values; {hint}")
    if np.issubdtype(values.dtype, np.floating):
        frac = values != np.round(values)
        if frac.any():
            example = values[frac][:3].tolist()
            raise ValueError(f"{where} has {int(frac.sum())} non-integer values (e.g. {example}); {hint}")


def _checked_count_csr(x, where: str) -> tuple[sp.csr_matrix, _CountNotes]:
    """:func:`to_count_csr` without the warnings: the matrix and what was found."""
    if sp.issparse(x):
        x, owned, duplicates, duplicate_cells = _merged_csr(x)
        values = x.data
    else:
        x = np.asarray(x)
        values, owned, duplicates, duplicate_cells = x.ravel(), True, 0, 0
    _check_count_values(values, where)
    large = values > FLOAT32_EXACT_MAX
    n_large = int(large.sum())
    notes = _CountNotes(duplicates, duplicate_cells, n_large, float(values[large].max()) if n_large else 0.0)
    out = sp.csr_matrix(x, dtype=np.float32)
    if not owned and (not out.has_sorted_indices or not out.data.all()):
        out = out.copy()  # it shares arrays with the input, which must not change
    out.eliminate_zeros()
    out.sort_indices()
    return out, notes


def _warn_count_notes(notes: _CountNotes, where: str, layer: str | None, *, backed: bool = False) -> None:
    """Log a warning for duplicate entries and for counts above float32's exact integer range."""
    matrix = "X" if layer is None else f"layers[{layer!r}]"
    if notes.duplicates:
        logger.warning(
            "%s: %d stored entries repeat a (cell, feature) position already stored, in %d cells; they are "
            "summed%s, as %s.sum_duplicates() does. Call %s.sum_duplicates() on the input (then save it) "
            "to silence this warning",
            where,
            notes.duplicates,
            notes.duplicate_cells,
            " each time rows are read from the file (the file is not changed)"
            if backed
            else " (the input is not changed)",
            matrix,
            matrix,
        )
    if notes.large:
        logger.warning(
            "%s: %d counts exceed 2**24 = %d (largest %.0f), the largest integer float32 holds exactly; they "
            "are used rounded to float32. Counts this large are rare in single cells: check that %s holds raw counts",
            where,
            notes.large,
            FLOAT32_EXACT_MAX,
            notes.largest,
            matrix,
        )


def read_counts(adata: Any, layer: str | None, mod_name: str) -> sp.csr_matrix:
    """Read a modality's raw counts from ``X`` or a layer, checked, as CSR float32.

    Parameters
    ----------
    adata
        AnnData of one modality (in memory).
    layer
        Layer with the raw counts; ``None`` reads ``X``.
    mod_name
        The modality's name, used in error messages.

    Returns
    -------
    scipy.sparse.csr_matrix
        See :func:`to_count_csr`.
    """
    return to_count_csr(layer_matrix(adata, layer, mod_name), mod_name, layer)


def unique_feature_names(names: pd.Index, mod_name: str) -> pd.Index:
    """Return feature names as strings, refusing repeats.

    Parameters
    ----------
    names
        A modality's ``var_names``.
    mod_name
        The modality's name, for messages.

    Returns
    -------
    pandas.Index
        The names as strings.
    """
    out = pd.Index(names.astype(str))
    if not out.is_unique:
        dup = out[out.duplicated()].unique()[:5].tolist()
        raise ValueError(f"feature names repeat in modality {mod_name!r}, e.g. {dup}")
    return out


def find_obs_column(frames: list[pd.DataFrame | None], key: str, obs_names: pd.Index) -> pd.Series | None:
    """Find column ``key`` in the first frame that has it, aligned to ``obs_names``.

    Parameters
    ----------
    frames
        ``obs`` tables to look in, in order (``None`` entries are skipped).
    key
        Column name.
    obs_names
        Cell names to align to.

    Returns
    -------
    pandas.Series or None
        The column, or None when no frame has it. Cells the first frame with the column
        does not hold (a mosaic's modality tables) take their value from the next frames.
    """
    found, lacking = None, None
    for frame in frames:
        if frame is not None and key in frame.columns:
            col = frame[key] if frame.index.equals(obs_names) else frame[key].reindex(obs_names)
            if found is None:
                found, lacking = col, ~obs_names.isin(frame.index)
            else:  # cells the first table does not hold (a mosaic's modality tables): from the next
                take = lacking & obs_names.isin(frame.index)
                found = found.astype(object).where(~take, col.astype(object))
                lacking = lacking & ~take
            if not lacking.any():
                break
    return found


def obs_column_names(frames: list[pd.DataFrame | None]) -> list[str]:
    """List the columns of all frames, sorted, for messages about a missing column.

    Parameters
    ----------
    frames
        ``obs`` tables (``None`` entries are skipped).

    Returns
    -------
    list of str
        Sorted column names.
    """
    return sorted(set().union(*[set(f.columns) for f in frames if f is not None]))


def obs_column(data: Any, key: str, obs_names: pd.Index) -> pd.Series:
    """Return column ``key`` of ``data.obs`` (for a MuData, else of a modality's obs).

    Parameters
    ----------
    data
        MuData or AnnData.
    key
        Column name; a KeyError when no obs table has it.
    obs_names
        Cell names to align to.

    Returns
    -------
    pandas.Series
        The column, aligned to ``obs_names``.
    """
    frames = [data.obs, *(m.obs for m in getattr(data, "mod", {}).values())]
    col = find_obs_column(frames, key, obs_names)
    if col is None:
        raise KeyError(key)
    return col


def is_backed(adata) -> bool:
    """Tell whether an AnnData's X stays on disk (opened backed, or a sparse dataset as X).

    Parameters
    ----------
    adata
        AnnData (or anything: False).

    Returns
    -------
    bool
        True for counts left on disk.
    """
    return bool(getattr(adata, "isbacked", False)) or backed_group(getattr(adata, "X", None)) is not None


# ----------------------------------------------------------------------------- training data
def read_multiome(
    data: Any,
    *,
    rna_mod: str = "rna",
    atac_mod: str = "atac",
    layer: str | None = None,
    cell_type_key: str | None = None,
    covariate_keys: Sequence[str] = (),
    split_key: str | None = None,
    drop_empty_cells: bool = True,
) -> MultiomeData:
    """Validate paired RNA + ATAC input and extract what training needs.

    Parameters
    ----------
    data
        A MuData with an RNA and an ATAC modality, or one AnnData whose
        ``var["feature_types"]`` marks genes ("Gene Expression", "GEX", "rna") and peaks
        ("Peaks", "ATAC").
    rna_mod, atac_mod
        Modality names in a MuData.
    layer
        Layer holding raw counts in both modalities; ``None`` uses ``X``.
    cell_type_key
        Optional ``obs`` column of cell types (sets the number of basal components).
    covariate_keys
        ``obs`` columns of categorical covariates (e.g. batch, sample, donor).
    split_key
        Optional ``obs`` column with values train / validation (or val) / test.
    drop_empty_cells
        Cells with zero counts in a modality are dropped with a warning (True) or rejected
        with an error (False).

    Returns
    -------
    MultiomeData
        The validated data. The input is not modified.

    Notes
    -----
    The counts are checked by :func:`to_count_csr` (duplicate sparse entries are summed and
    counts above ``2**24`` accepted, both with a warning). A covariate or cell-type column
    that is numeric (not categorical) with more than :data:`MAX_NUMERIC_CLASSES` distinct
    values, or more than half as many as cells, is refused as continuous: bin it
    (``pandas.cut``) or, for class codes, make it categorical (``.astype("category")``).
    Classes with fewer than :data:`MIN_CLASS_CELLS` cells are warned about.
    """
    covariate_keys = _covariate_key_list(covariate_keys)
    mods, obs, source, columns_of = _split_modalities(data, rna_mod=rna_mod, atac_mod=atac_mod)
    obs_names, present = _check_obs_names(mods, source)
    backed = any(is_backed(a) for a in mods.values())
    if present is not None and backed:
        raise ValueError(
            "modalities holding different cells (a mosaic) are read into memory only; open the file without backed"
        )
    # the labels first: a wrong column is refused before the counts are read
    roles = {
        **{k: "covariate_keys" for k in covariate_keys},
        **({cell_type_key: "cell_type_key"} if cell_type_key else {}),
    }
    keys = [*([cell_type_key] if cell_type_key else []), *covariate_keys, *([split_key] if split_key else [])]
    columns = _collect_obs(obs, mods, keys, obs_names, roles)
    order = _align_cells(mods, obs_names, backed, present)
    counts, var_names = _read_modalities(mods, source, layer, columns_of, order, backed)
    if present is not None:
        counts = {m: _expand_rows(x, present[:, j]) for j, (m, x) in enumerate(counts.items())}
    library = np.stack(
        [
            counts[m].row_sums() if isinstance(counts[m], BackedCSR) else np.asarray(counts[m].sum(axis=1)).ravel()
            for m in MODALITIES
        ],
        axis=1,
    )
    kept = _non_empty_cells(library, source, drop_empty_cells, present)
    if not kept.all():
        counts = {m: x.subset(kept) if isinstance(x, BackedCSR) else x[kept] for m, x in counts.items()}
        library = library[kept]
        columns = {k: v[kept] for k, v in columns.items()}
        present = None if present is None else present[kept]
    if present is not None:
        _check_mosaic(present, source)

    out = MultiomeData(
        obs_names=obs_names[kept],
        input_obs_names=obs_names,
        kept=kept,
        counts=counts,
        var_names=var_names,
        library_size=library.astype(np.float32),
        source_modality=source,
        present=present,
    )
    _add_labels(out, columns, covariate_keys, cell_type_key, split_key)
    _warn_small_classes(out)
    return out


def _covariate_key_list(covariate_keys: Sequence[str]) -> list[str]:
    """Turn the covariate keys into a list (one string is one key), refusing repeats."""
    if isinstance(covariate_keys, str):
        covariate_keys = [covariate_keys]
    covariate_keys = list(covariate_keys)
    if len(set(covariate_keys)) != len(covariate_keys):
        raise ValueError(f"covariate_keys contains duplicates: {covariate_keys}")
    return covariate_keys


def _split_modalities(data: Any, *, rna_mod: str, atac_mod: str):
    """Find the RNA and ATAC parts of the training input.

    Returns ({'rna': AnnData, 'atac': AnnData}, global obs, source names, and for a backed
    single AnnData the columns of each modality).
    """
    if container_kind(data) == "mudata":
        return _split_mudata(data, rna_mod=rna_mod, atac_mod=atac_mod)
    return _split_anndata(data)


def _split_mudata(data: Any, *, rna_mod: str, atac_mod: str):
    """Take both modalities of a MuData by name; see :func:`_split_modalities`."""
    names = {"rna": rna_mod, "atac": atac_mod}
    mods = mudata_modalities(data, names)
    for m, role in (("rna", "RNA"), ("atac", "ATAC")):
        if m not in mods:
            raise ValueError(
                f"{role} modality {names[m]!r} not in the MuData; available modalities: {list(data.mod.keys())}. "
                f"Pass rna_mod=/atac_mod= (CLI: --rna-mod/--atac-mod)."
            )
    if rna_mod == atac_mod:
        raise ValueError(f"rna_mod and atac_mod are both {rna_mod!r}; they must differ")
    return mods, data.obs, names, {}


def _split_anndata(data: Any):
    """Split one AnnData's features by ``var["feature_types"]``; see :func:`_split_modalities`."""
    if "feature_types" not in data.var:
        raise ValueError(
            "an AnnData input needs var['feature_types'] marking genes ('Gene Expression') and "
            f"peaks ('Peaks'); var columns are {list(data.var.columns)}. Or pass a MuData."
        )
    types = feature_modalities(data.var)
    found = sorted(data.var["feature_types"].astype(str).unique().tolist())
    mods, columns_of = {}, {}
    for m in MODALITIES:
        mask = (types == m).to_numpy()
        if not mask.any():
            raise ValueError(
                f"no {m.upper()} features in var['feature_types'] (found {found}); allowed: "
                "'Gene Expression'/'GEX'/'rna' for genes and 'Peaks'/'ATAC' for peaks"
            )
        if is_backed(data):  # columns are picked from the rows read, not through a view
            mods[m], columns_of[m] = data, np.flatnonzero(mask)
        else:
            mods[m] = data[:, mask]
    other = types.isna().to_numpy()
    if other.any():
        logger.warning(
            "ignoring %d features of other types %s",
            int(other.sum()),
            sorted(data.var["feature_types"][other].astype(str).unique().tolist()),
        )
    return mods, data.obs, {"rna": "Gene Expression", "atac": "Peaks"}, columns_of


def _str_index(index: pd.Index) -> pd.Index:
    """Return ``index`` as strings; the same object when it already holds only strings (no per-cell copy)."""
    if index.dtype == object and pd.api.types.infer_dtype(index, skipna=False) == "string":
        return index
    return pd.Index(index.astype(str))


def _check_obs_names(mods, source) -> tuple[pd.Index, np.ndarray | None]:
    """Check that each modality's cells are unique and that the two share cells.

    Returns the cell names (the RNA modality's, then cells only in the ATAC modality) and,
    when the modalities hold different cells (a mosaic), which modalities each cell has.
    """
    names = {m: _str_index(mods[m].obs_names) for m in MODALITIES}
    for m in MODALITIES:
        if not names[m].is_unique:
            dup = names[m][names[m].duplicated()].unique()[:5].tolist()
            raise ValueError(
                f"obs names repeat in modality {source[m]!r}, e.g. {dup}; make them unique "
                "(adata.obs_names_make_unique())"
            )
    rna, atac = names["rna"], names["atac"]
    if len(rna) + len(atac) == 0:
        raise ValueError("the input has no cells")
    if rna.equals(atac) or (len(rna) == len(atac) and rna.isin(atac).all()):
        return rna, None
    only_rna = rna.difference(atac)
    only_atac = atac.difference(rna)
    if len(only_rna) == len(rna):
        raise ValueError(
            f"modalities {source['rna']!r} and {source['atac']!r} hold different cells: "
            f"{len(only_rna)} only in {source['rna']!r} (e.g. {only_rna[:3].tolist()}), "
            f"{len(only_atac)} only in {source['atac']!r} (e.g. {only_atac[:3].tolist()}), and none in "
            "both; a model learns how the modalities relate from cells that have both (a mosaic needs "
            "paired cells)"
        )
    obs_names = rna.append(atac[~atac.isin(rna)])
    present = np.stack([obs_names.isin(rna), obs_names.isin(atac)], axis=1)
    return obs_names, present


def _expand_rows(x: sp.csr_matrix, has: np.ndarray) -> sp.csr_matrix:
    """Counts of the cells that have a modality placed at their rows among all cells (the
    others empty rows).
    """
    indptr = np.zeros(len(has) + 1, dtype=x.indptr.dtype)
    indptr[1:][has] = np.diff(x.indptr)
    return sp.csr_matrix((x.data, x.indices, np.cumsum(indptr)), shape=(len(has), x.shape[1]))


def mosaic_kinds(present: np.ndarray) -> dict[str, int]:
    """Cells of each kind of an (n, 2) ``present`` mask: ``paired``, ``rna_only``, ``atac_only``."""
    present = np.asarray(present, dtype=bool)
    return {
        "paired": int(present.all(axis=1).sum()),
        "rna_only": int((present[:, 0] & ~present[:, 1]).sum()),
        "atac_only": int((present[:, 1] & ~present[:, 0]).sum()),
    }


def _check_mosaic(present: np.ndarray, source: dict[str, str]) -> None:
    """Refuse a mosaic left without paired cells; say how many cells of each kind it has."""
    kinds = mosaic_kinds(present)
    if kinds["paired"] == 0:
        raise ValueError(
            "no cell with counts in both modalities is left; a model learns how the modalities "
            "relate from cells that have both (a mosaic needs paired cells)"
        )
    logger.info(
        "mosaic: %d cells with both modalities, %d with %s only, %d with %s only",
        kinds["paired"],
        kinds["rna_only"],
        source["rna"],
        kinds["atac_only"],
        source["atac"],
    )


def _align_cells(
    mods: dict[str, Any], obs_names: pd.Index, backed: bool, present: np.ndarray | None = None
) -> dict[str, np.ndarray | None]:
    """Bring every modality to the cell order ``obs_names`` (of a mosaic: to the order of the
    cells it has among them).

    In memory the modality is replaced by a view in that order (in ``mods``); a backed one
    is left as it is and the stored row of each cell is returned instead (None: in order).
    """
    order: dict[str, np.ndarray | None] = {m: None for m in MODALITIES}
    for j, m in enumerate(MODALITIES):
        if present is not None:
            mods[m] = mods[m][obs_names[present[:, j]]]
        elif not mods[m].obs_names.equals(obs_names):
            if backed:
                order[m] = _str_index(mods[m].obs_names).get_indexer(obs_names)
            else:
                mods[m] = mods[m][obs_names]
    return order


def _read_modalities(mods, source, layer, columns_of, order, backed) -> tuple[dict[str, Any], dict[str, pd.Index]]:
    """Read and check each modality's counts and feature names."""
    counts: dict[str, Any] = {}
    var_names: dict[str, pd.Index] = {}
    for m in MODALITIES:
        adata = mods[m]
        cols = columns_of.get(m)
        names = adata.var_names if cols is None else adata.var_names[cols]
        if len(names) == 0:
            raise ValueError(f"modality {source[m]!r} has no features")
        if backed:
            counts[m] = _backed_counts(adata, layer, source[m], rows=order[m], cols=cols)
        else:
            counts[m] = read_counts(adata, layer, source[m])
        var_names[m] = unique_feature_names(names, source[m])
    return counts, var_names


def _backed_counts(adata, layer: str | None, mod_name: str, *, rows=None, cols=None) -> BackedCSR:
    """Open a backed modality's counts as a :class:`BackedCSR`, checked a block of rows at a time.

    The checks are those of :func:`to_count_csr`, with its warnings given once for the whole
    matrix; duplicate entries are summed by :class:`BackedCSR` whenever rows are read.
    """
    if layer is not None:
        raise ValueError(f"a file opened backed is read from X only; got layer={layer!r}. Drop backed or the layer")
    group = backed_group(adata.X)
    if group is None or getattr(adata.X, "format", "csr") != "csr":
        raise ValueError(
            f"modality {mod_name!r}: training from a backed file needs X stored as a CSR sparse matrix "
            f"(found {type(adata.X).__name__}{', ' + adata.X.format if hasattr(adata.X, 'format') else ''}); "
            "write it as CSR (adata.X = scipy.sparse.csr_matrix(adata.X)) or read the file into memory"
        )
    x = BackedCSR(group, adata.n_vars, rows=rows, cols=cols)
    where = _where(mod_name, None)
    notes = [_CountNotes()]

    def check(block: sp.csr_matrix) -> None:
        notes[0] = notes[0].plus(_checked_count_csr(block, where)[1])

    x.read_row_sums(check=check)  # each block as stored, duplicates included
    _warn_count_notes(notes[0], where, None, backed=True)
    return x


def _non_empty_cells(
    library: np.ndarray, source: dict[str, str], drop_empty_cells: bool, present: np.ndarray | None = None
) -> np.ndarray:
    """Return which cells have counts in every modality they have (``present``; default
    both); warn about (or refuse) the others.
    """
    empty = (library == 0) if present is None else (library == 0) & present
    kept = ~empty.any(axis=1)
    if not kept.all():
        detail = ", ".join(f"{int(empty[:, j].sum())} with no {source[m]} counts" for j, m in enumerate(MODALITIES))
        if not drop_empty_cells:
            raise ValueError(
                f"{int((~kept).sum())} cells have zero counts in a modality ({detail}); remove them "
                "(e.g. sc.pp.filter_cells(adata, min_counts=1) per modality) or pass drop_empty_cells=True"
            )
        logger.warning(
            "dropping %d of %d cells with zero counts in a modality (%s); their outputs are NaN",
            int((~kept).sum()),
            len(kept),
            detail,
        )
    return kept


def _collect_obs(
    obs: pd.DataFrame | None, mods, keys: list[str], obs_names: pd.Index, roles: dict[str, str]
) -> dict[str, np.ndarray]:
    """Read the label columns ``keys``, refusing absent columns, missing values and continuous labels.

    ``roles`` maps the covariate and cell-type keys to the argument that named them.
    """
    columns = {}
    frames = [obs] + [mods[m].obs for m in MODALITIES]
    for key in keys:
        col = find_obs_column(frames, key, obs_names)
        if col is None:
            raise ValueError(f"obs key {key!r} not found; available obs columns: {obs_column_names(frames)}")
        missing = col.isna().to_numpy()
        if missing.any():
            raise ValueError(
                f"obs column {key!r} has {int(missing.sum())} missing values (e.g. cells "
                f"{obs_names[missing][:3].tolist()}); fill or drop them before training"
            )
        if key in roles:
            _refuse_continuous(col, key, roles[key])
        columns[key] = col.to_numpy()
    return columns


def _refuse_continuous(col: pd.Series, key: str, argument: str) -> None:
    """Refuse a numeric, non-categorical label column with many distinct values (see :data:`MAX_NUMERIC_CLASSES`)."""
    if isinstance(col.dtype, pd.CategoricalDtype) or pd.api.types.is_bool_dtype(col.dtype):
        return
    numeric = pd.api.types.is_numeric_dtype(col.dtype) or (
        col.dtype == object
        and pd.api.types.infer_dtype(col, skipna=True) in ("floating", "integer", "mixed-integer-float")
    )
    if not numeric:
        return
    n_distinct, n_cells = int(col.nunique()), len(col)
    if n_distinct <= MAX_NUMERIC_CLASSES and n_distinct <= n_cells / 2:
        return
    what = "a covariate" if argument == "covariate_keys" else "cell types"
    raise ValueError(
        f"{argument}={key!r}: obs column {key!r} holds numbers ({col.dtype}) with {n_distinct} distinct values "
        f"in {n_cells} cells, so it looks continuous; {what} must be categorical (a numeric column may have at "
        f"most {MAX_NUMERIC_CLASSES} distinct values, and at most half as many as cells). Bin it into classes, "
        f"e.g. obs['{key}_bin'] = pd.cut(obs['{key}'], bins=5), or, if the numbers are class codes, make it "
        f"categorical: obs['{key}'] = obs['{key}'].astype('category')"
    )


def small_classes(codes: np.ndarray, categories: Sequence[str], minimum: int = MIN_CLASS_CELLS) -> dict[str, int]:
    """Find the classes with fewer than ``minimum`` cells.

    Used to warn about covariate and cell-type classes too small to learn from, and to
    skip scores that mean nothing on such labels: e.g. an ARI against labels where every
    class has one cell (``len(small_classes(codes, categories, 2)) == len(categories)``).

    Parameters
    ----------
    codes
        (n_cells,) int class codes, positions in ``categories``; negative codes (no class)
        are not counted.
    categories
        The class names.
    minimum
        The fewest cells a class should have (default :data:`MIN_CLASS_CELLS`).

    Returns
    -------
    dict
        Class name -> number of cells (0 included), for every class with fewer than
        ``minimum`` cells, in the order of ``categories``; empty when no class is small.
    """
    codes = np.asarray(codes)
    sizes = np.bincount(codes[codes >= 0], minlength=len(categories))
    return {str(categories[i]): int(sizes[i]) for i in np.flatnonzero(sizes[: len(categories)] < minimum)}


def _warn_small_classes(out: MultiomeData) -> None:
    """Warn about covariate and cell-type classes with fewer than :data:`MIN_CLASS_CELLS` cells."""
    labels = [
        (f"covariate_keys={key!r}", out.covariate_codes[:, v], out.covariate_categories[v])
        for v, key in enumerate(out.covariate_keys)
    ]
    if out.cell_type_key is not None and out.cell_type_codes is not None:
        labels.append((f"cell_type_key={out.cell_type_key!r}", out.cell_type_codes, out.cell_type_categories or []))
    for argument, codes, categories in labels:
        small = small_classes(codes, categories)
        if small:
            listed = ", ".join(f"{name!r} ({n} cell{'' if n == 1 else 's'})" for name, n in list(small.items())[:10])
            more = f" and {len(small) - 10} more" if len(small) > 10 else ""
            logger.warning(
                "%s: %d of %d classes have fewer than %d cells: %s%s; too few to learn a class from or to "
                "score clusters against (merge rare classes or drop their cells)",
                argument,
                len(small),
                len(categories),
                MIN_CLASS_CELLS,
                listed,
                more,
            )


def _add_labels(
    out: MultiomeData,
    columns: dict[str, np.ndarray],
    covariate_keys: list[str],
    cell_type_key: str | None,
    split_key: str | None,
) -> None:
    """Encode the covariates, cell types and split into ``out``."""
    codes = []
    for key in covariate_keys:
        c, cats = _encode(columns[key])
        codes.append(c)
        out.covariate_categories.append(cats)
    out.covariate_keys = covariate_keys
    out.covariate_codes = np.stack(codes, axis=1) if codes else np.zeros((out.n_cells, 0), dtype=np.int64)
    if cell_type_key:
        out.cell_type_key = cell_type_key
        out.cell_type_codes, out.cell_type_categories = _encode(columns[cell_type_key])
    if split_key:
        out.split = _parse_split(columns[split_key], split_key)


def _encode(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Return int64 class codes and the class names (unused classes removed)."""
    cat = pd.Categorical(values)
    cat = cat.remove_unused_categories()
    return np.asarray(cat.codes, dtype=np.int64), [str(c) for c in cat.categories]


def _parse_split(values: np.ndarray, key: str) -> np.ndarray:
    """Map split labels to train / validation / test, refusing other values."""
    mapped = pd.Series(values).astype(str).str.lower().map(_SPLIT_VALUES)
    if mapped.isna().any():
        bad = sorted(pd.Series(values)[mapped.isna()].astype(str).unique().tolist())[:5]
        raise ValueError(f"obs column {key!r} has values {bad}; allowed: train, validation (or val), test")
    out = mapped.to_numpy().astype(str)
    if not (out == "train").any():
        raise ValueError(f"obs column {key!r} marks no cell as 'train'")
    return out


def stratified_parts(
    strata: np.ndarray,
    sizes: Callable[[int], Sequence[int]],
    *,
    seed: int,
    among: np.ndarray | None = None,
    draw: str = "permutation",
) -> np.ndarray:
    """Seeded assignment of cells to parts, stratum by stratum.

    The one stratified sampler of the package (validation split, train / validation / test
    split, training-data fractions). The strata are visited in ``np.unique`` order with one
    generator, ``np.random.default_rng(seed)``. A stratum's members (its cells, only those
    in ``among`` when given) are put in a seeded order; with ``sizes(n) = (n_0, n_1, ...)``
    the first ``n_0`` of them form part 0, the next ``n_1`` part 1, and so on; the rest form
    part ``len(sizes(n))``.

    Parameters
    ----------
    strata
        (n_cells,) labels, one stratum per distinct value.
    sizes
        Part sizes from a stratum's number of members.
    seed
        Seed of the generator.
    among
        (n_cells,) bool: only these cells are assigned, the others get -1. Every stratum is
        still visited, also one without a member among them.
    draw
        How the order is drawn, which decides the numbers: ``"permutation"``:
        ``rng.permutation(members)`` for every stratum; ``"choice"``:
        ``rng.choice(members, sum(sizes), replace=False)`` (the parts), only for strata
        whose parts are not empty, the rest of the members left in data order.

    Returns
    -------
    numpy.ndarray
        (n_cells,) int64, the part of every cell.
    """
    if draw not in ("permutation", "choice"):
        raise ValueError(f"draw must be 'permutation' or 'choice', got {draw!r}")
    rng = np.random.default_rng(seed)
    strata = np.asarray(strata)
    parts = np.full(len(strata), -1, dtype=np.int64)
    for g in np.unique(strata):
        in_stratum = strata == g
        members = np.flatnonzero(in_stratum if among is None else in_stratum & among)
        counts = [int(c) for c in sizes(len(members))]
        parts[members] = len(counts)
        if draw == "permutation":
            ordered = rng.permutation(members)
        else:
            ordered = rng.choice(members, size=sum(counts), replace=False) if sum(counts) else members[:0]
        start = 0
        for part, count in enumerate(counts):
            parts[ordered[start : start + count]] = part
            start += count
    return parts


def make_validation_split(
    n_cells: int, fraction: float, *, strata: np.ndarray | None = None, seed: int = 0
) -> np.ndarray:
    """Seeded random validation split, stratified by ``strata`` when given.

    Parameters
    ----------
    n_cells
        Number of cells.
    fraction
        Each stratum contributes ``round(fraction * size)`` cells (none for ``fraction <= 0``).
    strata
        (n_cells,) labels (default: one stratum).
    seed
        Seed of the draw (:func:`stratified_parts` with ``draw="choice"``).

    Returns
    -------
    numpy.ndarray
        (n_cells,) bool, True for validation cells.
    """
    is_val = np.zeros(n_cells, dtype=bool)
    if fraction <= 0:
        return is_val
    groups = np.zeros(n_cells, dtype=np.int64) if strata is None else np.asarray(strata)
    parts = stratified_parts(groups, lambda n: (int(round(fraction * n)),), seed=seed, draw="choice")
    is_val[np.flatnonzero(parts == 0)] = True
    return is_val


def gather_rows(x: sp.csr_matrix, rows: np.ndarray, device: torch.device | str = "cpu"):
    """Non-zeros of the given CSR rows as coordinate tensors.

    Returns
    -------
    (batch_rows, cols, values): (nnz,) int64, (nnz,) int64, (nnz,) float32, where
    ``batch_rows`` indexes into ``rows``.
    """
    sub = x[rows]
    counts_per_row = np.diff(sub.indptr)
    batch_rows = np.repeat(np.arange(len(rows), dtype=np.int64), counts_per_row)
    return (
        torch.from_numpy(batch_rows).to(device),
        torch.from_numpy(sub.indices.astype(np.int64)).to(device),
        torch.from_numpy(sub.data.astype(np.float32, copy=False)).to(device),
    )


def positions(index: pd.Index, wanted, what: str) -> np.ndarray:
    """Positions in ``index`` of names, integer positions or a boolean mask (None: all)."""
    if wanted is None:
        return np.arange(len(index))
    if isinstance(wanted, str):
        wanted = [wanted]
    arr = np.asarray(wanted)
    if arr.dtype == bool:
        if arr.shape != (len(index),):
            raise ValueError(f"boolean {what} mask has length {arr.size}; expected {len(index)}")
        return np.flatnonzero(arr)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < -len(index) or arr.max() >= len(index)):
            raise ValueError(f"{what} positions out of range 0..{len(index) - 1}")
        return np.arange(len(index))[arr]
    pos = index.get_indexer(pd.Index(arr.astype(str)))
    if (pos < 0).any():
        raise ValueError(f"{int((pos < 0).sum())} {what} not found, e.g. {arr[pos < 0][:3].tolist()}")
    return pos
