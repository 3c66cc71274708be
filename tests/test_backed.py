"""Training from a file opened backed: count rows are read per minibatch, results unchanged."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from multidgd import DGD, ModelConfig, TrainConfig
from multidgd._backed import BackedCSR
from multidgd.io import read

from .conftest import make_mudata


def _train(data, epochs: int = 4) -> DGD:
    model = DGD(data, cell_type_key="cell_type", covariate_keys=["batch"], config=ModelConfig(hidden_dim=16))
    cfg = TrainConfig(batch_size=32, early_stopping=False)
    return model.train(max_epochs=epochs, seed=0, device="cpu", config=cfg, progress_bar=False)


def _single_anndata(seed: int) -> ad.AnnData:
    """Build the paired test data as one AnnData whose var["feature_types"] marks the modalities."""
    m = make_mudata(n_cells=160, seed=seed)
    rna, atac = m.mod["rna"], m.mod["atac"]
    var = pd.DataFrame(
        {"feature_types": ["Gene Expression"] * rna.n_vars + ["Peaks"] * atac.n_vars},
        index=list(rna.var_names) + list(atac.var_names),
    )
    return ad.AnnData(sp.hstack([rna.X, atac.X]).tocsr(), obs=m.obs[["cell_type", "batch"]].copy(), var=var)


def test_backed_reader_rows_and_columns(tmp_path):
    rng = np.random.default_rng(0)
    x = sp.random(50, 12, density=0.3, format="csr", random_state=1, dtype=np.float32)
    x.data = np.round(x.data * 10) + 1
    ad.AnnData(x).write_h5ad(tmp_path / "x.h5ad")
    backed = ad.read_h5ad(tmp_path / "x.h5ad", backed="r")
    m = BackedCSR(backed.X.group, 12)
    for rows in (np.array([3, 1, 1, 49, 0]), rng.permutation(50)[:20], np.arange(10, 30)):
        np.testing.assert_array_equal(m[rows].toarray(), x[rows].toarray())
    sub = m.subset(np.arange(50) % 2 == 0)
    cols = np.array([5, 0, 7])
    with_cols = BackedCSR(backed.X.group, 12, rows=np.arange(0, 50, 2), cols=cols)
    np.testing.assert_array_equal(sub[[0, 4]].toarray(), x[[0, 8]].toarray())
    np.testing.assert_array_equal(with_cols[[1, 2]].toarray(), x[[2, 4]][:, cols].toarray())
    np.testing.assert_allclose(m.row_sums(), np.asarray(x.sum(axis=1)).ravel())
    assert m.shape == (50, 12) and with_cols.shape == (25, 3)


def test_training_from_backed_h5mu_matches_in_memory(tmp_path):
    data = make_mudata(n_cells=160, seed=2)
    # reverse the ATAC cell order on disk: rows must still be matched by name
    data.mod["atac"] = data.mod["atac"][::-1].copy()
    path = tmp_path / "d.h5mu"
    data.write(path)
    memory = _train(read(path))
    backed_data = read(path, backed=True)
    backed = _train(backed_data)
    from multidgd._backed import BackedCSR as B

    assert all(isinstance(x, B) for x in backed.data.counts.values())
    # one copy of the cell names where a modality's equal the MuData's; the reversed one keeps its own
    assert backed_data.mod["rna"].obs_names is backed_data.obs_names
    assert backed_data.mod["atac"].obs_names is not backed_data.obs_names
    assert list(backed_data.mod["atac"].obs_names) == list(data.mod["atac"].obs_names)
    np.testing.assert_allclose(backed.history.to_numpy()[:, :-1], memory.history.to_numpy()[:, :-1], rtol=1e-6)
    np.testing.assert_allclose(backed.get_latent_representation(), memory.get_latent_representation(), atol=1e-6)
    pd.testing.assert_frame_equal(backed.reconstruction_nll(), memory.reconstruction_nll(), rtol=1e-5)


def test_training_from_backed_h5ad_with_feature_types(tmp_path):
    _single_anndata(seed=4).write_h5ad(tmp_path / "d.h5ad")
    memory = _train(read(tmp_path / "d.h5ad"), epochs=2)
    backed = _train(read(tmp_path / "d.h5ad", backed=True), epochs=2)
    assert all(isinstance(x, BackedCSR) for x in backed.data.counts.values())
    np.testing.assert_allclose(backed.get_latent_representation(), memory.get_latent_representation(), atol=1e-6)


def test_backed_input_is_checked(tmp_path):
    m = make_mudata(n_cells=160, seed=4)
    m.mod["rna"].X = m.mod["rna"].X.toarray() * 0.5  # dense and not counts
    m.write(tmp_path / "bad.h5mu")
    with pytest.raises(ValueError, match="CSR sparse"):
        DGD(read(tmp_path / "bad.h5mu", backed=True))
    m.mod["rna"].X = sp.csr_matrix(m.mod["rna"].X)
    m.write(tmp_path / "bad2.h5mu")
    with pytest.raises(ValueError, match="non-integer"):
        DGD(read(tmp_path / "bad2.h5mu", backed=True))
    with pytest.raises(ValueError, match="layer"):
        DGD(read(tmp_path / "bad2.h5mu", backed=True), layer="counts")


def test_train_command_backed(tmp_path):
    from multidgd.cli import main

    path = tmp_path / "d.h5mu"
    make_mudata(n_cells=160, seed=2).write(path)
    out = tmp_path / "out"
    args = ["train", str(path), "--backed", "--out", str(out), "--cell-type-key", "cell_type", "--batch-size", "32"]
    assert main([*args, "--covariate-keys", "batch", "--max-epochs", "2", "--quiet", "--device", "cpu"]) == 0
    results = ad.read_h5ad(out / "multidgd_results.h5ad")
    model = DGD.load(out / "model.pt")
    assert results.n_obs == 160 and results.n_vars == 0
    np.testing.assert_array_equal(results.obsm["X_multidgd"], model.get_latent_representation())
    assert results.obsm["X_multidgd_batch"].shape == (160, 2)


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data:UserWarning")
def test_training_from_backed_zarr_matches_in_memory(tmp_path):
    m = make_mudata(n_cells=160, seed=6)
    m.write_zarr(tmp_path / "d.zarr")
    memory = _train(read(tmp_path / "d.zarr"), epochs=2)
    backed_data = read(tmp_path / "d.zarr", backed=True)
    assert list(backed_data.mod) == ["rna", "atac"]
    backed = _train(backed_data, epochs=2)
    assert all(isinstance(x, BackedCSR) for x in backed.data.counts.values())
    np.testing.assert_allclose(backed.get_latent_representation(), memory.get_latent_representation(), atol=1e-6)
    # an AnnData zarr store with feature types
    _single_anndata(seed=6).write_zarr(tmp_path / "s.zarr")
    one = _train(read(tmp_path / "s.zarr", backed=True), epochs=2)
    assert all(isinstance(x, BackedCSR) for x in one.data.counts.values())
    np.testing.assert_allclose(one.get_latent_representation(), memory.get_latent_representation(), atol=1e-6)
