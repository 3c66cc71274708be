"""gene2peak: the silencing step, the table, per-cell effects, new cells and refused input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from multidgd import analysis
from multidgd.analysis.silencing import _silenced_representations

from ..conftest import make_mudata


def test_planted_link_is_found_and_ranked_first(planted_model):
    model, data, links = planted_model
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
