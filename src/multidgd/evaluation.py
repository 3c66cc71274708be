"""Held-out evaluation as the multiDGD paper measures it (see ``multidgd.metrics``).

A seeded 80/10/10 split stratified by cell type; test cells are embedded paired, with
ATAC hidden and with RNA hidden, and compared with the average-profile baseline (each test
cell predicted as the pooled training profile times its own library size).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .data import MODALITIES

__all__ = ["stratified_split", "read_split_csv", "heldout_metrics"]

SPLITS = ("train", "validation", "test")


def stratified_split(labels: np.ndarray, seed: int, fractions=(0.8, 0.1, 0.1)) -> np.ndarray:
    """Seeded train / validation / test labels, stratified by ``labels``.

    Each class contributes ``round(f_train * size)`` training and ``round(f_val * size)``
    validation cells; the rest are test cells. Returns (n,) object array.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels).astype(str)
    split = np.empty(len(labels), dtype=object)
    for g in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == g))
        n_train = int(round(fractions[0] * len(members)))
        n_val = int(round(fractions[1] * len(members)))
        split[members[:n_train]] = "train"
        split[members[n_train : n_train + n_val]] = "validation"
        split[members[n_train + n_val :]] = "test"
    return split


def read_split_csv(path, obs_names: pd.Index) -> np.ndarray:
    """Split labels from a CSV with columns ``obs_name,split`` (train/validation/test)."""
    table = pd.read_csv(path)
    missing_cols = {"obs_name", "split"} - set(table.columns)
    if missing_cols:
        raise ValueError(f"{path}: needs columns obs_name and split; missing {sorted(missing_cols)}")
    table["split"] = table["split"].astype(str).str.lower().replace({"val": "validation"})
    bad = sorted(set(table["split"]) - set(SPLITS))
    if bad:
        raise ValueError(f"{path}: split values {bad[:5]} not allowed; use train, validation, test")
    if table["obs_name"].duplicated().any():
        raise ValueError(
            f"{path}: obs_name repeats, e.g. {table['obs_name'][table['obs_name'].duplicated()][:3].tolist()}"
        )
    mapped = table.set_index(table["obs_name"].astype(str))["split"].reindex(obs_names)
    if mapped.isna().any():
        raise ValueError(
            f"{path}: {int(mapped.isna().sum())} cells of the data have no split, e.g. "
            f"{obs_names[mapped.isna().to_numpy()][:3].tolist()}"
        )
    return mapped.to_numpy().astype(object)


def _counts(adata) -> sp.csr_matrix:
    return sp.csr_matrix(adata.X, dtype=np.float32)


def _single(mdata, name: str, library_of: str | None = None):
    import mudata as md

    out = md.MuData({name: mdata.mod[name].copy()})
    out.obs = mdata.obs.copy()
    if library_of is not None:
        out.obs["_true_library"] = np.asarray(mdata.mod[library_of].X.sum(axis=1)).ravel()
    return out


