"""Evaluations of gene-to-peak tables with known answers: linked peaks, TSS profile, motifs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from multidgd import analysis


def test_link_enrichment_known_answer():
    table = pd.DataFrame(
        {
            "gene": ["a"] * 4 + ["b"] * 4,
            "peak": ["p1", "p2", "p3", "p4"] * 2,
            "group": "all",
            "mean_abs_delta": [4.0, 3.0, 2.0, 1.0, 1.0, 5.0, 2.0, 3.0],
        }
    )
    table.attrs["method"] = "silencing"
    links = pd.DataFrame({"gene": ["a", "b", "b"], "peak": ["p1", "p1", "p4"]})
    result = analysis.link_enrichment(table, links)
    per = result.per_gene.set_index("gene")
    assert per.loc["a", "auprc"] == pytest.approx(1.0)
    # b: ranking p2 (5), p4 (3, linked), p3 (2), p1 (1, linked): AP = (1/2 + 2/4) / 2
    assert per.loc["b", "auprc"] == pytest.approx(0.5)
    assert per.loc["a", "mean_linked"] == 4.0 and per.loc["a", "mean_other"] == 2.0
    assert per.loc["b", "mean_linked"] == 2.0 and per.loc["b", "mean_other"] == 3.5
    assert result.summary["n_linked_higher"] == 1 and result.summary["mean_prevalence"] == pytest.approx(0.375)
    with pytest.raises(ValueError, match="score column"):
        analysis.link_enrichment(table, links, score="rho")


def _table(scores: dict[str, dict[str, float]]) -> pd.DataFrame:
    rows = [(g, p, v) for g, per in scores.items() for p, v in per.items()]
    table = pd.DataFrame(rows, columns=["gene", "peak", "mean_abs_delta"])
    table["group"] = "all"
    table.attrs["method"] = "silencing"
    return table


def test_tss_profile_known_answer():
    # gene A: TSS 10,001 on + (base 10,000); gene B: TSS 50,000 on - (base 49,999)
    tss = pd.DataFrame(
        {"chrom": ["chr1", "chr1"], "tss": [10_001, 50_000], "strand": ["+", "-"], "gene_id": ["A", "B"]}
    )
    tss["gene_name"] = tss["gene_id"]
    peaks = ["chr1:9800-10200", "chr1:11800-11900", "chr1:7000-7100", "chr1:51000-51100", "chr2:10000-10100"]
    scores = {
        "A": dict(zip(peaks, [8.0, 4.0, 2.0, 1.0, 5.0], strict=True)),
        "B": dict(zip(peaks, [1.0, 1.0, 1.0, 6.0, 1.0], strict=True)),
    }
    profile = analysis.tss_profile(_table(scores), peaks, tss, window=3_000, bin_size=1_000, n_control=1)
    sil = profile[profile["set"] == "silenced"].set_index("bin_start")
    ctl = profile[profile["set"] == "control"].set_index("bin_start")
    # A: overlap (0) -> bin [0, 1000); +1,800 downstream -> [1000, 2000); -2,900 -> [-3000, -2000)
    # B (minus strand): peak at 51,000 is 1,001 bases upstream -> [-2000, -1000)
    mean_a, mean_b = np.mean([8, 4, 2, 1, 5]), np.mean([1, 1, 1, 6, 1])
    assert sil.loc[0, "mean_score"] == 8.0 and sil.loc[1000, "mean_score"] == 4.0
    assert sil.loc[-3000, "mean_score"] == 2.0 and sil.loc[-2000, "mean_score"] == 6.0
    assert sil.loc[0, "mean_relative"] == pytest.approx(8 / mean_a)
    assert sil.loc[-2000, "mean_relative"] == pytest.approx(6 / mean_b)
    assert sil["n_pairs"].sum() == 4 and sil.loc[-1000, "n_pairs"] == 0
    # control: the other gene's scores at the same peaks
    assert ctl.loc[0, "mean_score"] == 1.0 and ctl.loc[-2000, "mean_score"] == 1.0
    assert ctl.loc[0, "mean_relative"] == pytest.approx(1 / mean_b)
    assert profile.attrs["genes_with_peaks_in_window"] == ["A", "B"]


def test_motif_enrichment_known_answer():
    from scipy.stats import ttest_ind

    peaks = [f"chr1:{100 * i}-{100 * i + 50}" for i in range(10)]
    fos_scores = [0.5, 0.4, 0.3, -0.1, -0.2, -0.3, 0.0, 0.9, 0.1, -0.5]
    table = _table({"FOS": dict(zip(peaks, fos_scores, strict=True)), "SOX2": dict.fromkeys(peaks, 0.1)})
    table["mean_delta"] = table["mean_abs_delta"]
    motifs = pd.DataFrame(False, index=peaks, columns=["FOS::JUN", "CTCF"])
    motifs.iloc[0:3, 0] = True  # FOS motif peaks 0-2
    motifs.iloc[3:6, 1] = True  # other motif peaks 3-5 (exactly as many: all are drawn)
    result = analysis.motif_enrichment(table, motifs).set_index("gene")
    assert list(result.index) == ["FOS"]  # SOX2 has no motif
    row = result.loc["FOS"]
    assert row["motifs"] == "FOS::JUN" and row["n_motif_peaks"] == 3 and row["n_random_peaks"] == 3
    assert row["frac_closing_motif"] == 1.0 and row["frac_closing_random"] == 0.0
    expected = ttest_ind([0.5, 0.4, 0.3], [-0.1, -0.2, -0.3], equal_var=False)
    assert row["t"] == pytest.approx(expected.statistic) and row["p"] == pytest.approx(expected.pvalue)
    with pytest.raises(TypeError, match="MotifMatches"):
        analysis.motif_enrichment(table, motifs.to_numpy())


def test_grouped_tables_give_every_group(tmp_path):
    """Without group=, a table of several groups (gene2peak(groupby=...)) is analysed group by group."""
    peaks = [f"chr1:{100 * i}-{100 * i + 50}" for i in range(6)]
    one = _table({"a": dict(zip(peaks, [6.0, 5.0, 1.0, 1.0, 1.0, 1.0], strict=True)), "b": dict.fromkeys(peaks, 2.0)})
    two = _table({"a": dict(zip(peaks, [1.0, 1.0, 1.0, 1.0, 5.0, 6.0], strict=True)), "b": dict.fromkeys(peaks, 2.0)})
    one["group"], two["group"] = "T", "B"
    grouped = pd.concat([one, two], ignore_index=True)
    grouped.attrs["method"] = "silencing"
    links = pd.DataFrame({"gene": ["a", "a"], "peak": peaks[:2]})
    result = analysis.link_enrichment(grouped, links)
    per = result.per_gene.set_index(["group", "gene"])
    assert per.loc[("T", "a"), "auprc"] == pytest.approx(1.0)
    assert per.loc[("B", "a"), "auprc"] == pytest.approx(analysis.link_enrichment(two, links).per_gene["auprc"].iloc[0])
    assert set(result.summary["groups"]) == {"T", "B"}
    assert result.summary["groups"]["T"] == analysis.link_enrichment(one, links).summary
    tss = pd.DataFrame({"chrom": ["chr1"], "tss": [101], "strand": ["+"], "gene_id": ["a"], "gene_name": ["a"]})
    profile = analysis.tss_profile(grouped, peaks, tss, window=1_000, bin_size=100, n_control=1)
    for g, part in (("T", one), ("B", two)):
        alone = analysis.tss_profile(part, peaks, tss, window=1_000, bin_size=100, n_control=1)
        got = profile[profile["group"] == g].drop(columns="group").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, alone.reset_index(drop=True), check_dtype=False)
    assert set(profile.attrs["groups"]) == {"T", "B"}
    with pytest.raises(ValueError, match="not in the table"):
        analysis.link_enrichment(grouped, links, group="X")
