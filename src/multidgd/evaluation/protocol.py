"""The paper's held-out protocol behind ``multidgd evaluate``: :func:`run_evaluation`.

Steps, each returning a small dataclass: check the inputs (:class:`EvaluationInputs`) ->
train on the split or load a saved model (:class:`~.heldout.TrainedModel`) -> held-out
metrics (:class:`~.heldout.HeldoutMetrics`) and clustering scores (:class:`ModelScores`) ->
unseen batch (:class:`~.heldout.HoldoutBatchResult`) -> data fractions
(:class:`~.heldout.FractionRow`) -> MultiVI (:class:`MultiVIComparison`) -> ``metrics.json``,
figures and ``report.md`` (:mod:`.report`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .heldout import (
    SPLITS,
    HoldoutBatchResult,
    TrainedModel,
    TrainSettings,
    data_fraction_ratios,
    heldout_metrics,
    holdout_batch_ratios,
    round_metric,
    stratified_split,
    train_on_split,
)

__all__ = [
    "EvaluationInputs",
    "check_evaluation_inputs",
    "load_trained",
    "train_or_load",
    "ModelScores",
    "score_model",
    "MultiVIComparison",
    "compare_multivi",
    "Experiments",
    "run_experiments",
    "run_evaluation",
    "scib_of_latents",
]


@dataclass
class EvaluationInputs:
    """Checked inputs of an evaluation: labels per cell, the split and the experiments."""

    obs_names: pd.Index
    cell_types: np.ndarray
    batches: np.ndarray | None
    split: np.ndarray
    fractions: list[float]
    compare: list[str]
    scib: bool = False


def _labels(data, key: str, obs_names: pd.Index) -> np.ndarray:
    from ..data import obs_column

    try:
        return obs_column(data, key, obs_names).astype(str).to_numpy()
    except KeyError:
        raise ValueError(f"obs column {key!r} not found; available: {list(data.obs.columns)}") from None


def check_evaluation_inputs(
    data,
    *,
    cell_type_key: str,
    batch_key: str | None = None,
    split: np.ndarray | None = None,
    seed: int = 0,
    holdout_batch: str | None = None,
    train_fraction: float | list[float] | None = None,
    compare: list[str] | tuple[str, ...] = (),
    scib: bool = False,
) -> EvaluationInputs:
    """Check the arguments of :func:`run_evaluation` and read the labels.

    Parameters are those of :func:`run_evaluation`; without ``split`` the seeded stratified
    split (:func:`~.heldout.stratified_split`) is made. Raises ValueError (ImportError for
    ``compare=["multivi"]`` without scvi-tools) before anything is trained.

    Returns
    -------
    EvaluationInputs
    """
    obs_names = pd.Index(data.obs_names.astype(str))
    cell_types = _labels(data, cell_type_key, obs_names)
    batches = _labels(data, batch_key, obs_names) if batch_key else None
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
        from .multivi import require_scvi

        require_scvi()
    if scib:
        from .scib import require_scib

        if batches is None:
            raise ValueError("scib needs batch_key: the scIB batch-correction metrics compare batches")
        require_scib()
    split = stratified_split(cell_types, seed) if split is None else np.asarray(split, dtype=object)
    if len(split) != len(obs_names):
        raise ValueError(f"split has {len(split)} entries for {len(obs_names)} cells")
    for s in SPLITS:
        if not (split == s).any():
            raise ValueError(f"the split has no {s} cells")
    return EvaluationInputs(obs_names, cell_types, batches, split, fractions, compare, scib)


def load_trained(model_path, inputs: EvaluationInputs, seed: int) -> TrainedModel:
    """Load a saved model and check it was trained on these cells with this split.

    Parameters
    ----------
    model_path
        A ``model.pt``.
    inputs
        The cells and split of the evaluation.
    seed
        The evaluation's seed (for the error message).

    Returns
    -------
    TrainedModel
        The model; its training time is the sum of its recorded epoch times.
    """
    from ..model import DGD

    model = DGD.load(model_path)
    model_split = model.split.astype(str).replace("none", "other").to_numpy()
    same_cells = np.array_equal(np.asarray(model.obs_names).astype(str), inputs.obs_names.to_numpy())
    fitted = model_split != "other"
    if not same_cells or not np.array_equal(inputs.split[fitted].astype(str), model_split[fitted]):
        raise ValueError(
            f"{model_path}: not trained on these cells with this split (seed {seed}); "
            "give the data, --seed or --split-csv it was trained with"
        )
    return TrainedModel(model, float(sum(row["seconds"] for row in model.state.history)))


def train_or_load(data, inputs: EvaluationInputs, settings: TrainSettings, *, out: Path, model_path) -> TrainedModel:
    """Train on the split and save ``out/model.pt``, or load ``model_path`` (:func:`load_trained`).

    Parameters
    ----------
    data
        MuData of every cell.
    inputs
        Cells and split of the evaluation.
    settings
        How the model is trained.
    out
        Output directory of the trained model.
    model_path
        A saved model to evaluate instead (None: train).

    Returns
    -------
    TrainedModel
    """
    if model_path is not None:
        return load_trained(model_path, inputs, settings.seed)
    trained = train_on_split(data, inputs.split, settings)
    trained.model.save(out / "model.pt", overwrite=True)
    return trained


@dataclass
class ModelScores:
    """Clustering and batch mixing of a trained model's training cells, and the arrays used.

    ``as_dict`` gives the ``metrics.json`` entries ``ari`` (mixture clusters vs cell
    types), ``components``, ``components_used`` and ``batch_1_minus_asw`` (None without
    two batches).
    """

    is_train: np.ndarray
    latent: np.ndarray
    clusters: np.ndarray
    ari: float
    components: int
    components_used: int
    batch_1_minus_asw: float | None

    def as_dict(self) -> dict[str, Any]:
        """Return the scores, in ``metrics.json`` order."""
        keys = ("ari", "components", "components_used", "batch_1_minus_asw")
        return {k: getattr(self, k) for k in keys}


def score_model(model, cell_types: np.ndarray, batches: np.ndarray | None) -> ModelScores:
    """Mixture clusters vs cell types and 1 - ASW by batch on the model's training cells.

    Parameters
    ----------
    model
        A trained :class:`~multidgd.DGD`.
    cell_types, batches
        Labels per cell of the model (``batches`` may be None).

    Returns
    -------
    ModelScores
    """
    from ..metrics import ari, batch_1_minus_asw, components_used

    is_train = (model.split == "train").to_numpy()
    latent = model.get_latent_representation()
    clusters = model.cluster().labels
    mixing = None
    if batches is not None and len(np.unique(batches[is_train])) > 1:
        mixing = batch_1_minus_asw(latent[is_train], batches[is_train])
    return ModelScores(
        is_train=is_train,
        latent=latent,
        clusters=clusters,
        ari=ari(cell_types[is_train], clusters[is_train]),
        components=model.n_components,
        components_used=components_used(clusters[is_train], model.n_components),
        batch_1_minus_asw=mixing,
    )


@dataclass
class MultiVIComparison:
    """MultiVI's metrics and multidgd's latent clustered the same way (Leiden, matched count)."""

    multivi: Any
    ari_leiden: float

    def as_dict(self) -> dict[str, Any]:
        """Return the ``metrics.json`` entries ``multivi`` (floats rounded) and ``ari_leiden``."""
        return {
            "multivi": {k: round_metric(v) for k, v in self.multivi.as_dict().items()},
            "ari_leiden": self.ari_leiden,
        }


def compare_multivi(
    data, inputs: EvaluationInputs, scores: ModelScores, *, seed: int, max_epochs: int | None, progress_bar: bool
) -> MultiVIComparison:
    """Train MultiVI on the same split (:func:`~.multivi.multivi_metrics`) and cluster both latents alike.

    Parameters
    ----------
    data
        MuData of every cell.
    inputs
        Labels and split of the evaluation.
    scores
        multidgd's latent and training cells.
    seed
        MultiVI's and Leiden's seed.
    max_epochs
        MultiVI's epoch cap (None: its default).
    progress_bar
        Show MultiVI's progress bar.

    Returns
    -------
    MultiVIComparison
    """
    from ..metrics import ari
    from .multivi import leiden_matched, multivi_metrics

    mv = multivi_metrics(
        data,
        inputs.split,
        cell_types=inputs.cell_types,
        batches=inputs.batches,
        seed=seed,
        max_epochs=max_epochs,
        progress_bar=progress_bar,
    )
    is_train, cell_types = scores.is_train, inputs.cell_types
    labels, _ = leiden_matched(scores.latent[is_train], len(np.unique(cell_types[is_train])), seed=seed)
    return MultiVIComparison(mv, ari(cell_types[is_train], labels))


@dataclass
class Experiments:
    """The optional experiments of an evaluation: unseen batch, data fractions, MultiVI, scIB.

    ``fraction_rows`` are the :class:`~.heldout.FractionRow` s as written to
    ``metrics.json``; ``scib`` the table of :func:`scib_of_latents`; absent experiments are
    None (or no rows).
    """

    holdout: HoldoutBatchResult | None
    fraction_rows: list[dict[str, Any]]
    multivi: MultiVIComparison | None
    scib: dict[str, dict[str, float]] | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return the experiments' ``metrics.json`` entries, in file order."""
        out = {} if self.holdout is None else self.holdout.as_dict()
        if self.fraction_rows:
            last = self.fraction_rows[-1]
            out["data_fraction"] = self.fraction_rows
            out["train_fraction"] = last["train_fraction"]
            out["fraction_loss_ratio"] = last["loss_ratio"]
        if self.multivi is not None:
            out.update(self.multivi.as_dict())
        if self.scib is not None:
            out["scib"] = self.scib
        return out


