import numpy as np
import pytest
import scipy.sparse as sp
from scipy.special import logsumexp

from multidgd.prediction import DEFAULT_TEMPERATURE, cell_temperature, posterior_weights, prediction_certainty


def test_posterior_weights_match_a_brute_force_posterior():
    rng = np.random.default_rng(0)
    nll = rng.uniform(100, 200, (7, 5))
    nll[2, 3] = np.inf  # a candidate not allowed for cell 2
    log_prior = np.log(rng.dirichlet(np.ones(5)))
    for t in (1.0, 3.0, np.array([1, 2, 3, 4, 5, 6, 7.0])):
        w = posterior_weights(nll, log_prior, t)
        tt = np.broadcast_to(np.asarray(t, float), (7,))
        for i in range(7):
            logp = -nll[i] / tt[i] + log_prior
            expected = np.exp(logp - logsumexp(logp[np.isfinite(logp)]))
            np.testing.assert_allclose(w[i], np.where(np.isfinite(logp), expected, 0), rtol=1e-12, atol=1e-300)
        np.testing.assert_allclose(w.sum(1), 1, rtol=1e-12)
        assert w[2, 3] == 0


def test_informative_and_empty_observations():
    log_prior = np.log(np.array([0.5, 0.3, 0.2]))
    # an observation that separates the candidates by thousands of nats commits to the best
    w = posterior_weights(np.array([[5000.0, 1000.0, 9000.0]]), log_prior, 50.0)
    np.testing.assert_allclose(w, [[0.0, 1.0, 0.0]], atol=1e-30)
    assert prediction_certainty(w)[0] == pytest.approx(1.0)
    # an observation every candidate explains equally well leaves the prior
    w = posterior_weights(np.full((2, 3), 123.0), log_prior, 3.0)
    np.testing.assert_allclose(w, np.exp(log_prior)[None].repeat(2, 0), rtol=1e-12)
    # and the certainty of uniform weights is 0
    assert prediction_certainty(np.full((1, 4), 0.25))[0] == pytest.approx(0.0, abs=1e-12)
    h = -(0.5 * np.log(0.5) + 0.3 * np.log(0.3) + 0.2 * np.log(0.2))
    np.testing.assert_allclose(prediction_certainty(w), 1 - h / np.log(3), rtol=1e-12)


def test_bad_weights_inputs_are_refused():
    with pytest.raises(ValueError, match="allowed candidate"):
        posterior_weights(np.array([[np.inf, np.inf]]), np.zeros(2), 1.0)
    for bad in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="temperature"):
            cell_temperature(np.ones((2, 2), dtype=bool), bad)


def test_default_temperature_by_what_a_cell_has():
    observed = np.array([[True, True], [True, False], [False, True]])
    np.testing.assert_array_equal(
        cell_temperature(observed, None),
        [DEFAULT_TEMPERATURE["both"], DEFAULT_TEMPERATURE["rna"], DEFAULT_TEMPERATURE["atac"]],
    )
    np.testing.assert_array_equal(cell_temperature(observed, 2.5), [2.5, 2.5, 2.5])


def test_per_cell_auprc_matches_scikit_learn_cell_by_cell():
    from sklearn.metrics import average_precision_score

    from multidgd.metrics import per_cell_auprc

    rng = np.random.default_rng(1)
    x = rng.poisson(0.3, (40, 200)).astype(np.float32)
    x[5] = 0  # a cell without any positive
    score = np.round(rng.random((40, 200)) * 4) / 4 + 0.2 * x  # many ties
    got = per_cell_auprc(sp.csr_matrix(x), score, chunk=7)
    assert np.isnan(got[5])
    for i in range(40):
        if i != 5:
            assert got[i] == pytest.approx(average_precision_score(x[i] >= 1, score[i]), abs=1e-12)


def test_per_cell_correlations_match_scipy():
    from scipy.stats import pearsonr, spearmanr

    from multidgd.metrics import per_cell_correlation

    rng = np.random.default_rng(2)
    x = rng.poisson(2.0, (12, 50)).astype(float)
    p = x * rng.uniform(0.5, 1.5, x.shape) + rng.uniform(0, 1, x.shape)
    p[3] = 1.0  # a constant prediction has no correlation
    got_p = per_cell_correlation(sp.csr_matrix(x), p, "pearson", chunk=5)
    got_s = per_cell_correlation(x, p, "spearman")
    assert np.isnan(got_p[3]) and np.isnan(got_s[3])
    for i in range(12):
        if i != 3:
            assert got_p[i] == pytest.approx(pearsonr(np.log1p(x[i]), np.log1p(p[i]))[0], abs=1e-12)
            assert got_s[i] == pytest.approx(spearmanr(x[i], p[i])[0], abs=1e-12)
    with pytest.raises(ValueError, match="method"):
        per_cell_correlation(x, p, "kendall")


def test_component_posterior_sums_candidates_of_each_component():
    from multidgd.prediction import component_posterior

    rng = np.random.default_rng(1)
    K, C = 3, 4
    nll = rng.uniform(50, 80, (6, K * C))
    nll[1, 5] = np.inf
    log_prior = np.log(rng.dirichlet(np.ones(K * C)))
    p = component_posterior(nll, log_prior, K, 7.0)
    for i in range(6):
        logw = (-nll[i] / 7.0 + log_prior).reshape(K, C)  # candidate j = k * C + c
        expected = np.exp(logsumexp(logw, axis=1) - logsumexp(logw))
        np.testing.assert_allclose(p[i], expected, rtol=1e-10)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-12)
    with pytest.raises(ValueError, match="K \\* C columns"):
        component_posterior(nll[:, :-1], log_prior[:-1], K, 1.0)


def test_fitted_cluster_temperature_minimises_the_log_loss_of_the_labels():
    from multidgd.prediction import CLUSTER_TEMPERATURES, component_posterior, fit_cluster_temperature

    rng = np.random.default_rng(2)
    K, C, n = 4, 2, 200
    labels = rng.integers(0, K, n)
    # counts that favour the cell's own component by a margin of ~40 nats, wrongly for 15 %
    nll = rng.normal(1000, 20, (n, K * C))
    favoured = np.where(rng.random(n) < 0.15, (labels + 1) % K, labels)
    for c in range(C):
        nll[np.arange(n), favoured * C + c] -= 40
    log_prior = np.full(K * C, -np.log(K * C))
    t = fit_cluster_temperature(nll, log_prior, labels, K)
    losses = [
        -np.log(component_posterior(nll, log_prior, K, s)[np.arange(n), labels]).mean() for s in CLUSTER_TEMPERATURES
    ]
    assert t == CLUSTER_TEMPERATURES[int(np.argmin(losses))]
    assert 1.0 < t < 1000.0  # neither hard nor flat: the labels are right for most cells, not all
    # labels the counts always agree with, clearly: the hardest temperature tried
    clear = rng.normal(1000, 1, (n, K * C))
    for c in range(C):
        clear[np.arange(n), labels * C + c] -= 40
    assert fit_cluster_temperature(clear, log_prior, labels, K) == CLUSTER_TEMPERATURES[0]
    with pytest.raises(ValueError, match="no scored cell"):
        fit_cluster_temperature(nll, log_prior, np.full(n, -1), K)
