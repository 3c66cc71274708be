"""The start encoder of new cells: statistics, fit, the paths of infer, files."""

import copy

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from multidgd import DGD
from multidgd.encoder import EncoderConfig, count_statistics
from multidgd.inference import DEFAULT_STEPS


@pytest.fixture
def model(trained):
    return copy.deepcopy(trained)


def _cells(all_data, batches=("b0", "b1"), n=40):
    keep = np.flatnonzero(all_data.obs["batch"].isin(batches).to_numpy())[:n]
    return all_data[keep].copy()


def _encoder_output(model, data):
    query = model._read_query(data, None, None, None, {}, 0.5, labels_needed=False)
    stats = count_statistics(model.module, query.counts, query.library_size, query.present, query.observed)
    with torch.no_grad():
        basal, cov = model.encoder(stats, torch.from_numpy(query.present))
    return basal.numpy(), cov.numpy()


def test_count_statistics_are_the_weighted_mean_of_the_last_layer_rows(model):
    rng = np.random.default_rng(0)
    w = {m: model.module.decoder.heads[m][-1].weight.detach().double().numpy() for m in ("rna", "atac")}
    x = {m: rng.poisson(0.5, (5, w[m].shape[0])).astype(np.float32) for m in w}
    x["atac"][3] = 0  # a cell without ATAC
    lib = np.stack([x["rna"].sum(1), x["atac"].sum(1)], 1)
    present = lib > 0
    stats = count_statistics(model.module, {m: sp.csr_matrix(v) for m, v in x.items()}, lib, present)
    for j, m in enumerate(("rna", "atac")):
        for i in range(5):
            want = (
                np.r_[x[m][i] @ w[m] / lib[i, j], np.log(lib[i, j])] if present[i, j] else np.zeros(w[m].shape[1] + 1)
            )
            np.testing.assert_allclose(stats[m][i].numpy(), want, rtol=1e-5, atol=1e-6)


def test_feature_subset_statistics_use_the_matching_rows(model):
    w = model.module.decoder.heads["rna"][-1].weight.detach().double().numpy()
    obs = np.array([0, 3, 7, 11])
    x = np.array([[1.0, 2.0, 0.0, 4.0]], dtype=np.float32)
    stats = count_statistics(
        model.module, {"rna": sp.csr_matrix(x)}, np.array([[7.0, 0.0]]), np.array([[True, False]]), {"rna": obs}
    )
    np.testing.assert_allclose(stats["rna"][0, :-1].numpy(), x[0] @ w[obs] / 7.0, rtol=1e-5)


def test_encoder_reproduces_the_training_representations(model, all_data):
    train = all_data[all_data.obs["batch"].isin(["b0", "b1"]).to_numpy()].copy()
    basal, cov = _encoder_output(model, train)
    want_b, want_c = model.get_latent_representation(), model.get_covariate_matrix()
    for got, want in ((basal, want_b), (cov, want_c)):
        resid = ((got - want) ** 2).sum()
        total = ((want - want.mean(0)) ** 2).sum()
        assert resid / total < 0.2, resid / total  # R^2 > 0.8 over all coordinates
    # one modality gives a worse but still informative start
    for m in ("rna", "atac"):
        one = train.copy()
        one.mod[m].X = sp.csr_matrix(one.mod[m].shape, dtype=np.float32)
        got, _ = _encoder_output(model, one)
        assert ((got - want_b) ** 2).sum() / ((want_b - want_b.mean(0)) ** 2).sum() < 0.6


def test_infer_starts_at_the_encoder_output(model, all_data):
    query = _cells(all_data)
    emb = model.infer(query, n_steps=0, device="cpu", progress_bar=False)
    basal, cov = _encoder_output(model, query)
    np.testing.assert_array_equal(emb.latent, basal)
    np.testing.assert_array_equal(emb.covariate, cov)
    assert emb.candidates is not None and emb.candidates.nll.shape[0] == 40  # still scored
    default = model.infer(query, device="cpu", progress_bar=False)
    one = model.infer(query, n_steps=DEFAULT_STEPS["encoder"], start="encoder", device="cpu", progress_bar=False)
    np.testing.assert_array_equal(default.latent, one.latent)


@pytest.mark.parametrize("present", ["rna", "atac"])
def test_one_modality_cells_go_through_the_encoder(model, all_data, present):
    query = _cells(all_data)
    one = query.mod[present].copy()
    emb = model.infer(one, n_steps=0, device="cpu", progress_bar=False)
    assert emb.observed[:, ("rna", "atac").index(present)].all() and not emb.observed.all(1).any()
    masked = query.copy()
    other = "atac" if present == "rna" else "rna"
    masked.mod[other].X = sp.csr_matrix(masked.mod[other].shape, dtype=np.float32)
    basal, _ = _encoder_output(model, masked)
    np.testing.assert_allclose(emb.latent, basal, atol=1e-6)
    assert np.isfinite(model.get_normalized_expression(emb, return_type="array")).all()


def test_unseen_batches_go_through_the_encoder(model, all_data):
    query = _cells(all_data, batches=("b2", "b3"))
    naive = model.infer(query, n_steps=0, device="cpu", progress_bar=False)
    np.testing.assert_array_equal(naive.latent, _encoder_output(model, query)[0])
    learned = model.infer(query, new_classes="learn", device="cpu", progress_bar=False)
    assert model.covariate_categories == [["b0", "b1", "b2", "b3"]]
    assert np.isfinite(learned.nll.to_numpy()).all()