def run_experiments(
    data,
    inputs: EvaluationInputs,
    *,
    test,
    reference,
    scores: ModelScores,
    settings: TrainSettings,
    holdout_batch: str | None,
    holdout_figure: Path,
    compare_max_epochs: int | None,
) -> Experiments:
    """Run the experiments asked for, in order: unseen batch, data fractions, MultiVI, scIB.

    Parameters
    ----------
    data
        MuData of every cell.
    inputs
        Labels, split, fractions and tools of the evaluation.
    test
        MuData of the test cells.
    reference
        :class:`~.heldout.HeldoutMetrics` of the evaluated model.
    scores
        Its latent and training cells.
    settings
        How the extra multidgd models are trained (MultiVI takes the seed and progress bar).
    holdout_batch
        The batch left out (None: no unseen-batch experiment).
    holdout_figure
        Where its covariate-space figure goes.
    compare_max_epochs
        MultiVI's epoch cap.

    Returns
    -------
    Experiments
    """
    shared = {"test": test, "reference": reference, "settings": settings}
    holdout = None
    if holdout_batch is not None:
        holdout = holdout_batch_ratios(
            data, inputs.split, inputs.batches, holdout_batch, figure=holdout_figure, **shared
        )
    cells_train = int(scores.is_train.sum())
    fractions = data_fraction_ratios(
        data, inputs.split, inputs.cell_types, inputs.fractions, cells_train=cells_train, **shared
    )
    multivi = None
    if "multivi" in inputs.compare:
        kw = {"seed": settings.seed, "max_epochs": compare_max_epochs, "progress_bar": settings.progress_bar}
        multivi = compare_multivi(data, inputs, scores, **kw)
    experiments = Experiments(holdout, [row.as_dict() for row in fractions], multivi)
    if inputs.scib:
        experiments.scib = scib_of_latents(data, inputs, scores, experiments, seed=settings.seed)
    return experiments


