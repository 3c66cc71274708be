"""MultiVI (scvi-tools) on the same split, measured the same way as ``multidgd evaluate``.

Needs the optional extra: ``pip install "multidgd[compare]"`` (scvi-tools; on Python 3.11
the last release that supports it, 1.4.2); scvi-tools is imported only when MultiVI is
trained (:func:`require_scvi`). MultiVI is trained with its defaults and ``n_latent=20`` on
the training cells, with the validation cells as its validation set. Test cells are
embedded by its encoder three times: paired, with ATAC counts set to zero and with RNA
counts set to zero (MultiVI treats a modality whose counts sum to zero as missing).

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
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["INSTALL_HINT", "require_scvi", "leiden_matched", "MultiVIMetrics", "multivi_metrics"]

INSTALL_HINT = (
    'the MultiVI comparison needs scvi-tools; install the optional extra: pip install "multidgd[compare]" '
    "(on Python 3.11 this pins scvi-tools 1.4.2, the last release for 3.11)"
)

#: MultiVI's latent dimension in the comparison.
N_LATENT = 20

#: The three copies of the test cells: paired, ATAC hidden, RNA hidden.
_COPIES = ("paired", "rna_only", "atac_only")


def require_scvi():
    """Import scvi-tools.

    Returns
    -------
    module
        The ``scvi`` module.

    Raises
    ------
    ImportError
        With the install command, when scvi-tools is not installed.
    """
    try:
        import scvi
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return scvi


def leiden_matched(latent: np.ndarray, n_clusters: int, *, seed: int = 0, n_neighbors: int = 15, max_iter: int = 40):
    """Leiden clusters of ``latent`` with the resolution bisected to give ``n_clusters``.

    Parameters
    ----------
    latent
        (n, d) coordinates.
    n_clusters
        Wanted number of clusters, in [1, n].
    seed
        Seed of the neighbour graph and of Leiden.
    n_neighbors
        Neighbours per cell (at most n - 1).
    max_iter
        Bisection steps.

    Returns
    -------
    labels : numpy.ndarray
        (n,) int cluster labels.
    resolution : float
        The resolution that gave them. If no resolution gives exactly ``n_clusters``
        within ``max_iter`` steps, the closest count seen is returned.
    """
    from ..initialization import leiden_labels, neighbour_graph

    latent = np.asarray(latent, dtype=np.float32)
    if n_clusters < 1 or n_clusters > len(latent):
        raise ValueError(f"n_clusters must be in [1, {len(latent)}], got {n_clusters}")
    graph = neighbour_graph(latent, n_neighbors=min(n_neighbors, len(latent) - 1), seed=seed)

    def run(res: float) -> np.ndarray:
        return leiden_labels(graph, res, seed=seed)

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


@dataclass
class MultiVIMetrics:
    """MultiVI's test metrics on the split (see :func:`multivi_metrics`).

    The fields but ``latent``, ``fit_latent`` and ``batched``, in this order, are the
    entries of ``metrics["multivi"]`` in ``metrics.json`` (:meth:`as_dict`);
    ``batch_1_minus_asw`` is written only when batches were given (``batched``). ``latent``
    is MultiVI's latent of the training cells, ``fit_latent`` that of the training and
    validation cells in the data's order.
    """

    version: str
    n_latent: int
    rna_rmse: float
    rna_mae: float
    atac_auprc: float
    atac_from_rna_auprc: float
    rna_from_atac_rmse: float
    rna_from_atac_mae: float
    rna_pearson: float
    rna_spearman: float
    atac_cell_auprc: float
    rna_from_atac_pearson: float
    rna_from_atac_spearman: float
    atac_from_rna_cell_auprc: float
    ari: float
    clusters: int
    leiden_resolution: float
    batch_1_minus_asw: float | None
    epochs: int
    train_seconds: float
    seconds_per_epoch: float
    latent: np.ndarray
    fit_latent: np.ndarray
    batched: bool

    def as_dict(self) -> dict[str, Any]:
        """Return the metrics, keyed by field name, in field order."""
        skip = {"latent", "fit_latent", "batched"} | (set() if self.batched else {"batch_1_minus_asw"})
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


@dataclass
class _Layout:
    """MultiVI's input: the fit cells, then the test cells three times (see ``_COPIES``)."""

    mdata: Any
    fit: np.ndarray  # rows of the data fitted (train + validation)
    test: np.ndarray  # rows of the data tested
    is_train_fit: np.ndarray  # (len(fit),) bool: a training cell
    external: list[np.ndarray]  # MultiVI's train / validation / test rows
    where: dict[str, np.ndarray]  # rows of each copy of the test cells


