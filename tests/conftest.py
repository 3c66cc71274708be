"""Shared fixtures: tiny paired data built in milliseconds, and the shared real files."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

md.set_options(pull_on_update=False)
torch.set_num_threads(1)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def make_mudata(
    n_cells: int = 160,
    n_genes: int = 30,
    n_peaks: int = 60,
    n_types: int = 3,
    n_batches: int = 2,
    seed: int = 0,
) -> md.MuData:
    """Counts with cell-type structure and a batch shift, as sparse float32 matrices."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, n_types, n_cells)
    batches = rng.integers(0, n_batches, n_cells)
    gene_profile = rng.gamma(1.0, 1.0, (n_types, n_genes))
    peak_profile = rng.gamma(0.5, 1.0, (n_types, n_peaks))
    batch_shift = rng.gamma(5.0, 0.2, (n_batches, n_genes))
    lib_rna = rng.lognormal(4.0, 0.4, n_cells)
    lib_atac = rng.lognormal(3.0, 0.4, n_cells)
    p_rna = gene_profile[types] * batch_shift[batches]
    p_rna /= p_rna.sum(1, keepdims=True)
    p_atac = peak_profile[types] / peak_profile[types].sum(1, keepdims=True)
    x_rna = rng.poisson(p_rna * lib_rna[:, None]).astype(np.float32)
    x_atac = rng.poisson(p_atac * lib_atac[:, None]).astype(np.float32)
    x_rna[:, 0] += 1  # no empty cells
    x_atac[:, 0] += 1
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"type{t}" for t in types]),
            "batch": pd.Categorical([f"b{b}" for b in batches]),
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    rna = ad.AnnData(sp.csr_matrix(x_rna), obs=obs.copy(), var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))
    atac = ad.AnnData(
        sp.csr_matrix(x_atac),
        obs=obs.copy(),
        var=pd.DataFrame(index=[f"chr1:{100 * j}-{100 * j + 50}" for j in range(n_peaks)]),
    )
    mdata = md.MuData({"rna": rna, "atac": atac})
    mdata.obs = obs.copy()
    return mdata


@pytest.fixture
def mdata() -> md.MuData:
    return make_mudata()


@pytest.fixture(scope="module")
def all_data() -> md.MuData:
    """New-cell tests: batches b0..b3, of which the model of ``trained`` sees b0 and b1."""
    return make_mudata(n_cells=240, n_batches=4, seed=3)


@pytest.fixture(scope="module")
def trained(all_data):
    """A tiny model trained on the cells of batches b0 and b1 of ``all_data`` (with its start encoder)."""
    from multidgd import DGD, ModelConfig, TrainConfig

    seen = all_data.obs["batch"].isin(["b0", "b1"]).to_numpy()
    model = DGD(
        all_data[seen].copy(), cell_type_key="cell_type", covariate_keys=["batch"], config=ModelConfig(hidden_dim=16)
    )
    fast = TrainConfig(batch_size=32, min_epochs=2, patience=2, checkpoint_every=1)
    return model.train(max_epochs=6, seed=0, device="cpu", config=fast, progress_bar=False)


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data file {path} not present")
    return path