def scib_of_latents(data, inputs: EvaluationInputs, scores: ModelScores, experiments: Experiments, *, seed: int):
    """ScIB metrics of the training cells' latents: multidgd's, the plain PCA's, MultiVI's when compared.

    Returns
    -------
    dict
        Embedding -> metric -> value, rounded (:func:`~.scib.scib_scores`).
    """
    from ..data import read_multiome
    from .scib import PLAIN, plain_embedding, scib_scores

    is_train = scores.is_train
    counts = read_multiome(data)
    rows = counts.obs_names.get_indexer(inputs.obs_names[is_train])
    if (rows < 0).any():
        raise ValueError("every training cell needs counts in both modalities for the plain PCA of the scIB table")
    embeddings = {"multidgd": scores.latent[is_train], PLAIN: plain_embedding(counts, rows, seed=seed)}
    if experiments.multivi is not None:
        embeddings["multivi"] = experiments.multivi.multivi.latent
    table = scib_scores(embeddings, inputs.cell_types[is_train], inputs.batches[is_train], pre_integrated=PLAIN)
    return {name: {k: round_metric(v) for k, v in row.items()} for name, row in table.items()}


def _write_outputs(out: Path, metrics, model, inputs, scores, experiments, settings, held=None) -> None:
    """Write ``metrics.json``, the per-cell and certainty tables, the figures and ``report.md``."""
    import json

    from ..plotting import plot_certainty
    from .heldout import certainty_table
    from .report import draw_figures, report_markdown

    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    certainty = None
    if held is not None and held.per_cell is not None:
        held.per_cell.to_csv(out / "per_cell.csv", index_label="cell")
        certainty = certainty_table(held.per_cell)
        certainty.to_csv(out / "certainty.csv", index=False)
    figures = draw_figures(
        out,
        model,
        latent=scores.latent,
        clusters=scores.clusters,
        is_train=scores.is_train,
        cell_types=inputs.cell_types,
        batches=inputs.batches,
        batch_key=settings.batch_key,
        seed=settings.seed,
        holdout_figure=None if experiments.holdout is None else experiments.holdout.figure,
        fraction_rows=experiments.fraction_rows,
    )
    if certainty is not None:
        figures.append(plot_certainty(certainty, out / "certainty.png", title="test cells by prediction certainty"))
    (out / "report.md").write_text(report_markdown(metrics, [Path(f).name for f in figures], certainty))


