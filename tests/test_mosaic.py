"""Mosaic training data: cells with both modalities, RNA only and ATAC only, in one model."""

import logging

import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from multidgd import DGD, ModelConfig, TrainConfig, combine_mosaic
from multidgd.data import read_multiome
from multidgd.initialization import spectral_embedding
from multidgd.train import per_cell_terms

from .conftest import make_mudata

FAST = TrainConfig(batch_size=32, min_epochs=2, patience=2)


def _mosaic(data, rna_cells, atac_cells):
    out = md.MuData({"rna": data["rna"][rna_cells].copy(), "atac": data["atac"][atac_cells].copy()})
    out.obs = data.obs.copy()  # the labels of every cell
    return out


@pytest.fixture(scope="module")
def full():
    return make_mudata(n_cells=240, seed=5)


def test_reading_a_mosaic(full, caplog):
    mosaic = _mosaic(full, slice(0, 160), slice(80, 240))
    with caplog.at_level(logging.INFO, logger="multidgd"):
        data = read_multiome(mosaic, cell_type_key="cell_type", covariate_keys=["batch"])
    assert "80 cells with both modalities, 80 with rna only, 80 with atac only" in caplog.text
    assert list(data.obs_names) == list(full.obs_names)
    np.testing.assert_array_equal(data.present[:, 0], np.arange(240) < 160)
    np.testing.assert_array_equal(data.present[:, 1], np.arange(240) >= 80)
    paired = read_multiome(full, cell_type_key="cell_type")
    for j, m in enumerate(("rna", "atac")):
        has = data.present[:, j]
        np.testing.assert_array_equal(data.counts[m][has].toarray(), paired.counts[m][has].toarray())
        assert data.counts[m][~has].nnz == 0 and (data.library_size[~has, j] == 0).all()
    # labels of cells only in the ATAC modality come from the MuData's obs
    np.testing.assert_array_equal(data.cell_type_codes, paired.cell_type_codes)


def test_bad_mosaics_are_refused(full):
    with pytest.raises(ValueError, match="none in both"):
        read_multiome(_mosaic(full, slice(0, 100), slice(100, 240)))
    empty = _mosaic(full, slice(0, 160), slice(80, 240))
    keep = (np.arange(160) >= 80).astype(np.float32)  # the paired cells' ATAC is empty: they are dropped
    empty.mod["atac"].X = sp.csr_matrix(sp.diags(keep) @ empty.mod["atac"].X)
    with pytest.raises(ValueError, match="a mosaic needs paired cells"):
        read_multiome(empty)


def test_an_absent_modality_is_left_out_of_the_loss(full):
    model = DGD(full, cell_type_key="cell_type", covariate_keys=["batch"], config=ModelConfig(hidden_dim=16))
    model.train(2, seed=0, config=FAST, progress_bar=False)
    module = model.module
    rows = np.arange(40)
    from multidgd.data import gather_rows

    counts = {m: gather_rows(x, rows) for m, x in model.data.counts.items()}
    lib = torch.from_numpy(model.data.library_size[rows])
    absent = torch.zeros(40, 2, dtype=torch.bool)
    absent[:20, 1] = True  # the first 20 cells lack ATAC
    zb = torch.randn(40, 20, requires_grad=True)
    zc = torch.randn(40, 2)
    terms = per_cell_terms(module, zb, zc, counts, lib, None, absent=absent)
    rna_only = per_cell_terms(module, zb, zc, {"rna": counts["rna"]}, lib, None)
    assert (terms["nll_atac"][:20] == 0).all() and (terms["nll_atac"][20:] > 0).all()
    torch.testing.assert_close(terms["nll_rna"], rna_only["nll_rna"])
    # the gradient of a cell lacking ATAC is that of its RNA loss alone
    (g,) = torch.autograd.grad(sum(t.sum() for t in terms.values()), zb)
    (g_rna,) = torch.autograd.grad(sum(t.sum() for t in rna_only.values()), zb)
    torch.testing.assert_close(g[:20], g_rna[:20])
    assert not torch.allclose(g[20:], g_rna[20:])


def test_every_cell_paired_through_the_mosaic_path_is_paired_training(full):
    a = DGD(full, cell_type_key="cell_type", covariate_keys=["batch"], config=ModelConfig(hidden_dim=16))
    b = DGD(full, cell_type_key="cell_type", covariate_keys=["batch"], config=ModelConfig(hidden_dim=16))
    b.data.present = np.ones((b.data.n_cells, 2), dtype=bool)  # masks, placeholders and per-modality means on
    for model in (a, b):
        model.train(3, seed=0, config=FAST, progress_bar=False)
    np.testing.assert_array_equal(a.get_latent_representation(), b.get_latent_representation())
    np.testing.assert_array_equal(a.history.drop(columns="seconds"), b.history.drop(columns="seconds"))
    for k, v in a.module.state_dict().items():
        assert torch.equal(v, b.module.state_dict()[k]), k


