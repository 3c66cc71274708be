"""Held-out evaluation as the multiDGD paper measures it, behind ``multidgd evaluate``.

Modules
-------
heldout
    Splits (seeded, stratified), held-out metrics of a model, the unseen-batch and
    data-fraction experiments.
protocol
    :func:`run_evaluation`, the whole protocol as named steps.
report
    The report rows (:data:`REPORT_ROWS`, shared with the summary over seeds), figures
    and ``report.md``.
multivi
    MultiVI (scvi-tools, an optional extra imported only when used) on the same split.
"""

from .heldout import (
    SPLITS,
    FractionRow,
    HeldoutMetrics,
    HoldoutBatchResult,
    TrainedModel,
    TrainSettings,
    data_fraction_ratios,
    heldout_metrics,
    holdout_batch_ratios,
    read_split_csv,
    round_metric,
    single_modality,
    stratified_split,
    subsample_training,
    train_on_split,
)
from .multivi import INSTALL_HINT, MultiVIMetrics, leiden_matched, multivi_metrics, require_scvi
from .protocol import (
    EvaluationInputs,
    Experiments,
    ModelScores,
    MultiVIComparison,
    check_evaluation_inputs,
    compare_multivi,
    load_trained,
    run_evaluation,
    run_experiments,
    score_model,
    train_or_load,
)
from .report import REPORT_ROWS, ReportRow, draw_figures, format_value, report_markdown, report_rows

__all__ = [
    # heldout
    "SPLITS",
    "round_metric",
    "stratified_split",
    "read_split_csv",
    "subsample_training",
    "single_modality",
    "HeldoutMetrics",
    "heldout_metrics",
    "TrainSettings",
    "TrainedModel",
    "train_on_split",
    "HoldoutBatchResult",
    "holdout_batch_ratios",
    "FractionRow",
    "data_fraction_ratios",
    # protocol
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
    # report
    "ReportRow",
    "REPORT_ROWS",
    "report_rows",
    "format_value",
    "report_markdown",
    "draw_figures",
    # multivi
    "INSTALL_HINT",
    "require_scvi",
    "leiden_matched",
    "MultiVIMetrics",
    "multivi_metrics",
]
