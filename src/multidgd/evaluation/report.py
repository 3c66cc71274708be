"""The rows, figures and markdown of an evaluation report (``report.md`` of ``multidgd evaluate``).

:data:`REPORT_ROWS` is the one list of report rows: ``report.md`` of one run and the
summary over seeds (``benchmarks/summarize_evaluations.py``) both take theirs from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ReportRow", "REPORT_ROWS", "report_rows", "format_value", "report_markdown", "draw_figures"]


@dataclass(frozen=True)
class ReportRow:
    """One metric of the report table.

    Attributes
    ----------
    label
        Row label.
    key
        multidgd's key in ``metrics.json``.
    baseline
        Key of the average-profile baseline's value, if any.
    multivi
        Key in ``metrics["multivi"]``, if MultiVI has the metric.
    better
        ``"lower"``, ``"higher"``, ``"near 1"`` or empty.
    shown_in
        Where the row appears: ``"report"`` (``report.md`` of one run) and/or
        ``"summary"`` (mean and sd over seeds).
    """

    label: str
    key: str
    baseline: str | None
    multivi: str | None
    better: str
    shown_in: tuple[str, ...] = ("report", "summary")


REPORT_ROWS: tuple[ReportRow, ...] = (
    ReportRow("RNA RMSE (test, counts)", "rna_rmse", "baseline_rna_rmse", "rna_rmse", "lower"),
    ReportRow("RNA MAE (test, counts)", "rna_mae", "baseline_rna_mae", "rna_mae", "lower"),
    ReportRow("ATAC AUPRC (test)", "atac_auprc", "baseline_atac_auprc", "atac_auprc", "higher"),
    ReportRow("RNA RMSE from ATAC only", "rna_from_atac_rmse", "baseline_rna_rmse", "rna_from_atac_rmse", "lower"),
    ReportRow(
        "ATAC AUPRC from RNA only", "atac_from_rna_auprc", "baseline_atac_auprc", "atac_from_rna_auprc", "higher"
    ),
    ReportRow("RNA Pearson per cell (log1p, test)", "rna_pearson", "baseline_rna_pearson", "rna_pearson", "higher"),
    ReportRow("RNA Spearman per cell (test)", "rna_spearman", "baseline_rna_spearman", "rna_spearman", "higher"),
    ReportRow("ATAC AUPRC per cell (test)", "atac_cell_auprc", "baseline_atac_cell_auprc", "atac_cell_auprc", "higher"),
    ReportRow(
        "RNA Pearson per cell from ATAC only",
        "rna_from_atac_pearson",
        "baseline_rna_pearson",
        "rna_from_atac_pearson",
        "higher",
    ),
    ReportRow(
        "RNA Spearman per cell from ATAC only",
        "rna_from_atac_spearman",
        "baseline_rna_spearman",
        "rna_from_atac_spearman",
        "higher",
    ),
    ReportRow(
        "ATAC AUPRC per cell from RNA only",
        "atac_from_rna_cell_auprc",
        "baseline_atac_cell_auprc",
        "atac_from_rna_cell_auprc",
        "higher",
    ),
    ReportRow("test NLL per cell, RNA", "nll_rna", None, None, "lower"),
    ReportRow("test NLL per cell, ATAC", "nll_atac", None, None, "lower"),
    ReportRow("ARI clusters vs cell types (train)", "ari", None, None, "higher"),
    ReportRow("ARI, Leiden with matched cluster count (train)", "ari_leiden", None, "ari", "higher"),
    ReportRow("batch 1 - ASW (train latent)", "batch_1_minus_asw", None, "batch_1_minus_asw", "higher"),
    # one run's optional experiment: not averaged over seeds
    ReportRow("unseen batch loss ratio, naive", "holdout_loss_ratio_naive", None, None, "near 1", ("report",)),
    ReportRow("unseen batch loss ratio, learned", "holdout_loss_ratio_learned", None, None, "near 1", ("report",)),
    ReportRow("epochs", "epochs", None, "epochs", ""),
    ReportRow("seconds per epoch", "seconds_per_epoch", None, "seconds_per_epoch", ""),
    ReportRow("training seconds", "train_seconds", None, "train_seconds", "", ("summary",)),
)


def report_rows(where: str) -> list[ReportRow]:
    """Select the rows of :data:`REPORT_ROWS` shown in ``where`` (``"report"`` or ``"summary"``).

    Parameters
    ----------
    where
        ``"report"`` or ``"summary"``.

    Returns
    -------
    list of ReportRow
    """
    if where not in ("report", "summary"):
        raise ValueError(f"where must be 'report' or 'summary', got {where!r}")
    return [row for row in REPORT_ROWS if where in row.shown_in]


def format_value(v) -> str:
    """Format a metric as written in ``report.md``: empty for None, 4 significant digits for floats.

    Parameters
    ----------
    v
        The value.

    Returns
    -------
    str
    """
    return "" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))


def _header(metrics: dict[str, Any]) -> list[str]:
    return [
        f"# multidgd evaluation: {metrics.get('data', '')}",
        "",
        f"Seed {metrics['seed']}; {metrics['cells_train']} training, {metrics['cells_validation']} validation, "
        f"{metrics['cells_test']} test cells. {metrics['epochs']} epochs (best {metrics['best_epoch']}), "
        f"{metrics['seconds_per_epoch']:.3g} s per epoch, {metrics['total_seconds']:.0f} s in all, "
        f"peak memory {metrics['peak_rss_mb']:.0f} MB; {metrics['components_used']} of "
        f"{metrics['components']} mixture components used.",
        "",
    ]


def _metric_table(metrics: dict[str, Any]) -> list[str]:
    mv = metrics.get("multivi")
    lines = [
        "| metric | multidgd | " + ("MultiVI | " if mv else "") + "average-profile baseline | better |",
        "|---|---|" + ("---|" if mv else "") + "---|---|",
    ]
    for row in report_rows("report"):
        mv_val = mv.get(row.multivi) if mv and row.multivi else None
        if metrics.get(row.key) is None and mv_val is None:
            continue
        cells = [row.label, format_value(metrics.get(row.key))] + ([format_value(mv_val)] if mv else [])
        cells += [format_value(metrics.get(row.baseline)) if row.baseline else "", row.better]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Baseline: every test cell predicted as the pooled training profile times its library size."]
    if mv:
        lines += [
            f"MultiVI: scvi-tools {mv['version']}, n_latent {mv['n_latent']}, its defaults otherwise; "
            "ARI from Leiden on its latent with the cluster count matched to the number of cell types; "
            "its likelihoods differ from multidgd's, so no NLL is given for it."
        ]
    return lines


def _fraction_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "| fraction of training cells | training cells | test NLL ratio | RNA | ATAC |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['train_fraction']:g} | {r['cells_train']} | {format_value(r['loss_ratio'])} | "
            f"{format_value(r['loss_ratio_rna'])} | {format_value(r['loss_ratio_atac'])} |"
        )
    return lines


def _certainty_lines(table) -> list[str]:
    lines = [
        "",
        "Predictions from one modality by certainty bin (1 = least sure; `certainty.csv`):",
        "",
        "| prediction | metric | bin | cells | certainty | multidgd | average profile |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.prediction} | {r.metric} | {r.bin} | {r.cells} | {r.certainty:.3f} | "
            f"{format_value(r.model)} | {format_value(r.baseline)} |"
        )
    return lines


def _scib_lines(scib: dict[str, dict[str, float]]) -> list[str]:
    """The scIB table: one column per latent, one row per metric (unscaled)."""
    names = list(scib)
    metrics = list(next(iter(scib.values())))
    lines = ["", "## scIB metrics (training cells, scib-metrics, unscaled)", ""]
    lines.append("| metric | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for m in metrics:
        lines.append(f"| {m} | " + " | ".join(f"{scib[n].get(m, float('nan')):.3f}" for n in names) + " |")
    return lines


def report_markdown(metrics: dict[str, Any], figures: list[str], certainty=None) -> str:
    """Compose the text of ``report.md``.

    Parameters
    ----------
    metrics
        The metrics of one run, as written to ``metrics.json``.
    figures
        File names of the figures, linked at the end.
    certainty
        :func:`~multidgd.evaluation.certainty_table` of the test cells, if any.

    Returns
    -------
    str
    """
    lines = _header(metrics) + _metric_table(metrics)
    if metrics.get("data_fraction"):
        lines += _fraction_table(metrics["data_fraction"])
    if certainty is not None:
        lines += _certainty_lines(certainty)
    if metrics.get("scib"):
        lines += _scib_lines(metrics["scib"])
    lines.append("")
    lines += [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def draw_figures(
    out: Path,
    model,
    *,
    latent: np.ndarray,
    clusters: np.ndarray,
    is_train: np.ndarray,
    cell_types: np.ndarray,
    batches: np.ndarray | None,
    batch_key: str | None,
    seed: int,
    holdout_figure: Path | None = None,
    fraction_rows: list[dict[str, Any]] = (),
) -> list[Path]:
    """Draw the figures of an evaluation into ``out``.

    Parameters
    ----------
    out
        Output directory.
    model
        The evaluated model (training curves, covariate space).
    latent, clusters, is_train
        Its basal latent, mixture cluster and training-cell mask per cell.
    cell_types, batches
        Labels per cell (``batches`` None without a batch key).
    batch_key
        The covariate drawn, if any.
    seed
        UMAP seed.
    holdout_figure
        Already drawn figure of the unseen-batch experiment, listed in order.
    fraction_rows
        ``metrics["data_fraction"]``; with more than one row the loss ratios are drawn.

    Returns
    -------
    list of pathlib.Path
        The figures, in report order.
    """
    from ..plotting import (
        plot_confusion,
        plot_history,
        plot_loss_ratios,
        plot_model_covariates,
        plot_umap,
        umap_coordinates,
    )

    figures = [plot_history(model.history, out / "training_curves.png", best_epoch=model.best_epoch)]
    ok = ~np.isnan(latent).any(axis=1)
    coords = umap_coordinates(latent[ok], seed=seed)
    colorings = {"cell type": cell_types[ok], "cluster": clusters[ok]}
    figures.append(plot_umap(coords, colorings, out / "umap.png", title="UMAP of the basal latent"))
    figures.append(plot_confusion(cell_types[is_train], clusters[is_train], out / "confusion.png"))
    if batch_key:
        figures.append(plot_model_covariates(model, batch_key, batches, out / f"covariate_{batch_key}.png"))
    if holdout_figure is not None:
        figures.append(holdout_figure)
    if len(fraction_rows) > 1:
        rows = sorted(fraction_rows, key=lambda r: r["train_fraction"])
        series = [("both", "loss_ratio"), ("RNA", "loss_ratio_rna"), ("ATAC", "loss_ratio_atac")]
        figures.append(
            plot_loss_ratios(
                [r["train_fraction"] for r in rows],
                {lab: [r[key] for r in rows] for lab, key in series},
                out / "data_fraction.png",
                xlabel="fraction of training cells",
                title="data efficiency (reference: all training cells)",
                log_x=True,
            )
        )
    return figures
