"""Figures: training curves, UMAP of the basal latent, covariate spaces.

matplotlib and scanpy are imported only when a figure is made, and the backend is never
changed. :func:`pyplot` and :func:`save_figure` are the two steps every figure of the
package goes through.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "pyplot",
    "save_figure",
    "plot_history",
    "plot_umap",
    "plot_covariate_space",
    "plot_model_covariates",
    "plot_confusion",
    "plot_loss_ratios",
    "plot_certainty",
    "umap_coordinates",
    "category_colors",
]


def pyplot():
    """Import matplotlib's pyplot, leaving the backend as the user or matplotlib chose it
    (without a display matplotlib picks Agg itself; a notebook keeps its inline figures).

    Returns
    -------
    module
        ``matplotlib.pyplot``.
    """
    import matplotlib.pyplot as plt

    return plt


def plot_history(history: pd.DataFrame, path: str | Path, *, best_epoch: int | None = None) -> Path:
    """Training and validation loss terms (per-cell means) against epoch; writes a PNG.

    Parameters
    ----------
    history
        One row per epoch; columns with ``_nll_`` in their name and ending in ``_prior`` are
        drawn (``val_`` columns dashed).
    path
        PNG file to write.
    best_epoch
        Epoch to mark with a vertical line.

    Returns
    -------
    pathlib.Path
        ``path``, where the loss curves went.
    """
    plt = pyplot()
    groups = [
        ("reconstruction NLL", [c for c in history.columns if "_nll_" in c]),
        ("prior terms", [c for c in history.columns if c.endswith("_prior")]),
    ]
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4))
    for ax, (title, cols) in zip(np.atleast_1d(axes), groups, strict=False):
        for c in cols:
            ax.plot(history.index, history[c], label=c, ls="--" if c.startswith("val_") else "-")
        if best_epoch:
            ax.axvline(best_epoch, color="grey", lw=0.8, ls=":", label=f"best epoch {best_epoch}")
        ax.set_xlabel("epoch")
        ax.set_ylabel("per-cell value")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def umap_coordinates(latent: np.ndarray, *, seed: int = 0, n_neighbors: int = 15) -> np.ndarray:
    """2-D UMAP of a latent via scanpy (kNN graph on the latent itself).

    Parameters
    ----------
    latent
        (n, dim) representations.
    seed
        Random state of the kNN graph and the UMAP.
    n_neighbors
        Neighbours of the kNN graph.

    Returns
    -------
    numpy.ndarray
        (n, 2) coordinates.
    """
    import anndata as ad
    import scanpy as sc

    adata = ad.AnnData(np.asarray(latent, dtype=np.float32))
    sc.pp.neighbors(adata, use_rep="X", n_neighbors=n_neighbors, random_state=seed)
    sc.tl.umap(adata, random_state=seed)
    return np.asarray(adata.obsm["X_umap"])


def plot_umap(coords: np.ndarray, colorings: dict[str, np.ndarray], path: str | Path, *, title: str = "") -> Path:
    """Scatter of UMAP coordinates, one panel per coloring (categorical labels); writes a PNG.

    Parameters
    ----------
    coords
        (n, 2) coordinates.
    colorings
        Panel name -> (n,) labels.
    path
        PNG file to write.
    title
        Prefix of the panel titles.

    Returns
    -------
    pathlib.Path
        ``path``, where the UMAP panels went.
    """
    plt = pyplot()
    n = len(colorings)
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 5.5), squeeze=False)
    for ax, (name, labels) in zip(axes[0], colorings.items(), strict=False):
        _categorical_scatter(ax, coords, np.asarray(labels).astype(str))
        ax.set_title(f"{title} coloured by {name}".strip())
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("UMAP1")
        ax.set_ylabel("UMAP2")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_covariate_space(
    rep: np.ndarray,
    labels: np.ndarray,
    means: np.ndarray,
    sds: np.ndarray,
    class_names: list[str],
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """2-D covariate representations coloured by class, with each component's spread; writes a PNG.

    Parameters
    ----------
    rep
        (n, 2) covariate representations.
    labels
        (n,) class of each.
    means, sds
        (K, 2) component means and (K,) standard deviations, drawn as a cross with 1 and
        2 standard-deviation circles.
    class_names
        The K classes, in component order.
    path
        PNG file to write.
    title
        Title above the scatter.

    Returns
    -------
    pathlib.Path
        ``path``, where the covariate-space scatter went.
    """
    plt = pyplot()
    from matplotlib.patches import Circle

    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    colors = _categorical_scatter(ax, rep, np.asarray(labels).astype(str), order=class_names)
    for k, name in enumerate(class_names):
        color = colors.get(name, "black")
        ax.plot(*means[k], marker="x", color="black", ms=9, mew=2)
        for s in (1.0, 2.0):
            ax.add_patch(
                Circle(means[k], s * float(sds[k]), fill=False, color=color, lw=1.2, ls="-" if s == 1 else ":")
            )
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title or "covariate space (x: component means; circles: 1 and 2 sd)")
    ax.set_xlabel("dim 1")
    ax.set_ylabel("dim 2")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_model_covariates(
    model, key: str, labels, path: str | Path, *, embedding=None, embedding_labels=None, title: str = ""
) -> Path:
    """Covariate space of a trained model with its components; writes a PNG.

    ``labels`` are the classes of the model's cells (aligned to ``model.obs_names``; cells
    without a representation are skipped). New cells of an :class:`~multidgd.results.Embedding`
    are added with ``embedding_labels``.

    Parameters
    ----------
    model
        A trained :class:`~multidgd.DGD`.
    key
        The covariate.
    labels
        Class of each of the model's cells.
    path
        PNG file to write.
    embedding, embedding_labels
        New cells to add and their classes.
    title
        Figure title (default names the covariate).

    Returns
    -------
    pathlib.Path
        ``path``, where the scatter of the covariate representations went.
    """
    v = model.covariate_keys.index(key)
    rep = model.get_covariate_representation(key)
    ok = ~np.isnan(rep).any(axis=1)
    reps, labs = [rep[ok]], [np.asarray(labels).astype(str)[ok]]
    if embedding is not None:
        reps.append(embedding.covariate_representation(key))
        labs.append(np.asarray(embedding_labels).astype(str))
    mixture = model.module.covariates[v]
    return plot_covariate_space(
        np.concatenate(reps),
        np.concatenate(labs),
        mixture.mean.detach().cpu().numpy(),
        mixture.sd.detach().cpu().numpy().ravel(),
        model.covariate_categories[v],
        path,
        title=title or f"covariate space of {key!r}",
    )


def plot_confusion(truth: np.ndarray, clusters: np.ndarray, path: str | Path, *, title: str = "") -> Path:
    """Row-normalised contingency of cell types (rows) against clusters (columns); writes a PNG.

    Parameters
    ----------
    truth
        (n,) cell types.
    clusters
        (n,) cluster of each cell.
    path
        PNG file to write.
    title
        Title above the matrix.

    Returns
    -------
    pathlib.Path
        ``path``, where the confusion matrix went.
    """
    plt = pyplot()
    table = pd.crosstab(pd.Series(np.asarray(truth).astype(str), name="cell type"), pd.Series(clusters, name="cluster"))
    table = table[sorted(table.columns, key=lambda c: _natural_key(str(c)))]
    frac = table.div(table.sum(axis=1), axis=0)
    fig, ax = plt.subplots(figsize=(0.45 * frac.shape[1] + 3, 0.35 * frac.shape[0] + 2))
    im = ax.imshow(frac.to_numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(frac.shape[1]), [str(c) for c in frac.columns], fontsize=7)
    ax.set_yticks(range(frac.shape[0]), list(frac.index), fontsize=7)
    ax.set_xlabel("mixture component")
    ax.set_ylabel("cell type")
    fig.colorbar(im, ax=ax, label="fraction of the cell type")
    ax.set_title(title or "cell types across mixture components")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_loss_ratios(
    x, ratios: dict[str, np.ndarray], path: str | Path, *, xlabel: str, title: str = "", log_x: bool = False
) -> Path:
    """Test NLL ratios (against a reference model; 1 = as good) against ``x``; writes a PNG.

    ``ratios`` maps a line label to its values; several seeds may be given as rows of a
    2-D array (the mean is drawn, with the range as a band).

    Parameters
    ----------
    x
        Positions on the x axis.
    ratios
        Line label -> ratios (one row per seed).
    path
        PNG file to write.
    xlabel, title
        Axis label and figure title.
    log_x
        Logarithmic x axis.

    Returns
    -------
    pathlib.Path
        ``path``, where the loss-ratio bars went.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.6))
    x = np.asarray(x, dtype=float)
    for label, values in ratios.items():
        v = np.atleast_2d(np.asarray(values, dtype=float))
        ax.plot(x, v.mean(axis=0), marker="o", label=label)
        if v.shape[0] > 1:
            ax.fill_between(x, v.min(axis=0), v.max(axis=0), alpha=0.2)
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    if log_x:
        ax.set_xscale("log")
        ax.set_xticks(x, [f"{t:g}" for t in x])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test NLL / reference NLL (median over cells)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_certainty(table: pd.DataFrame, path: str | Path, *, title: str = "") -> Path:
    """Per-cell prediction quality by certainty bin, model against the average profile.

    Parameters
    ----------
    table
        :func:`multidgd.evaluation.certainty_table`.
    path
        PNG file to write.
    title
        Figure title.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    plt = pyplot()
    metrics = list(dict.fromkeys(table["metric"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        t = table[table["metric"] == metric]
        source = t["prediction"].iloc[0].split("_")[-1].upper()
        ax.plot(t["bin"], t["model"], marker="o", label=f"multidgd, from {source}")
        ax.plot(t["bin"], t["baseline"], marker="s", ls="--", color="grey", label="average profile")
        ax.set_xlabel("certainty bin (1 = least sure)")
        ax.set_ylabel(metric)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def _categorical_scatter(ax, coords, labels, order=None) -> dict[str, str]:
    ok = ~np.isnan(coords).any(axis=1)
    cats = list(order) if order is not None else sorted(pd.unique(labels[ok]), key=_natural_key)
    colors = dict(zip(cats, category_colors(len(cats)), strict=True))
    size = max(2.0, min(20.0, 20000.0 / max(1, ok.sum())))
    for c in cats:
        sel = ok & (labels == c)
        ax.scatter(coords[sel, 0], coords[sel, 1], s=size, color=colors[c], label=c, linewidths=0, alpha=0.8)
    ax.legend(markerscale=max(1.0, 6.0 / size), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return colors


def category_colors(n: int) -> list[str]:
    """``n`` distinct colours, as scanpy picks them: its 20-, 28- or 102-colour palette by ``n``
    (grey for every category beyond 102, as scanpy does).
    """
    from scanpy.plotting import palettes

    for palette in (palettes.default_20, palettes.default_28, palettes.default_102):
        if n <= len(palette):
            return list(palette[:n])
    return list(palettes.default_102) + ["#d3d3d3"] * (n - len(palettes.default_102))


def _natural_key(s: str):
    return (0, int(s)) if s.lstrip("-").isdigit() else (1, s)


def save_figure(fig, path: str | Path) -> Path:
    """Write a figure as a PNG (110 dpi, tight bounding box) and close it.

    Parameters
    ----------
    fig
        A matplotlib figure.
    path
        File to write; its folder is created when missing.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    plt = pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
