"""Figures of the tables and evaluations."""

from __future__ import annotations

import numpy as np
import pandas as pd

from multidgd import analysis


def test_plots_write_pngs(trained, tmp_path):
    model, data = trained
    table = analysis.gene2peak(model, data, genes=["g0", "g1"], progress_bar=False)
    assert analysis.plot_gene2peak(table, tmp_path / "top.png").stat().st_size > 1000
    tss = pd.DataFrame({"chrom": ["chr1"], "tss": [1_001], "strand": ["+"], "gene_id": ["X"], "gene_name": ["g0"]})
    profile = analysis.tss_profile(table, data.mod["atac"].var_names, tss, window=2_000, bin_size=500)
    assert profile[profile["set"] == "silenced"]["n_pairs"].sum() > 0
    assert analysis.plot_tss_profile(profile, tmp_path / "tss.png").stat().st_size > 1000
    motif = pd.DataFrame(
        {"g0": np.arange(60) % 3 == 0, "OTHER": np.arange(60) % 3 == 1}, index=data.mod["atac"].var_names
    )
    result = analysis.motif_enrichment(table.assign(mean_delta=table["mean_delta"]), motif)
    assert len(result) == 1 and result["n_motif_peaks"].iloc[0] == 20
    assert analysis.plot_motif_enrichment(result, tmp_path / "motif.png").stat().st_size > 1000