def _layout(data, split: np.ndarray, batches: np.ndarray | None, names: dict[str, str], hidden=None) -> _Layout:
    import anndata as ad
    import mudata as md
    import pandas as pd

    fit = np.flatnonzero(np.isin(split, ["train", "validation"]))
    test = np.flatnonzero(split == "test")
    parts = {"rna": [], "atac": []}
    for copy in ("fit", *_COPIES):
        rows = fit if copy == "fit" else test
        for m in ("rna", "atac"):
            a = data.mod[names[m]][rows].copy()
            off = (copy == "rna_only" and m == "atac") or (copy == "atac_only" and m == "rna")
            # a hidden modality is all zeros, which MultiVI reads as missing
            a.X = sp.csr_matrix(a.shape, dtype=np.float32) if off else sp.csr_matrix(a.X, dtype=np.float32)
            if copy == "fit" and hidden is not None:  # a mosaic: the fitted cells' hidden modalities
                a.X = (sp.diags((~hidden[rows, ("rna", "atac").index(m)]).astype(np.float32)) @ a.X).tocsr()
            a.obs = pd.DataFrame(index=[f"{o}|{copy}" for o in a.obs_names])
            parts[m].append(a)
    mods = {m: ad.concat(parts[m], merge="first") for m in parts}
    for m in mods:
        mods[m].var = data.mod[names[m]].var[[]].copy()
    mdata = md.MuData(mods)
    obs = pd.DataFrame(index=mods["rna"].obs_names)
    if batches is not None:
        obs["_batch"] = np.concatenate([batches[fit]] + [batches[test]] * 3).astype(str)
    if hidden is not None:  # MultiVI's batch key is then the modality each cell has, as its tutorial asks
        kind = np.where(hidden[fit, 1], "rna_only", np.where(hidden[fit, 0], "atac_only", "paired"))
        obs["_modality"] = np.concatenate([kind, *[np.full(len(test), c) for c in _COPIES]])
    mdata.obs = obs

    n_fit, n_test = len(fit), len(test)
    is_train_fit = split[fit] == "train"
    external = [np.flatnonzero(is_train_fit), np.flatnonzero(~is_train_fit), np.arange(n_fit, n_fit + 3 * n_test)]
    where = {c: np.arange(n_fit + i * n_test, n_fit + (i + 1) * n_test) for i, c in enumerate(_COPIES)}
    return _Layout(mdata, fit, test, is_train_fit, external, where)


def _train(scvi, layout: _Layout, *, batched: bool, seed: int, max_epochs: int | None, progress_bar: bool):
    """Train MultiVI; returns the model and its training seconds.

    In a mosaic the batch key is the modality each cell has and the batches, if any, are a
    categorical covariate (the set-up of MultiVI's tutorial for paired and unpaired cells).
    """
    scvi.settings.seed = seed
    mosaic = "_modality" in layout.mdata.obs
    batch_key = "_modality" if mosaic else ("_batch" if batched else None)
    scvi.model.MULTIVI.setup_mudata(
        layout.mdata,
        batch_key=batch_key,
        categorical_covariate_keys=["_batch"] if mosaic and batched else None,
        modalities={"rna_layer": "rna", "atac_layer": "atac"},
    )
    model = scvi.model.MULTIVI(layout.mdata, n_latent=N_LATENT)
    kw = {"datasplitter_kwargs": {"external_indexing": layout.external}, "enable_progress_bar": progress_bar}
    if max_epochs is not None:
        kw["max_epochs"] = max_epochs
    t0 = time.perf_counter()
    model.train(**kw)
    return model, time.perf_counter() - t0


