"""Figures of gene-to-peak tables and their evaluations; each writes a PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..plotting import pyplot, save_figure
from .tables import feature_column, score_column

__all__ = ["plot_differential", "plot_gene2peak", "plot_tss_profile", "plot_motif_enrichment"]


def plot_gene2peak(table: pd.DataFrame, path, *, top: int = 10, score: str | None = None, max_genes: int = 12) -> Path:
    """Bars of the top features per gene of the table's first group.

    Parameters
    ----------
    table
        Output of :func:`~multidgd.analysis.gene2peak` or
        :func:`~multidgd.analysis.spearman_gene2peak`.
    path
        PNG file to write.
    top
        Features per gene, the highest by ``score``.
    score
        Ranking column (default by the table's method); the bars show its signed
        counterpart, red where the feature closes when the gene is silenced.
    max_genes
        Most genes (panels) drawn.

    Returns
    -------
    pathlib.Path
        ``path``, where the per-gene bar charts went.
    """
    plt = pyplot()
    score = score_column(table, score)
    signed = {"mean_abs_delta": "mean_delta", "mean_abs_logfc": "mean_logfc", "abs_rho": "rho"}.get(score, score)
    feature = feature_column(table)
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
    return save_figure(fig, path)


def plot_tss_profile(profile: pd.DataFrame, path, *, title: str = "") -> Path:
    """Relative effect against distance to the TSS, silenced genes against the control.

    Parameters
    ----------
    profile
        Output of :func:`~multidgd.analysis.tss_profile`.
    path
        PNG file to write.
    title
        Title above the profile.

    Returns
    -------
    pathlib.Path
        ``path``, where the profile of ΔX̂ around TSSs went.
    """
    plt = pyplot()
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
    return save_figure(fig, path)


def plot_motif_enrichment(result: pd.DataFrame, path, *, max_tfs: int = 30) -> Path:
    """Fraction of closing peaks with the TF's motif against random motif peaks.

    Parameters
    ----------
    result
        Output of :func:`~multidgd.analysis.motif_enrichment`.
    path
        PNG file to write.
    max_tfs
        Most TFs drawn, those of smallest p-value.

    Returns
    -------
    pathlib.Path
        ``path``, where the motif-enrichment bars went.
    """
    plt = pyplot()
    r = result.sort_values("p").head(max_tfs)
    fig, ax = plt.subplots(figsize=(max(4, 0.45 * len(r) + 1.5), 3.5))
    x = np.arange(len(r))
    ax.bar(x - 0.2, r["frac_closing_motif"], 0.4, label="peaks with the TF's motif", color="#c0392b")
    ax.bar(x + 0.2, r["frac_closing_random"], 0.4, label="random motif peaks", color="#7f8c8d")
    ax.set_xticks(x, r["gene"].astype(str), rotation=90, fontsize=7)
    ax.set_ylabel("fraction closing on silencing")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_differential(table: pd.DataFrame, path=None, *, top: int = 5, max_comparisons: int = 12):
    """Log2 fold change against mean level, one panel per comparison of a differential table.

    Each feature is a point at x = log10 of the two sides' mean normalised level, y =
    ``lfc_mean``; features called at the table's FDR are red (up in group1) or blue (down),
    and the ``top`` called features each way (in the table's order) are named.

    Parameters
    ----------
    table
        Output of :func:`~multidgd.analysis.differential_test`.
    path
        PNG file to write; None returns the figure instead.
    top
        Features named per direction and panel.
    max_comparisons
        Most comparisons (panels) drawn, in the table's order.

    Returns
    -------
    pathlib.Path or matplotlib.figure.Figure
        ``path`` when given, else the figure.
    """
    plt = pyplot()
    comparisons = list(dict.fromkeys(table["comparison"]))[:max_comparisons]
    ncol = min(3, len(comparisons))
    nrow = int(np.ceil(len(comparisons) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.6 * ncol, 3.8 * nrow), squeeze=False)
    for ax, name in zip(axes.ravel(), comparisons, strict=False):
        part = table[table["comparison"] == name]
        level = np.log10(np.maximum((part["scale1"] + part["scale2"]).to_numpy() / 2, 1e-12))
        lfc = part["lfc_mean"].to_numpy()
        called = part["is_de_fdr"].to_numpy()
        colours = np.where(~called, "#b0b0b0", np.where(lfc > 0, "#c0392b", "#2e6da4"))
        ax.scatter(level, lfc, s=3, c=colours, linewidths=0, rasterized=True)
        ax.axhline(0, color="k", lw=0.6)
        for direction in (1, -1):
            pick = np.flatnonzero(called & (np.sign(lfc) == direction))[:top]
            for i in pick:
                ax.annotate(
                    str(part.index[i]), (level[i], lfc[i]), fontsize=6, xytext=(2, 2), textcoords="offset points"
                )
        ax.set_title(f"{name}: {int(called.sum())} called", fontsize=9)
        ax.set_xlabel("log10 mean normalised level", fontsize=8)
        ax.set_ylabel("log2 fold change", fontsize=8)
    for ax in axes.ravel()[len(comparisons) :]:
        ax.axis("off")
    fig.tight_layout()
    return fig if path is None else save_figure(fig, path)