def heldout_metrics(model, test, train, *, rna_mod: str = "rna", atac_mod: str = "atac", **infer_kw) -> dict[str, Any]:
    """Embed ``test`` (a MuData of held-out cells) and compute the paper's test metrics.

    ``train`` (the training cells) gives the average-profile baseline. Cross-modal
    predictions are scaled by the hidden modality's true library size. Returns a dict with
    ``rna_rmse``, ``rna_mae``, ``atac_auprc``, ``nll_rna``, ``nll_atac`` (mean per-cell NLL),
    ``rna_from_atac_rmse``, ``rna_from_atac_mae``, ``atac_from_rna_auprc``,
    ``baseline_rna_rmse``, ``baseline_rna_mae``, ``baseline_atac_auprc``, ``embed_seconds``
    and the per-cell NLL table under ``"_nll"``.
    """
    from .metrics import auprc, mae, rmse

    names = {"rna": rna_mod, "atac": atac_mod}
    x = {m: _counts(test.mod[names[m]]) for m in MODALITIES}
    lib = {m: np.asarray(x[m].sum(axis=1)).ravel() for m in MODALITIES}
    out: dict[str, Any] = {"test_cells": int(test.n_obs)}
    kw = {"progress_bar": False, "rna_mod": rna_mod, "atac_mod": atac_mod, **infer_kw}

    t0 = time.perf_counter()
    emb = model.infer(test, **kw)
    out["embed_seconds"] = round(time.perf_counter() - t0, 2)
    rna = model.get_normalized_expression(emb, scale="counts", return_type="array")
    atac = model.get_normalized_accessibility(emb, scale="counts", return_type="array")
    out["rna_rmse"] = rmse(x["rna"], rna)
    out["rna_mae"] = mae(x["rna"], rna)
    out["atac_auprc"] = auprc(x["atac"], atac)
    out["nll_rna"] = float(emb.nll["nll_rna"].mean())
    out["nll_atac"] = float(emb.nll["nll_atac"].mean())
    out["_nll"] = emb.nll
    out["_embedding"] = emb

    for m in MODALITIES:
        profile = np.asarray(_counts(train.mod[names[m]]).sum(axis=0)).ravel()
        pred = lib[m][:, None] * (profile / profile.sum())[None, :]
        if m == "rna":
            out["baseline_rna_rmse"] = rmse(x["rna"], pred)
            out["baseline_rna_mae"] = mae(x["rna"], pred)
        else:
            out["baseline_atac_auprc"] = auprc(x["atac"], pred)

    e_rna = model.infer(_single(test, rna_mod, atac_mod), atac_library_key="_true_library", **kw)
    atac_from_rna = model.get_normalized_accessibility(e_rna, scale="counts", return_type="array")
    out["atac_from_rna_auprc"] = auprc(x["atac"], atac_from_rna)
    e_atac = model.infer(_single(test, atac_mod, rna_mod), rna_library_key="_true_library", **kw)
    rna_from_atac = model.get_normalized_expression(e_atac, scale="counts", return_type="array")
    out["rna_from_atac_rmse"] = rmse(x["rna"], rna_from_atac)
    out["rna_from_atac_mae"] = mae(x["rna"], rna_from_atac)
    return out


def _train(
    data, split: np.ndarray, *, cell_type_key, batch_key, seed, max_epochs, device, progress_bar, config=None, **kw
):
    from .model import DGD

    data = data.copy()
    data.obs["_multidgd_split"] = split
    model = DGD(
        data,
        cell_type_key=cell_type_key,
        covariate_keys=[batch_key] if batch_key else [],
        split_key="_multidgd_split",
        **kw,
    )
    t0 = time.perf_counter()
    model.train(max_epochs=max_epochs, seed=seed, device=device, progress_bar=progress_bar, config=config)
    return model, time.perf_counter() - t0