def test_label_start_keeps_the_class_means(model, all_data):
    query = _cells(all_data)
    emb = model.infer(query, covariate_start="label", n_steps=0, device="cpu", progress_bar=False)
    means = model.module.covariates[0].mean.detach().numpy()
    codes = query.obs["batch"].map({"b0": 0, "b1": 1}).to_numpy().astype(int)
    np.testing.assert_array_equal(emb.covariate, means[codes])
    np.testing.assert_array_equal(emb.latent, _encoder_output(model, query)[0])


def test_save_and_load_keep_the_encoder(model, all_data, tmp_path):
    query = _cells(all_data)
    model.save(tmp_path / "m.pt")
    loaded = DGD.load(tmp_path / "m.pt")
    assert loaded.encoder_record == model.encoder_record
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, loaded.encoder.state_dict()[k]), k
    a = model.infer(query, device="cpu", progress_bar=False)
    b = loaded.infer(query, device="cpu", progress_bar=False)
    np.testing.assert_array_equal(a.latent, b.latent)


def test_the_search_path_is_unchanged(model, all_data):
    """With start="search", an encoder changes nothing: the results of a model without one."""
    query = _cells(all_data, batches=("b0", "b1", "b2"))
    with_encoder = model.infer(query, start="search", device="cpu", progress_bar=False)
    model.encoder = None
    old = model.infer(query, device="cpu", progress_bar=False)  # the default without an encoder
    np.testing.assert_array_equal(with_encoder.latent, old.latent)
    np.testing.assert_array_equal(with_encoder.covariate, old.covariate)
    np.testing.assert_array_equal(with_encoder.nll.to_numpy(), old.nll.to_numpy())
    with pytest.raises(ValueError, match="start encoder"):
        model.infer(query, start="encoder", progress_bar=False)


def test_fit_from_data_equals_fit_from_the_held_data(model, all_data, tmp_path):
    train = all_data[all_data.obs["batch"].isin(["b0", "b1"]).to_numpy()].copy()
    model.save(tmp_path / "m.pt")
    loaded = DGD.load(tmp_path / "m.pt")
    loaded.encoder = None
    with pytest.raises(RuntimeError, match="without data"):
        loaded.fit_encoder()
    loaded.fit_encoder(train)
    assert loaded.encoder_record["reference_cells"] == model.encoder_record["reference_cells"]
    for k, v in model.encoder.state_dict().items():
        torch.testing.assert_close(v, loaded.encoder.state_dict()[k], rtol=1e-5, atol=1e-6)
    short = DGD.load(tmp_path / "m.pt").fit_encoder(train, config=EncoderConfig(epochs=2))
    assert short.encoder_record["epochs"] == 2


def test_bad_start_options_are_refused(model, all_data):
    query = _cells(all_data)
    with pytest.raises(ValueError, match="start must be"):
        model.infer(query, start="nearest", progress_bar=False)


def test_paired_cells_are_scored_after_the_encoder_when_they_are_denoised(model, all_data):
    query = _cells(all_data)
    keep = np.r_[np.zeros(10), np.ones(30)]  # the first ten cells lack ATAC
    query.mod["atac"].X = sp.csr_matrix(sp.diags(keep) @ query.mod["atac"].X, dtype=np.float32)
    saved = model.denoise_record
    try:
        model.denoise_record = None  # own profiles alone: only cells lacking a modality are scored
        emb = model.infer(query, device="cpu", progress_bar=False)
        nll = emb.candidates.nll
        assert np.isfinite(nll[:10]).all() and np.isnan(nll[10:]).all()
        assert np.isfinite(emb.prediction_certainty[:10]).all() and np.isnan(emb.prediction_certainty[10:]).all()
        model.denoise_record = {"own_weight": {"rna": 1.0, "atac": 0.5}}
        emb = model.infer(query, device="cpu", progress_bar=False)
    finally:
        model.denoise_record = saved
    nll = emb.candidates.nll
    assert np.isfinite(nll).all()
    # paired cells started from the encoder, not from a candidate
    assert (emb.start_candidate[10:] == -1).all() and (emb.start_candidate[:10] >= 0).all()
    assert np.isfinite(emb.prediction_certainty).all()
    # the scores are those of the search path
    search = model.infer(query, start="search", n_steps=0, device="cpu", progress_bar=False)
    np.testing.assert_allclose(nll, search.candidates.nll, rtol=1e-6)
    atac = model.get_normalized_accessibility(emb, return_type="array")
    assert np.isfinite(atac).all()


def test_unscored_rows_give_nan_weights():
    from multidgd.prediction import posterior_weights, prediction_certainty

    nll = np.array([[1.0, 2.0, np.inf], [np.nan, np.nan, np.nan]])
    w = posterior_weights(nll, np.log(np.full(3, 1 / 3)), 1.0)
    np.testing.assert_allclose(w[0], [np.e / (np.e + 1), 1 / (np.e + 1), 0.0])
    assert np.isnan(w[1]).all()
    c = prediction_certainty(w)
    assert np.isfinite(c[0]) and np.isnan(c[1])
    with pytest.raises(ValueError, match="allowed candidate"):
        posterior_weights(np.array([[np.inf, np.inf]]), np.zeros(2), 1.0)
