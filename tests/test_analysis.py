"""Gene-to-peak associations: silencing step, tables, Spearman baseline and link evaluation."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy.stats import spearmanr

from multidgd import DGD, ModelConfig, analysis
from multidgd.analysis import _centred_sparse_ranks, _silenced_representations

from .conftest import make_mudata


def planted(n_cells: int = 400, n_genes: int = 40, n_peaks: int = 80, seed: int = 0):
    """Cell types drive most features; a hidden programme drives gene g0 and peaks 0-4 together."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 3, n_cells)
    s = rng.uniform(0, 1, n_cells)
    g_log = rng.normal(0, 1, n_genes)[None, :] + rng.normal(0, 1.0, (3, n_genes))[types]
    p_log = rng.normal(0, 0.5, n_peaks)[None, :] + rng.normal(0, 1.0, (3, n_peaks))[types]
    g_log[:, 0] += 3 * s
    p_log[:, 0:5] += 3 * s[:, None]
    p_rna = np.exp(g_log)
    p_rna /= p_rna.sum(1, keepdims=True)
    p_atac = np.exp(p_log)
    p_atac /= p_atac.sum(1, keepdims=True)
    x_rna = rng.poisson(p_rna * rng.lognormal(6, 0.3, n_cells)[:, None]).astype(np.float32)
    x_atac = rng.poisson(p_atac * rng.lognormal(5, 0.3, n_cells)[:, None]).astype(np.float32)
    obs = pd.DataFrame({"cell_type": pd.Categorical([f"t{t}" for t in types])}, index=[f"c{i}" for i in range(n_cells)])
    var_rna = pd.DataFrame(index=[f"g{j}" for j in range(n_genes)])
    var_atac = pd.DataFrame(index=[f"chr1:{1000 * j}-{1000 * j + 500}" for j in range(n_peaks)])
    m = md.MuData(
        {
            "rna": ad.AnnData(sp.csr_matrix(x_rna), obs=obs.copy(), var=var_rna),
            "atac": ad.AnnData(sp.csr_matrix(x_atac), obs=obs.copy(), var=var_atac),
        }
    )
    m.obs = obs.copy()
    links = pd.Series(["g0"] * 5 + ["none"] * (n_peaks - 5), index=var_atac.index)
    return m, links


@pytest.fixture(scope="module")
def trained():
    data = make_mudata(n_cells=160, seed=3)
    model = DGD(data, cell_type_key="cell_type", covariate_keys=["batch"], config=ModelConfig(hidden_dim=16))
    model.train(max_epochs=15, seed=0, progress_bar=False)
    return model, data


def test_planted_link_is_found_and_ranked_first():
    data, links = planted()
    model = DGD(data, cell_type_key="cell_type", config=ModelConfig(hidden_dim=16, latent_dim=4))
    model.train(max_epochs=200, seed=0, progress_bar=False)
    table = analysis.gene2peak(model, data, genes=["g0"], progress_bar=False)
    top = table["peak"].head(5).tolist()
    assert sum(links[p] == "g0" for p in top) >= 4, table.head(8)
    linked = table[table["peak"].map(links) == "g0"]
    assert (linked["mean_delta"].head(4) > 0).all()  # silencing g0 closes its programme's peaks
    result = analysis.link_enrichment(table, links)
    assert result.summary["n_genes"] == 1
    assert result.per_gene["auprc"].iloc[0] > 0.8
    assert result.per_gene["mean_linked"].iloc[0] > 5 * result.per_gene["mean_other"].iloc[0]


def test_zero_step_gives_zero_effect(trained):
    model, data = trained
    for kw in ({"lr": 0.0}, {"n_steps": 0}, {"step_size": 0.0}):
        table = analysis.gene2peak(model, data, genes=["g1", "g2"], progress_bar=False, **kw)
        assert (table["mean_delta"] == 0).all() and (table["mean_abs_delta"] == 0).all(), kw
    table = analysis.gene2peak(model, data, genes=["g1", "g2"], progress_bar=False)
    assert table["mean_abs_delta"].max() > 0


