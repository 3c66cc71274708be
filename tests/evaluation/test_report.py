"""report.md text and the one set of report rows shared with the summary over seeds."""

import importlib.util
from pathlib import Path

import pytest

from multidgd.evaluation import REPORT_ROWS, format_value, report_markdown, report_rows

METRICS = {
    "data": "x.h5mu",
    "seed": 3,
    "cells_train": 400,
    "cells_validation": 50,
    "cells_test": 50,
    "rna_rmse": 0.61234567,
    "rna_mae": 0.1,
    "atac_auprc": 0.0412,
    "nll_rna": 349.81,
    "nll_atac": 552.0,
    "baseline_rna_rmse": 0.9,
    "baseline_rna_mae": 0.16,
    "baseline_atac_auprc": 0.0375,
    "rna_from_atac_rmse": 0.92,
    "atac_from_rna_auprc": 0.039,
    "ari": 0.4,
    "components": 21,
    "components_used": 20,
    "batch_1_minus_asw": None,
    "epochs": 3,
    "best_epoch": 2,
    "seconds_per_epoch": 1.234,
    "train_seconds": 4.0,
    "holdout_loss_ratio_naive": 1.007,
    "data_fraction": [
        {
            "train_fraction": 0.5,
            "cells_train": 200,
            "loss_ratio": 1.05,
            "loss_ratio_rna": 1.04,
            "loss_ratio_atac": 1.06,
        },
        {"train_fraction": 1.0, "cells_train": 400, "loss_ratio": 1.0, "loss_ratio_rna": 1.0, "loss_ratio_atac": 1.0},
    ],
    "multivi": {
        "version": "1.4.2",
        "n_latent": 20,
        "rna_rmse": 0.99,
        "ari": 0.18,
        "batch_1_minus_asw": 1.03,
        "epochs": 2,
        "seconds_per_epoch": 19.3,
    },
    "ari_leiden": 0.35,
    "total_seconds": 12.6,
    "peak_rss_mb": 2813.2,
}

HEADER = (
    "# multidgd evaluation: x.h5mu\n\nSeed 3; 400 training, 50 validation, 50 test cells. 3 epochs (best 2), "
    "1.23 s per epoch, 13 s in all, peak memory 2813 MB; 20 of 21 mixture components used.\n\n"
)
BASELINE = "Baseline: every test cell predicted as the pooled training profile times its library size.\n"


def test_report_text_with_multivi_and_fractions():
    # as written by the evaluation before the report moved into its own module
    expected = (
        HEADER + "| metric | multidgd | MultiVI | average-profile baseline | better |\n|---|---|---|---|---|\n"
        "| RNA RMSE (test, counts) | 0.6123 | 0.99 | 0.9 | lower |\n"
        "| RNA MAE (test, counts) | 0.1 |  | 0.16 | lower |\n"
        "| ATAC AUPRC (test) | 0.0412 |  | 0.0375 | higher |\n"
        "| RNA RMSE from ATAC only | 0.92 |  | 0.9 | lower |\n"
        "| ATAC AUPRC from RNA only | 0.039 |  | 0.0375 | higher |\n"
        "| test NLL per cell, RNA | 349.8 |  |  | lower |\n"
        "| test NLL per cell, ATAC | 552 |  |  | lower |\n"
        "| ARI clusters vs cell types (train) | 0.4 |  |  | higher |\n"
        "| ARI, Leiden with matched cluster count (train) | 0.35 | 0.18 |  | higher |\n"
        "| batch 1 - ASW (train latent) |  | 1.03 |  | higher |\n"
        "| unseen batch loss ratio, naive | 1.007 |  |  | near 1 |\n"
        "| epochs | 3 | 2 |  |  |\n"
        "| seconds per epoch | 1.234 | 19.3 |  |  |\n\n" + BASELINE + "MultiVI: scvi-tools 1.4.2, n_latent 20, its "
        "defaults otherwise; ARI from Leiden on its latent with the cluster count matched to the number of cell "
        "types; its likelihoods differ from multidgd's, so no NLL is given for it.\n\n"
        "| fraction of training cells | training cells | test NLL ratio | RNA | ATAC |\n|---|---|---|---|---|\n"
        "| 0.5 | 200 | 1.05 | 1.04 | 1.06 |\n| 1 | 400 | 1 | 1 | 1 |\n\n![a.png](a.png)\n![b.png](b.png)\n"
    )
    assert report_markdown(METRICS, ["a.png", "b.png"]) == expected


def test_report_text_alone():
    metrics = {k: v for k, v in METRICS.items() if k not in ("multivi", "ari_leiden", "data_fraction")}
    del metrics["holdout_loss_ratio_naive"]
    expected = (
        HEADER + "| metric | multidgd | average-profile baseline | better |\n|---|---|---|---|\n"
        "| RNA RMSE (test, counts) | 0.6123 | 0.9 | lower |\n"
        "| RNA MAE (test, counts) | 0.1 | 0.16 | lower |\n"
        "| ATAC AUPRC (test) | 0.0412 | 0.0375 | higher |\n"
        "| RNA RMSE from ATAC only | 0.92 | 0.9 | lower |\n"
        "| ATAC AUPRC from RNA only | 0.039 | 0.0375 | higher |\n"
        "| test NLL per cell, RNA | 349.8 |  | lower |\n"
        "| test NLL per cell, ATAC | 552 |  | lower |\n"
        "| ARI clusters vs cell types (train) | 0.4 |  | higher |\n"
        "| epochs | 3 |  |  |\n"
        "| seconds per epoch | 1.234 |  |  |\n\n" + BASELINE + "\n"
    )
    assert report_markdown(metrics, []) == expected


def test_rows_and_values():
    assert format_value(None) == "" and format_value(0.123456) == "0.1235" and format_value(7) == "7"
    report, summary = report_rows("report"), report_rows("summary")
    assert {r.key for r in report} | {r.key for r in summary} == {r.key for r in REPORT_ROWS}
    assert "train_seconds" not in {r.key for r in report}
    assert "holdout_loss_ratio_naive" not in {r.key for r in summary}
    with pytest.raises(ValueError, match="where"):
        report_rows("paper")


def _summarize_script():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "summarize_evaluations.py"
    spec = importlib.util.spec_from_file_location("summarize_evaluations", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summary_over_seeds_uses_the_library_rows():
    runs = [dict(METRICS), {**METRICS, "seed": 4, "rna_rmse": 0.7, "multivi": {**METRICS["multivi"], "rna_rmse": 1.0}}]
    text, table = _summarize_script().summarize(runs)
    assert list(table) == [r.label for r in report_rows("summary")]
    assert table["RNA RMSE (test, counts)"]["multidgd"][0] == pytest.approx((0.61234567 + 0.7) / 2)
    assert table["RNA RMSE (test, counts)"]["multivi"][0] == pytest.approx(0.995)
    assert table["batch 1 - ASW (train latent)"]["multidgd"] is None
    assert "| training seconds | 4.0000 ± 0.0000 | – | – |  |" in text
