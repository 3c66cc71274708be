import numpy as np
import pytest
import scipy.sparse as sp

from multidgd.metrics import auprc, mae, rmse


def test_rmse_and_mae_by_hand():
    obs = np.array([[0.0, 2.0], [1.0, 1.0]])
    pred = np.array([[1.0, 0.0], [1.0, 4.0]])
    # per cell squared error means: (1 + 4) / 2 = 2.5 and (0 + 9) / 2 = 4.5 -> sqrt(3.5)
    assert rmse(obs, pred) == pytest.approx(np.sqrt(3.5))
    assert rmse(sp.csr_matrix(obs), pred) == pytest.approx(np.sqrt(3.5))
    # absolute: (1 + 2) / 2 = 1.5 and (0 + 3) / 2 = 1.5
    assert mae(obs, pred) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="shape"):
        rmse(obs, pred[:, :1])


def test_auprc_by_hand():
    obs = sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 3.0]]))
    # ranking 0.9 (pos), 0.8 (neg), 0.7 (pos), 0.1 (neg): AP = (1/1 + 2/3) / 2
    pred = np.array([[0.9, 0.8], [0.1, 0.7]])
    assert auprc(obs, pred) == pytest.approx((1 + 2 / 3) / 2)
    assert auprc(obs, np.array([[0.9, 0.1], [0.2, 0.8]])) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="undefined"):
        auprc(np.zeros((2, 2)), pred)


def test_nb_nll_against_scipy():
    from scipy.stats import nbinom

    from multidgd.metrics import nb_nll

    rng = np.random.default_rng(0)
    mu = rng.uniform(0.1, 5, (4, 6))
    r = rng.uniform(0.5, 3, 6)
    x = rng.poisson(mu)
    expected = -nbinom.logpmf(x, r[None], r[None] / (r[None] + mu)).sum(1)
    np.testing.assert_allclose(nb_nll(x, mu, r), expected, rtol=1e-10)
    np.testing.assert_allclose(nb_nll(sp.csr_matrix(x), mu, r), expected, rtol=1e-10)


def test_ari_asw_and_ratio_known_answers():
    from multidgd.metrics import ari, batch_1_minus_asw, loss_ratio

    assert ari([0, 0, 1, 1], ["b", "b", "a", "a"]) == pytest.approx(1.0)
    assert ari([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    # two tight, far-apart batches: silhouette ~1 -> 1 - ASW ~0
    latent = np.array([[0.0], [0.01], [10.0], [10.01]])
    assert batch_1_minus_asw(latent, ["x", "x", "y", "y"]) == pytest.approx(0.0, abs=2e-3)
    # silhouette by hand for points 0, 1, 3 in two batches {0, 3} and {1}:
    # a(0)=3, b(0)=1 -> s=(1-3)/3; a(3)=3, b(3)=2 -> s=(2-3)/3; singleton -> 0
    assert batch_1_minus_asw(np.array([[0.0], [1.0], [3.0]]), ["p", "q", "p"]) == pytest.approx(
        1 - np.mean([-2 / 3, 0.0, -1 / 3])
    )
    assert loss_ratio([2.0, 3.0, 10.0], [2.0, 2.0, 5.0]) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="two batches"):
        batch_1_minus_asw(latent, ["x"] * 4)


def test_per_cell_rmse_by_hand():
    from multidgd.metrics import per_cell_rmse

    obs = sp.csr_matrix(np.array([[0.0, 2.0], [1.0, 1.0]]))
    pred = np.array([[1.0, 0.0], [1.0, 4.0]])
    np.testing.assert_allclose(per_cell_rmse(obs, pred), [np.sqrt(2.5), np.sqrt(4.5)])


def test_components_used_counts_components_with_one_percent_of_the_cells():
    from multidgd.metrics import cluster_sizes, components_used

    labels = np.array([0] * 500 + [1] * 480 + [2] * 10 + [3] * 9 + [4] * 1 + [-1] * 3)  # 1,000 labelled cells
    assert cluster_sizes(labels, 6).tolist() == [500, 480, 10, 9, 1, 0]
    assert components_used(labels, 6) == 3  # 10 of 1,000 is 1 %; 9 is not
    assert components_used(labels, 6, min_fraction=0.0) == 6


def test_batch_asw_follows_the_scib_definition():
    from multidgd.metrics import batch_asw

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    batches = np.repeat(["b0", "b1", "b2"], 20)
    labels = np.tile(["t0", "t1"], 30)
    labels[:20] = "t2"  # type t2 holds cells of batch b0 only: left out
    # brute force: silhouette per cell from its mean distances, within each type
    expected = []
    for t in ("t0", "t1"):
        rows = np.flatnonzero(labels == t)
        d = np.linalg.norm(x[rows, None] - x[None, rows], axis=2)
        s = []
        for i, r in enumerate(rows):
            own = (batches[rows] == batches[r]) & (np.arange(len(rows)) != i)
            a = d[i, own].mean()
            b = min(d[i, batches[rows] == o].mean() for o in set(batches[rows]) - {batches[r]})
            s.append((b - a) / max(a, b))
        expected.append(np.mean(1 - np.abs(s)))
    assert batch_asw(x, batches, labels) == pytest.approx(np.mean(expected), rel=1e-10)
    separated = x + np.repeat(np.array([[0, 0, 0], [50, 0, 0], [0, 50, 0]]), 20, axis=0)
    assert batch_asw(separated, batches, np.tile(["t0", "t1"], 30)) < 0.05
    with pytest.raises(ValueError, match="at least two batches"):
        batch_asw(x, np.repeat("b0", 60), labels)