def test_steps_match_torch_adam_and_gradient_length(trained):
    model, _ = trained
    module = model.module.eval()
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, model.config.latent_dim, generator=gen)
    cov = torch.randn(3, model.config.covariate_dim, generator=gen)
    log_lib = torch.log(torch.tensor([50.0, 80.0, 120.0]))
    gene = torch.tensor([0, 4, 4])
    betas = (0.5, 0.7)

    def own_loss(zz: torch.Tensor) -> torch.Tensor:  # -log NB(0 | mu, r) written another way
        frac = torch.softmax(module.decoder(torch.cat([zz, cov], 1), ["rna"])["rna"], dim=1)
        mu = torch.exp(log_lib) * frac[torch.arange(3), gene]
        r = module.dispersion("rna")[gene]
        return -(r * (torch.log(r) - torch.log(r + mu))).sum()

    param = torch.nn.Parameter(z.clone())
    opt = torch.optim.Adam([param], lr=0.01, betas=betas)
    for _ in range(3):
        opt.zero_grad()
        own_loss(param).backward()
        opt.step()
    ours = _silenced_representations(module, z, cov, log_lib, gene, n_steps=3, lr=0.01, step_size=None, betas=betas)
    torch.testing.assert_close(ours, param.detach(), atol=1e-6, rtol=1e-5)
    first = _silenced_representations(module, z, cov, log_lib, gene, n_steps=1, lr=0.01, step_size=None, betas=betas)
    assert torch.allclose((first - z).abs(), torch.full_like(z, 0.01), atol=1e-5)  # first Adam step: ±lr
    moved = _silenced_representations(module, z, cov, log_lib, gene, n_steps=1, lr=0.01, step_size=0.3, betas=betas)
    torch.testing.assert_close((moved - z).norm(dim=1), torch.full((3,), 0.3))
    zz = z.clone().requires_grad_(True)
    own_loss(zz).backward()
    cos = torch.nn.functional.cosine_similarity(moved - z, -zz.grad, dim=1)
    torch.testing.assert_close(cos, torch.ones(3))


def test_table_schema_counts_and_per_cell_effects(trained):
    model, data = trained
    genes = ["g0", "g3"]
    table, cells = analysis.gene2peak(
        model, data, genes=genes, groupby="cell_type", scale="counts", return_cells=True, progress_bar=False
    )
    assert list(table.columns) == [
        "gene",
        "peak",
        "group",
        "mean_delta",
        "mean_abs_delta",
        "mean_logfc",
        "mean_abs_logfc",
        "n_cells",
    ]
    assert table.attrs["method"] == "silencing" and table.attrs["scale"] == "counts"
    n_peaks = data.mod["atac"].n_vars
    x = data.mod["rna"].X.toarray()
    types = data.obs["cell_type"].astype(str).to_numpy()
    for g in genes:
        j = int(g[1:])
        for t in np.unique(types):
            rows = table[(table["gene"] == g) & (table["group"] == t)]
            expected = int(((x[:, j] > 0) & (types == t)).sum())
            if expected == 0:
                assert rows.empty
                continue
            assert len(rows) == n_peaks and (rows["n_cells"] == expected).all()
            assert rows["mean_abs_delta"].is_monotonic_decreasing
            # the table's means are the per-cell effects averaged (brute force)
            sel = (cells.obs["gene"] == g).to_numpy() & (cells.obs["group"] == t).to_numpy()
            brute = pd.Series(cells.X[sel].mean(axis=0), index=cells.var_names)
            np.testing.assert_allclose(rows["mean_delta"], brute[rows["peak"]].to_numpy(), rtol=1e-4, atol=1e-7)
            abs_brute = pd.Series(np.abs(cells.X[sel]).mean(axis=0), index=cells.var_names)
            np.testing.assert_allclose(rows["mean_abs_delta"], abs_brute[rows["peak"]].to_numpy(), rtol=1e-4)
            lfc = cells.layers["logfc"][sel]
            lfc_brute = pd.Series(np.abs(lfc).mean(axis=0), index=cells.var_names)
            np.testing.assert_allclose(rows["mean_abs_logfc"], lfc_brute[rows["peak"]].to_numpy(), rtol=1e-4)
    assert cells.n_obs == int((x[:, [0, 3]] > 0).sum()) and cells.n_vars == n_peaks
    # counts scale = fraction scale times the cell's ATAC library size
    frac_table, frac_cells = analysis.gene2peak(
        model, data, genes=genes, groupby="cell_type", return_cells=True, progress_bar=False
    )
    lib = model.get_library_size()[model.obs_names.get_indexer(cells.obs["cell"]), 1]
    np.testing.assert_allclose(cells.X, frac_cells.X * lib[:, None], rtol=1e-4, atol=1e-9)
    # the log ratio agrees with the fractions decoded independently
    pos = model.obs_names.get_indexer(frac_cells.obs["cell"])
    decoded = model.decode("atac", cells=pos)
    np.testing.assert_allclose(frac_cells.X, decoded * -np.expm1(-frac_cells.layers["logfc"]), rtol=2e-3, atol=1e-8)
    top = analysis.gene2peak(model, data, genes=genes, top_n=3, features=np.arange(10), progress_bar=False)
    assert top.groupby("gene").size().tolist() == [3, 3]
    assert top["peak"].isin(data.mod["atac"].var_names[:10]).all()
    rna_table = analysis.gene2peak(model, data, genes=["g0"], modality="rna", progress_bar=False)
    assert "target_gene" in rna_table.columns and len(rna_table) == data.mod["rna"].n_vars


