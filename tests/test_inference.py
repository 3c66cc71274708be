"""New cells: best start, feature matching, single-modality inference, new covariate classes."""

import copy
import logging

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from scipy.stats import nbinom

from multidgd import DGD, ModelConfig, TrainConfig
from multidgd.inference import candidate_scores
from multidgd.prediction import DEFAULT_TEMPERATURE

FAST = TrainConfig(batch_size=32, min_epochs=2, patience=2, checkpoint_every=1)


@pytest.fixture
def model(trained):
    model = copy.deepcopy(trained)
    model.encoder = None  # the search path (start="search"); tests/test_encoder.py tests the encoder's
    return model


def _query(all_data, batches=("b0", "b1"), n=40):
    keep = np.flatnonzero(all_data.obs["batch"].isin(batches).to_numpy())[:n]
    return all_data[keep].copy()


def _nb_nll(x, mu, r):
    """Per-cell NB NLL by scipy: x (n, F), mu (n, F), r (F,)."""
    return -nbinom.logpmf(x, r[None, :], r[None, :] / (r[None, :] + mu)).sum(axis=1)


def _dense(x):
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}, {
        k: t.values.clone() for k, t in model.state.tables.items()
    }


def _assert_same(a, b):
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]), k
    for k in a[1]:
        assert torch.equal(a[1][k], b[1][k]), k


# ---------------------------------------------------------------------------- scoring
@pytest.mark.parametrize(("budget", "n"), [(10**9, 6), (300, 6), (7, 6), (10**9, 400), (500, 400)])
def test_candidate_scores_match_scipy_up_to_a_per_cell_constant(budget, n):
    rng = np.random.default_rng(0)
    J, F = 5, 40
    logits = torch.from_numpy(rng.normal(size=(J, F)))
    log_p = torch.log_softmax(logits, dim=1)
    r = torch.from_numpy(rng.uniform(0.5, 5, F))
    lib = rng.uniform(20, 200, n)
    x = rng.poisson(np.exp(log_p.numpy())[rng.integers(0, J, n)] * lib[:, None]).astype(np.float64)
    xs = sp.coo_matrix(x)
    score = candidate_scores(
        log_p,
        r,
        torch.from_numpy(np.log(lib)),
        torch.from_numpy(xs.row.astype(np.int64)),
        torch.from_numpy(xs.col.astype(np.int64)),
        torch.from_numpy(xs.data),
        budget_elements=budget,
    ).numpy()
    exact = np.stack([_nb_nll(x, np.exp(log_p.numpy()[j])[None] * lib[:, None], r.numpy()) for j in range(J)], 1)
    # the lgamma terms do not depend on the candidate: differences between candidates are exact
    # (with 400 cells the zero-count term is interpolated on a grid of log library sizes)
    tol = 1e-9 if n < 100 else 1e-6
    np.testing.assert_allclose(score - score[:, :1], exact - exact[:, :1], rtol=tol, atol=tol)