def _prediction_metrics(model, layout: _Layout, x: dict[str, sp.csr_matrix]) -> dict[str, float]:
    """RNA RMSE / MAE and ATAC AUPRC of the three copies of the test cells."""
    from .heldout import prediction_metrics

    lib_rna = np.asarray(x["rna"].sum(axis=1)).ravel()

    def expression(copy):
        frac = model.get_normalized_expression(indices=layout.where[copy], return_numpy=True)
        return np.asarray(frac) * lib_rna[:, None]

    def accessibility(copy, cells: bool):
        return model.get_normalized_accessibility(
            indices=layout.where[copy], normalize_cells=cells, normalize_regions=True, return_numpy=True
        )

    atac = accessibility("paired", True)
    # the cell factor of the paired embedding, applied to the RNA-only prediction
    cell_factor = np.median(atac / np.maximum(accessibility("paired", False), 1e-30), axis=1)
    predicted = {
        "rna": expression("paired"),
        "atac": atac,
        "atac_from_rna": accessibility("rna_only", False) * cell_factor[:, None],
        "rna_from_atac": expression("atac_only"),
    }
    scores, _ = prediction_metrics(x, predicted)
    return scores


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
    hidden: np.ndarray | None = None,
) -> MultiVIMetrics:
    """Train MultiVI on ``split`` and compute multidgd's test metrics for it.

    Parameters
    ----------
    data
        MuData with raw counts in ``X`` of ``rna_mod`` and ``atac_mod``.
    split
        (n,) train / validation / test labels.
    cell_types
        (n,) cell types (ARI of the training cells).
    batches
        (n,) batches, MultiVI's batch key and the 1 - ASW labels; None for none.
    seed
        scvi-tools' seed and the Leiden seed.
    rna_mod, atac_mod
        Modality names.
    max_epochs
        Epoch cap; None keeps MultiVI's default.
    progress_bar
        Show MultiVI's progress bar.
    hidden
        (n, 2) bool, columns RNA and ATAC: the modality is hidden from MultiVI in the
        training and validation cells (a mosaic; its counts set to zero, which MultiVI reads
        as missing; its batch key becomes the modality a cell has, ``batches`` a categorical
        covariate). None: every fitted cell paired. Test cells are unaffected.

    Returns
    -------
    MultiVIMetrics
    """
    scvi = require_scvi()
    from ..metrics import ari, batch_1_minus_asw

    split = np.asarray(split, dtype=object)
    names = {"rna": rna_mod, "atac": atac_mod}
    if hidden is not None:
        hidden = np.asarray(hidden, dtype=bool)
        if hidden.shape != (len(split), 2) or hidden.all(axis=1).any():
            raise ValueError("hidden must be (n_cells, 2) bool and leave every cell a modality")
    layout = _layout(data, split, batches, names, hidden)
    model, train_seconds = _train(
        scvi, layout, batched=batches is not None, seed=seed, max_epochs=max_epochs, progress_bar=progress_bar
    )
    epochs = len(model.history["train_loss"])
    x = {m: sp.csr_matrix(data.mod[names[m]].X[layout.test], dtype=np.float32) for m in ("rna", "atac")}
    predictions = _prediction_metrics(model, layout, x)

    fit_latent = model.get_latent_representation(indices=np.arange(len(layout.fit)))
    latent = fit_latent[layout.is_train_fit]
    train_types = np.asarray(cell_types)[layout.fit][layout.is_train_fit]
    labels, res = leiden_matched(latent, len(np.unique(train_types)), seed=seed)
    asw = None
    if batches is not None:
        b = np.asarray(batches)[layout.fit][layout.is_train_fit]
        asw = batch_1_minus_asw(latent, b) if len(np.unique(b)) > 1 else None
    return MultiVIMetrics(
        version=scvi.__version__,
        n_latent=N_LATENT,
        **predictions,
        ari=ari(train_types, labels),
        clusters=int(len(np.unique(labels))),
        leiden_resolution=res,
        batch_1_minus_asw=asw,
        epochs=int(epochs),
        train_seconds=train_seconds,
        seconds_per_epoch=train_seconds / max(epochs, 1),
        latent=latent,
        fit_latent=fit_latent,
        batched=batches is not None,
    )
