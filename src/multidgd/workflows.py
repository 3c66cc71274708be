"""The workflows behind the ``multidgd`` commands, as library functions.

The command line (:mod:`multidgd.cli`) only parses arguments, calls one of these and
prints what it returns:

* ``demo`` and ``train``: :func:`train_and_report`
* ``embed`` and ``predict``: :func:`embed_and_write`
* ``gene2peak``: :func:`gene2peak_and_write`
* ``evaluate``: :func:`multidgd.evaluation.run_evaluation`
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["train_and_report", "embed_and_write", "gene2peak_and_write"]


def _obs_frame(index) -> Any:
    import pandas as pd

    return pd.DataFrame(index=pd.Index([str(x) for x in index]))


def _nan_mean(values) -> float | None:
    values = np.asarray(values, dtype=float)
    return None if np.isnan(values).all() else round(float(np.nanmean(values)), 3)


def _obs_labels(data: Any, key: str, obs_names) -> np.ndarray:
    from .data import obs_column

    return obs_column(data, key, obs_names).astype(str).to_numpy()


def _write_table(table, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, sep="\t" if path.suffix == ".tsv" else ",")
    return path


# ----------------------------------------------------------------------------- train


def _write_annotated(data: Any, model, out: Path) -> Path:
    """Write the data with the model's results (or, for backed data, the results alone)."""
    from .data import is_backed
    from .io import add_results, write

    if is_backed(data) or any(is_backed(a) for a in getattr(data, "mod", {}).values()):
        # the counts stay in the input file; the results go into a file of their own
        import anndata as ad

        results = ad.AnnData(obs=_obs_frame(data.obs_names))
        add_results(results, model)
        return write(results, out / "multidgd_results")
    add_results(data, model)
    return write(data, out / "multidgd")


def _train_figures(data: Any, model, out: Path, *, cell_type_key: str | None, seed: int):
    """Training curves, UMAP and covariate spaces; returns (figures, cell types, clusters)."""
    from .plotting import plot_history, plot_model_covariates, plot_umap, umap_coordinates

    figures = [plot_history(model.history, out / "training_curves.png", best_epoch=model.best_epoch)]
    latent = model.get_latent_representation()
    ok = ~np.isnan(latent).any(axis=1)
    clusters = model.cluster().labels
    colorings = {"cluster": clusters[ok]}
    cell_types = None
    if cell_type_key:
        cell_types = _obs_labels(data, cell_type_key, model.obs_names)
        colorings = {"cell type": cell_types[ok], **colorings}
    coords = np.full((len(latent), 2), np.nan)
    coords[ok] = umap_coordinates(latent[ok], seed=seed)
    figures.append(plot_umap(coords[ok], colorings, out / "umap.png", title="UMAP of the basal latent"))
    for key in model.covariate_keys:
        labels = _obs_labels(data, key, model.obs_names)
        figures.append(plot_model_covariates(model, key, labels, out / f"covariate_{key}.png"))
    return figures, cell_types, clusters


def _train_summary(model, *, source: str, clusters: np.ndarray, cell_types, t0: float, train_seconds: float):
    """Summarize a training run (without ``outputs``)."""
    history = model.history
    train_cells = np.zeros(len(clusters), dtype=bool)
    train_cells[(model.split == "train").to_numpy()] = True
    best = history.loc[model.best_epoch]
    summary: dict[str, Any] = {
        "data": source,
        "cells": int(len(model.obs_names)),
        "cells_trained": int(len(model.state.train_index)),
        "cells_validation": int(len(model.state.val_index)),
        "genes": len(model.var_names["rna"]),
        "peaks": len(model.var_names["atac"]),
        "components": model.n_components,
        "components_used": int(len(np.unique(clusters[train_cells]))),
        "epochs": int(model.state.epoch),
        "best_epoch": int(model.best_epoch),
        "stopped_early": bool(model.state.stopped_early),
        "train_nll_rna": float(best["train_nll_rna"]),
        "train_nll_atac": float(best["train_nll_atac"]),
        "seconds": round(time.perf_counter() - t0, 1),
        "train_seconds": round(train_seconds, 1),
        "seconds_per_epoch": round(float(history["seconds"].median()), 3),
    }
    if "val_nll_rna" in best:
        summary["val_nll_rna"] = float(best["val_nll_rna"])
        summary["val_nll_atac"] = float(best["val_nll_atac"])
    if cell_types is not None:
        from sklearn.metrics import adjusted_rand_score

        summary["ari_clusters_vs_cell_type"] = round(
            float(adjusted_rand_score(cell_types[train_cells], clusters[train_cells])), 4
        )
    return summary