def test_mosaic_start_places_unpaired_cells_with_their_type(full):
    data = read_multiome(_mosaic(full, slice(0, 160), slice(80, 240)), covariate_keys=["batch"])
    emb = spectral_embedding(data.counts, np.arange(240), 10, radius=1.0, present=data.present, seed=0)
    types = full.obs["cell_type"].cat.codes.to_numpy()
    paired = data.present.all(axis=1)
    centres = np.stack([emb[paired & (types == t)].mean(0) for t in range(3)])
    nearest = np.linalg.norm(emb[:, None] - centres[None], axis=2).argmin(1)
    for kind in (~data.present[:, 1], ~data.present[:, 0]):  # RNA only, ATAC only
        assert (nearest[kind] == types[kind]).mean() > 0.9


def test_training_a_mosaic(full):
    mosaic = _mosaic(full, slice(0, 160), slice(80, 240))
    model = DGD(mosaic, cell_type_key="cell_type", covariate_keys=["batch"], config=ModelConfig(hidden_dim=16))
    model.train(6, seed=0, config=FAST, progress_bar=False)
    assert np.isfinite(model.history.drop(columns="seconds").to_numpy()).all()
    assert np.isfinite(model.get_latent_representation()).all()
    lib = model.get_library_size()
    np.testing.assert_array_equal(np.isnan(lib), ~model.data.present)
    assert model.encoder_record["reference_cells"] <= 80  # the encoder learns from paired cells


def _three_files(full):
    paired = full[:120].copy()
    rna = full["rna"][120:180].copy()
    atac = full["atac"][180:].copy()
    return paired, rna, atac


def test_combine_mosaic(full):
    paired, rna, atac = _three_files(full)
    rna = rna[:, 2:].copy()  # the RNA-only file lacks two genes: they are left out everywhere
    combined = combine_mosaic(paired, rna=rna, atac=atac)
    assert combined["rna"].n_obs == 180 and combined["atac"].n_obs == 180
    assert list(combined["rna"].var_names) == list(full["rna"].var_names[2:])
    assert list(combined["atac"].var_names) == list(full["atac"].var_names)
    source = combined.obs.loc[full.obs_names, "modality_source"].astype(str).to_numpy()
    assert (
        (source[:120] == "paired").all()
        and (source[120:180] == "rna_only").all()
        and (source[180:] == "atac_only").all()
    )
    data = read_multiome(combined, cell_type_key="cell_type", covariate_keys=["batch"])
    ref = read_multiome(full, cell_type_key="cell_type")
    order = pd.Index(data.obs_names)
    assert order.sort_values().equals(pd.Index(full.obs_names).sort_values())
    pos = ref.obs_names.get_indexer(order)
    np.testing.assert_array_equal(
        data.counts["atac"][data.present[:, 1]].toarray(), ref.counts["atac"][pos[data.present[:, 1]]].toarray()
    )
    np.testing.assert_array_equal(data.cell_type_codes, ref.cell_type_codes[pos])
    assert paired.n_obs == 120 and rna.n_vars == 28  # inputs unchanged


def test_combine_mosaic_refuses_bad_inputs(full):
    paired, rna, atac = _three_files(full)
    other = rna.copy()
    other.var_names = [f"x{i}" for i in range(other.n_vars)]
    with pytest.raises(ValueError, match="share 0 of the paired data's 30 features"):
        combine_mosaic(paired, rna=other)
    with pytest.raises(ValueError, match="cell names repeat"):
        combine_mosaic(paired, rna=full["rna"][:60].copy())
    with pytest.raises(ValueError, match="single-modality cells"):
        combine_mosaic(paired)


