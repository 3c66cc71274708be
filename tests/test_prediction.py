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