def _base_metrics(source: str, seed: int, trained: TrainedModel, split: np.ndarray, held, scores) -> dict[str, Any]:
    """Collect the ``metrics.json`` entries of the evaluated model, in file order."""
    model = trained.model
    return {
        "data": source,
        "seed": seed,
        "cells_train": int(scores.is_train.sum()),
        "cells_validation": int((model.split == "validation").sum()),
        "cells_test": int((split == "test").sum()),
        **held.as_dict(),
        **scores.as_dict(),
        **trained.training_metrics(),
    }


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
    scib: bool = False,
    config=None,
    model_path=None,
    device: str = "auto",
    progress_bar: bool = True,
    source: str = "",
) -> dict[str, Any]:
    """Train on the split, embed the test cells, compute every metric, write a report.

    Writes ``out/metrics.json``, ``out/report.md``, ``out/model.pt`` and figures.

    Parameters
    ----------
    data, out
        MuData of every cell, raw counts; the output directory.
    cell_type_key, batch_key
        ``obs`` columns of cell types (stratifies the split) and batches (the covariate).
    split
        (n,) train / validation / test labels; default: seeded 80/10/10 by cell type.
    seed, max_epochs
        Seed of the split and of training; epoch cap of every multidgd model.
    holdout_batch
        Also train without this batch and report the per-cell test NLL ratio of its cells
        (naive and learned) against the full model.
    train_fraction
        One value or several: also train on that stratified fraction of the training cells
        and report the test NLL ratio against the full model.
    compare, compare_max_epochs
        ``["multivi"]`` also trains MultiVI on the same split and reports the same metrics
        under ``metrics["multivi"]`` (needs the ``compare`` extra, see :mod:`.multivi`),
        with its epochs capped at ``compare_max_epochs`` (default: its own).
    scib
        Also report the scIB metrics of the training cells' latents (:func:`scib_of_latents`).
    config
        ``TrainConfig`` of every multidgd model trained here (default: defaults).
    model_path
        Evaluate this saved model (trained on this data with this split, e.g. the
        ``model.pt`` of an earlier run) instead of training one; its training time is the
        sum of its recorded epoch times.
    device, progress_bar, source
        Training and inference device; show training progress; the data's name in the report.

    Returns
    -------
    dict
        The metrics, as written to ``metrics.json``.
    """
    import resource

    out = Path(out)
    inputs = check_evaluation_inputs(
        data,
        cell_type_key=cell_type_key,
        batch_key=batch_key,
        split=split,
        seed=seed,
        holdout_batch=holdout_batch,
        train_fraction=train_fraction,
        compare=compare,
        scib=scib,
    )
    out.mkdir(parents=True, exist_ok=True)
    settings = TrainSettings(cell_type_key, batch_key, seed, max_epochs, device, progress_bar, config)
    t_start = time.perf_counter()
    trained = train_or_load(data, inputs, settings, out=out, model_path=model_path)
    test, train = data[inputs.split == "test"].copy(), data[inputs.split == "train"].copy()
    held = heldout_metrics(trained.model, test, train, device=device)
    scores = score_model(trained.model, inputs.cell_types, inputs.batches)
    metrics = _base_metrics(source, seed, trained, inputs.split, held, scores)
    experiments = run_experiments(
        data,
        inputs,
        test=test,
        reference=held,
        scores=scores,
        settings=settings,
        holdout_batch=holdout_batch,
        holdout_figure=out / "holdout_covariate_space.png",
        compare_max_epochs=compare_max_epochs,
    )
    metrics.update(experiments.as_dict())
    metrics["total_seconds"] = time.perf_counter() - t_start
    metrics["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    metrics = {k: round_metric(v) for k, v in metrics.items()}
    _write_outputs(out, metrics, trained.model, inputs, scores, experiments, settings, held)
    return metrics
