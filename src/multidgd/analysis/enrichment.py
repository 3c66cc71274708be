"""Evaluations of gene-to-peak tables: known links, the profile around the TSS, TF motifs.

Each takes a table of :func:`~multidgd.analysis.gene2peak` or
:func:`~multidgd.analysis.spearman_gene2peak` (one row per gene, feature and group) with
every feature per gene.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .genome import gene_tss, parse_peak_coordinates, tss_distance
from .motifs import MotifMatches, tf_names
from .tables import feature_column, one_group, peak_column, score_column, several_groups, stack_groups

__all__ = ["LinkEvaluation", "link_enrichment", "tss_profile", "motif_enrichment"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- known links
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


def _link_pairs(links) -> set[tuple[str, str]]:
    """Collect the known (gene, feature) links."""
    if isinstance(links, pd.Series):
        pairs = pd.DataFrame({"peak": links.index.astype(str), "gene": links.astype(str).to_numpy()})
    elif isinstance(links, pd.DataFrame) and {"gene", "peak"} <= set(links.columns):
        pairs = links[["gene", "peak"]].astype(str)
    else:
        raise TypeError("links must be a Series feature -> gene or a DataFrame with columns 'gene' and 'peak'")
    return set(zip(pairs["gene"], pairs["peak"], strict=True))


def _per_gene_links(t: pd.DataFrame, score: str, feature: str, linked: set[tuple[str, str]]) -> pd.DataFrame:
    """:attr:`LinkEvaluation.per_gene`."""
    from sklearn.metrics import average_precision_score

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
    return pd.DataFrame(rows, columns=[*columns, "auprc", "prevalence"])


def _link_summary(per_gene: pd.DataFrame, score: str) -> dict[str, Any]:
    """:attr:`LinkEvaluation.summary`."""
    from scipy.stats import wilcoxon

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
    return summary


def link_enrichment(table: pd.DataFrame, links, *, score: str | None = None, group=None) -> LinkEvaluation:
    """Test whether features linked to a gene (e.g. its promoter and enhancer peaks) score higher.

    Parameters
    ----------
    table
        Output of :func:`~multidgd.analysis.gene2peak` or
        :func:`~multidgd.analysis.spearman_gene2peak` with every feature per gene (no ``top_n``).
    links
        The known links: a Series mapping feature -> gene (e.g. ``atac.var["linked_gene"]``),
        or a DataFrame with columns ``gene`` and ``peak`` (many-to-many).
    score
        Column to rank by (default ``mean_abs_delta`` / ``abs_rho`` by the table's method).
    group
        Which group of a table with several; None: each group in turn (results stacked,
        with a ``group`` column).

    Returns
    -------
    LinkEvaluation
        Per-gene results and their summary.
    """
    score = score_column(table, score)
    groups = several_groups(table, group)
    if groups is not None:
        evals = {g: link_enrichment(table, links, score=score, group=g) for g in groups}
        summary = {"score": score, "groups": {g: e.summary for g, e in evals.items()}}
        return LinkEvaluation(stack_groups({g: e.per_gene for g, e in evals.items()}), summary)
    feature = feature_column(table)
    t = one_group(table, group)
    per_gene = _per_gene_links(t, score, feature, _link_pairs(links))
    return LinkEvaluation(per_gene, _link_summary(per_gene, score))


# ----------------------------------------------------------------------------- TSS profile
_PROFILE_COLUMNS = [
    "set",
    "bin_start",
    "bin_end",
    "distance",
    "mean_score",
    "mean_relative",
    "sem_relative",
    "n_pairs",
    "n_genes",
]


@dataclass(frozen=True)
class _GeneScores:
    """Each gene's score of each peak, as is and relative to the gene's mean |score|.

    Arrays are genes × peaks, NaN where the table has no score.
    """

    genes: list[str]
    score: np.ndarray
    relative: np.ndarray


@dataclass(frozen=True)
class _NearTss:
    """Peaks within the window of one gene's TSS, with the scores of one silenced gene."""

    gene: str  # the gene whose TSS the peaks are near
    distance: np.ndarray
    score: np.ndarray
    relative: np.ndarray


@dataclass(frozen=True)
class _Window:
    """The pairs within the window: silenced genes' own, and the control's."""

    silenced: list[_NearTss]
    control: list[_NearTss]
    genes_with_peaks: list[str]


def _check_bins(window, bin_size) -> None:
    if not (isinstance(window, int | np.integer) and window > 0 and isinstance(bin_size, int | np.integer)):
        raise ValueError(f"window and bin_size must be positive integers, got {window!r}, {bin_size!r}")
    if not 0 < bin_size <= window:
        raise ValueError(f"bin_size must be in 1..window ({window}), got {bin_size}")


def _gene_scores(t: pd.DataFrame, column: str, score: str, peaks: pd.Index) -> _GeneScores:
    genes = t["gene"].astype(str).unique().tolist()
    scores = t.pivot_table(index=t["gene"].astype(str), columns=t[column].astype(str), values=score, observed=True)
    scores = scores.reindex(index=genes, columns=peaks).to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        gene_mean = np.nanmean(np.abs(scores), axis=1)
    relative = scores / np.where(gene_mean > 0, gene_mean, np.nan)[:, None]
    return _GeneScores(genes, scores, relative)


def _near_tss(s: _GeneScores, coords: pd.DataFrame, found, window: int, n_control: int, seed: int) -> _Window:
    """Peaks near each gene's TSS with its own scores, and with those of ``n_control`` random other genes."""
    rng = np.random.default_rng(seed)
    window_pairs = _Window([], [], [])
    for i, gene in enumerate(s.genes):
        if found[gene].empty:
            continue
        d = tss_distance(coords, found[gene])
        near = np.flatnonzero(np.abs(d) <= window)
        if not len(near):
            continue
        window_pairs.genes_with_peaks.append(gene)
        window_pairs.silenced.append(_NearTss(gene, d[near], s.score[i, near], s.relative[i, near]))
        others = np.delete(np.arange(len(s.genes)), i)
        for h in rng.choice(others, size=min(n_control, len(others)), replace=False):
            window_pairs.control.append(_NearTss(gene, d[near], s.score[h, near], s.relative[h, near]))
    return window_pairs


def _binned(name: str, records: list[_NearTss], edges: np.ndarray) -> list[dict[str, Any]]:
    """One profile row per bin of one set."""
    dist = np.concatenate([r.distance for r in records])
    val = np.concatenate([r.score for r in records])
    rel = np.concatenate([r.relative for r in records])
    gene_of = np.concatenate([np.full(len(r.distance), r.gene, dtype=object) for r in records])
    b = np.clip(np.digitize(dist, edges) - 1, 0, len(edges) - 2)
    out = []
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
    return out


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
    :func:`multidgd.analysis.genome.tss_distance`). Its score is taken as is and relative to
    the gene's mean score over all peaks (1 = an average peak), so genes with large effects
    do not dominate. The control scores the same peaks (at the same distances) when
    ``n_control`` random *other* genes of the table are silenced instead, so it shares the
    peaks' accessibility and position and differs only in which gene was silenced.

    Parameters
    ----------
    table
        :func:`~multidgd.analysis.gene2peak` (or :func:`~multidgd.analysis.spearman_gene2peak`)
        output for peaks, all peaks per gene.
    peaks
        The ATAC ``var`` (or peak names) for the coordinates (see
        :func:`multidgd.analysis.genome.parse_peak_coordinates`).
    tss
        ``"GRCh38"`` (bundled Ensembl 93 table), a TSV/GTF path or a DataFrame
        (:func:`multidgd.analysis.genome.load_tss`).
    window, bin_size
        Half-width of the window and bin width, in bp.
    score
        Column (default ``mean_abs_delta`` / ``abs_rho`` by the table's method).
    group
        Which group of a table with several; None: each group in turn (results stacked,
        with a ``group`` column).
    n_control
        Random other genes of the table whose effects on the same peaks are the control.
    rna_var
        RNA ``var`` whose ``gene_ids`` column maps gene names to Ensembl ids.
    seed
        Seed of the control genes.

    Returns
    -------
    pandas.DataFrame
        One row per (``set``, bin): ``set`` (``silenced`` or ``control``), ``bin_start``,
        ``bin_end``, ``distance`` (bin centre), ``mean_score``, ``mean_relative``,
        ``sem_relative``, ``n_pairs`` (gene-peak pairs) and ``n_genes``. ``attrs`` has the
        genes found in the annotation and those with a peak in the window.
    """
    _check_bins(window, bin_size)
    score = score_column(table, score)
    groups = several_groups(table, group)
    if groups is not None:
        kw = {"window": window, "bin_size": bin_size, "score": score, "n_control": n_control, "rna_var": rna_var}
        return stack_groups({g: tss_profile(table, peaks, tss, group=g, seed=seed, **kw) for g in groups})
    t = one_group(table, group)
    col = peak_column(t)
    coords = parse_peak_coordinates(peaks)
    genes = t["gene"].astype(str).unique().tolist()
    found = gene_tss(genes, tss, var=rna_var)
    scores = _gene_scores(t, col, score, coords.index)
    edges = np.arange(-window, window + bin_size, bin_size)
    near = _near_tss(scores, coords, found, window, n_control, seed)
    if len(genes) < 2:
        logger.warning("tss_profile: the table has one gene, so there is no control of other silenced genes")
    out = []
    for name, records in (("silenced", near.silenced), ("control", near.control)):
        if records:
            out += _binned(name, records, edges)
    profile = pd.DataFrame(out, columns=_PROFILE_COLUMNS)
    profile.attrs.update(
        score=score,
        window=int(window),
        bin_size=int(bin_size),
        genes_in_annotation=[g for g in genes if not found[g].empty],
        genes_with_peaks_in_window=near.genes_with_peaks,
    )
    return profile


# ----------------------------------------------------------------------------- motifs
_MOTIF_COLUMNS = [
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


@dataclass(frozen=True)
class _MotifColumns:
    """Peaks × motifs matches, with the TF names of each motif."""

    matrix: sp.csc_matrix  # bool
    peaks: pd.Index
    labels: list[str]
    tfs: list[set[str]]


def _motif_columns(motifs) -> _MotifColumns:
    if isinstance(motifs, MotifMatches):
        matrix = sp.csc_matrix(motifs.matrix, dtype=bool)
        peak_names, labels = pd.Index(motifs.peaks.astype(str)), list(motifs.motif_names)
    elif isinstance(motifs, pd.DataFrame):
        matrix = sp.csc_matrix(motifs.to_numpy(dtype=bool))
        peak_names, labels = pd.Index(motifs.index.astype(str)), [str(c) for c in motifs.columns]
    else:
        raise TypeError("motifs must be a MotifMatches (motifs.motif_matrix) or a peaks x motifs DataFrame of bool")
    return _MotifColumns(matrix, peak_names, labels, [set(tf_names(name)) for name in labels])


def _compare_motif_peaks(gene, values: pd.Series, m: _MotifColumns, cols: list[int], any_motif, rng) -> dict | None:
    """One TF's motif peaks against as many random peaks with other motifs; None if too few."""
    from scipy.stats import ttest_ind

    has = np.asarray(m.matrix[:, cols].sum(axis=1)).ravel() > 0
    ok = values.notna().to_numpy()
    motif_peaks = np.flatnonzero(has & ok)
    others = np.flatnonzero(any_motif & ~has & ok)
    if len(motif_peaks) < 2 or len(others) < 2:
        return None
    random_peaks = rng.choice(others, size=min(len(motif_peaks), len(others)), replace=False)
    a, b = values.to_numpy()[motif_peaks], values.to_numpy()[random_peaks]
    test = ttest_ind(a, b, equal_var=False)
    return {
        "gene": gene,
        "motifs": ",".join(sorted({m.labels[j] for j in cols})),
        "n_motif_peaks": len(a),
        "n_random_peaks": len(b),
        "frac_closing_motif": float((a > 0).mean()),
        "frac_closing_random": float((b > 0).mean()),
        "mean_motif": float(a.mean()),
        "mean_random": float(b.mean()),
        "t": float(test.statistic),
        "p": float(test.pvalue),
    }


def motif_enrichment(
    table: pd.DataFrame,
    motifs,
    *,
    score: str = "mean_delta",
    group=None,
    seed: int = 0,
) -> pd.DataFrame:
    """Test whether peaks with a silenced TF's motif close more often than random motif-bearing peaks.

    For each gene of the table with a motif (matched by name; ``FOS::JUN`` matches both),
    the peaks carrying any of its motifs are compared with as many random peaks (seeded)
    that carry some other motif but none of the TF's: the fraction that close
    (``score`` > 0; with ``mean_delta``, accessibility drops when the TF is silenced), the
    mean score, and Welch's t-test of the scores.

    Parameters
    ----------
    table
        :func:`~multidgd.analysis.gene2peak` output for peaks, all peaks per gene.
    motifs
        :class:`multidgd.analysis.motifs.MotifMatches` (from
        :func:`multidgd.analysis.motifs.motif_matrix`) or a peaks × motifs DataFrame of bool
        whose column names are the TF names.
    score
        Signed column to test (default ``mean_delta``).
    group
        Which group of a table with several; None: each group in turn (results stacked,
        with a ``group`` column).
    seed
        Seed of the random peaks.

    Returns
    -------
    pandas.DataFrame
        One row per TF: ``gene``, ``motifs``, ``n_motif_peaks``, ``n_random_peaks``,
        ``frac_closing_motif``, ``frac_closing_random``, ``mean_motif``, ``mean_random``,
        ``t`` and ``p`` (two-sided).
    """
    groups = several_groups(table, group)
    if groups is not None:
        return stack_groups({g: motif_enrichment(table, motifs, score=score, group=g, seed=seed) for g in groups})
    t = one_group(table, group)
    col = peak_column(t)
    if score not in t.columns:
        raise ValueError(f"score column {score!r} is not in the table; columns: {list(t.columns)}")
    m = _motif_columns(motifs)
    any_motif = np.asarray(m.matrix.sum(axis=1)).ravel() > 0
    rng = np.random.default_rng(seed)
    rows = []
    for gene, sub in t.groupby("gene", sort=False, observed=True):
        cols = [j for j, names in enumerate(m.tfs) if str(gene).upper() in names]
        if not cols:
            continue
        values = pd.Series(sub[score].to_numpy(dtype=np.float64), index=sub[col].astype(str)).reindex(m.peaks)
        row = _compare_motif_peaks(gene, values, m, cols, any_motif, rng)
        if row is not None:
            rows.append(row)
    result = pd.DataFrame(rows, columns=_MOTIF_COLUMNS)
    result.attrs["score"] = score
    return result
