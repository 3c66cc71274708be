"""Held-out metrics as the multiDGD paper measures them (see ``multidgd.metrics``), and splits.

A seeded 80/10/10 split stratified by cell type; test cells are embedded paired, with
ATAC hidden and with RNA hidden, and compared with the average-profile baseline (each test
cell predicted as the pooled training profile times its own library size). The unseen-batch
and data-efficiency experiments compare the per-cell test NLL of a model trained on fewer
cells with that of the model trained on all training cells.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..data import MODALITIES, stratified_parts

__all__ = [
    "SPLITS",
    "round_metric",
    "stratified_split",
    "read_split_csv",
    "subsample_training",
    "single_modality",
    "HeldoutMetrics",
    "heldout_metrics",
    "prediction_metrics",
    "certainty_table",
    "TrainSettings",
    "TrainedModel",
    "train_on_split",
    "HoldoutBatchResult",
    "holdout_batch_ratios",
    "FractionRow",
    "data_fraction_ratios",
]

#: Split labels, in the order of :func:`stratified_split`'s fractions.
SPLITS = ("train", "validation", "test")


def round_metric(value: Any) -> Any:
    """Round a value as written to ``metrics.json``: floats to 5 decimals, others unchanged.

    Parameters
    ----------
    value
        Any value.

    Returns
    -------
    object
    """
    return round(value, 5) if isinstance(value, float) else value


def stratified_split(labels: np.ndarray, seed: int, fractions=(0.8, 0.1, 0.1)) -> np.ndarray:
    """Seeded train / validation / test labels, stratified by ``labels``.

    Parameters
    ----------
    labels
        (n,) class of every cell (compared as strings).
    seed
        Seed of the split.
    fractions
        Train, validation and test fractions (non-negative, summing to 1). Each class
        contributes ``round(f_train * size)`` training and ``round(f_val * size)``
        validation cells; the rest are test cells.

    Returns
    -------
    numpy.ndarray
        (n,) object array of ``"train"``, ``"validation"`` and ``"test"``.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {fractions}")
    labels = np.asarray(labels).astype(str)
    parts = stratified_parts(labels, lambda n: (int(round(fractions[0] * n)), int(round(fractions[1] * n))), seed=seed)
    return np.array(SPLITS, dtype=object)[parts]