def run_evaluation(
    data,
    out,
    *,
    cell_type_key: str,
    batch_key: str | None = None,
    split: np.ndarray | None = None,
    seed: int = 0,
    max_epochs: int = 1000,
    holdout_batch: str | None = None,
    train_fraction: float | list[float] | None = None,
    compare: list[str] | tuple[str, ...] = (),
    compare_max_epochs: int | None = None,
    config=None,
    model_path=None,
    device: str = "auto",
    progress_bar: bool = True,
    source: str = "",
) -> dict[str, Any]:
    """Train on the split, embed the test cells, compute every metric, write a report.

    Writes ``out/metrics.json``, ``out/report.md``, ``out/model.pt`` and figures; returns
    the metrics. ``holdout_batch`` also trains a model without that batch and reports the
    per-cell test NLL ratio of its cells (naive and learned) against the full model;
    ``train_fraction`` (one value or several) trains on that stratified fraction of the
    training cells and reports the test NLL ratio against the full model.
    ``compare=["multivi"]`` also trains MultiVI on the same split and reports the same
    metrics under ``metrics["multivi"]`` (needs the ``compare`` extra, see
    ``multidgd.compare``); ``compare_max_epochs`` caps its epochs (default: its own).
    ``config`` is a ``TrainConfig`` for every multidgd model trained here (default: defaults).
    ``model_path``: evaluate this saved model (trained on this data with this split, e.g. the
    ``model.pt`` of an earlier run) instead of training one; its training time is the sum of
    its recorded epoch times.
    """
    import json
    import resource
    from pathlib import Path

    from .data import obs_column
    from .metrics import ari, batch_1_minus_asw, loss_ratio
    from .plotting import (
        plot_confusion,
        plot_history,
        plot_loss_ratios,
        plot_model_covariates,
        plot_umap,
        umap_coordinates,
    )

    out = Path(out)
    obs_names = pd.Index(data.obs_names.astype(str))
    try:
        cell_types = obs_column(data, cell_type_key, obs_names).astype(str).to_numpy()
    except KeyError:
        raise ValueError(f"obs column {cell_type_key!r} not found; available: {list(data.obs.columns)}") from None
    batches = None
    if batch_key:
        try:
            batches = obs_column(data, batch_key, obs_names).astype(str).to_numpy()
        except KeyError:
            raise ValueError(f"obs column {batch_key!r} not found; available: {list(data.obs.columns)}") from None
    if holdout_batch is not None:
        if batches is None:
            raise ValueError("holdout_batch needs batch_key")
        if holdout_batch not in set(batches):
            raise ValueError(f"holdout batch {holdout_batch!r} not among {sorted(set(batches))}")
    fractions = [] if train_fraction is None else np.atleast_1d(np.asarray(train_fraction, dtype=float)).tolist()
    for f in fractions:
        if not 0 < f <= 1:
            raise ValueError(f"train_fraction must be in (0, 1], got {f}")
    compare = list(compare or [])
    unknown = sorted(set(compare) - {"multivi"})
    if unknown:
        raise ValueError(f"compare: unknown tool(s) {unknown}; allowed: multivi")
    if "multivi" in compare:
        from .compare import require_scvi

        require_scvi()
    split = stratified_split(cell_types, seed) if split is None else np.asarray(split, dtype=object)
    if len(split) != len(obs_names):
        raise ValueError(f"split has {len(split)} entries for {len(obs_names)} cells")
    for s in SPLITS:
        if not (split == s).any():
            raise ValueError(f"the split has no {s} cells")
    out.mkdir(parents=True, exist_ok=True)
    kw = {"cell_type_key": cell_type_key, "batch_key": batch_key, "seed": seed, "max_epochs": max_epochs}
    kw.update(device=device, progress_bar=progress_bar, config=config)

    t_start = time.perf_counter()
    if model_path is None:
        model, train_seconds = _train(data, split, **kw)
        model.save(out / "model.pt")
    else:
        from .model import DGD

        model = DGD.load(model_path)
        model_split = model.split.astype(str).replace("none", "other").to_numpy()
        same_cells = np.array_equal(np.asarray(model.obs_names).astype(str), obs_names.to_numpy())
        fitted = model_split != "other"
        if not same_cells or not np.array_equal(split[fitted].astype(str), model_split[fitted]):
            raise ValueError(
                f"{model_path}: not trained on these cells with this split (seed {seed}); "
                "give the data, --seed or --split-csv it was trained with"
            )
        train_seconds = float(sum(row["seconds"] for row in model.state.history))
    test = data[split == "test"].copy()
    train = data[split == "train"].copy()
    res = heldout_metrics(model, test, train, device=device)

    is_train = (model.split == "train").to_numpy()
    latent = model.get_latent_representation()
    clustering = model.cluster()
    history = model.history
    metrics: dict[str, Any] = {
        "data": source,
        "seed": seed,
        "cells_train": int(is_train.sum()),
        "cells_validation": int((model.split == "validation").sum()),
        "cells_test": int((split == "test").sum()),
        **{k: v for k, v in res.items() if not k.startswith("_")},
        "ari": ari(cell_types[is_train], clustering.labels[is_train]),
        "components": model.n_components,
        "components_used": int(len(np.unique(clustering.labels[is_train]))),
        "batch_1_minus_asw": (
            batch_1_minus_asw(latent[is_train], batches[is_train])
            if batches is not None and len(np.unique(batches[is_train])) > 1
            else None
        ),
        "epochs": int(model.state.epoch),
        "best_epoch": int(model.best_epoch),
        "seconds_per_epoch": float(history["seconds"].median()),
        "train_seconds": train_seconds,
    }

    if holdout_batch is not None:
        keep = batches != holdout_batch
        model_b, _ = _train(data[keep].copy(), split[keep], **kw)
        cells = test.obs_names.isin(obs_names[(batches == holdout_batch) & (split == "test")])
        held = test[cells].copy()
        ref = res["_nll"].loc[held.obs_names].sum(axis=1)
        naive = model_b.infer(held, device=device, progress_bar=False).nll.sum(axis=1)
        learned_emb = model_b.infer(held, new_classes="learn", device=device, progress_bar=False)
        metrics["holdout_batch"] = holdout_batch
        metrics["holdout_test_cells"] = int(cells.sum())
        metrics["holdout_loss_ratio_naive"] = loss_ratio(naive, ref)
        metrics["holdout_loss_ratio_learned"] = loss_ratio(learned_emb.nll.sum(axis=1), ref)
        plot_model_covariates(
            model_b,
            batch_key,
            batches[keep],
            out / "holdout_covariate_space.png",
            embedding=learned_emb,
            embedding_labels=np.full(held.n_obs, holdout_batch),
            title=f"{batch_key}: {holdout_batch} held out, then learned as a new class",
        )

    fraction_rows = []
    for f in fractions:
        row = {"train_fraction": f, "cells_train": int(is_train.sum()), "loss_ratio": 1.0}
        row.update({f"loss_ratio_{m}": 1.0 for m in MODALITIES})
        if f < 1:
            rng = np.random.default_rng(seed)
            sub = split.copy()
            for g in np.unique(cell_types):
                members = np.flatnonzero((split == "train") & (cell_types == g))
                n_keep = max(1, int(round(f * len(members))))
                sub[rng.permutation(members)[n_keep:]] = "unused"
            used = sub != "unused"
            model_f, _ = _train(data[used].copy(), sub[used], **kw)
            nll_f = model_f.infer(test, device=device, progress_bar=False).nll
            row["cells_train"] = int((sub == "train").sum())
            row["loss_ratio"] = loss_ratio(nll_f.sum(axis=1), res["_nll"].sum(axis=1))
            for m in MODALITIES:
                row[f"loss_ratio_{m}"] = loss_ratio(nll_f[f"nll_{m}"], res["_nll"][f"nll_{m}"])
        fraction_rows.append({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()})
    if fraction_rows:
        metrics["data_fraction"] = fraction_rows
        last = fraction_rows[-1]
        metrics["train_fraction"] = last["train_fraction"]
        metrics["fraction_loss_ratio"] = last["loss_ratio"]

    if "multivi" in compare:
        from .compare import leiden_matched, multivi_metrics

        mv = multivi_metrics(
            data,
            split,
            cell_types=cell_types,
            batches=batches,
            seed=seed,
            max_epochs=compare_max_epochs,
            progress_bar=progress_bar,
        )
        mv.pop("_latent", None)
        metrics["multivi"] = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in mv.items()}
        # multidgd's latent clustered the same way as MultiVI's (Leiden, matched count)
        labels, _ = leiden_matched(latent[is_train], len(np.unique(cell_types[is_train])), seed=seed)
        metrics["ari_leiden"] = ari(cell_types[is_train], labels)

    metrics["total_seconds"] = time.perf_counter() - t_start
    metrics["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    metrics = {k: (round(v, 5) if isinstance(v, float) else v) for k, v in metrics.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))

    figures = [plot_history(history, out / "training_curves.png", best_epoch=model.best_epoch)]
    ok = ~np.isnan(latent).any(axis=1)
    coords = umap_coordinates(latent[ok], seed=seed)
    figures.append(
        plot_umap(
            coords,
            {"cell type": cell_types[ok], "cluster": clustering.labels[ok]},
            out / "umap.png",
            title="UMAP of the basal latent",
        )
    )
    figures.append(plot_confusion(cell_types[is_train], clustering.labels[is_train], out / "confusion.png"))
    if batch_key:
        figures.append(plot_model_covariates(model, batch_key, batches, out / f"covariate_{batch_key}.png"))
    if holdout_batch is not None:
        figures.append(out / "holdout_covariate_space.png")
    if len(fraction_rows) > 1:
        rows = sorted(fraction_rows, key=lambda r: r["train_fraction"])
        figures.append(
            plot_loss_ratios(
                [r["train_fraction"] for r in rows],
                {
                    lab: [r[key] for r in rows]
                    for lab, key in [("both", "loss_ratio"), ("RNA", "loss_ratio_rna"), ("ATAC", "loss_ratio_atac")]
                },
                out / "data_fraction.png",
                xlabel="fraction of training cells",
                title="data efficiency (reference: all training cells)",
                log_x=True,
            )
        )
    (out / "report.md").write_text(_report(metrics, [Path(f).name for f in figures]))
    return metrics


_ROWS = [
    # (label, multidgd key, average-profile baseline key, MultiVI key, better)
    ("RNA RMSE (test, counts)", "rna_rmse", "baseline_rna_rmse", "rna_rmse", "lower"),
    ("RNA MAE (test, counts)", "rna_mae", "baseline_rna_mae", "rna_mae", "lower"),
    ("ATAC AUPRC (test)", "atac_auprc", "baseline_atac_auprc", "atac_auprc", "higher"),
    ("RNA RMSE from ATAC only", "rna_from_atac_rmse", "baseline_rna_rmse", "rna_from_atac_rmse", "lower"),
    ("ATAC AUPRC from RNA only", "atac_from_rna_auprc", "baseline_atac_auprc", "atac_from_rna_auprc", "higher"),
    ("test NLL per cell, RNA", "nll_rna", None, None, "lower"),
    ("test NLL per cell, ATAC", "nll_atac", None, None, "lower"),
    ("ARI clusters vs cell types (train)", "ari", None, None, "higher"),
    ("ARI, Leiden with matched cluster count (train)", "ari_leiden", None, "ari", "higher"),
    ("batch 1 - ASW (train latent)", "batch_1_minus_asw", None, "batch_1_minus_asw", "higher"),
    ("unseen batch loss ratio, naive", "holdout_loss_ratio_naive", None, None, "near 1"),
    ("unseen batch loss ratio, learned", "holdout_loss_ratio_learned", None, None, "near 1"),
    ("epochs", "epochs", None, "epochs", ""),
    ("seconds per epoch", "seconds_per_epoch", None, "seconds_per_epoch", ""),
]


def _fmt(v) -> str:
    return "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def _report(metrics: dict[str, Any], figures: list[str]) -> str:
    mv = metrics.get("multivi")
    lines = [
        f"# multidgd evaluation: {metrics.get('data', '')}",
        "",
        f"Seed {metrics['seed']}; {metrics['cells_train']} training, {metrics['cells_validation']} validation, "
        f"{metrics['cells_test']} test cells. {metrics['epochs']} epochs (best {metrics['best_epoch']}), "
        f"{metrics['seconds_per_epoch']:.3g} s per epoch, {metrics['total_seconds']:.0f} s in all, "
        f"peak memory {metrics['peak_rss_mb']:.0f} MB; {metrics['components_used']} of "
        f"{metrics['components']} mixture components used.",
        "",
        "| metric | multidgd | " + ("MultiVI | " if mv else "") + "average-profile baseline | better |",
        "|---|---|" + ("---|" if mv else "") + "---|---|",
    ]
    for name, key, base, mv_key, better in _ROWS:
        mv_val = mv.get(mv_key) if mv and mv_key else None
        if metrics.get(key) is None and mv_val is None:
            continue
        cells = [name, _fmt(metrics.get(key))] + ([_fmt(mv_val)] if mv else [])
        cells += [_fmt(metrics.get(base)) if base else "", better]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Baseline: every test cell predicted as the pooled training profile times its library size."]
    if mv:
        lines += [
            f"MultiVI: scvi-tools {mv['version']}, n_latent {mv['n_latent']}, its defaults otherwise; "
            "ARI from Leiden on its latent with the cluster count matched to the number of cell types; "
            "its likelihoods differ from multidgd's, so no NLL is given for it."
        ]
    if metrics.get("data_fraction"):
        lines += ["", "| fraction of training cells | training cells | test NLL ratio | RNA | ATAC |"]
        lines += ["|---|---|---|---|---|"]
        for r in metrics["data_fraction"]:
            lines.append(
                f"| {r['train_fraction']:g} | {r['cells_train']} | {_fmt(r['loss_ratio'])} | "
                f"{_fmt(r['loss_ratio_rna'])} | {_fmt(r['loss_ratio_atac'])} |"
            )
    lines.append("")
    lines += [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"