def train_and_report(
    data: Any,
    out: Path,
    *,
    source: str,
    rna_mod: str = "rna",
    atac_mod: str = "atac",
    layer: str | None = None,
    cell_type_key: str | None = None,
    covariate_keys: list[str] | None = None,
    max_epochs: int = 1000,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    batch_size: int | None = None,
    precision: str = "float32",
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Train on ``data`` and write model, annotated data, figures and a summary into ``out``.

    Parameters
    ----------
    data
        MuData or AnnData (in memory or backed); backed data gets its results written to
        ``multidgd_results.h5ad``, other data is written annotated.
    out
        Output directory; ``checkpoint.pt`` there is written during training.
    source
        Name of the data in the summary.
    rna_mod, atac_mod, layer, cell_type_key, covariate_keys
        As for :class:`~multidgd.DGD`.
    max_epochs, seed, device, resume
        As for :meth:`~multidgd.DGD.train` (``resume`` continues from the checkpoint).
    batch_size, precision
        :class:`~multidgd.TrainConfig` settings (default batch size: the config's).
    progress_bar
        Show training progress.

    Returns
    -------
    dict
        The summary, also written as ``summary.json``; empty on processes other than the
        main one of a distributed run.
    """
    from .config import TrainConfig
    from .distributed import is_main
    from .model import DGD

    covariate_keys = covariate_keys or []
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = DGD(
        data,
        rna_mod=rna_mod,
        atac_mod=atac_mod,
        layer=layer,
        cell_type_key=cell_type_key,
        covariate_keys=covariate_keys,
    )
    config = TrainConfig(precision=precision, **({} if batch_size is None else {"batch_size": batch_size}))
    model.train(
        max_epochs=max_epochs,
        seed=seed,
        device=device,
        config=config,
        checkpoint_path=out / "checkpoint.pt",
        resume=resume,
        progress_bar=progress_bar,
    )
    train_seconds = time.perf_counter() - t0
    if not is_main():  # every process has the whole model; rank 0 writes the outputs
        return {}
    model.save(out / "model.pt")
    data_path = _write_annotated(data, model, out)
    model.history.to_csv(out / "history.csv")
    figures, cell_types, clusters = _train_figures(data, model, out, cell_type_key=cell_type_key, seed=seed)
    summary = _train_summary(
        model, source=source, clusters=clusters, cell_types=cell_types, t0=t0, train_seconds=train_seconds
    )
    summary["outputs"] = sorted(str(p.name) for p in [data_path, out / "model.pt", out / "history.csv", *figures])
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# ----------------------------------------------------------------------------- embed, predict


def _add_predictions(data, model, emb, *, denoise: bool, threshold: float | None):
    """Add a ``<modality>_predicted`` modality for every modality some cells lack.

    Returns the (MuData) data and the names of the modalities added.
    """
    import anndata as ad
    import mudata as md
    import scipy.sparse as sp

    from .data import MODALITIES

    if isinstance(data, ad.AnnData):
        present = [m for j, m in enumerate(MODALITIES) if emb.observed[:, j].any()]
        name = model.source_modality[present[0]] if len(present) == 1 else "input"
        data = md.MuData({name: data})
    predicted = []
    for j, m in enumerate(MODALITIES):
        if emb.observed[:, j].all() and not denoise:
            continue
        getter = model.get_normalized_expression if m == "rna" else model.get_normalized_accessibility
        kw = {"return_type": "sparse", "threshold": threshold} if threshold else {"return_type": "array"}
        x = getter(emb, scale="counts", **kw)
        if not sp.issparse(x):
            x = x.astype(np.float32)
        key = f"{model.source_modality.get(m, m)}_predicted"
        pred = ad.AnnData(x, obs=_obs_frame(emb.obs_names), var=_obs_frame(model.var_names[m]))
        pred.obs["library_size"] = emb.library_size[:, j]
        pred.obs["library_size_source"] = emb.library_size_source[:, j]
        pred.obs["observed"] = emb.observed[:, j]
        data.mod[key] = pred
        predicted.append(key)
    data.update()
    return data, predicted


def embed_and_write(
    model_path: Path,
    data_path: Path,
    out: Path,
    *,
    predict: bool = False,
    denoise: bool = False,
    threshold: float | None = None,
    model_out: Path | None = None,
    **infer_kw: Any,
) -> dict[str, Any]:
    """Embed the cells of ``data_path`` into a saved model and write the annotated data.

    Parameters
    ----------
    model_path
        A ``model.pt``.
    data_path
        ``.h5mu`` or ``.h5ad`` of the new cells, raw counts.
    out
        Output file.
    predict
        Add every modality that some cells lack, for all cells, as a modality
        ``<name>_predicted`` of predicted counts.
    denoise
        With ``predict``, add the present modalities too.
    threshold
        Store predictions >= this, sparse (must be > 0).
    model_out
        Where a model with learned classes is written (default: next to ``out``).
    **infer_kw
        Passed to :meth:`~multidgd.DGD.infer`.

    Returns
    -------
    dict
        Summary: cells, modalities present, mean NLL, seconds, outputs.
    """
    from .io import read, write
    from .model import DGD

    if threshold is not None and not threshold > 0:
        raise ValueError(f"--threshold must be > 0, got {threshold}")
    model = DGD.load(model_path)
    data = read(data_path)
    t0 = time.perf_counter()
    emb = model.infer(data, **infer_kw)
    seconds = time.perf_counter() - t0
    summary: dict[str, Any] = {
        "data": data_path.name,
        "cells": emb.n_cells,
        "cells_with_rna": int(emb.observed[:, 0].sum()),
        "cells_with_atac": int(emb.observed[:, 1].sum()),
        "absent_features": emb.n_absent_features,
        "mean_nll_rna": _nan_mean(emb.nll["nll_rna"]),
        "mean_nll_atac": _nan_mean(emb.nll["nll_atac"]),
        "seconds": round(seconds, 1),
    }
    if emb.learned_classes:
        model_out = model_out or out.with_name(out.stem + ".model.pt")
        model.save(model_out)
        summary["learned_classes"] = emb.learned_classes
        summary["model_out"] = str(model_out)
    if predict:
        data, summary["predicted_modalities"] = _add_predictions(data, model, emb, denoise=denoise, threshold=threshold)
    emb.add_to(data)
    summary["out"] = str(write(data, out))
    return summary


# ----------------------------------------------------------------------------- gene2peak


def _write_tss_profiles(table, data, mods: dict[str, str], tss: str, out: Path) -> tuple[list[str], int]:
    """TSS profile table and figure per group next to ``out``; returns (paths, genes with peaks)."""
    from . import analysis

    if not hasattr(data, "mod"):
        raise ValueError("--tss needs a MuData with an ATAC modality for the peak coordinates")
    peaks, rna_var = data.mod[mods["atac"]].var, data.mod[mods["rna"]].var
    groups = table["group"].astype(str).unique()
    stem = out.name.split(".")[0]
    outputs = []
    for grp in groups:
        profile = analysis.tss_profile(table, peaks, tss, group=grp, rna_var=rna_var)
        tag = "" if len(groups) == 1 else f"_{grp}".replace(" ", "_").replace("/", "_")
        base = out.with_name(f"{stem}_tss_profile{tag}")
        outputs.append(str(_write_table(profile, base.with_suffix(".csv"))))
        title = f"{len(profile.attrs['genes_with_peaks_in_window'])} genes with a peak within 10 kb"
        outputs.append(str(analysis.plot_tss_profile(profile, base.with_suffix(".png"), title=title)))
    return outputs, len(profile.attrs["genes_with_peaks_in_window"])


def gene2peak_and_write(
    model_path: Path,
    data_path: Path,
    out: Path,
    *,
    genes: list[str],
    plot: Path | None = None,
    spearman: Path | None = None,
    tss: str | None = None,
    groupby: str | None = None,
    modality: str = "atac",
    top_n: int | None = None,
    layer: str | None = None,
    rna_mod: str | None = None,
    atac_mod: str | None = None,
    **gene2peak_kw: Any,
) -> dict[str, Any]:
    """Silence ``genes`` in silico (:func:`multidgd.analysis.gene2peak`) and write the tables.

    Parameters
    ----------
    model_path
        The trained model (``model.pt``) whose decoder is probed.
    data_path
        ``.h5mu`` or ``.h5ad`` with raw counts of the cells to use.
    out
        Output table (``.csv``, ``.csv.gz`` or ``.tsv``).
    genes
        Genes to silence.
    plot
        PNG of the top peaks of each gene.
    spearman
        Also write the Spearman baseline table here.
    tss
        ``"GRCh38"`` (bundled) or a TSS TSV/GTF: also write the TSS profile next to ``out``
        (a ``.csv`` and a ``.png`` per group).
    groupby, modality, top_n, layer, rna_mod, atac_mod
        As for :func:`multidgd.analysis.gene2peak`, also used by the Spearman baseline.
    **gene2peak_kw
        Further arguments of :func:`multidgd.analysis.gene2peak` (``n_steps``, ``lr``,
        ``step_size``, ``scale``, ``min_cells``, ``device``, ``progress_bar``).

    Returns
    -------
    dict
        Summary: genes, skipped genes, rows, groups, outputs.
    """
    from . import analysis
    from .io import read
    from .model import DGD

    model = DGD.load(model_path)
    data = read(data_path)
    shared = {"groupby": groupby, "modality": modality, "top_n": top_n, "layer": layer}
    table = analysis.gene2peak(model, data, genes=genes, rna_mod=rna_mod, atac_mod=atac_mod, **shared, **gene2peak_kw)
    mods = model.modality_names(rna_mod, atac_mod)
    outputs = [str(_write_table(table, out))]
    if plot is not None:
        outputs.append(str(analysis.plot_gene2peak(table, plot)))
    if spearman is not None:
        tested = table["gene"].astype(str).unique().tolist()
        baseline = analysis.spearman_gene2peak(data, genes=tested, rna_mod=mods["rna"], atac_mod=mods["atac"], **shared)
        outputs.append(str(_write_table(baseline, spearman)))
    summary = {
        "genes": int(table["gene"].nunique()),
        "skipped_genes": sorted(set(genes) - set(table["gene"].astype(str))),
        "rows": len(table),
        "groups": int(table["group"].nunique()),
    }
    if tss is not None:
        paths, summary["tss_genes_with_peaks"] = _write_tss_profiles(table, data, mods, tss, out)
        outputs += paths
    summary["outputs"] = outputs
    return summary
