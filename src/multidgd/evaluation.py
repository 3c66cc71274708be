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
