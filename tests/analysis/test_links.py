"""link_peaks: each score against a direct computation, the planted link, the table and refused input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.stats import norm, pearsonr, spearmanr
from sklearn.metrics import average_precision_score

from multidgd import analysis
from multidgd.analysis.links import (
    LINK_COLUMNS,
    background_peaks,
    background_z,
    pearson_matrix,
    spearman_matrix,
    standardise_rows,
)

from ..conftest import make_mudata


def _counts(seed=0, n=40, g=3, p=7):
    rng = np.random.default_rng(seed)
    a = rng.poisson(1.0, (n, g)).astype(float)
    b = rng.poisson(0.6, (n, p)).astype(float)
    b[:, 2] = 0.0  # a constant peak
    return a, b


def test_pearson_and_spearman_match_scipy():
    a, b = _counts()
    for other in (b, sp.csr_matrix(b)):
        r, rho = pearson_matrix(a, other), spearman_matrix(a, other)
        for i in range(a.shape[1]):
            for j in range(b.shape[1]):
                if j == 2:
                    assert np.isnan(r[i, j]) and np.isnan(rho[i, j])
                    continue
                assert r[i, j] == pytest.approx(pearsonr(a[:, i], b[:, j])[0], abs=1e-12)
                assert rho[i, j] == pytest.approx(spearmanr(a[:, i], b[:, j])[0], abs=1e-12)


def test_background_is_matched_and_z_matches_a_loop():
    rng = np.random.default_rng(1)
    n_peaks = 300
    stats = pd.DataFrame(
        {
            "accessibility": rng.gamma(1.0, 50.0, n_peaks),
            "length": rng.integers(100, 2000, n_peaks),
            "chrom": rng.choice(["chr1", "chr2", "chr3"], n_peaks),
        }
    )
    bg = background_peaks(stats, n_background=20, seed=0)
    assert bg.shape == (n_peaks, 20)
    np.testing.assert_array_equal(bg, background_peaks(stats, n_background=20, seed=0))

    def bins(col, k):  # equal-count bins, ties together, as documented
        return ((stats[col].rank(method="min").to_numpy() - 1) * k // n_peaks).astype(int)

    code = bins("accessibility", 10) * 5 + bins("length", 5)
    chrom = stats["chrom"].to_numpy()
    for p in range(n_peaks):
        if bg[p, 0] == -1:  # alone in its bin
            assert (code == code[p]).sum() == 1 and (bg[p] == -1).all()
            continue
        assert (code[bg[p]] == code[p]).all()
        others = (code == code[p]) & (chrom != chrom[p])
        if others.any():
            assert (chrom[bg[p]] != chrom[p]).all()
        else:
            assert (bg[p] != p).all()
    r = rng.uniform(-0.3, 0.3, (4, n_peaks))
    r[0, 5] = np.nan
    z = background_z(r, bg)
    for g in range(4):
        for p in range(n_peaks):
            if bg[p, 0] == -1:
                assert np.isnan(z[g, p])
                continue
            values = r[g, bg[p]]
            values = values[np.isfinite(values)]
            with np.errstate(divide="ignore", invalid="ignore"):
                expected = (r[g, p] - values.mean()) / values.std(ddof=1)
            if np.isfinite(expected):
                assert z[g, p] == pytest.approx(expected, rel=1e-10)
            else:
                assert np.isnan(z[g, p])


def test_baselines_match_direct_computations(trained):
    model, data = trained
    genes = ["g0", "g3"]
    spearman = analysis.link_peaks(None, data, genes=genes, method="spearman", top_n=None)
    old = analysis.spearman_gene2peak(data, genes=genes)
    merged = spearman.merge(old, on=["gene", "peak"])
    assert len(merged) == len(spearman) > 0
    np.testing.assert_allclose(merged["score"], merged["rho"], atol=1e-12)
    linkpeaks = analysis.link_peaks(None, data, genes=genes, method="linkpeaks", top_n=None, n_background=10)
    rna, atac = data["rna"].X.toarray().astype(np.float64), data["atac"].X.toarray().astype(np.float64)
    expr = np.log1p(rna / rna.sum(1, keepdims=True) * 1e4)
    row = linkpeaks.iloc[0]
    g, p = genes.index(row["gene"]), list(data["atac"].var_names).index(row["peak"])
    assert row["score"] == pytest.approx(pearsonr(expr[:, g], atac[:, p])[0], abs=1e-10)
    assert row["pvalue"] == pytest.approx(norm.sf(abs(row["z"])), rel=1e-10)
    assert linkpeaks["z"].notna().mean() > 0.9


def test_model_scores_match_the_decoded_profiles(trained):
    model, data = trained
    genes = ["g0", "g3"]
    decoded = analysis.link_peaks(model, data, genes=genes, method="decoded", top_n=None, batch_size=37)
    dg = model.get_normalized_expression(genes=genes, return_type="array")
    da = model.get_normalized_accessibility(return_type="array")
    peaks = list(model.var_names["atac"])
    for row in decoded.sample(20, random_state=0).itertuples():
        expected = pearsonr(dg[:, genes.index(row.gene)], da[:, peaks.index(row.peak)])[0]
        assert row.score == pytest.approx(expected, abs=1e-6)
    assert (decoded["n_cells"] == len(dg)).all()
    spearman = analysis.link_peaks(model, data, genes=genes, method="spearman", top_n=None)
    hybrid = analysis.link_peaks(model, data, genes=genes, method="hybrid", top_n=None)
    wide = {
        m: t.pivot(index="gene", columns="peak", values="score")[peaks].loc[genes].to_numpy()
        for m, t in (("spearman", spearman), ("decoded", decoded), ("hybrid", hybrid))
    }
    expected = (standardise_rows(wide["spearman"]) + standardise_rows(wide["decoded"])) / np.sqrt(2)
    np.testing.assert_allclose(wide["hybrid"], expected, atol=1e-9)
    silencing = analysis.link_peaks(model, data, genes=genes, method="silencing", top_n=None, progress_bar=False)
    old = analysis.gene2peak(
        model, data, genes=genes, cells=data.obs_names.isin(model.obs_names[model.split != "none"]), progress_bar=False
    )
    merged = silencing.merge(old, on=["gene", "peak"])
    np.testing.assert_allclose(merged["score"], merged["mean_delta"], rtol=1e-6)
    np.testing.assert_array_equal(merged["n_cells_x"], merged["n_cells_y"])


def test_planted_link_is_ranked_first_by_the_model_scores(planted_model):
    model, data, links = planted_model
    for method in ("hybrid", "decoded"):
        table = analysis.link_peaks(model, data, genes=["g0"], method=method, top_n=None)
        linked = (table["peak"].map(links) == "g0").to_numpy()
        assert linked[:2].all(), (method, table.head())  # the two strongest planted peaks come first
        assert table["score"].is_monotonic_decreasing
        ap = average_precision_score(linked, table["score"])
        assert ap > 0.4 > 6 * linked.mean(), (method, ap)  # a random ranking gives 5/80


def test_table_schema_window_and_top_n(trained):
    model, data = trained
    table = analysis.link_peaks(model, data, genes=["g0", "g1"], top_n=4)
    assert list(table.columns) == LINK_COLUMNS
    assert table.groupby("gene").size().tolist() == [4, 4]
    assert table.attrs["method"] == "links" and table.attrs["link_method"] == "hybrid"
    assert table["tss_distance"].isna().all()
    for method in ("hybrid", "linkpeaks"):  # genes scored one at a time give the same table
        whole = analysis.link_peaks(model, data, genes=["g0", "g1", "g2"], method=method, top_n=None)
        chunked = analysis.link_peaks(
            model, data, genes=["g0", "g1", "g2"], method=method, top_n=None, memory_budget_mb=1e-6
        )
        pd.testing.assert_frame_equal(whole, chunked)
    # peaks are chr1:100j-100j+50; a TSS at 1,001 on + for g0, none for g1
    tss = pd.DataFrame({"chrom": ["chr1"], "tss": [1001], "strand": ["+"], "gene_id": ["E0"], "gene_name": ["g0"]})
    near = analysis.link_peaks(model, data, genes=["g0", "g1"], tss=tss, window=250, top_n=None)
    assert set(near["gene"]) == {"g0"} and near.attrs["genes_without_tss"] == ["g1"]
    assert near.attrs["genes_without_scores"] == ["g1"]
    starts = near["peak"].str.extract(r":(\d+)-")[0].astype(int)
    assert sorted(starts) == [800, 900, 1000, 1100, 1200]
    assert (near["tss_distance"].abs() <= 250).all()
    assert near.loc[starts == 1000, "tss_distance"].iloc[0] == 0


def test_bad_input_is_refused(trained):
    model, data = trained
    with pytest.raises(ValueError, match="allowed: hybrid"):
        analysis.link_peaks(model, data, genes=["g0"], method="pearson")
    with pytest.raises(ValueError, match="needs a trained model"):
        analysis.link_peaks(None, data, genes=["g0"], method="hybrid")
    with pytest.raises(ValueError, match="not genes"):
        analysis.link_peaks(model, data, genes=["nope"])
    other = make_mudata(n_cells=20, seed=5)
    names = [f"new{i}" for i in range(20)]
    for mod in (*other.mod.values(), other):
        mod.obs_names = names
    with pytest.raises(ValueError, match="embedding=model.infer"):
        analysis.link_peaks(model, other, genes=["g0"], cells=names)
    placed = analysis.link_peaks(model, other, genes=["g0"], embedding=model.infer(other, progress_bar=False))
    assert (placed["n_cells"] == 20).all()
    with pytest.raises(ValueError, match="window"):
        analysis.link_peaks(model, data, genes=["g0"], tss="GRCh38", window=0)