def test_new_cells_are_placed_by_infer(trained):
    model, data = trained
    new = make_mudata(n_cells=40, seed=11)
    new.obs_names = [f"new{i}" for i in range(new.n_obs)]
    for m in new.mod.values():
        m.obs_names = new.obs_names
    emb = model.infer(new, progress_bar=False)
    given = analysis.gene2peak(model, new, genes=["g0"], embedding=emb, progress_bar=False)
    auto = analysis.gene2peak(model, new, genes=["g0"], progress_bar=False, infer_kwargs={"progress_bar": False})
    pd.testing.assert_frame_equal(given, auto)
    assert given["n_cells"].iloc[0] == int((new.mod["rna"].X[:, 0].toarray() > 0).sum())


def test_bad_input_is_refused_before_work(trained):
    model, data = trained
    with pytest.raises(ValueError, match="not genes of the model"):
        analysis.gene2peak(model, data, genes=["nope"])
    with pytest.raises(ValueError, match="groupby: no obs column 'tissue'"):
        analysis.gene2peak(model, data, genes=["g0"], groupby="tissue")
    with pytest.raises(ValueError, match="modality must be one of"):
        analysis.gene2peak(model, data, genes=["g0"], modality="protein")
    with pytest.raises(ValueError, match="top_n"):
        analysis.gene2peak(model, data, genes=["g0"], top_n=0)
    with pytest.raises(ValueError, match="rows"):
        analysis.gene2peak(model, data, genes=["g0", "g1"], max_rows=10)
    with pytest.raises(ValueError, match="genes repeat"):
        analysis.gene2peak(model, data, genes=["g0", "g0"])


def test_sparse_ranks_match_scipy():
    rng = np.random.default_rng(0)
    x = rng.poisson(0.4, (50, 7)).astype(float)
    x[:, 3] = 0  # constant column
    s, ss = _centred_sparse_ranks(sp.csc_matrix(x))
    for j in range(7):
        from scipy.stats import rankdata

        r = rankdata(x[:, j])
        np.testing.assert_allclose(ss[j], ((r - r.mean()) ** 2).sum())
        np.testing.assert_allclose(s[:, j].toarray().ravel(), np.where(x[:, j] > 0, r - r[x[:, j] == 0][0], 0))


def test_spearman_matches_scipy(trained):
    _, data = trained
    table = analysis.spearman_gene2peak(data, genes=["g0", "g5"], groupby="cell_type")
    assert list(table.columns) == ["gene", "peak", "group", "rho", "abs_rho", "n_cells"]
    rna = data.mod["rna"].X.toarray()
    atac = data.mod["atac"].X.toarray()
    types = data.obs["cell_type"].astype(str).to_numpy()
    for g, t, p in [("g0", "type0", 0), ("g5", "type1", 7), ("g5", "type2", 33)]:
        sel = types == t
        expr = rna[sel, int(g[1:])] / rna[sel].sum(1)
        acc = atac[sel, p] / atac[sel].sum(1)
        expected = spearmanr(expr, acc).statistic
        row = table[(table["gene"] == g) & (table["group"] == t) & (table["peak"] == data.mod["atac"].var_names[p])]
        np.testing.assert_allclose(row["rho"].iloc[0], expected, rtol=1e-10)
        assert row["n_cells"].iloc[0] == sel.sum()


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
