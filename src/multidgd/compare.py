"""MultiVI (scvi-tools) on the same split, measured the same way as ``multidgd evaluate``.

Needs the optional extra: ``pip install "multidgd[compare]"`` (scvi-tools; on Python 3.11
the last release that supports it, 1.4.2). MultiVI is trained with its defaults and
``n_latent=20`` on the training cells, with the validation cells as its validation set.
Test cells are embedded by its encoder three times: paired, with ATAC counts set to zero
and with RNA counts set to zero (MultiVI treats a modality whose counts sum to zero as
missing).

Predictions are scaled as for multidgd: RNA fractions (rows sum to 1) times the cell's
true RNA library; ATAC as MultiVI's own probability of an accessible region (normalised
probability x cell factor x region factor, the quantity its Bernoulli loss uses). When ATAC
is hidden the cell factor is taken from the paired embedding of the same cell, as multidgd's
cross-modal prediction is scaled by the hidden modality's true library size. MultiVI's
likelihoods (ZINB on RNA, Bernoulli on ATAC) are not comparable with multidgd's NB NLL, so
no NLL is reported for it. ARI: Leiden on its latent with the resolution chosen so the
cluster count equals the number of cell types.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["require_scvi", "leiden_matched", "multivi_metrics"]

INSTALL_HINT = (
    'the MultiVI comparison needs scvi-tools; install the optional extra: pip install "multidgd[compare]" '
    "(on Python 3.11 this pins scvi-tools 1.4.2, the last release for 3.11)"
)


def require_scvi():
    """Import scvi-tools or raise ImportError with the install command."""
    try:
        import scvi
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return scvi


def leiden_matched(latent: np.ndarray, n_clusters: int, *, seed: int = 0, n_neighbors: int = 15, max_iter: int = 40):
    """Leiden clusters of ``latent`` with the resolution bisected to give ``n_clusters``.

    Returns (labels, resolution). If no resolution gives exactly ``n_clusters`` within
    ``max_iter`` halvings, the closest count seen is returned.
    """
    import anndata as ad
    import scanpy as sc

    latent = np.asarray(latent, dtype=np.float32)
    if n_clusters < 1 or n_clusters > len(latent):
        raise ValueError(f"n_clusters must be in [1, {len(latent)}], got {n_clusters}")
    a = ad.AnnData(obs={"i": np.arange(len(latent))})
    a.obsm["X_latent"] = latent
    sc.pp.neighbors(a, use_rep="X_latent", n_neighbors=min(n_neighbors, len(latent) - 1), random_state=seed)

    def run(res: float) -> np.ndarray:
        sc.tl.leiden(a, resolution=res, flavor="igraph", n_iterations=2, directed=False, random_state=seed)
        return a.obs["leiden"].astype(int).to_numpy()

    lo, hi = 0.0, 1.0
    best = (None, None, np.inf)
    labels = run(hi)
    while len(np.unique(labels)) < n_clusters and hi < 64:
        lo, hi = hi, hi * 2
        labels = run(hi)
    for _ in range(max_iter):
        res = hi if best[0] is None else (lo + hi) / 2
        labels = labels if best[0] is None else run(res)
        k = len(np.unique(labels))
        if abs(k - n_clusters) < best[2]:
            best = (labels, res, abs(k - n_clusters))
        if k == n_clusters:
            break
        if k > n_clusters:
            hi = res
        else:
            lo = res
    return best[0], float(best[1])


def multivi_metrics(
    data,
    split: np.ndarray,
    *,
    cell_types: np.ndarray,
    batches: np.ndarray | None,
    seed: int = 0,
    rna_mod: str = "rna",
    atac_mod: str = "atac",
    max_epochs: int | None = None,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """Train MultiVI on ``split`` and compute multidgd's test metrics for it.

    ``data`` is a MuData with raw counts in ``X`` of ``rna_mod`` and ``atac_mod``. Returns a
    dict with ``rna_rmse``, ``rna_mae``, ``atac_auprc``, ``rna_from_atac_rmse``,
    ``rna_from_atac_mae``, ``atac_from_rna_auprc``, ``ari`` (Leiden, matched count),
    ``leiden_resolution``, ``batch_1_minus_asw``, ``epochs``, ``seconds_per_epoch``,
    ``train_seconds`` and ``version``. ``max_epochs=None`` keeps MultiVI's default.
    """
    scvi = require_scvi()
    import anndata as ad
    import mudata as md
    import pandas as pd

    from .metrics import ari, auprc, batch_1_minus_asw, mae, rmse

    split = np.asarray(split, dtype=object)
    fit = np.flatnonzero(np.isin(split, ["train", "validation"]))
    test = np.flatnonzero(split == "test")
    parts = {"rna": [], "atac": []}
    names = {"rna": rna_mod, "atac": atac_mod}
    copies = ("paired", "rna_only", "atac_only")
    for copy in ("fit", *copies):
        rows = fit if copy == "fit" else test
        for m in ("rna", "atac"):
            a = data.mod[names[m]][rows].copy()
            hidden = (copy == "rna_only" and m == "atac") or (copy == "atac_only" and m == "rna")
            # a hidden modality is all zeros, which MultiVI reads as missing
            a.X = sp.csr_matrix(a.shape, dtype=np.float32) if hidden else sp.csr_matrix(a.X, dtype=np.float32)
            a.obs = pd.DataFrame(index=[f"{o}|{copy}" for o in a.obs_names])
            parts[m].append(a)
    mods = {m: ad.concat(parts[m], merge="first") for m in parts}
    for m in mods:
        mods[m].var = data.mod[names[m]].var[[]].copy()
    mdata = md.MuData(mods)
    obs = pd.DataFrame(index=mods["rna"].obs_names)
    if batches is not None:
        obs["_batch"] = np.concatenate([batches[fit]] + [batches[test]] * 3).astype(str)
    mdata.obs = obs

    n_fit = len(fit)
    n_test = len(test)
    is_train_fit = split[fit] == "train"
    external = [
        np.flatnonzero(is_train_fit),
        np.flatnonzero(~is_train_fit),
        np.arange(n_fit, n_fit + 3 * n_test),
    ]
    where = {c: np.arange(n_fit + i * n_test, n_fit + (i + 1) * n_test) for i, c in enumerate(copies)}

    scvi.settings.seed = seed
    scvi.model.MULTIVI.setup_mudata(
        mdata,
        batch_key="_batch" if batches is not None else None,
        modalities={"rna_layer": "rna", "atac_layer": "atac"},
    )
    model = scvi.model.MULTIVI(mdata, n_latent=20)
    kw = {"datasplitter_kwargs": {"external_indexing": external}, "enable_progress_bar": progress_bar}
    if max_epochs is not None:
        kw["max_epochs"] = max_epochs
    t0 = time.perf_counter()
    model.train(**kw)
    train_seconds = time.perf_counter() - t0
    epochs = len(model.history["train_loss"])

    x = {m: sp.csr_matrix(data.mod[names[m]].X[test], dtype=np.float32) for m in ("rna", "atac")}
    lib_rna = np.asarray(x["rna"].sum(axis=1)).ravel()

    def expression(copy):
        frac = model.get_normalized_expression(indices=where[copy], return_numpy=True)
        return np.asarray(frac) * lib_rna[:, None]

    def accessibility(copy, cells: bool):
        return model.get_normalized_accessibility(
            indices=where[copy], normalize_cells=cells, normalize_regions=True, return_numpy=True
        )

    out: dict[str, Any] = {"version": scvi.__version__, "n_latent": 20}
    rna = expression("paired")
    out["rna_rmse"] = rmse(x["rna"], rna)
    out["rna_mae"] = mae(x["rna"], rna)
    atac = accessibility("paired", True)
    out["atac_auprc"] = auprc(x["atac"], atac)
    # the cell factor of the paired embedding, applied to the RNA-only prediction
    cell_factor = np.median(atac / np.maximum(accessibility("paired", False), 1e-30), axis=1)
    out["atac_from_rna_auprc"] = auprc(x["atac"], accessibility("rna_only", False) * cell_factor[:, None])
    rna_x = expression("atac_only")
    out["rna_from_atac_rmse"] = rmse(x["rna"], rna_x)
    out["rna_from_atac_mae"] = mae(x["rna"], rna_x)

    train_rows = external[0]
    latent = model.get_latent_representation(indices=train_rows)
    train_types = np.asarray(cell_types)[fit][is_train_fit]
    labels, res = leiden_matched(latent, len(np.unique(train_types)), seed=seed)
    out["ari"] = ari(train_types, labels)
    out["clusters"] = int(len(np.unique(labels)))
    out["leiden_resolution"] = res
    if batches is not None:
        b = np.asarray(batches)[fit][is_train_fit]
        out["batch_1_minus_asw"] = batch_1_minus_asw(latent, b) if len(np.unique(b)) > 1 else None
    out["epochs"] = int(epochs)
    out["train_seconds"] = train_seconds
    out["seconds_per_epoch"] = train_seconds / max(epochs, 1)
    out["_latent"] = latent
    return out