def subsample_training(split: np.ndarray, strata: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Keep a seeded stratified ``fraction`` of the training cells of ``split``.

    Parameters
    ----------
    split
        (n,) object array of split labels.
    strata
        (n,) class of every cell; each class keeps ``max(1, round(fraction * size))`` of its
        training cells.
    fraction
        Fraction of the training cells kept, in (0, 1].
    seed
        Seed of the draw.

    Returns
    -------
    numpy.ndarray
        A copy of ``split`` with the training cells not kept marked ``"unused"``.
    """
    sub = split.copy()
    parts = stratified_parts(strata, lambda n: (max(1, int(round(fraction * n))),), seed=seed, among=split == "train")
    sub[parts == 1] = "unused"
    return sub


def read_split_csv(path, obs_names: pd.Index) -> np.ndarray:
    """Split labels from a CSV with columns ``obs_name,split``.

    Parameters
    ----------
    path
        CSV file; ``split`` is train, validation (or val) or test, any case.
    obs_names
        The cells of the data; each needs exactly one row.

    Returns
    -------
    numpy.ndarray
        (n,) object array of split labels aligned to ``obs_names``.
    """
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


def single_modality(mdata, name: str, library_of: str | None = None):
    """Copy modality ``name`` of ``mdata`` into a MuData of its own (the other one hidden).

    Parameters
    ----------
    mdata
        Paired MuData.
    name
        The modality kept.
    library_of
        If given, ``obs["_true_library"]`` holds the library sizes of this (hidden)
        modality, for predictions scaled by the true library size.

    Returns
    -------
    mudata.MuData
    """
    import mudata as md

    out = md.MuData({name: mdata.mod[name].copy()})
    out.obs = mdata.obs.copy()
    if library_of is not None:
        out.obs["_true_library"] = np.asarray(mdata.mod[library_of].X.sum(axis=1)).ravel()
    return out


@dataclass
class HeldoutMetrics:
    """Test metrics of one model (see :func:`heldout_metrics`).

    The scalar fields, in this order, are the metrics written to ``metrics.json``
    (:meth:`as_dict`); ``nll`` is the per-cell test NLL table (columns ``nll_rna``,
    ``nll_atac``) and ``embedding`` the paired embedding of the test cells.
    """

    test_cells: int
    embed_seconds: float
    rna_rmse: float
    rna_mae: float
    atac_auprc: float
    nll_rna: float
    nll_atac: float
    baseline_rna_rmse: float
    baseline_rna_mae: float
    baseline_atac_auprc: float
    atac_from_rna_auprc: float
    rna_from_atac_rmse: float
    rna_from_atac_mae: float
    rna_pearson: float
    rna_spearman: float
    atac_cell_auprc: float
    rna_from_atac_pearson: float
    rna_from_atac_spearman: float
    atac_from_rna_cell_auprc: float
    baseline_rna_pearson: float
    baseline_rna_spearman: float
    baseline_atac_cell_auprc: float
    nll: pd.DataFrame
    embedding: Any
    per_cell: pd.DataFrame | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the scalar metrics, keyed by field name, in field order."""
        skip = ("nll", "embedding", "per_cell")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


def prediction_metrics(x: dict[str, Any], predicted: dict[str, Any]) -> tuple[dict[str, float], pd.DataFrame]:
    """The paper's metrics and the per-cell ones of predictions of the test cells.

    Parameters
    ----------
    x
        ``{"rna": (n, G), "atac": (n, P)}`` observed counts.
    predicted
        Any of ``"rna"``, ``"atac"`` (paired), ``"rna_from_atac"``, ``"atac_from_rna"``:
        (n, F) predicted counts (or, for ATAC, scores).

    Returns
    -------
    The scalar metrics (flattened RMSE / MAE / AUPRC as the paper computes them; per-cell
    Pearson on log1p, Spearman and average precision, averaged over cells) and a table of
    the per-cell values (one row per cell).
    """
    from ..metrics import auprc, mae, per_cell_auprc, per_cell_correlation, per_cell_rmse, rmse

    out: dict[str, float] = {}
    cells: dict[str, np.ndarray] = {}
    for name, pred in predicted.items():
        m = name.split("_")[0]
        if m == "rna":
            out[f"{name}_rmse"] = rmse(x[m], pred)
            out[f"{name}_mae"] = mae(x[m], pred)
            for method in ("pearson", "spearman"):
                cells[f"{name}_{method}"] = per_cell_correlation(x[m], pred, method)
                out[f"{name}_{method}"] = float(np.nanmean(cells[f"{name}_{method}"]))
            cells[f"{name}_rmse"] = per_cell_rmse(x[m], pred)
        else:
            out[f"{name}_auprc"] = auprc(x[m], pred)
            cells[f"{name}_cell_auprc"] = per_cell_auprc(x[m], pred)
            out[f"{name}_cell_auprc"] = float(np.nanmean(cells[f"{name}_cell_auprc"]))
    return out, pd.DataFrame(cells)


def _baseline(x: dict, lib: dict, train, names: dict[str, str]) -> tuple[dict[str, float], pd.DataFrame]:
    """Average-profile baseline: the pooled training profile times each cell's library."""
    predicted = {}
    for m in MODALITIES:
        profile = np.asarray(_counts(train.mod[names[m]]).sum(axis=0)).ravel()
        predicted[m] = lib[m][:, None] * (profile / profile.sum())[None, :]
    scores, cells = prediction_metrics(x, predicted)
    return {f"baseline_{k}": v for k, v in scores.items()}, cells.add_prefix("baseline_")


def heldout_metrics(model, test, train, *, rna_mod: str = "rna", atac_mod: str = "atac", **infer_kw) -> HeldoutMetrics:
    """Embed ``test`` (a MuData of held-out cells) and compute the paper's test metrics.

    Parameters
    ----------
    model
        A trained :class:`~multidgd.DGD`.
    test
        MuData of the test cells, raw counts in ``X``.
    train
        MuData of the training cells; gives the average-profile baseline.
    rna_mod, atac_mod
        Modality names.
    **infer_kw
        Passed to :meth:`~multidgd.DGD.infer` (e.g. ``device``).

    Returns
    -------
    HeldoutMetrics
        RMSE / MAE of RNA, AUPRC of ATAC, mean per-cell NLL, the same for predictions from
        one modality only (scaled by the hidden modality's true library size), the baseline,
        the embedding time, the per-cell NLL table and the paired embedding.
    """
    names = {"rna": rna_mod, "atac": atac_mod}
    x = {m: _counts(test.mod[names[m]]) for m in MODALITIES}
    lib = {m: np.asarray(x[m].sum(axis=1)).ravel() for m in MODALITIES}
    kw = {"progress_bar": False, "rna_mod": rna_mod, "atac_mod": atac_mod, **infer_kw}

    t0 = time.perf_counter()
    emb = model.infer(test, **kw)
    embed_seconds = round(time.perf_counter() - t0, 2)
    predicted = {
        "rna": model.get_normalized_expression(emb, scale="counts", return_type="array"),
        "atac": model.get_normalized_accessibility(emb, scale="counts", return_type="array"),
    }
    baseline, baseline_cells = _baseline(x, lib, train, names)

    e_rna = model.infer(single_modality(test, rna_mod, atac_mod), atac_library_key="_true_library", **kw)
    predicted["atac_from_rna"] = model.get_normalized_accessibility(e_rna, scale="counts", return_type="array")
    e_atac = model.infer(single_modality(test, atac_mod, rna_mod), rna_library_key="_true_library", **kw)
    predicted["rna_from_atac"] = model.get_normalized_expression(e_atac, scale="counts", return_type="array")
    scores, cells = prediction_metrics(x, predicted)
    cells = pd.concat([cells, baseline_cells], axis=1)
    cells.index = emb.obs_names
    cells["certainty_from_rna"] = e_rna.prediction_certainty
    cells["certainty_from_atac"] = e_atac.prediction_certainty
    cells["certainty_paired"] = emb.prediction_certainty
    return HeldoutMetrics(
        test_cells=int(test.n_obs),
        embed_seconds=embed_seconds,
        nll_rna=float(emb.nll["nll_rna"].mean()),
        nll_atac=float(emb.nll["nll_atac"].mean()),
        **scores,  # every key a field; as_dict keeps the fields' order
        **baseline,
        nll=emb.nll,
        embedding=emb,
        per_cell=cells,
    )


#: What the certainty table compares, per prediction: (certainty column, per-cell metric of
#: the model, of the average-profile baseline, metric name).
_CERTAINTY_ROWS = (
    ("rna_from_atac", "certainty_from_atac", "rna_from_atac_pearson", "baseline_rna_pearson", "RNA Pearson per cell"),
    ("rna_from_atac", "certainty_from_atac", "rna_from_atac_rmse", "baseline_rna_rmse", "RNA RMSE per cell"),
    (
        "atac_from_rna",
        "certainty_from_rna",
        "atac_from_rna_cell_auprc",
        "baseline_atac_cell_auprc",
        "ATAC AUPRC per cell",
    ),
)


def certainty_table(per_cell: pd.DataFrame, n_bins: int = 10) -> pd.DataFrame:
    """Prediction quality of test cells by bins of the model's certainty.

    Parameters
    ----------
    per_cell
        :attr:`HeldoutMetrics.per_cell`.
    n_bins
        Equal-count bins of certainty (deciles by default), 1 = least sure.

    Returns
    -------
    DataFrame with one row per prediction, metric and bin: ``prediction``, ``metric``,
    ``bin``, ``cells``, ``certainty`` (mean), ``model`` and ``baseline`` (mean of the
    per-cell metric over the bin's cells).
    """
    rows = []
    for prediction, cert, model_col, base_col, metric in _CERTAINTY_ROWS:
        c = per_cell[cert].to_numpy()
        bins = pd.qcut(pd.Series(c).rank(method="first"), min(n_bins, len(c)), labels=False).to_numpy()
        for b in np.unique(bins):
            take = bins == b
            rows.append(
                {
                    "prediction": prediction,
                    "metric": metric,
                    "bin": int(b) + 1,
                    "cells": int(take.sum()),
                    "certainty": float(c[take].mean()),
                    "model": float(np.nanmean(per_cell[model_col].to_numpy()[take])),
                    "baseline": float(np.nanmean(per_cell[base_col].to_numpy()[take])),
                }
            )
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class TrainSettings:
    """How every multidgd model of an evaluation is trained.

    Attributes
    ----------
    cell_type_key
        ``obs`` column of cell types.
    batch_key
        ``obs`` column of batches, the model's one covariate (None: no covariate).
    seed
        Training seed.
    max_epochs
        Upper bound on epochs.
    device
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    progress_bar
        Show training progress.
    config
        :class:`~multidgd.TrainConfig` (None: defaults).
    """

    cell_type_key: str
    batch_key: str | None = None
    seed: int = 0
    max_epochs: int = 1000
    device: str = "auto"
    progress_bar: bool = True
    config: Any = None


@dataclass
class TrainedModel:
    """A model trained (or loaded) for an evaluation and its training time in seconds."""

    model: Any
    train_seconds: float

    def training_metrics(self) -> dict[str, Any]:
        """Return the ``metrics.json`` entries ``epochs``, ``best_epoch``, ``seconds_per_epoch``, ``train_seconds``."""
        return {
            "epochs": int(self.model.state.epoch),
            "best_epoch": int(self.model.best_epoch),
            "seconds_per_epoch": float(self.model.history["seconds"].median()),
            "train_seconds": self.train_seconds,
        }


def train_on_split(data, split: np.ndarray, settings: TrainSettings, **model_kw) -> TrainedModel:
    """Train a :class:`~multidgd.DGD` on the training cells of ``split``.

    Parameters
    ----------
    data
        MuData of every cell; not modified (a copy gets the split as an ``obs`` column).
    split
        (n,) split labels; validation cells are the model's validation set, the others
        (test, unused) are left out.
    settings
        Keys, seed, epochs, device and training configuration.
    **model_kw
        Passed to :class:`~multidgd.DGD`.

    Returns
    -------
    TrainedModel
    """
    from ..model import DGD

    data = data.copy()
    data.obs["_multidgd_split"] = split
    model = DGD(
        data,
        cell_type_key=settings.cell_type_key,
        covariate_keys=[settings.batch_key] if settings.batch_key else [],
        split_key="_multidgd_split",
        **model_kw,
    )
    t0 = time.perf_counter()
    model.train(
        max_epochs=settings.max_epochs,
        seed=settings.seed,
        device=settings.device,
        progress_bar=settings.progress_bar,
        config=settings.config,
    )
    return TrainedModel(model, time.perf_counter() - t0)


@dataclass
class HoldoutBatchResult:
    """Test NLL of an unseen batch's cells, relative to the model trained on every batch.

    ``loss_ratio_naive`` embeds them with the known classes only, ``loss_ratio_learned``
    with the batch learned as a new class (medians of per-cell ratios); ``figure`` is the
    covariate space of the model trained without the batch, with those cells added.
    """

    batch: str
    test_cells: int
    loss_ratio_naive: float
    loss_ratio_learned: float
    figure: Path

    def as_dict(self) -> dict[str, Any]:
        """Return the ``metrics.json`` entries ``holdout_batch``, ``holdout_test_cells`` and the ratios."""
        return {
            "holdout_batch": self.batch,
            "holdout_test_cells": self.test_cells,
            "holdout_loss_ratio_naive": self.loss_ratio_naive,
            "holdout_loss_ratio_learned": self.loss_ratio_learned,
        }


def holdout_batch_ratios(
    data,
    split: np.ndarray,
    batches: np.ndarray,
    batch: str,
    *,
    test,
    reference: HeldoutMetrics,
    settings: TrainSettings,
    figure: Path,
) -> HoldoutBatchResult:
    """Train without ``batch`` and compare its test cells' NLL with the full model's.

    Parameters
    ----------
    data
        MuData of every cell.
    split
        (n,) split labels of ``data``.
    batches
        (n,) batch of every cell.
    batch
        The batch left out.
    test
        MuData of the test cells (``data[split == "test"]``).
    reference
        Test metrics of the model trained on every batch.
    settings
        How the model is trained (``settings.batch_key`` is the covariate).
    figure
        PNG of the covariate space with the batch learned as a new class.

    Returns
    -------
    HoldoutBatchResult
    """
    from ..metrics import loss_ratio
    from ..plotting import plot_model_covariates

    keep = batches != batch
    model = train_on_split(data[keep].copy(), split[keep], settings).model
    obs_names = pd.Index(data.obs_names.astype(str))
    cells = test.obs_names.isin(obs_names[(batches == batch) & (split == "test")])
    held = test[cells].copy()
    ref = reference.nll.loc[held.obs_names].sum(axis=1)
    naive = model.infer(held, device=settings.device, progress_bar=False).nll.sum(axis=1)
    learned = model.infer(held, new_classes="learn", device=settings.device, progress_bar=False)
    result = HoldoutBatchResult(
        batch=batch,
        test_cells=int(cells.sum()),
        loss_ratio_naive=loss_ratio(naive, ref),
        loss_ratio_learned=loss_ratio(learned.nll.sum(axis=1), ref),
        figure=figure,
    )
    plot_model_covariates(
        model,
        settings.batch_key,
        batches[keep],
        figure,
        embedding=learned,
        embedding_labels=np.full(held.n_obs, batch),
        title=f"{settings.batch_key}: {batch} held out, then learned as a new class",
    )
    return result


@dataclass
class FractionRow:
    """Test NLL of a model trained on a fraction of the training cells, against all of them.

    Ratios are medians over the test cells of per-cell NLL ratios (both modalities, RNA,
    ATAC); 1 for the fraction 1.
    """

    train_fraction: float
    cells_train: int
    loss_ratio: float = 1.0
    loss_ratio_rna: float = 1.0
    loss_ratio_atac: float = 1.0

    def as_dict(self) -> dict[str, Any]:
        """Return the row as written to ``metrics.json`` (floats rounded to 5 decimals)."""
        return {f.name: round_metric(getattr(self, f.name)) for f in fields(self)}


def data_fraction_ratios(
    data,
    split: np.ndarray,
    cell_types: np.ndarray,
    fractions: list[float],
    *,
    test,
    reference: HeldoutMetrics,
    cells_train: int,
    settings: TrainSettings,
) -> list[FractionRow]:
    """Train on stratified fractions of the training cells; test NLL ratios to the full model.

    Parameters
    ----------
    data
        MuData of every cell; only training cells are subsampled.
    split
        (n,) split labels of ``data`` (``train`` cells are the ones subsampled).
    cell_types
        (n,) strata of the subsampling.
    fractions
        Fractions in (0, 1]; 1 gives a row of ratios 1 without training.
    test
        MuData of the test cells.
    reference
        Test metrics of the model trained on every training cell.
    cells_train
        Its number of training cells (the row of fraction 1).
    settings
        How the models are trained.

    Returns
    -------
    list of FractionRow
        One row per fraction, in the given order.
    """
    from ..metrics import loss_ratio

    rows = []
    for f in fractions:
        row = FractionRow(train_fraction=f, cells_train=cells_train)
        if f < 1:
            sub = subsample_training(split, cell_types, f, settings.seed)
            used = sub != "unused"
            model = train_on_split(data[used].copy(), sub[used], settings).model
            nll = model.infer(test, device=settings.device, progress_bar=False).nll
            row.cells_train = int((sub == "train").sum())
            row.loss_ratio = loss_ratio(nll.sum(axis=1), reference.nll.sum(axis=1))
            row.loss_ratio_rna = loss_ratio(nll["nll_rna"], reference.nll["nll_rna"])
            row.loss_ratio_atac = loss_ratio(nll["nll_atac"], reference.nll["nll_atac"])
        rows.append(row)
    return rows
