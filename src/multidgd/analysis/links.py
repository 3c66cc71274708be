"""Gene–peak links: one entry point, :func:`link_peaks`, for the model's scores and the field's baselines.

Every method scores each (gene, peak) pair over the same cells; higher means the peak is
more accessible where the gene is more expressed.

``"hybrid"`` (default)
    The Spearman correlation of the counts and the correlation of the model's decoded
    profiles, each standardised over the gene's peaks, summed and divided by √2. The raw
    correlation keeps what varies from cell to cell together; the decoded one adds what the
    model has learnt from all cells about the states in which gene and peak go together.
    Chosen on the development file (``docs/design.md``, "Gene–peak links").
``"decoded"``
    Pearson correlation across cells of the decoded (denoised) expression of the gene and
    accessibility of the peak.
``"silencing"``
    The paper's in-silico silencing (:func:`~multidgd.analysis.gene2peak`): the mean ΔX̂
    over the cells expressing the gene (positive: the peak closes when the gene is silenced).
``"spearman"``
    Spearman correlation of depth-normalised counts (:func:`spearman_gene2peak`'s ``rho``).
``"linkpeaks"``
    As Signac's LinkPeaks: Pearson correlation of log-normalised expression with the peak's
    counts, and its z-score against background peaks on other chromosomes matched for
    accessibility, peak length and, where ``var`` has it, GC content.

The first three need a model; the baselines need only the counts (``model=None``).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.stats import norm, rankdata

from .baselines import centred_sparse_ranks, kept_rows
from .genome import gene_tss, load_tss, parse_peak_coordinates, tss_distance
from .tables import check_genes, check_size, check_top_n

__all__ = [
    "LINK_METHODS",
    "LINK_COLUMNS",
    "MODEL_LINK_METHODS",
    "link_peaks",
    "pearson_matrix",
    "spearman_matrix",
    "background_peaks",
    "background_z",
    "standardise_rows",
]

logger = logging.getLogger(__name__)

#: Methods of :func:`link_peaks`; the first three use the model.
LINK_METHODS = ("hybrid", "decoded", "silencing", "spearman", "linkpeaks")
#: The methods of :data:`LINK_METHODS` that need a trained model.
MODEL_LINK_METHODS = LINK_METHODS[:3]
#: Columns of a :func:`link_peaks` table.
LINK_COLUMNS = ["gene", "peak", "group", "method", "score", "z", "pvalue", "tss_distance", "n_cells"]
_GC_COLUMNS = ("GC.percent", "gc_content", "gc", "GC")


# ----------------------------------------------------------------------------- correlations
def pearson_matrix(a: np.ndarray, b) -> np.ndarray:
    """Pearson correlation of every column of ``a`` with every column of ``b``, across rows.

    Parameters
    ----------
    a
        (n, G) dense.
    b
        (n, P) dense or sparse; a sparse ``b`` stays sparse.

    Returns
    -------
    numpy.ndarray
        (G, P) float64; NaN where a column is constant.
    """
    a = np.asarray(a, dtype=np.float64)
    ac = a - a.mean(axis=0)
    n = a.shape[0]
    if sp.issparse(b):
        b = sp.csc_matrix(b, dtype=np.float64)
        cov = np.asarray((b.T @ ac).T)
        ss_b = np.asarray(b.multiply(b).sum(axis=0)).ravel() - n * np.asarray(b.mean(axis=0)).ravel() ** 2
    else:
        b = np.asarray(b, dtype=np.float64)
        bc = b - b.mean(axis=0)
        cov = ac.T @ bc
        ss_b = (bc**2).sum(axis=0)
    ss_a = (ac**2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(ss_a[:, None] * np.clip(ss_b, 0.0, None)[None, :])
    r[:, ss_b <= 1e-12 * max(1.0, float(np.max(ss_b, initial=0.0)))] = np.nan
    r[ss_a == 0, :] = np.nan
    return np.clip(r, -1.0, 1.0)


def spearman_matrix(a: np.ndarray, b, *, ranks: tuple[sp.csc_matrix, np.ndarray] | None = None) -> np.ndarray:
    """Spearman correlation (ties averaged) of every column of ``a`` with every column of ``b``.

    Parameters
    ----------
    a
        (n, G) dense.
    b
        (n, P) non-negative, dense or sparse (ranked without densifying).
    ranks
        ``b``'s ranks from :func:`~multidgd.analysis.baselines.centred_sparse_ranks`, when
        already computed (``b`` is then not read).

    Returns
    -------
    numpy.ndarray
        (G, P) float64; NaN where a column is constant.
    """
    ra = np.apply_along_axis(rankdata, 0, np.asarray(a, dtype=np.float64))
    ra = ra - ra.mean(axis=0)
    s, ss = ranks if ranks is not None else centred_sparse_ranks(sp.csc_matrix(b, dtype=np.float64))
    cov = np.asarray((s.T @ ra).T)
    ss_a = (ra**2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = cov / np.sqrt(ss_a[:, None] * ss[None, :])
    rho[:, ss == 0] = np.nan
    rho[ss_a == 0, :] = np.nan
    return np.clip(rho, -1.0, 1.0)


def standardise_rows(x: np.ndarray) -> np.ndarray:
    """Each row minus its mean, over its standard deviation (NaN ignored; NaN stays NaN)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(x, axis=1, keepdims=True)
        sd = np.nanstd(x, axis=1, keepdims=True)
        return (x - mean) / sd


