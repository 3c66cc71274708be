"""Fixtures of the analysis tests: one small trained model shared by the package's tests."""

from __future__ import annotations

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from multidgd import DGD, ModelConfig

from ..conftest import make_mudata


@pytest.fixture(scope="package")
def trained():
    """A small model trained on paired data with cell types and a batch, and that data."""
    data = make_mudata(n_cells=160, seed=3)
    model = DGD(data, cell_type_key="cell_type", covariate_keys=["batch"], config=ModelConfig(hidden_dim=16))
    model.train(max_epochs=15, seed=0, progress_bar=False)
    return model, data


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


@pytest.fixture(scope="package")
def planted_model():
    """A small model trained on :func:`planted` data, the data and the planted links."""
    data, links = planted()
    model = DGD(data, cell_type_key="cell_type", config=ModelConfig(hidden_dim=16, latent_dim=4))
    model.train(max_epochs=200, seed=0, progress_bar=False)
    return model, data, links