def test_best_start_is_the_brute_force_best_pair(model, all_data):
    query = _query(all_data, n=30)
    emb = model.infer(query, n_steps=0, device="cpu", progress_bar=False)
    module = model.module
    K, C = model.n_components, len(model.covariate_categories[0])
    x = {m: _dense(query.mod[m].X) for m in ("rna", "atac")}
    lib = {m: x[m].sum(1) for m in x}
    total = np.zeros((30, K * C))
    with torch.no_grad():
        for k in range(K):
            for c in range(C):
                logf = module.decode(module.basal.mean[k : k + 1], module.covariates[0].mean[c : c + 1])
                for m in x:
                    mu = np.exp(logf[m].double().numpy()) * lib[m][:, None]
                    total[:, k * C + c] += _nb_nll(x[m], mu, module.dispersion(m).detach().double().numpy())
    best = total.argmin(1)
    np.testing.assert_array_equal(emb.start_candidate[:, 0] * C + emb.start_candidate[:, 1], best)
    # with no steps the representations are the chosen means
    np.testing.assert_allclose(emb.latent, module.basal.mean.detach().numpy()[best // C], rtol=0, atol=0)
    # the reported NLL is the exact NB NLL at the representation
    with torch.no_grad():
        logf = module.decode(torch.from_numpy(emb.latent), torch.from_numpy(emb.covariate))
    for m in x:
        mu = np.exp(logf[m].double().numpy()) * lib[m][:, None]
        expected = _nb_nll(x[m], mu, module.dispersion(m).detach().double().numpy())
        np.testing.assert_allclose(emb.nll[f"nll_{m}"], expected, rtol=1e-4)


# ---------------------------------------------------------------------------- inference
def test_optimisation_lowers_the_loss_and_leaves_the_model_unchanged(model, all_data):
    query = _query(all_data)
    before = _snapshot(model)
    start = model.infer(query, n_steps=0, device="cpu", progress_bar=False)
    emb = model.infer(query, n_steps=50, device="cpu", progress_bar=False)
    _assert_same(before, _snapshot(model))
    assert model.covariate_categories == [["b0", "b1"]]
    assert emb.latent.shape == (40, 20) and emb.covariate.shape == (40, 2)
    assert (emb.nll.sum(axis=1) < start.nll.sum(axis=1) + 1e-3).mean() > 0.9
    np.testing.assert_allclose(emb.cluster_probabilities.sum(1), 1, rtol=1e-5)
    np.testing.assert_array_equal(emb.cluster, emb.cluster_probabilities.argmax(1))
    assert (emb.library_size_source == "observed").all()
    np.testing.assert_allclose(emb.library_size[:, 0], _dense(query.mod["rna"].X).sum(1), rtol=1e-5)


def test_feature_reordering_gives_the_same_result(model, all_data):
    query = _query(all_data)
    shuffled = md.MuData(
        {
            "rna": query.mod["rna"][:, ::-1].copy(),
            "atac": query.mod["atac"][:, np.random.default_rng(0).permutation(60)].copy(),
        }
    )
    shuffled.obs = query.obs.copy()
    a = model.infer(query, device="cpu", progress_bar=False)
    b = model.infer(shuffled, device="cpu", progress_bar=False)
    # float32 sums over non-zeros in another order, amplified by 50 Adam steps: ~1e-4 at most
    np.testing.assert_allclose(a.latent, b.latent, atol=2e-4)
    np.testing.assert_allclose(a.nll.to_numpy(), b.nll.to_numpy(), rtol=1e-5)
    assert b.n_absent_features == {"rna": 0, "atac": 0}


def test_feature_subset_is_left_out_of_the_loss(model, all_data, caplog):
    query = _query(all_data)
    keep = np.r_[0:20, 25:30]  # 25 of 30 genes, plus 2 genes the model never saw
    rna = query.mod["rna"][:, keep].copy()
    extra = ad.AnnData(sp.csr_matrix(np.ones((40, 2), dtype=np.float32)), obs=rna.obs.copy())
    extra.var_names = ["unknownA", "unknownB"]
    rna = ad.concat([rna, extra], axis=1)
    rna.obs = query.obs.copy()
    sub = md.MuData({"rna": rna, "atac": query.mod["atac"].copy()})
    sub.obs = query.obs.copy()
    with caplog.at_level(logging.WARNING):
        emb = model.infer(sub, device="cpu", progress_bar=False)
    assert emb.n_absent_features == {"rna": 5, "atac": 0}
    assert "25 of the model's 30 features found; 5 absent" in caplog.text
    assert "2 features unknown to the model ignored" in caplog.text
    # NLL over the 25 genes with fractions renormalised over them
    with torch.no_grad():
        logf = model.module.decode(torch.from_numpy(emb.latent), torch.from_numpy(emb.covariate))["rna"].double()
    p = np.exp(logf.numpy())[:, keep]
    x = _dense(query.mod["rna"].X)[:, keep]
    mu = p / p.sum(1, keepdims=True) * x.sum(1, keepdims=True)
    expected = _nb_nll(x, mu, model.module.dispersion("rna").detach().double().numpy()[keep])
    np.testing.assert_allclose(emb.nll["nll_rna"], expected, rtol=1e-4)
    # library over all genes: observed total / decoded fraction of the genes present
    np.testing.assert_allclose(emb.library_size[:, 0], x.sum(1) / p.sum(1), rtol=1e-4)


def test_too_few_matching_features_is_refused(model, all_data):
    query = _query(all_data)
    rna = query.mod["rna"][:, :10].copy()
    sub = md.MuData({"rna": rna, "atac": query.mod["atac"].copy()})
    sub.obs = query.obs.copy()
    with pytest.raises(ValueError, match="only 10 of the model's 30 RNA"):
        model.infer(sub, device="cpu", progress_bar=False)
    model.infer(sub, device="cpu", progress_bar=False, min_feature_fraction=0.3, n_steps=1)


def _single(query, m):
    out = md.MuData({m: query.mod[m].copy()})
    out.obs = query.obs.copy()
    return out


@pytest.mark.parametrize("present", ["rna", "atac"])
def test_single_modality_inference_and_prediction(model, all_data, present):
    query = _query(all_data, n=30)
    missing = "atac" if present == "rna" else "rna"
    start = model.infer(_single(query, present), n_steps=0, device="cpu", progress_bar=False)
    # the start is the best pair by the present modality alone
    module = model.module
    K, C = model.n_components, 2
    x = _dense(query.mod[present].X)
    scores = np.zeros((30, K * C))
    with torch.no_grad():
        for k in range(K):
            for c in range(C):
                logf = module.decode(module.basal.mean[k : k + 1], module.covariates[0].mean[c : c + 1])[present]
                mu = np.exp(logf.double().numpy()) * x.sum(1, keepdims=True)
                scores[:, k * C + c] = _nb_nll(x, mu, module.dispersion(present).detach().double().numpy())
    np.testing.assert_array_equal(start.start_candidate[:, 0] * C + start.start_candidate[:, 1], scores.argmin(1))

    emb = model.infer(_single(query, present), device="cpu", progress_bar=False)
    j = ("rna", "atac").index(present)
    assert emb.observed[:, j].all() and not emb.observed[:, 1 - j].any()
    assert emb.nll[f"nll_{missing}"].isna().all() and emb.nll[f"nll_{present}"].notna().all()
    assert (emb.library_size_source[:, 1 - j] == "estimated").all()
    getter = model.get_normalized_accessibility if missing == "atac" else model.get_normalized_expression
    point = getter(emb, prediction="point")
    with torch.no_grad():
        logf = module.decode(torch.from_numpy(emb.latent), torch.from_numpy(emb.covariate))[missing]
    np.testing.assert_allclose(point.to_numpy(), np.exp(logf.numpy()), rtol=1e-5)
    # the default: candidates' profiles weighted by prior weight x likelihood^(1/T), brute force
    T = DEFAULT_TEMPERATURE[present]
    log_pi = (
        module.basal.log_weights.detach().double().numpy()[:, None]
        + (module.covariates[0].log_weights.detach().double().numpy()[None, :])
    )
    logw = -scores / T + log_pi.ravel()[None, :]
    w = np.exp(logw - logw.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    np.testing.assert_allclose(emb.prediction_weights, w, rtol=1e-3, atol=1e-6)
    frac = getter(emb)
    assert frac.shape == (30, len(model.var_names[missing]))
    np.testing.assert_allclose(frac.sum(1), 1, rtol=1e-5)
    np.testing.assert_allclose(frac.to_numpy(), w @ _candidate_profiles(model, missing), rtol=1e-3, atol=1e-7)
    # the estimated library: the cell's own library of the present modality times the median
    # ratio (missing / present) over the 15 nearest trained cells
    ref = np.concatenate([model.state.tables[t].values.numpy() for t in ("train_basal", "val_basal")])
    lib_all, split = model.get_library_size(), model.split.to_numpy()
    libs = np.concatenate([lib_all[split == t] for t in ("train", "validation")]).astype(np.float64)
    d = ((emb.latent[:, None, :] - ref[None]) ** 2).sum(-1)
    near = np.argsort(d, axis=1)[:, :15]
    ratios = libs[:, 1 - j] / libs[:, j]
    expected = np.array([torch.from_numpy(ratios[idx]).median().item() for idx in near]) * x.sum(1)
    np.testing.assert_allclose(emb.library_size[:, 1 - j], expected, rtol=1e-5)
    counts = getter(emb, scale="counts", return_type="array")
    np.testing.assert_allclose(counts, frac.to_numpy() * expected[:, None], rtol=1e-5)


def test_library_size_from_obs_column(model, all_data):
    query = _query(all_data, n=20)
    single = _single(query, "rna")
    single.obs["atac_total"] = np.arange(1, 21) * 10.0
    emb = model.infer(single, atac_library_key="atac_total", device="cpu", progress_bar=False, n_steps=2)
    assert (emb.library_size_source[:, 1] == "given").all()
    np.testing.assert_allclose(emb.library_size[:, 1], np.arange(1, 21) * 10.0)


def test_cells_lacking_one_modality_in_a_mudata(model, all_data):
    query = _query(all_data, n=30)
    atac = query.mod["atac"][10:].copy()  # the first ten cells have no ATAC
    part = md.MuData({"rna": query.mod["rna"].copy(), "atac": atac})
    part.obs = query.obs.copy()
    emb = model.infer(part, device="cpu", progress_bar=False)
    assert list(emb.obs_names[:10]) == list(query.obs_names[:10])
    assert not emb.observed[:10, 1].any() and emb.observed[10:, 1].all() and emb.observed[:, 0].all()
    assert emb.nll["nll_atac"].iloc[:10].isna().all() and emb.nll["nll_atac"].iloc[10:].notna().all()
    # the paired cells get the same result as in a fully paired run
    paired = model.infer(query[10:].copy(), device="cpu", progress_bar=False)
    np.testing.assert_allclose(emb.latent[10:], paired.latent, atol=1e-5)


def test_anndata_inputs(model, all_data):
    query = _query(all_data, n=20)
    # one AnnData of peaks without feature_types: matched by name
    a = model.infer(query.mod["atac"].copy(), device="cpu", progress_bar=False, n_steps=3)
    assert a.observed[:, 1].all() and not a.observed[:, 0].any()
    # one AnnData with both, marked by feature_types
    both = ad.concat([query.mod["rna"], query.mod["atac"]], axis=1)
    both.var["feature_types"] = ["Gene Expression"] * 30 + ["Peaks"] * 60
    both.obs = query.obs.copy()
    b = model.infer(both, device="cpu", progress_bar=False, n_steps=3)
    c = model.infer(query, device="cpu", progress_bar=False, n_steps=3)
    np.testing.assert_allclose(b.latent, c.latent, atol=1e-5)


# ---------------------------------------------------------------------------- new classes
def test_naive_new_class_changes_nothing(model, all_data):
    before = _snapshot(model)
    emb = model.infer(_query(all_data, ["b2"], n=20), device="cpu", progress_bar=False)
    _assert_same(before, _snapshot(model))
    assert emb.learned_classes == {} and model.covariate_categories == [["b0", "b1"]]
    assert np.isfinite(emb.covariate).all()


def test_two_new_classes_learned_at_once(model, all_data, tmp_path):
    before = _snapshot(model)
    query = _query(all_data, ["b2", "b3", "b0"], n=60)
    emb = model.infer(query, new_classes="learn", device="cpu", progress_bar=False)
    assert emb.learned_classes == {"batch": ["b2", "b3"]}
    assert model.covariate_categories == [["b0", "b1", "b2", "b3"]]
    assert model.learned_classes == {"batch": ["b2", "b3"]}
    after = _snapshot(model)
    # every old parameter is unchanged, the new components are there and finite
    for k, v in before[0].items():
        if k.startswith("covariates.0."):
            assert torch.equal(after[0][k][: v.shape[0]], v), k
            assert after[0][k].shape[0] == v.shape[0] + 2
        else:
            assert torch.equal(after[0][k], v), k
    mix = model.module.covariates[0]
    assert mix.n_components == 4 and torch.isfinite(mix.mean).all()
    labels = query.obs["batch"].astype(str).to_numpy()
    # each cell sits under its own class's component: closer to it than to any other
    means = mix.mean.detach().numpy()
    dist = ((emb.covariate[:, None, :] - means[None]) ** 2).sum(-1)
    own = np.array([["b0", "b1", "b2", "b3"].index(b) for b in labels])
    assert (dist.argmin(1) == own).mean() > 0.9

    # kept by save -> load, and used for later data of that class
    model.save(tmp_path / "m.pt")
    loaded = DGD.load(tmp_path / "m.pt")
    assert loaded.covariate_categories == [["b0", "b1", "b2", "b3"]]
    assert loaded.learned_classes == {"batch": ["b2", "b3"]}
    for k, v in model.module.state_dict().items():
        assert torch.equal(loaded.module.state_dict()[k], v), k
    later = _query(all_data, ["b2"], n=80)[60:]
    start = loaded.infer(later, covariate_start="label", n_steps=0, device="cpu", progress_bar=False)
    np.testing.assert_array_equal(start.covariate, np.broadcast_to(means[2], start.covariate.shape))
    assert start.learned_classes == {}
    searched = loaded.infer(later, n_steps=0, device="cpu", progress_bar=False)
    assert searched.start_candidate[:, 1].max() <= 3  # four classes are candidates now
    with pytest.raises(RuntimeError, match="learned after training"):
        model.train(max_epochs=1)


# ---------------------------------------------------------------------------- getters
def test_getters_on_training_cells(model):
    frac = model.get_normalized_expression()
    where = np.where((model.split != "none").to_numpy(), 0, -1)
    assert frac.shape == (int((where >= 0).sum()), 30)
    np.testing.assert_allclose(frac.to_numpy(), model.decode("rna")[where >= 0], rtol=1e-6)
    sub = model.get_normalized_accessibility(peaks=["chr1:500-550", "chr1:0-50"], cells=[0, 3])
    full = model.get_normalized_accessibility(return_type="array")
    np.testing.assert_allclose(sub.to_numpy(), full[[0, 3]][:, [5, 0]], rtol=1e-6)
    assert list(sub.columns) == ["chr1:500-550", "chr1:0-50"]
    counts = model.get_normalized_accessibility(scale="counts", return_type="array")
    lib = model.get_library_size()[where >= 0, 1]
    np.testing.assert_allclose(counts, full * lib[:, None], rtol=1e-5)
    thr = np.quantile(full, 0.9)
    sparse = model.get_normalized_accessibility(return_type="sparse", threshold=thr)
    assert sp.issparse(sparse)
    np.testing.assert_allclose(sparse.toarray(), np.where(full >= thr, full, 0), rtol=1e-6)
    # "uniform": the peaks whose share is >= 1 / number of peaks, on any scale and for any subset
    n_peaks = full.shape[1]
    kept = full >= 1 / n_peaks
    assert 0 < kept.mean() < 1
    uniform = model.get_normalized_accessibility(scale="counts", return_type="sparse", threshold="uniform")
    np.testing.assert_allclose(uniform.toarray(), np.where(kept, counts, 0), rtol=1e-5)
    part = model.get_normalized_accessibility(peaks=[5, 0], return_type="sparse", threshold="uniform")
    np.testing.assert_allclose(part.toarray(), np.where(kept, full, 0)[:, [5, 0]], rtol=1e-6)
    with pytest.raises(ValueError, match="'uniform'"):
        model.get_normalized_accessibility(return_type="sparse", threshold="flat")
    with pytest.raises(ValueError, match="large dense matrix"):
        model.get_normalized_accessibility(max_dense_elements=100)
    with pytest.raises(ValueError, match="needs threshold"):
        model.get_normalized_accessibility(return_type="sparse")
    with pytest.raises(ValueError, match="not found"):
        model.get_normalized_expression(genes=["nope"])


# ---------------------------------------------------------------------------- bad input
def test_bad_new_data_is_refused_before_work(model, all_data, caplog):
    query = _query(all_data, n=20)
    renamed = md.MuData({"x": query.mod["rna"].copy(), "y": query.mod["atac"].copy()})
    with pytest.raises(ValueError, match="none of the model's modalities"):
        model.infer(renamed, device="cpu", progress_bar=False)
    model.infer(renamed, rna_mod="x", atac_mod="y", device="cpu", progress_bar=False, n_steps=1)
    half = md.MuData({"gex": query.mod["rna"].copy(), "atac": query.mod["atac"].copy()})
    with pytest.raises(ValueError, match=r"no modality 'rna' \(RNA \(genes\)\) but holds \['gex'\]"):
        model.infer(half, device="cpu", progress_bar=False, n_steps=1)  # as training refuses it
    atac_only = md.MuData({"atac": query.mod["atac"].copy()})
    with caplog.at_level(logging.WARNING):
        emb = model.infer(atac_only, device="cpu", progress_bar=False, n_steps=1)
    assert "no modality 'rna' (RNA (genes))" in caplog.text
    assert not emb.observed[:, 0].any()

    no_cov = query.copy()
    no_cov.obs = no_cov.obs.drop(columns="batch")
    for m in no_cov.mod.values():
        m.obs = m.obs.drop(columns="batch")
    # placed without labels (naive, search): the column is not needed, and the labels did not count
    unlabelled = model.infer(no_cov, device="cpu", progress_bar=False, n_steps=3)
    labelled = model.infer(query, device="cpu", progress_bar=False, n_steps=3)
    np.testing.assert_array_equal(unlabelled.latent, labelled.latent)
    np.testing.assert_array_equal(unlabelled.covariate, labelled.covariate)
    for needs in ({"new_classes": "learn"}, {"covariate_start": "label"}):
        with pytest.raises(ValueError, match="no obs column 'batch'"):
            model.infer(no_cov, device="cpu", progress_bar=False, **needs)

    wrong = query.copy()
    wrong.mod["rna"].var_names = [f"other{i}" for i in range(30)]
    with pytest.raises(ValueError, match="only 0 of the model's 30"):
        model.infer(wrong, device="cpu", progress_bar=False)

    frac = query.copy()
    frac.mod["rna"].X = frac.mod["rna"].X * 0.5
    with pytest.raises(ValueError, match="non-integer"):
        model.infer(frac, device="cpu", progress_bar=False)

    empty = query.copy()
    for m in ("rna", "atac"):
        x = empty.mod[m].X.toarray()
        x[3] = 0
        empty.mod[m].X = sp.csr_matrix(x)
    with pytest.raises(ValueError, match="1 of 20 cells have no counts"):
        model.infer(empty, device="cpu", progress_bar=False)

    for kw, msg in [
        ({"new_classes": "maybe"}, "new_classes"),
        ({"covariate_start": "x"}, "covariate_start"),
        ({"n_steps": -1}, "n_steps"),
        ({"lr": 0}, "lr"),
    ]:
        with pytest.raises(ValueError, match=msg):
            model.infer(query, device="cpu", progress_bar=False, **kw)
    with pytest.raises(TypeError, match="MuData or an AnnData"):
        model.infer(pd.DataFrame(), device="cpu")


def test_infer_needs_a_trained_model(all_data):
    untrained = DGD(all_data, cell_type_key="cell_type", covariate_keys=["batch"])
    with pytest.raises(RuntimeError, match="not trained"):
        untrained.infer(all_data)


def test_model_without_covariates(all_data):
    model = DGD(all_data[:120].copy(), cell_type_key="cell_type", config=ModelConfig(hidden_dim=16))
    model.train(max_epochs=2, seed=0, device="cpu", config=FAST, progress_bar=False)
    emb = model.infer(all_data[120:150].copy(), device="cpu", progress_bar=False, n_steps=5)
    assert emb.covariate.shape == (30, 0) and np.isfinite(emb.latent).all()
    assert emb.nll.notna().all().all()
    with pytest.raises(ValueError, match="no covariates"):
        emb.covariate_representation()


def test_a_zero_count_table_shared_by_blocks_matches_exact_scores():
    """The table built once for all cells gives each block the exact per-cell scores."""
    from multidgd.inference import zero_count_table

    rng = np.random.default_rng(3)
    J, F, n = 4, 2000, 500
    log_p = torch.log_softmax(torch.from_numpy(rng.normal(size=(J, F))), dim=1)
    r = torch.from_numpy(rng.uniform(0.5, 5, F))
    log_lib = torch.from_numpy(np.log(rng.uniform(20, 400, n)))
    none = torch.zeros(0, dtype=torch.int64)
    empty = (none, none, torch.zeros(0, dtype=torch.float64))
    # a few features with large fractions are summed exactly, the rest as the series
    log_p[:, :3] += 4
    r = r.clone()
    table = zero_count_table(log_p, r, log_lib, budget_elements=10**6)
    assert 0 < table.exact_r.numel() < F and table.grid is not None and 2 * len(table.grid) < n
    direct = (r * torch.nn.functional.softplus(log_lib[:, None, None] + log_p - torch.log(r))).sum(2)
    for block in (slice(0, 7), slice(7, 300), slice(300, n)):
        shared = candidate_scores(log_p, r, log_lib[block], *empty, budget_elements=10**6, zero_term=table)
        np.testing.assert_allclose(shared.numpy(), direct[block].numpy(), rtol=1e-7)
    # too few cells for a grid to pay: the exact features per cell (float64: to 1e-12)
    few = zero_count_table(log_p, r, log_lib[:10], budget_elements=7, grid_spacing=0.05)
    assert few.grid is None
    np.testing.assert_allclose(few(log_lib[:10]).numpy(), direct[:10].numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="smaller library sizes"):
        few(log_lib)
    # float32: the series to float precision
    f32 = zero_count_table(log_p.float(), r.float(), log_lib.float(), budget_elements=10**6, grid_spacing=None)
    np.testing.assert_allclose(f32(log_lib.float()).numpy(), direct.numpy(), rtol=2e-6)


def _candidate_profiles(model, m):
    """Per (component, class) candidate: the library-weighted mean decoded profile of the
    training cells, each weighted by its responsibilities, brute force in float64.
    """
    module = model.module
    train = (model.split == "train").to_numpy()
    z = torch.from_numpy(model.get_latent_representation()[train])
    c = torch.from_numpy(model.get_covariate_matrix()[train])
    lib = model.get_library_size()[train, ("rna", "atac").index(m)].astype(np.float64)
    with torch.no_grad():
        f = module.decode(z, c)[m].exp().double().numpy()
        rk = module.basal.log_responsibilities(z).exp().double().numpy()
        rc = module.covariates[0].log_responsibilities(c).exp().double().numpy()
    K, C = rk.shape[1], rc.shape[1]
    out = np.zeros((K * C, f.shape[1]))
    for k in range(K):
        for cc in range(C):
            share = rk[:, k] * rc[:, cc] * lib
            out[k * C + cc] = share @ f / share.sum()
    return out


def test_prediction_commits_when_the_observation_is_informative(model, all_data):
    query = _single(_query(all_data, n=10), "atac")
    # deep cells; covariate classes from the labels (ATAC of these data carries no batch
    # effect); the tiny model's components decode to similar profiles, so the temperature
    # is set far below the candidates' NLL differences
    query.mod["atac"].X = sp.csr_matrix(_dense(query.mod["atac"].X) * 300)
    emb = model.infer(query, device="cpu", progress_bar=False, covariate_start="label", temperature=1e-4)
    assert (np.isinf(emb.candidates.nll).sum(1) == emb.candidates.nll.shape[1] // 2).all()
    gaps = np.sort(emb.candidates.nll, axis=1)[:, 1] - emb.candidates.nll.min(1)
    assert (gaps / 1e-4 > 50).all()
    w = emb.prediction_weights
    assert (w.max(1) > 1 - 1e-6).all() and (emb.prediction_certainty > 0.999).all()
    C = len(model.covariate_categories[0])
    best = emb.start_candidate[:, 0] * C + emb.start_candidate[:, 1]
    np.testing.assert_array_equal(w.argmax(1), best)  # the single best candidate
    got = model.get_normalized_expression(emb, return_type="array")
    np.testing.assert_allclose(got, _candidate_profiles(model, "rna")[best], rtol=1e-4)


def test_prediction_without_information_is_the_prior_weighted_mean(model, all_data):
    query = _single(_query(all_data, n=10), "rna")
    emb = model.infer(query, device="cpu", progress_bar=False, temperature=1e12)
    module = model.module
    pi = np.exp(
        module.basal.log_weights.detach().double().numpy()[:, None]
        + module.covariates[0].log_weights.detach().double().numpy()[None, :]
    ).ravel()
    np.testing.assert_allclose(emb.prediction_weights, np.broadcast_to(pi, emb.prediction_weights.shape), rtol=1e-6)
    got = model.get_normalized_accessibility(emb, return_type="array")
    np.testing.assert_allclose(got, np.broadcast_to(pi @ _candidate_profiles(model, "atac"), got.shape), rtol=1e-4)
    # peaks asked for by name: the same columns
    names = model.var_names["atac"][[3, 1]]
    sub = model.get_normalized_accessibility(emb, peaks=names, cells=[0, 2], return_type="array")
    np.testing.assert_allclose(sub, got[[0, 2]][:, [3, 1]], rtol=1e-6)
    # the certainty is written next to the other per-cell results
    emb.add_to(query)
    np.testing.assert_allclose(query.obs["multidgd_prediction_certainty"], emb.prediction_certainty)
    with pytest.raises(ValueError, match="temperature"):
        model.infer(query, device="cpu", progress_bar=False, temperature=0.0)
    with pytest.raises(ValueError, match="prediction"):
        model.get_normalized_accessibility(emb, prediction="mode")


def test_what_a_new_cell_has_is_denoised_by_the_posterior(model, all_data, tmp_path):
    from multidgd.prediction import posterior_weights

    # train() fitted the weights on the validation cells; a saved model keeps them
    record = model.denoise_record
    assert record["cells"] == int((model.split == "validation").sum())
    for m in ("rna", "atac"):
        scores = {float(k): v for k, v in record["scores"][m].items()}
        best = min(scores.values()) if m == "rna" else max(scores.values())
        assert scores[record["own_weight"][m]] == best
    path = model.save(tmp_path / "m.pt")
    assert DGD.load(path).denoise_record == record
    query = _query(all_data, n=12)
    saved = model.denoise_record
    try:
        model.denoise_record = {"own_weight": {"rna": 0.75, "atac": 0.25}}
        emb = model.infer(query, device="cpu", progress_bar=False)
        w = posterior_weights(emb.candidates.nll, emb.candidates.log_prior, 50.0)  # the default for paired cells
        np.testing.assert_allclose(emb.prediction_weights, w, rtol=1e-6)
        np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-9)
        for m, getter in (("rna", model.get_normalized_expression), ("atac", model.get_normalized_accessibility)):
            own = getter(emb, return_type="array", prediction="point")
            with torch.no_grad():
                decoded = model.module.decode(torch.from_numpy(emb.latent), torch.from_numpy(emb.covariate))[m]
            np.testing.assert_allclose(own, decoded.exp().numpy(), rtol=1e-5)  # "point": the cell's own profile
            a = model.denoise_weights[m]
            expected = a * own + (1 - a) * (w @ _candidate_profiles(model, m))
            got = getter(emb, return_type="array")
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-9)
            np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-5)
            assert not np.allclose(got, own)
            # transform_batch decodes the cell's own representation in that batch, without the blend
            moved = getter(emb, return_type="array", transform_batch="b0")
            point = getter(emb, return_type="array", transform_batch="b0", prediction="point")
            np.testing.assert_allclose(moved, point)
        # the model's own training cells keep their own profiles
        trained = model.training_embedding(all_data[model.obs_names[:10]].copy(), progress_bar=False)
        assert np.isnan(trained.prediction_certainty).all()
        np.testing.assert_allclose(
            model.get_normalized_expression(trained, return_type="array"),
            model.get_normalized_expression(cells=np.arange(10), return_type="array"),
            rtol=1e-5,
        )
        # not fitted: weights of 1, the own profile alone
        model.denoise_record = None
        assert model.denoise_weights == {"rna": 1.0, "atac": 1.0}
        emb = model.infer(query, device="cpu", progress_bar=False)
        own = model.get_normalized_accessibility(emb, return_type="array", prediction="point")
        np.testing.assert_allclose(model.get_normalized_accessibility(emb, return_type="array"), own)
    finally:
        model.denoise_record = saved


def test_denoising_fitted_from_the_data_equals_the_one_training_fitted(trained, all_data, tmp_path):
    model = copy.deepcopy(trained)
    record = model.denoise_record
    model.fit_denoising(all_data, device="cpu")  # the same validation cells, read from the data
    assert model.denoise_record["cells"] == record["cells"]
    assert model.denoise_record["own_weight"] == record["own_weight"]
    for m in ("rna", "atac"):
        got, want = model.denoise_record["scores"][m], record["scores"][m]
        np.testing.assert_allclose([got[k] for k in want], list(want.values()), rtol=1e-4)
    with pytest.raises(RuntimeError, match="without data"):
        DGD.load(model.save(tmp_path / "m.pt")).fit_denoising()


def test_denoise_weight_is_the_best_of_the_grid():
    from multidgd.metrics import auprc, rmse
    from multidgd.prediction import DENOISE_WEIGHTS, fit_denoise_weight

    rng = np.random.default_rng(3)
    truth = rng.dirichlet(np.ones(40), size=30)
    own = 0.5 * truth + 0.5 * rng.dirichlet(np.ones(40), size=30)  # noisy own profiles
    posterior = np.full_like(truth, 1 / 40)  # the average profile
    counts = sp.csr_matrix(rng.poisson(truth * 50).astype(np.float32))
    lib = np.asarray(counts.sum(1)).ravel()[:, None]
    for m, metric, pick in (("rna", rmse, min), ("atac", auprc, max)):
        a, scores = fit_denoise_weight(counts, own, posterior, m)
        brute = {w: metric(counts, lib * (w * own + (1 - w) * posterior)) for w in DENOISE_WEIGHTS}
        assert set(scores) == set(DENOISE_WEIGHTS)
        np.testing.assert_allclose([scores[w] for w in DENOISE_WEIGHTS], [brute[w] for w in DENOISE_WEIGHTS])
        assert scores[a] == pick(brute.values())
    # own profiles equal to the truth: the own profile alone; ties go to the larger weight
    a, _ = fit_denoise_weight(counts, truth, posterior, "rna")
    assert a == 1.0
    assert fit_denoise_weight(counts, posterior, posterior, "atac")[0] == 1.0


def test_candidate_profiles_are_kept_per_embedding(model, all_data):
    emb = model.infer(_single(_query(all_data, n=8), "rna"), device="cpu", progress_bar=False)
    assert emb.candidates.profiles == {}
    full = model.get_normalized_accessibility(emb, return_type="array")
    kept = emb.candidates.profiles["atac"]
    np.testing.assert_allclose(kept, _candidate_profiles(model, "atac"), rtol=1e-4)
    sub = model.get_normalized_accessibility(emb, peaks=[5, 2], return_type="array")
    assert emb.candidates.profiles["atac"] is kept  # not computed again
    np.testing.assert_allclose(sub, full[:, [5, 2]], rtol=1e-6)
    # another embedding with the same candidates takes them from the model
    other = model.infer(_single(_query(all_data, n=5), "rna"), device="cpu", progress_bar=False)
    model.get_normalized_accessibility(other, return_type="array")
    assert other.candidates.profiles["atac"] is kept and not kept.flags.writeable
    # a learned class changes the candidates and the network: computed anew
    fresh = copy.deepcopy(model)
    learned = fresh.infer(_single(_query(all_data, ["b2"], n=20), "rna"), new_classes="learn", progress_bar=False)
    fresh.get_normalized_accessibility(learned, return_type="array")
    assert learned.candidates.profiles["atac"].shape[0] > kept.shape[0]


def test_prediction_for_a_learned_class_uses_its_own_decoded_profile(model, all_data):
    query = _single(_query(all_data, ["b2"], n=20), "rna")
    emb = model.infer(query, new_classes="learn", device="cpu", progress_bar=False)
    assert emb.learned_classes == {"batch": ["b2"]}
    K, C = model.n_components, 3
    assert emb.candidates.nll.shape == (20, K * C)
    # cells of the learned class are scored under it (label start): only its candidates count
    w = emb.prediction_weights
    assert np.allclose(w.reshape(20, K, C)[:, :, :2].sum((1, 2)), 0)
    got = model.get_normalized_accessibility(emb, return_type="array")
    # no training cell stands for the new class: its candidates take their own decoded profiles
    with torch.no_grad():
        own = model.module.decode(torch.from_numpy(emb.candidates.latent), torch.from_numpy(emb.candidates.covariate))
    own = own["atac"].exp().double().numpy()
    new = np.arange(K * C) % C == 2
    np.testing.assert_allclose(emb.candidates.profiles["atac"][new], own[new], rtol=1e-5)
    np.testing.assert_allclose(got, w[:, new] @ own[new], rtol=1e-4)