# ----------------------------------------------------------------------------- LinkPeaks-style background
def _quantile_bins(x: np.ndarray, n_bins: int) -> np.ndarray:
    """Codes 0..n_bins-1 of equal-count bins (ties kept together)."""
    ranks = rankdata(x, method="min") - 1
    return np.minimum((ranks * n_bins) // max(len(x), 1), n_bins - 1).astype(np.int64)


def background_peaks(stats: pd.DataFrame, *, n_background: int = 200, seed: int = 0) -> np.ndarray:
    """Background peaks of each peak, matched for its statistics, as in Signac's LinkPeaks.

    Peaks are put in equal-count bins of each statistic (10 of ``accessibility``, 5 of
    ``length`` and of ``gc`` when present); each peak's background is ``n_background`` peaks
    drawn from its own bin on other chromosomes (any other peak of the bin when ``chrom`` is
    absent or the bin holds one chromosome), with replacement when the bin has too few.

    Parameters
    ----------
    stats
        One row per peak: ``accessibility`` (required), optional ``length``, ``gc``, ``chrom``.
    n_background
        Peaks per background.
    seed
        Seed of the draw.

    Returns
    -------
    numpy.ndarray
        (P, n_background) int64 positions; a row of -1 when the bin has no other peak.
    """
    if "accessibility" not in stats.columns:
        raise ValueError(f"stats needs an 'accessibility' column; columns: {list(stats.columns)}")
    if n_background < 2:
        raise ValueError(f"n_background must be >= 2, got {n_background}")
    code = _quantile_bins(stats["accessibility"].to_numpy(dtype=np.float64), 10)
    for col in ("length", "gc"):
        if col in stats.columns:
            code = code * 5 + _quantile_bins(stats[col].to_numpy(dtype=np.float64), 5)
    chrom = stats["chrom"].astype(str).to_numpy() if "chrom" in stats.columns else np.zeros(len(stats), dtype=str)
    rng = np.random.default_rng(seed)
    out = np.full((len(stats), n_background), -1, dtype=np.int64)
    for c in np.unique(code):
        members = np.flatnonzero(code == c)
        for p in members:
            pool = members[chrom[members] != chrom[p]]
            if len(pool) == 0:
                pool = members[members != p]
            if len(pool) == 0:
                continue
            out[p] = rng.choice(pool, n_background, replace=len(pool) < n_background)
    return out


def background_z(r: np.ndarray, background: np.ndarray) -> np.ndarray:
    """z-score of each correlation against those of its peak's background peaks.

    Parameters
    ----------
    r
        (G, P) correlations.
    background
        (P, B) positions from :func:`background_peaks` (rows of -1: no background).

    Returns
    -------
    numpy.ndarray
        (G, P): ``(r - mean(r_background)) / sd(r_background)`` (sd with ddof 1, NaN ignored).
    """
    z = np.full(r.shape, np.nan)
    ok = background[:, 0] >= 0
    idx = background[ok]
    for g in range(r.shape[0]):
        bg = r[g][idx]
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a background of constant peaks only
            mean = np.nanmean(bg, axis=1)
            sd = np.nanstd(bg, axis=1, ddof=1)
            z[g, ok] = (r[g, ok] - mean) / sd
    z[~np.isfinite(z)] = np.nan
    return z


# ----------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class _Counts:
    """Counts of the selected cells: the genes' (dense) and every peak's (CSC), and library sizes."""

    genes: list[str]
    gene_counts: np.ndarray
    peaks: pd.Index
    peak_counts: sp.csc_matrix
    library: np.ndarray  # (n, 2) rna, atac over all features
    cell_names: pd.Index
    data_rows: np.ndarray  # positions of the cells among the data's cells


def _read_counts(data, genes, peaks, cells, rna_mod, atac_mod, layer) -> _Counts:
    from ..data import read_multiome

    d = read_multiome(data, rna_mod=rna_mod, atac_mod=atac_mod, layer=layer, drop_empty_cells=True)
    genes = check_genes(genes, d.var_names["rna"])
    peaks = d.var_names["atac"] if peaks is None else pd.Index(peaks)
    missing = peaks[d.var_names["atac"].get_indexer(peaks) < 0]
    if len(missing):
        raise ValueError(f"{len(missing)} of the model's peaks are not in the data, e.g. {missing[:3].tolist()}")
    rows = kept_rows(d, cells)
    if len(rows) < 3:
        raise ValueError(f"{len(rows)} of the selected cells have counts in both modalities; at least 3 are needed")
    gcols = d.var_names["rna"].get_indexer(genes)
    pcols = d.var_names["atac"].get_indexer(peaks)
    return _Counts(
        genes=genes,
        gene_counts=sp.csr_matrix(d.counts["rna"][rows][:, gcols]).toarray().astype(np.float64),
        peaks=peaks,
        peak_counts=sp.csc_matrix(sp.csr_matrix(d.counts["atac"][rows])[:, pcols], dtype=np.float64),
        library=d.library_size[rows].astype(np.float64),
        cell_names=d.obs_names[rows],
        data_rows=np.flatnonzero(d.kept)[rows],
    )


def _trained_cells(model) -> pd.Index:
    """The model's own cells: those it trained or validated on (the others have no representation)."""
    return model.obs_names[(model.split != "none").to_numpy()]


def _model_cells(model, embedding, names: pd.Index) -> np.ndarray:
    """Positions of ``names`` among the cells the getters decode (the model's, or the embedding's)."""
    own = pd.Index(embedding.obs_names) if embedding is not None else _trained_cells(model)
    pos = own.get_indexer(names)
    if (pos < 0).any():
        missing = names[pos < 0]
        raise ValueError(
            f"{len(missing)} selected cells have no representation in the "
            f"{'embedding' if embedding is not None else 'model (its training and validation cells)'}, "
            f"e.g. {missing[:3].tolist()}; pass embedding=model.infer(data) to place new cells, or cells= to select"
        )
    return pos


def _default_cells(model, embedding, data, cells):
    """The data cells to use: given ones, else those with a representation (all cells without a model)."""
    if cells is not None or model is None:
        return cells
    own = pd.Index(embedding.obs_names) if embedding is not None else _trained_cells(model)
    return pd.Index(data.obs_names).isin(own)


# ----------------------------------------------------------------------------- scores
def _decoded_correlation(model, embedding, cell_pos: np.ndarray, genes, peaks, batch_size: int) -> np.ndarray:
    """Pearson correlation across cells of decoded gene and peak fractions, peaks streamed by cell batches."""
    dg = model.get_normalized_expression(embedding, genes=genes, cells=cell_pos, return_type="array")
    dg = np.asarray(dg, dtype=np.float64)
    gc = dg - dg.mean(axis=0)
    n, p = len(cell_pos), len(peaks)
    sy, syy, sgy = np.zeros(p), np.zeros(p), np.zeros((len(genes), p))
    step = max(1, min(batch_size, 50_000_000 // max(p, 1)))
    for s in range(0, n, step):
        block = cell_pos[s : s + step]
        y = model.get_normalized_accessibility(
            embedding, peaks=peaks, cells=block, return_type="array", batch_size=step, max_dense_elements=len(block) * p
        )
        y = np.asarray(y, dtype=np.float64)
        sy += y.sum(axis=0)
        syy += (y**2).sum(axis=0)
        sgy += gc[s : s + step].T @ y
    ss_y = np.clip(syy - sy**2 / n, 0.0, None)
    ss_g = (gc**2).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = sgy / np.sqrt(ss_g[:, None] * ss_y[None, :])
    r[:, ss_y <= 0] = np.nan
    return np.clip(r, -1.0, 1.0)


def _spearman_scores(c: _Counts, cache: dict) -> np.ndarray:
    """Spearman of depth-normalised counts; the peaks' ranks are computed once per call of link_peaks."""
    if "ranks" not in cache:
        target = sp.diags(1.0 / c.library[:, 1]) @ c.peak_counts
        cache["ranks"] = centred_sparse_ranks(sp.csc_matrix(target))
    return spearman_matrix(c.gene_counts / c.library[:, :1], None, ranks=cache["ranks"])


def _peak_stats(data, atac_mod: str, c: _Counts) -> pd.DataFrame:
    """Accessibility (counts over the cells), length, chromosome and GC (when given) of each peak."""
    var = data.mod[atac_mod].var if hasattr(data, "mod") else data.var
    var = var.reindex(c.peaks)
    stats = pd.DataFrame({"accessibility": np.asarray(c.peak_counts.sum(axis=0)).ravel()}, index=c.peaks)
    coords = parse_peak_coordinates(var, errors="coerce")
    if (coords["end"] >= 0).all():
        stats["length"] = (coords["end"] - coords["start"]).to_numpy()
        stats["chrom"] = coords["chrom"].to_numpy()
    gc = next((col for col in _GC_COLUMNS if col in var.columns), None)
    if gc is not None:
        stats["gc"] = var[gc].to_numpy(dtype=np.float64)
    return stats


@dataclass(frozen=True)
class _Scores:
    """(G, P) score, z and p of one method."""

    score: np.ndarray
    z: np.ndarray
    pvalue: np.ndarray
    n_cells: np.ndarray  # (G,)


def _nan_like(x: np.ndarray) -> np.ndarray:
    return np.full(x.shape, np.nan)


def _correlation_z(rho: np.ndarray, n: int, spearman: bool) -> np.ndarray:
    """Fisher z of a correlation over n cells (Spearman's with the 1.06 variance factor)."""
    factor = 1.06 if spearman else 1.0
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.arctanh(np.clip(rho, -0.999999, 0.999999)) * np.sqrt(max(n - 3, 1) / factor)


@dataclass(frozen=True)
class _Request:
    """What :func:`link_peaks` was asked to do, checked."""

    method: str
    n_background: int
    seed: int
    batch_size: int
    rna_mod: str
    atac_mod: str
    silencing_kwargs: dict


def _method_scores(model, embedding, data, c: _Counts, req: _Request, cache: dict) -> _Scores:
    n = len(c.cell_names)
    n_cells = np.full(len(c.genes), n)
    if req.method in ("spearman", "hybrid"):
        rho = _spearman_scores(c, cache)
        if req.method == "spearman":
            z = _correlation_z(rho, n, spearman=True)
            return _Scores(rho, z, 2 * norm.sf(np.abs(z)), n_cells)
    if req.method in ("decoded", "hybrid"):
        dec = _decoded_correlation(
            model, embedding, _model_cells(model, embedding, c.cell_names), c.genes, c.peaks, req.batch_size
        )
        if req.method == "decoded":
            return _Scores(dec, _nan_like(dec), _nan_like(dec), n_cells)
        score = (standardise_rows(rho) + standardise_rows(dec)) / np.sqrt(2.0)
        return _Scores(score, score.copy(), _nan_like(score), n_cells)
    if req.method == "linkpeaks":
        expr = np.log1p(c.gene_counts / c.library[:, :1] * 1e4)
        r = pearson_matrix(expr, c.peak_counts)
        if "background" not in cache:
            stats = _peak_stats(data, req.atac_mod, c)
            cache["background"] = background_peaks(stats, n_background=req.n_background, seed=req.seed)
        z = background_z(r, cache["background"])
        return _Scores(r, z, norm.sf(np.abs(z)), n_cells)
    return _silencing_scores(model, embedding, data, c, req)


def _silencing_scores(model, embedding, data, c: _Counts, req: _Request) -> _Scores:
    from .silencing import gene2peak

    table = gene2peak(
        model,
        data,
        genes=c.genes,
        cells=c.data_rows,
        embedding=embedding,
        modality="atac",
        features=c.peaks,
        rna_mod=req.rna_mod,
        atac_mod=req.atac_mod,
        **req.silencing_kwargs,
    )
    score = np.full((len(c.genes), len(c.peaks)), np.nan)
    gpos = pd.Index(c.genes).get_indexer(table["gene"].astype(str))
    ppos = c.peaks.get_indexer(table["peak"].astype(str))
    score[gpos, ppos] = table["mean_delta"].to_numpy()
    n_cells = np.zeros(len(c.genes), dtype=np.int64)
    n_cells[gpos] = table["n_cells"].to_numpy()
    return _Scores(score, _nan_like(score), _nan_like(score), n_cells)


# ----------------------------------------------------------------------------- the table
def _tss_distances(data, genes, peaks, tss, rna_mod, atac_mod) -> tuple[np.ndarray, list[str]]:
    """(G, P) signed distance of each peak to each gene's nearest TSS; genes without a TSS listed."""
    mdata = data.mod if hasattr(data, "mod") else None
    if mdata is None:
        raise ValueError("tss= needs a MuData with RNA and ATAC modalities (the peaks' coordinates)")
    coords = parse_peak_coordinates(mdata[atac_mod].var.reindex(peaks))
    found = gene_tss(genes, tss, var=mdata[rna_mod].var)
    dist = np.vstack([tss_distance(coords, found[g]) for g in genes])
    return dist, [g for g in genes if found[g].empty]


def _table(c: _Counts, s: _Scores, dist: np.ndarray | None, window, top_n, method) -> pd.DataFrame:
    pieces = []
    for k, gene in enumerate(c.genes):
        keep = np.isfinite(s.score[k])
        if dist is not None:
            keep &= np.abs(dist[k]) <= window
        cols = np.flatnonzero(keep)
        order = cols[np.argsort(-s.score[k, cols], kind="stable")]
        if top_n is not None:
            order = order[:top_n]
        pieces.append(
            pd.DataFrame(
                {
                    "gene": gene,
                    "peak": c.peaks[order],
                    "group": "all",
                    "method": method,
                    "score": s.score[k, order],
                    "z": s.z[k, order],
                    "pvalue": s.pvalue[k, order],
                    "tss_distance": dist[k, order] if dist is not None else np.nan,
                    "n_cells": int(s.n_cells[k]),
                }
            )
        )
    return pd.concat(pieces, ignore_index=True)[LINK_COLUMNS]


def _scored_table(model, embedding, data, c: _Counts, req: _Request, cis, top_n, memory_budget_mb):
    """The table of :func:`link_peaks`, genes scored in chunks within the budget; the genes without a TSS."""
    tss, window = cis
    if tss is not None:
        tss = load_tss(tss)  # read once (bundled table, a user's file or a DataFrame), not once per chunk
    step = _genes_per_chunk(len(c.peaks), memory_budget_mb)
    pieces, no_tss, cache = [], [], {}
    for start in range(0, len(c.genes), step):
        part = replace(c, genes=c.genes[start : start + step], gene_counts=c.gene_counts[:, start : start + step])
        dist = None
        if tss is not None:
            dist, missing = _tss_distances(data, part.genes, c.peaks, tss, req.rna_mod, req.atac_mod)
            no_tss += missing
        scores = _method_scores(model, embedding, data, part, req, cache)
        pieces.append(_table(part, scores, dist, window, top_n, req.method))
    if no_tss:
        logger.warning("%d genes have no TSS in the table and get no rows, e.g. %s", len(no_tss), no_tss[:5])
    return pd.concat(pieces, ignore_index=True), no_tss


def _genes_per_chunk(n_peaks: int, memory_budget_mb: float) -> int:
    """Genes scored together so that their (genes x peaks) float64 arrays, about six, fit the budget."""
    return max(1, int(memory_budget_mb * 2**20 // (6 * 8 * max(n_peaks, 1))))


def _check_request(model, method, top_n, tss, window, rna_mod, atac_mod) -> dict[str, str]:
    """Refuse bad arguments of :func:`link_peaks` before any work; the modality names."""
    if method not in LINK_METHODS:
        raise ValueError(f"method={method!r}; allowed: {', '.join(LINK_METHODS)}")
    if model is None and method in MODEL_LINK_METHODS:
        raise ValueError(f"method={method!r} needs a trained model; 'spearman' and 'linkpeaks' work without one")
    check_top_n(top_n)
    if tss is not None and not window > 0:
        raise ValueError(f"window must be > 0 bp, got {window!r}")
    if model is not None:
        return model.modality_names(rna_mod, atac_mod)
    return {"rna": rna_mod or "rna", "atac": atac_mod or "atac"}


def _annotate(table: pd.DataFrame, c: _Counts, method: str, no_tss: list[str], window) -> None:
    """The table's ``attrs``; a warning naming genes that got no rows for another reason than a missing TSS."""
    table.attrs.update(
        method="links",
        link_method=method,
        n_cells=len(c.cell_names),
        genes_without_tss=no_tss,
        genes_without_scores=[g for g in c.genes if g not in set(table["gene"])],
        window=window,
    )
    unscored = [g for g in table.attrs["genes_without_scores"] if g not in no_tss]
    if unscored:
        logger.warning(
            "%d genes got no scores (not expressed in the cells, or no peak in the window), e.g. %s",
            len(unscored),
            unscored[:5],
        )


def link_peaks(
    model,
    data: Any,
    *,
    genes,
    method: str = "hybrid",
    tss=None,
    window: int = 500_000,
    cells=None,
    embedding=None,
    top_n: int | None = 100,
    n_background: int = 200,
    seed: int = 0,
    rna_mod: str | None = None,
    atac_mod: str | None = None,
    layer: str | None = None,
    batch_size: int = 1024,
    memory_budget_mb: float = 1024,
    max_rows: int = 50_000_000,
    **silencing_kwargs: Any,
) -> pd.DataFrame:
    """Score the links of each gene to each peak with one of :data:`LINK_METHODS`.

    Parameters
    ----------
    model
        A trained :class:`~multidgd.DGD` (None for ``"spearman"`` and ``"linkpeaks"``).
    data
        MuData (or AnnData marked by ``var["feature_types"]``) of raw counts; not modified.
    genes
        Gene names.
    method
        ``"hybrid"`` (default), ``"decoded"``, ``"silencing"``, ``"spearman"`` or
        ``"linkpeaks"`` (module docstring).
    tss
        Where the genes' TSSs are (``"GRCh38"``, a TSS TSV/GTF or a DataFrame, as
        :func:`~multidgd.analysis.load_tss`): peaks farther than ``window`` bp from the gene's
        nearest TSS are left out and ``tss_distance`` is filled. None: every peak.
    window
        Half-width of the cis window in bp (used with ``tss``).
    cells
        Names, positions or a boolean mask of the data's cells (default: the cells with a
        representation in the model, or in ``embedding``; every cell without a model).
    embedding
        :meth:`~multidgd.DGD.infer` result holding cells the model did not train on.
    top_n
        Peaks kept per gene, the highest scores (None: all).
    n_background, seed
        Background peaks per peak of ``"linkpeaks"`` and the seed of their draw.
    rna_mod, atac_mod, layer
        Where the counts are (default the model's modality names, else ``"rna"``/``"atac"``).
    batch_size
        Cells decoded together.
    memory_budget_mb
        Genes are scored in chunks whose (genes x peaks) arrays fit this budget (the decoded
        profiles are decoded again for each chunk).
    max_rows
        Largest table allowed.
    **silencing_kwargs
        Further arguments of :func:`~multidgd.analysis.gene2peak` for ``"silencing"``
        (``n_steps``, ``lr``, ``step_size``, ``device``, ``progress_bar``, ...).

    Returns
    -------
    pandas.DataFrame
        :data:`LINK_COLUMNS`, per gene sorted by ``score`` (highest first): ``score`` is the
        method's signed statistic (correlation, standardised sum, or mean ΔX̂), ``z`` a
        z-score where one is defined (Fisher's for ``"spearman"``, against the background
        for ``"linkpeaks"``, the score itself for ``"hybrid"``), ``pvalue`` a normal p where
        the z is a test (two-sided for ``"spearman"``, the tail beyond abs(z) for
        ``"linkpeaks"``), ``tss_distance`` (bp, positive downstream; NaN without ``tss``),
        ``n_cells`` (cells scored; for ``"silencing"`` those expressing the gene).
        ``attrs``: ``method="links"``, ``link_method``, ``n_cells``, ``genes_without_tss``,
        ``genes_without_scores`` (no row: without a TSS, not expressed in the cells, or no
        scored peak in the window).
    """
    mods = _check_request(model, method, top_n, tss, window, rna_mod, atac_mod)
    peaks = model.var_names["atac"] if model is not None else None
    c = _read_counts(
        data, genes, peaks, _default_cells(model, embedding, data, cells), mods["rna"], mods["atac"], layer
    )
    per_gene = top_n if top_n is not None else len(c.peaks)
    check_size(len(c.genes) * min(per_gene, len(c.peaks)), max_rows, "pass top_n= or tss=")
    req = _Request(method, n_background, seed, batch_size, mods["rna"], mods["atac"], silencing_kwargs)
    table, no_tss = _scored_table(model, embedding, data, c, req, (tss, window), top_n, memory_budget_mb)
    _annotate(table, c, method, no_tss, window if tss is not None else None)
    return table