# rna and rna_predicted share their feature names, which MuData notes on reading
@pytest.mark.filterwarnings("ignore:var_names are not unique:UserWarning")
def test_train_command_with_single_modality_files(full, tmp_path):
    from multidgd.cli import main
    from multidgd.io import read

    paired, rna, atac = _three_files(full)
    paths = {"p": tmp_path / "paired.h5mu", "r": tmp_path / "rna.h5ad", "a": tmp_path / "atac.h5ad"}
    paired.write(paths["p"])
    rna.write_h5ad(paths["r"])
    atac.write_h5ad(paths["a"])
    out = tmp_path / "out"
    args = ["train", str(paths["p"]), "--rna-only", str(paths["r"]), "--atac-only", str(paths["a"])]
    args += ["--out", str(out), "--cell-type-key", "cell_type", "--covariate-keys", "batch"]
    args += ["--max-epochs", "3", "--quiet", "--device", "cpu", "--batch-size", "32", "--predict-missing"]
    assert main(args) == 0
    result = read(out / "multidgd.h5mu")
    assert result.n_obs == 240 and np.isfinite(result.obsm["X_multidgd"]).all()
    source = result.obs["modality_source"].astype(str)
    assert set(source) == {"paired", "rna_only", "atac_only"}
    # what each single-modality cell lacks, predicted, with its certainty
    certainty = result.obs["multidgd_prediction_certainty"]
    assert certainty[source == "paired"].isna().all()
    assert certainty[source != "paired"].between(0, 1).all()
    model = DGD.load(out / "model.pt")
    for m, kind in (("atac", "rna_only"), ("rna", "atac_only")):
        pred = result[f"{m}_predicted"]
        assert set(pred.obs_names) == set(source.index[source == kind])
        emb = model.training_embedding(result[pred.obs_names].copy(), progress_bar=False)
        getter = model.get_normalized_expression if m == "rna" else model.get_normalized_accessibility
        expected = getter(emb, scale="counts", return_type="array")[emb.obs_names.get_indexer(pred.obs_names)]
        if m == "atac":  # by default sparse: the peaks above a flat profile
            assert sp.issparse(pred.X)
            share = expected / pred.obs["library_size"].to_numpy()[:, None]
            expected = np.where(share >= 1 / expected.shape[1], expected, 0)
            pred = pred.copy()
            pred.X = pred.X.toarray()
        np.testing.assert_allclose(np.asarray(pred.X), expected, rtol=1e-5)
        np.testing.assert_allclose(pred.obs["prediction_certainty"], certainty[pred.obs_names], rtol=1e-6)
    import json

    kinds = json.loads((out / "summary.json").read_text())["cells_by_kind"]
    assert kinds == {"paired": 120, "rna_only": 60, "atac_only": 60}  # training and validation cells


@pytest.fixture(scope="module")
def trained_mosaic(full):
    mosaic = _mosaic(full, slice(0, 160), slice(80, 240))
    model = DGD(mosaic, cell_type_key="cell_type", covariate_keys=["batch"], config=ModelConfig(hidden_dim=16))
    model.train(6, seed=0, config=FAST, progress_bar=False)
    return mosaic, model


def test_training_embedding_predicts_what_single_modality_cells_lack(trained_mosaic):
    from multidgd.prediction import candidate_profiles

    mosaic, model = trained_mosaic
    emb = model.training_embedding(mosaic, progress_bar=False)
    pos = model.obs_names.get_indexer(emb.obs_names)
    np.testing.assert_array_equal(emb.latent, model.get_latent_representation()[pos])  # trained, not re-placed
    np.testing.assert_array_equal(emb.covariate, model.get_covariate_matrix()[pos])
    present = model.data.present[pos]
    np.testing.assert_array_equal(emb.observed, present)
    single = ~present.all(axis=1)
    certainty = emb.prediction_certainty
    assert np.isnan(certainty[~single]).all() and ((certainty[single] >= 0) & (certainty[single] <= 1)).all()
    # the candidates are scored on what each cell has, as infer scores them from the search
    search = model.infer(mosaic, start="search", n_steps=0, progress_bar=False)
    np.testing.assert_allclose(emb.candidates.nll[single], search.candidates.nll[single], rtol=1e-5)
    # ATAC of the RNA-only cells: the posterior-weighted mean of the candidates' profiles
    rna_only = np.flatnonzero(~present[:, 1])
    got = model.get_normalized_accessibility(emb, cells=rna_only, return_type="array")
    train = (model.split == "train").to_numpy()
    profiles = candidate_profiles(
        model.module,
        emb.candidates,
        model.get_latent_representation()[train],
        model.get_covariate_matrix()[train],
        model.get_library_size()[train, 1],
        "atac",
    )
    np.testing.assert_allclose(got, emb.prediction_weights[rna_only] @ profiles, rtol=1e-4, atol=1e-7)
    point = model.get_normalized_accessibility(emb, cells=rna_only, return_type="array", prediction="point")
    assert not np.allclose(got, point)


def test_training_embedding_refuses_cells_the_model_did_not_train_on(trained_mosaic, full):
    _, model = trained_mosaic
    other = full[:20].copy()
    other.obs_names = [f"new{i}" for i in range(20)]
    with pytest.raises(ValueError, match="20 cells of the data are not training or validation cells"):
        model.training_embedding(other, progress_bar=False)


def test_train_command_threshold_needs_predict_missing(full, tmp_path, capsys):
    from multidgd.cli import main

    path = tmp_path / "paired.h5mu"
    full.write(path)
    args = ["train", str(path), "--out", str(tmp_path / "out"), "--threshold", "0.1", "--quiet"]
    assert main(args) == 2
    assert "--threshold goes with --predict-missing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
